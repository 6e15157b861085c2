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
3. tells the seeker's side of a returned dialogue by a phrase rule (`seeker_turn`) for the training pairs.

The returned dialogues do not restore turn order or roles: each has at most two turns, the first speaker's
messages (labelled "assistant": the recommender opens 62.7 % of the known dialogues) and then the other's. Read
only their item sets. A learned reconstruction (roles right for 96.5 % of dialogues, 47.1 % of messages at their
true position) lived here, with its study in `benchmarks/lossy_reconstruction.py` and
`docs/results/lossy_reconstruction.md`; no consumer used it, so all three were removed on 2026-12-06 (commit 1ecc0b1
is the last one that has them).
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

from reges.data import merge_turns
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


class _Resolver:
    """Replaces `@id` with "Title (Year)" from `movie_names`, counting ids it cannot resolve."""

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

    def __init__(self, entries: Sequence[dict[str, Any]], resolver: _Resolver) -> None:
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
    return _match_all(_LossyIndex(entries, _Resolver(movie_names)), dialogues)


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
    resolver = _Resolver(movie_names)
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
    other: Role = "user" if FIRST_SPEAKER_ROLE == "assistant" else "assistant"
    dialogues = []
    for i, entry in enumerate(entries):
        if i in excluded or i in matched:
            continue
        messages: list[tuple[Role, str, list[str]]] = []
        for role, key in ((FIRST_SPEAKER_ROLE, "questions"), (other, "answers")):
            messages += [(role, *resolver(text)) for text in entry[key]]
        dialogues.append(Dialogue(dialogue_id=f"lossy-{i:05d}", turns=merge_turns(messages)))
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
    margin = _seeker_cues(a.content) - _seeker_cues(b.content)
    if margin:
        return 0 if margin > 0 else 1
    own_a, own_b = len(set(a.item_ids) - set(b.item_ids)), len(set(b.item_ids) - set(a.item_ids))
    if own_a != own_b:  # the recommender names more films of their own
        return 0 if own_a < own_b else 1
    return None


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
