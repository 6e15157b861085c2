"""ReDial's lossy 10,006-dialogue train file: read it, drop the dialogues other inputs hold, keep each one's mentions.

The complete ReDial train file is not available; `precessed.json.zip` (MarkystarkDotCO/Redial-QA-System) holds
all 10,006 train dialogues as {context, questions, answers}, with the interleaving of the two speakers lost:
`questions` are the messages of whoever spoke first, `answers` the other worker's, each list in its true order
(`context` holds only the "liked" form labels). All 1,813 train dialogues whose order is known (KGSF valid, iEvaLM
valid) are in the file with the same text and the same `@id` mentions.

Its consumers: the co-mention prior (`reges.retrieval.comention`) and the catalog statistics, which reduce each
dialogue to the SET of items it mentions, and the encoder's order-free training pairs (`lossy_examples`, switched
on by `train_retriever.lossy_pairs`): what the seeker wrote -> the films the recommender named. So this module
1. finds the file's copies of the held-out dialogues (tune, dev, test) and drops them, so nothing of them leaks
   into train-time statistics, and of the train dialogues (`known`), which the caller already has;
2. returns every other entry as a `Dialogue` whose mention set is exact;
3. tells the seeker's side of a returned dialogue by a phrase rule (`seeker_turn`) for the training pairs;
4. for `train_retriever.lossy_pairs_from: interleaved`, reads a kept dialogue's messages again and guesses their
   speaking order (`interleave`, `interleaved_dialogues`), so that its examples can be cut at each recommendation
   as ordered ones are. `context_agreement` measures the guess on the clean dialogues, whose order is known.

The dialogues `lossy_dialogues` returns do not restore turn order or roles: each has at most two turns, the first
speaker's messages (labelled "assistant": the recommender opens 62.7 % of the known dialogues) and then the other's.
Read only their item sets. A learned reconstruction (roles right for 96.5 % of dialogues, 47.1 % of messages at
their true position) lived here, with its study in `benchmarks/lossy_reconstruction.py`; no consumer used it, so it
was removed on 2026-12-06 (commit 1ecc0b1 is the last one that has it). The order guess of point 4 is a plain
rule with its own measurement (`benchmarks/lossy_order.py`, docs/results/lossy_order.md).
"""

from __future__ import annotations

import html
import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reges.data import build_examples, merge_turns
from reges.errors import DataError
from reges.records import Dialogue, RecExample, Role, Turn
from reges.titles import normalize_title

logger = logging.getLogger(__name__)

MEMBER = "precessed.json"
"""The member of the zip that holds the dialogues."""
LOSSY_DIALOGUES_FILE = "lossy_dialogues.jsonl"
"""What the data stage writes them to (`data/`), for the co-mention prior, the catalog statistics and the pairs."""
MISSING_TITLE = "a movie"
"""Stands in for the title of an `@id` that `movie_names` lacks (the id stays in `Turn.item_ids`)."""
FIRST_SPEAKER_ROLE: Role = "assistant"
"""Role label of the first speaker's turn (the majority: the recommender opens 62.7 % of the known dialogues)."""

_MENTION = re.compile(r"@(\d+)")
_NON_ALNUM = re.compile(r"[\W_]+")


def load_lossy(path: Path) -> list[dict[str, Any]]:
    """Read the lossy dialogues straight from the zip (nothing is extracted to disk).

    Args:
        path: `precessed.json.zip`, holding `precessed.json`: a JSON list of {context: str, questions: [str],
            answers: [str]}.

    Returns:
        The dialogues in file order, as stored (their position is their identity: the file has no ids).

    Raises:
        DataError: The file is missing, is not a zip with `precessed.json`, or an entry has the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"lossy ReDial file not found: {path}; set data.lossy_file to precessed.json.zip or \"\"")
    try:
        with zipfile.ZipFile(path) as archive:
            raw = json.loads(archive.read(MEMBER).decode("utf-8"))
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a zip file; data.lossy_file must point at precessed.json.zip") from None
    except KeyError:
        raise DataError(f"{path} has no member {MEMBER!r}; is this ReDial's precessed.json.zip?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{MEMBER} is not valid UTF-8 JSON ({e}); re-download the file") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}:{MEMBER}: expected a JSON list of dialogues, got {type(raw).__name__}")
    for index, entry in enumerate(raw):
        where = f"{path}:{MEMBER}[{index}]"
        if not isinstance(entry, dict) or not {"context", "questions", "answers"} <= set(entry):
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(f"{where}: expected {{context, questions, answers}}, got {keys}; is this the lossy "
                            "ReDial file?")
        for key in ("questions", "answers"):
            if not isinstance(entry[key], list) or not all(isinstance(t, str) for t in entry[key]):
                raise DataError(f"{where}: {key} must be a list of strings")
        if not entry["questions"]:
            raise DataError(f"{where}: no questions; the first speaker's messages are never empty in ReDial, "
                            "so the file is damaged")
    logger.info("%s: %d lossy dialogues", path, len(raw))
    return raw


def _clean(text: str) -> str:
    """Undo the file's HTML escapes (&quot; &amp; &gt;) and collapse whitespace, as the ReDial loader does."""
    return " ".join(html.unescape(text).split())


def _key(text: str) -> str:
    """Matching form of a text: lowercase letters and digits only (spacing, punctuation and escapes vary)."""
    return _NON_ALNUM.sub("", html.unescape(text).lower())


class TitleResolver:
    """Replaces `@id` with "Title (Year)" from `movie_names`, counting ids it cannot resolve.

    Public because `two_turn_dialogue` and `interleaved_dialogue` take one: a caller converting many entries shares
    one resolver, whose title cache and missing-id counts then cover them all.
    """

    def __init__(self, movie_names: Mapping[str, str]) -> None:
        self.movie_names = movie_names
        self.titles: dict[str, str] = {}  # normalised lazily: most of the 6,924 names are never needed
        self.missing: Counter[str] = Counter()

    def __call__(self, text: str) -> tuple[str, list[str]]:
        item_ids: list[str] = []

        def title_of(match: re.Match[str]) -> str:
            item_id = match.group(1)
            if item_id not in item_ids:
                item_ids.append(item_id)
            if item_id in self.titles:
                return self.titles[item_id]
            if item_id in self.movie_names:
                self.titles[item_id] = normalize_title(self.movie_names[item_id])
                return self.titles[item_id]
            self.missing[item_id] += 1
            return MISSING_TITLE

        return " ".join(_MENTION.sub(title_of, _clean(text)).split()), item_ids


@dataclass
class LossyMatch:
    """A lossy entry matched to a dialogue.

    Two texts match exactly when, per speaker, their letters and digits agree once `@id`s are resolved to
    titles, and their mention sets are equal; otherwise, among entries with the same mention set, the best
    rapidfuzz ratio >= 90 on both speakers' texts wins (titles that the loader took from a dialogue's
    movieMentions can differ from movie_names).

    Attributes:
        dialogue: The matched dialogue.
        exact: Whether the text matched exactly.
    """

    dialogue: Dialogue
    exact: bool


class _LossyIndex:
    """Match keys of every lossy entry: per side, the resolved text key; and the entry's mention set."""

    def __init__(self, entries: Sequence[dict[str, Any]], resolver: TitleResolver) -> None:
        self.sides: list[tuple[str, str]] = []
        self.ids: list[frozenset[str]] = []
        self.by_text: dict[frozenset[str], list[int]] = {}
        self.by_ids: dict[frozenset[str], list[int]] = {}
        for index, entry in enumerate(entries):
            texts = [" ".join(resolver(t)[0] for t in entry[key]) for key in ("questions", "answers")]
            sides = (_key(texts[0]), _key(texts[1]))
            ids = frozenset(i for t in entry["questions"] + entry["answers"] for i in _MENTION.findall(t))
            self.sides.append(sides)
            self.ids.append(ids)
            self.by_text.setdefault(frozenset(sides), []).append(index)
            self.by_ids.setdefault(ids, []).append(index)

    def match(self, dialogue: Dialogue, min_similarity: float = 90.0) -> list[tuple[int, LossyMatch]]:
        """Lossy entries holding `dialogue` (see `LossyMatch` for the rule)."""
        from rapidfuzz import fuzz

        user = _key(" ".join(t.content for t in dialogue.turns if t.role == "user"))
        assistant = _key(" ".join(t.content for t in dialogue.turns if t.role == "assistant"))
        ids = frozenset(i for t in dialogue.turns for i in t.item_ids)
        found = [(i, LossyMatch(dialogue, True))
                 for i in self.by_text.get(frozenset((user, assistant)), []) if self.ids[i] == ids]
        if found:
            return found
        best: tuple[float, int] | None = None
        for i in self.by_ids.get(ids, []):
            q, a = self.sides[i]
            # The entry's first speaker may be either role: try both orientations.
            score = max(min(fuzz.ratio(q, user), fuzz.ratio(a, assistant)),
                        min(fuzz.ratio(q, assistant), fuzz.ratio(a, user)))
            if score >= min_similarity and (best is None or score > best[0]):
                best = (score, i)
        return [] if best is None else [(best[1], LossyMatch(dialogue, False))]


def _match_all(index: _LossyIndex, dialogues: Sequence[Dialogue]) -> tuple[dict[int, LossyMatch], int]:
    matched: dict[int, LossyMatch] = {}
    unmatched = 0
    for d in dialogues:
        found = index.match(d)
        unmatched += not found
        matched.update(found)
    return matched, unmatched


def match_dialogues(entries: Sequence[dict[str, Any]], dialogues: Sequence[Dialogue],
                    movie_names: Mapping[str, str]) -> tuple[dict[int, LossyMatch], int]:
    """Find each dialogue among the lossy entries by text and mention set (exact, else fuzzy: see `LossyMatch`).

    Returns:
        ({entry index: match}, number of dialogues found in no entry).
    """
    return _match_all(_LossyIndex(entries, TitleResolver(movie_names)), dialogues)


def two_turn_dialogue(dialogue_id: str, entry: dict[str, Any], resolver: TitleResolver) -> Dialogue:
    """A lossy entry as stored by `lossy_dialogues`: the first speaker's messages as one turn labelled
    `FIRST_SPEAKER_ROLE`, then the other's (no second turn when there are no answers)."""
    other: Role = "user" if FIRST_SPEAKER_ROLE == "assistant" else "assistant"
    messages: list[tuple[Role, str, list[str]]] = []
    for role, key in ((FIRST_SPEAKER_ROLE, "questions"), (other, "answers")):
        messages += [(role, *resolver(text)) for text in entry[key]]
    return Dialogue(dialogue_id=dialogue_id, turns=merge_turns(messages))


def lossy_dialogues(path: Path, exclude: Sequence[Dialogue], movie_names: Mapping[str, str],
                    known: Sequence[Dialogue]) -> list[Dialogue]:
    """The lossy file's dialogues that no other input already has, leaving out held-out ones.

    Args:
        path: `precessed.json.zip`.
        exclude: Dialogues that must not leak (tune, dev and test); every entry matching one (by text and mention
            set) is dropped. Test dialogues are not in the (train) file, so they match nothing.
        movie_names: movieId -> "Title (Year)" (`read_movie_names`); an id missing here keeps the text
            `MISSING_TITLE` in `content` and is counted in the log.
        known: The train dialogues the caller has with their true order; their entries are not returned, so
            `known` + the result covers the file once, minus `exclude`.

    Returns:
        One dialogue per remaining entry, ids "lossy-<entry index>" (5 digits), in file order: the first speaker's
        messages as one turn labelled `FIRST_SPEAKER_ROLE`, then the other's (no turn when there are no answers).
        `@id`s become titles in `content`; `item_ids` list the ids. Only the mention sets are meaningful: turn
        order and roles are not restored (see the module docstring).

    Raises:
        DataError: The file cannot be read.

    Example:
        >>> names = read_movie_names("movies_with_mentions.csv")
        >>> extra = lossy_dialogues(Path("precessed.json.zip"), tune + dev, names, known=train)
        >>> len(train) + len(extra)  # 1,361 + 8,193: the file minus the 452 tune and dev dialogues
        9554
    """
    entries = load_lossy(path)
    resolver = TitleResolver(movie_names)
    index = _LossyIndex(entries, resolver)
    excluded, unmatched = _match_all(index, exclude)
    logger.info("lossy file: %d entries match excluded dialogues (%d fuzzy) and are dropped; %d of the %d excluded "
                "dialogues are not in the file (expected for test dialogues)", len(excluded),
                sum(not m.exact for m in excluded.values()), unmatched, len(exclude))
    matched, unmatched = _match_all(index, known)
    logger.info("lossy file: %d entries match known dialogues (%d fuzzy) and are skipped; %d of the %d known "
                "dialogues are not in the file", len(matched), sum(not m.exact for m in matched.values()), unmatched,
                len(known))
    resolver.missing.clear()  # count only the mentions of the returned dialogues below
    dialogues = [two_turn_dialogue(f"lossy-{i:05d}", entry, resolver) for i, entry in enumerate(entries)
                 if i not in excluded and i not in matched]
    if resolver.missing:
        logger.warning("lossy file: %d mentions of %d movie ids have no title in movie_names (shown as %r), "
                       "e.g. %s", sum(resolver.missing.values()), len(resolver.missing), MISSING_TITLE,
                       sorted(resolver.missing)[:5])
    logger.info("lossy file: %d dialogues kept (%d excluded, %d known)", len(dialogues), len(excluded),
                len(set(matched) - set(excluded)))
    return dialogues


# --- Order-free training examples (`train_retriever.lossy_pairs`) ---------------------------------------------------

# Phrases of a seeker ("I'm looking for", "I love") and of a recommender ("you might like", "have you seen"). Which
# speaker of a lossy dialogue is the seeker is not stored; the phrase counts (then, when they tie, who names more
# films of their own: the recommender) give the seeker right in 92.5 % of the 1,361 clean train dialogues, wrong in
# 6.0 %, undecided in 1.5 % (measured on their true roles; `seeker_turn`, tests/test_data_lossy.py).
_SEEKER_CUES = re.compile(
    r"\b(?:i'?m looking|i am looking|looking for|i like|i love|i enjoy|i really like|can you recommend|"
    r"could you recommend|any suggestions|recommend me|what do you (?:recommend|suggest)|i'?ve seen|i have seen|"
    r"i haven'?t seen|i have not seen|i'?ll check|i will check|i'?ll watch|i will watch|sounds good|i'?m into|"
    r"my favorite)\b", re.IGNORECASE)
_RECOMMENDER_CUES = re.compile(
    r"\b(?:you might like|you may like|you would like|you'?d like|have you seen|did you see|have you watched|"
    r"i recommend|i would recommend|i'?d recommend|i suggest|you should (?:watch|see|check)|what kind of|"
    r"what type of|what genre|what sort of|how about|what about|do you like)\b", re.IGNORECASE)


def _seeker_cues(text: str) -> int:
    return len(_SEEKER_CUES.findall(text)) - len(_RECOMMENDER_CUES.findall(text))


def _seeker_side(first: tuple[str, Sequence[str]], second: tuple[str, Sequence[str]]) -> int | None:
    """`seeker_turn`'s rule on two sides given as (all their text, all their item ids): 0, 1 or None."""
    margin = _seeker_cues(first[0]) - _seeker_cues(second[0])
    if margin:
        return 0 if margin > 0 else 1
    own_a, own_b = len(set(first[1]) - set(second[1])), len(set(second[1]) - set(first[1]))
    if own_a != own_b:  # the recommender names more films of their own
        return 0 if own_a < own_b else 1
    return None


def seeker_turn(dialogue: Dialogue) -> int | None:
    """Which of a lossy dialogue's two turns (one per speaker) is the seeker's, or None when nothing tells.

    Why a rule and not a model: it is right for 92.5 % of the clean train dialogues (see `_SEEKER_CUES`), enough for
    training pairs, where a wrong side costs one noisy pair, and it needs no training data of its own.

    Returns:
        0 or 1; None for a dialogue without two turns or where the cues and the named films both tie.
    """
    if len(dialogue.turns) != 2:
        return None
    a, b = dialogue.turns
    return _seeker_side((a.content, a.item_ids), (b.content, b.item_ids))


def _head(text: str, max_chars: int) -> str:
    """The first `max_chars` characters of `text`, cut at a word boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def lossy_examples(dialogues: Sequence[Dialogue], max_chars: int) -> tuple[list[RecExample], dict[str, int]]:
    """Order-free recommendation examples from lossy dialogues: what the seeker wrote -> what the recommender named.

    The turn order is lost, so no example can stop at the turn before a recommendation as `data` does for ordered
    dialogues. What is left is still a (preferences, recommendations) pair: the context is the seeker's messages
    (their beginning, where the wishes are stated, up to `max_chars`) and the targets are the films only the
    recommender names (those the seeker named too are context, not recommendations). Dialogues whose seeker
    `seeker_turn` cannot tell, or whose recommender names nothing new, give no example.

    Returns:
        (examples, counts: dialogues, undecided, without a new film, examples).
    """
    out: list[RecExample] = []
    undecided = empty = 0
    for d in dialogues:
        side = seeker_turn(d)
        if side is None:
            undecided += 1
            continue
        seeker, recommender = d.turns[side], d.turns[1 - side]
        named = set(seeker.item_ids)
        targets = [i for i in dict.fromkeys(recommender.item_ids) if i not in named]
        if not targets:
            empty += 1
            continue
        context = [Turn("user", _head(seeker.content, max_chars), list(seeker.item_ids))]
        out.append(RecExample(example_id=f"{d.dialogue_id}_0", dialogue_id=d.dialogue_id, context=context,
                              target_item_ids=targets, target_mentioned=[False] * len(targets)))
    counts = {"dialogues": len(dialogues), "undecided": undecided, "no_new_film": empty, "examples": len(out)}
    logger.info("lossy examples: %s", counts)
    return out, counts


# --- Interleaved examples (`train_retriever.lossy_pairs_from: interleaved`) -----------------------------------------

def interleave(n_first: int, n_second: int) -> list[int]:
    """A guessed speaking order of two speakers' messages: the side (0 = first speaker, 1 = the other) of each slot.

    Each side keeps its own order; the first speaker's message i is put at i / n_first of the dialogue and the
    other's message j at (j + 0.5) / n_second, so equal counts alternate strictly (0, 1, 0, 1, ...) and unequal
    counts spread the smaller side evenly (ReDial's workers often split one thought over several messages).

    Example:
        >>> interleave(2, 4)
        [0, 1, 1, 0, 1, 1]
    """
    slots = [(i / n_first, 0) for i in range(n_first)] + [((j + 0.5) / n_second, 1) for j in range(n_second)]
    return [side for _, side in sorted(slots)]


def interleaved_dialogue(dialogue_id: str, entry: dict[str, Any], resolver: TitleResolver) -> Dialogue | None:
    """One lossy entry as an ordered dialogue: roles from `seeker_turn`'s rule, the order guessed by `interleave`.

    Why: `lossy_examples` can only pair a seeker's whole side with the films recommended anywhere in the
    dialogue, reactions to those films included. With a guessed order, `build_examples` cuts the dialogue at each
    recommendation as it does an ordered one, so the anchor is (approximately) what was said before it, as at
    test time. How often the guess is right is measured on the clean train dialogues, whose true order is known
    (`benchmarks/lossy_order.py`).

    Returns:
        The dialogue (turns merged, `@id`s resolved to titles), or None when the entry has only one speaker or the
        rule cannot tell the seeker.
    """
    sides = [[resolver(text) for text in entry[key]] for key in ("questions", "answers")]
    if not sides[1]:
        return None
    seeker = _seeker_side(*[(" ".join(t for t, _ in side), [i for _, ids in side for i in ids]) for side in sides])
    if seeker is None:
        return None
    roles: tuple[Role, Role] = ("user", "assistant") if seeker == 0 else ("assistant", "user")
    position = [0, 0]
    messages: list[tuple[Role, str, list[str]]] = []
    for side in interleave(len(sides[0]), len(sides[1])):
        text, item_ids = sides[side][position[side]]
        position[side] += 1
        messages.append((roles[side], text, item_ids))
    return Dialogue(dialogue_id=dialogue_id, turns=merge_turns(messages))


def interleaved_dialogues(path: Path, movie_names: Mapping[str, str],
                          dialogue_ids: Sequence[str]) -> tuple[list[Dialogue], dict[str, int]]:
    """The lossy file's dialogues `dialogue_ids` ("lossy-<entry index>", as `lossy_dialogues` names them) with a
    guessed speaking order (`interleaved_dialogue`).

    The caller passes the ids the data stage kept (`data/lossy_dialogues.jsonl`): that stage already dropped the
    entries it matched to a held-out or a known dialogue, and this function only adds back the message boundaries
    it merged. The file must be the one that stage read (`reges.retrieval.train` checks its hash against the data
    manifest): the ids are positions in it.

    Returns:
        (dialogues, counts: dialogues asked for, "undecided" (one speaker only, or no seeker found), kept).

    Raises:
        DataError: The file cannot be read, or an id is not of the form "lossy-<index>" within the file.
    """
    entries = load_lossy(path)
    resolver = TitleResolver(movie_names)
    out: list[Dialogue] = []
    undecided = 0
    for dialogue_id in dialogue_ids:
        index = int(dialogue_id.removeprefix("lossy-")) if re.fullmatch(r"lossy-\d+", dialogue_id) else -1
        if not 0 <= index < len(entries):
            raise DataError(f"lossy dialogue id {dialogue_id!r} names no entry of {path} ({len(entries)} entries); "
                            "data/lossy_dialogues.jsonl was written from another file: rerun `reges data`")
        dialogue = interleaved_dialogue(dialogue_id, entries[index], resolver)
        if dialogue is None:
            undecided += 1
        else:
            out.append(dialogue)
    counts = {"dialogues": len(dialogue_ids), "undecided": undecided, "kept": len(out)}
    logger.info("interleaved lossy dialogues: %s", counts)
    return out, counts


def _seeker_text(example: RecExample) -> str:
    return _key(" ".join(t.content for t in example.context if t.role == "user"))


def context_agreement(true: Sequence[RecExample], guessed: Sequence[RecExample]) -> list[dict[str, float]]:
    """How well guessed examples reproduce the true ones: one row per (true example, fresh target).

    Row keys: found (the film is a guessed example's target at all; a role error makes it the seeker's), exact
    (the guessed context holds exactly the seeker text of the true one), kept (the share of the true context's
    seeker text the guess holds), future (the share of the guess's seeker text said after the recommendation, a
    leak of the seeker's reaction). `benchmarks/lossy_order.py` averages them over the clean train dialogues.

    A guessed example is matched by the film: the first guessed example whose targets hold it. The seeker's text is
    compared as strings: both contexts are a beginning of the same seeker's messages when the roles are right,
    so the shared beginning is what both hold.
    """
    first_guess: dict[str, RecExample] = {}
    for ex in guessed:
        for t in ex.target_item_ids:
            first_guess.setdefault(t, ex)
    rows = []
    for ex in true:
        truth = _seeker_text(ex)
        for target in ex.novel_target_ids():
            guess = first_guess.get(target)
            if guess is None:
                rows.append({"found": 0.0, "exact": 0.0, "kept": 0.0, "future": 0.0})
                continue
            text = _seeker_text(guess)
            shared = len(truth) if text.startswith(truth) else (len(text) if truth.startswith(text) else 0)
            rows.append({"found": 1.0, "exact": float(text == truth),
                         "kept": shared / len(truth) if truth else 1.0,
                         "future": (len(text) - shared) / len(text) if text else 0.0})
    return rows


def order_agreement(entries: Sequence[dict[str, Any]], matched: Mapping[int, LossyMatch],
                    movie_names: Mapping[str, str],
                    max_chars: int = 1000) -> tuple[dict[str, list[dict[str, float]]], int]:
    """`context_agreement` of both kinds of lossy examples with the true examples of known dialogues.

    Args:
        entries: The lossy file (`load_lossy`).
        matched: Known (true-order) dialogues by their entry (`match_dialogues`).
        movie_names: To resolve the entries' `@id`s.
        max_chars: The order-free examples' seeker text cap (`lossy_examples`).

    Returns:
        ({"interleaved": rows, "seeker_side": rows}, how many entries the seeker rule cannot tell): each entry is
        rebuilt exactly as an unknown one would be, by `interleaved_dialogue` and by `lossy_examples`.
    """
    resolver = TitleResolver(movie_names)
    order_free: dict[str, list[RecExample]] = {}
    for ex in lossy_examples([two_turn_dialogue(f"lossy-{i:05d}", entries[i], resolver) for i in sorted(matched)],
                             max_chars)[0]:
        order_free.setdefault(ex.dialogue_id, []).append(ex)
    rows: dict[str, list[dict[str, float]]] = {"interleaved": [], "seeker_side": []}
    undecided = 0
    for index, match in sorted(matched.items()):
        true = build_examples(match.dialogue, {})
        guessed = interleaved_dialogue(f"lossy-{index:05d}", entries[index], resolver)
        undecided += guessed is None
        rows["interleaved"] += context_agreement(true, build_examples(guessed, {}) if guessed else [])
        rows["seeker_side"] += context_agreement(true, order_free.get(f"lossy-{index:05d}", []))
    return rows, undecided
