"""ReDial's lossy 10,006-dialogue train file: read it, restore roles and turn order, exclude held-out dialogues.

The complete ReDial train file is not available; `precessed.json.zip` (MarkystarkDotCO/Redial-QA-System) holds
all 10,006 train dialogues as {context, questions, answers}, with the interleaving of the two speakers lost.
Checked against the 1,813 train dialogues whose order is known (KGSF valid, iEvaLM valid), all of which are in
the file with the same text and the same `@id` mentions:

- `questions` are the messages of whoever spoke *first* and `answers` those of the other worker, one entry per
  chat message (not per merged turn), each list in its true order. The first speaker is the seeker in only 37 %
  of dialogues, so reading `questions` as the seeker is wrong most of the time.
- `context` holds only the "liked" form labels ("For X respondent like it initiator like it, ..."): nothing
  about who mentioned or suggested what, so it is not used.

Reconstruction has two parts, both fitted on dialogues whose order is known:

1. **Roles.** A logistic regression on the difference between the two sides' features (relative frequencies
   of unigrams and bigrams, mention and question rates, message count and length, who spoke first, the opening
   words) gives P(first speaker is the seeker).
2. **Order.** Choosing the interleaving is choosing a monotone path through the (questions x answers) lattice
   that starts with `questions[0]`. After each message the next one is either the same speaker's next message
   or the other speaker's; a logistic regression scores "the other speaker comes next" from the previous
   message and the two candidates (a question mark, the opening and closing words, lengths, lowercase
   continuations, mentions of an item the other side just named or introduced, how far each side has
   progressed, the current run length). Viterbi over states (questions used, answers used, last speaker,
   run length capped at 4) returns the most probable path. Consecutive messages of one speaker are then merged
   into turns with `reges.data.merge_turns`, as the loaders do.

Measured by `benchmarks/lossy_reconstruction.py` (5-fold cross-validation over the 1,813 known dialogues; see
docs/results/lossy_reconstruction.md): roles 96.5 % right (37.3 % for "questions = seeker", 62.7 % for "the
first speaker recommends"); 47.1 % of messages at exactly their true position and 91.9 % of cross-speaker
message pairs in the right order (strict alternation: 32.4 % and 87.0 %); only 2.3 % of dialogues exactly right.
For recommender messages that mention items, the set of items mentioned before their turn equals the true set
in 67.8 % of cases (strict alternation, even with the true roles: 63.1 %); `target_mentioned` agrees for 93.7 %
of targets, 82.6 % of the truly repeated ones. Mention sets per dialogue are exact. Inherent ambiguity caps
this: 22 % of speaker switches in KGSF come less than 5 s after the previous message, i.e. while both workers
were typing. Sentence-embedding similarity features and global (structured-perceptron) training did not help.

So the reconstructed dialogues are fine for order-free statistics (co-mentions, item popularity) and usable,
with care, as noisy extra training data; evaluation must use dialogues with their true order only.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reges.data import merge_turns
from reges.errors import DataError
from reges.records import Dialogue, Role, Turn
from reges.titles import normalize_title

logger = logging.getLogger(__name__)

MEMBER = "precessed.json"
"""The member of the zip that holds the dialogues."""
MISSING_TITLE = "a movie"
"""Stands in for the title of an `@id` that `movie_names` lacks (the id stays in `Turn.item_ids`)."""
RUN_CAP = 4
"""Run lengths (consecutive messages of one speaker) above this share one state and one weight."""
MIN_KNOWN = 10
"""Fewest dialogues of known order `fit_order_model` accepts: fewer cannot fit two logistic regressions."""

_MENTION = re.compile(r"@(\d+)")
_TOKEN = re.compile(r"@\d+|[a-z0-9']+|[^\w\s]")
_NON_ALNUM = re.compile(r"[\W_]+")
_LENGTH_EDGES = (0, 1, 2, 3, 6, 11, 21)


@dataclass(frozen=True)
class KnownOrder:
    """A lossy dialogue whose true interleaving is known, the training and evaluation unit.

    Attributes:
        questions: The first speaker's messages, in order (as in the lossy file).
        answers: The other speaker's messages, in order.
        sides: For each message in true dialogue order, 0 if it is the next of `questions`, 1 if of `answers`.
        first_role: The first speaker's role ("user" = seeker, "assistant" = recommender).
    """

    questions: list[str]
    answers: list[str]
    sides: list[int]
    first_role: Role


@dataclass
class OrderModel:
    """The two fitted scorers of the reconstruction; plain floats, so it saves as JSON (`to_dict`).

    Attributes:
        order_weights: Feature name -> weight of "the other speaker speaks next" (logit), run lengths included
            as "run=1".."run=4".
        order_bias: Intercept of that logit.
        role_weights: Feature name -> weight of "the first speaker is the seeker" on side-difference features.
        fitted_on: Number of dialogues of known order it was fitted on.
    """

    order_weights: dict[str, float]
    order_bias: float
    role_weights: dict[str, float]
    fitted_on: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"order_weights": self.order_weights, "order_bias": self.order_bias,
                "role_weights": self.role_weights, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrderModel:
        return cls(order_weights={str(k): float(v) for k, v in d["order_weights"].items()},
                   order_bias=float(d["order_bias"]),
                   role_weights={str(k): float(v) for k, v in d["role_weights"].items()},
                   fitted_on=int(d.get("fitted_on", 0)))


# ---------------------------------------------------------------------------------------------------------------
# Reading the file


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


# ---------------------------------------------------------------------------------------------------------------
# Features


def _clean(text: str) -> str:
    """Undo the file's HTML escapes (&quot; &amp; &gt;) and collapse whitespace, as the ReDial loader does."""
    return " ".join(html.unescape(text).split())


def _bucket(n: int) -> int:
    return sum(1 for edge in _LENGTH_EDGES[1:] if n >= edge)


@dataclass
class _Message:
    """What the scorers read of one message, computed once."""

    text: str
    tokens: list[str] = field(init=False)
    ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.text = _clean(self.text)
        self.tokens = ["@movie" if t.startswith("@") else t for t in _TOKEN.findall(self.text.lower())]
        self.ids = frozenset(_MENTION.findall(self.text))


def _id_prefixes(messages: list[_Message]) -> list[frozenset[str]]:
    """prefix[k] = ids mentioned in messages[:k]."""
    out = [frozenset()]
    for m in messages:
        out.append(out[-1] | m.ids)
    return out


def _id_suffixes(messages: list[_Message]) -> list[frozenset[str]]:
    """suffix[k] = ids mentioned in messages[k:]."""
    out = [frozenset()]
    for m in reversed(messages):
        out.append(out[-1] | m.ids)
    return out[::-1]


class _Lattice:
    """Both sides of one dialogue with the id sets the order features need."""

    def __init__(self, questions: Sequence[str], answers: Sequence[str]) -> None:
        self.sides = ([_Message(t) for t in questions], [_Message(t) for t in answers])
        self.seen = tuple(_id_prefixes(s) for s in self.sides)
        self.later = tuple(_id_suffixes(s) for s in self.sides)

    def features(self, used: tuple[int, int], last: int) -> dict[str, float]:
        """Features of the decision after `used` = (questions, answers) messages, `last` the side that spoke last.

        Both sides must have a message left; the decision is whether the other side's next message (O) comes
        before the same side's next (S). P is the message just said.
        """
        other = 1 - last
        own_used, other_used = used[last], used[other]
        own_msgs, other_msgs = self.sides[last], self.sides[other]
        p, s, o = own_msgs[own_used - 1], own_msgs[own_used], other_msgs[other_used]
        own_seen, other_seen = self.seen[last][own_used], self.seen[other][other_used]
        anyone_seen = own_seen | other_seen
        progress = own_used / len(own_msgs) - other_used / len(other_msgs)
        f: dict[str, float] = {
            "prev_question": float("?" in p.text), f"prev_end={p.text[-1:]}": 1.0,
            "same_question": float("?" in s.text), "other_question": float("?" in o.text),
            f"prev_len={_bucket(len(p.tokens))}": 1.0, f"same_len={_bucket(len(s.tokens))}": 1.0,
            f"other_len={_bucket(len(o.tokens))}": 1.0,
            "same_lower": float(s.text[:1].islower()), "other_lower": float(o.text[:1].islower()),
            # The lattice path tends to keep both sides' progress in step: the strongest single feature.
            "progress": progress, f"progress_bin={int((progress + 1) * 5)}": 1.0,
            "other_not_started": float(other_used == 0), "opening": float(used[0] + used[1] == 1),
            "prev_mention": float(bool(p.ids)),
            "other_repeats_prev": float(bool(o.ids & p.ids)), "same_repeats_prev": float(bool(s.ids & p.ids)),
            # A reaction names an item the other side introduced ("I loved @id").
            "other_reacts": float(bool(o.ids & (own_seen - other_seen))),
            "same_reacts": float(bool(s.ids & (other_seen - own_seen))),
            "other_new": float(bool(o.ids - anyone_seen)), "same_new": float(bool(s.ids - anyone_seen)),
            # Naming an item before the side that introduces it later would be odd for a reaction.
            "other_early": float(bool((o.ids - anyone_seen) & self.later[last][own_used + 1])),
            "same_early": float(bool((s.ids - anyone_seen) & self.later[other][other_used + 1])),
        }
        if p.tokens:
            f[f"prev_last={p.tokens[-1]}"] = 1.0
            f[f"prev_first={p.tokens[0]}"] = 1.0
            f[f"prev_last2={' '.join(p.tokens[-2:])}"] = 1.0
        if s.tokens:
            f[f"same_first={s.tokens[0]}"] = 1.0
            f[f"same_first2={' '.join(s.tokens[:2])}"] = 1.0
        if o.tokens:
            f[f"other_first={o.tokens[0]}"] = 1.0
            f[f"other_first2={' '.join(o.tokens[:2])}"] = 1.0
        return f


def _side_profile(messages: list[_Message], spoke_first: bool) -> dict[str, float]:
    n = max(len(messages), 1)
    counts: Counter[str] = Counter()
    for m in messages:
        counts.update(f"w={t}" for t in set(m.tokens))
        counts.update(f"b={a} {b}" for a, b in set(zip(m.tokens, m.tokens[1:], strict=False)))
    f = {k: v / n for k, v in counts.items()}
    f["mentions"] = sum(len(m.ids) for m in messages) / n
    f["questions"] = sum("?" in m.text for m in messages) / n
    f["log_messages"] = math.log1p(len(messages))
    f["words"] = sum(len(m.tokens) for m in messages) / n
    f["spoke_first"] = float(spoke_first)
    if messages:
        f.update({f"opening={t}": 1.0 for t in messages[0].tokens[:4]})
    return f


def _role_features(lattice: _Lattice) -> dict[str, float]:
    """Side-difference features: first speaker's profile minus the other's (flip the sign to swap sides)."""
    a, b = _side_profile(lattice.sides[0], True), _side_profile(lattice.sides[1], False)
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a.keys() | b.keys()}


def _order_rows(lattice: _Lattice, sides: Sequence[int]) -> tuple[list[dict[str, float]], list[int]]:
    """The decisions along the true path: (features + run length, 1 if the speaker switched)."""
    rows, labels = [], []
    used, last, run = [1, 0], 0, 1
    n = (len(lattice.sides[0]), len(lattice.sides[1]))
    for side in sides[1:]:
        if used[0] < n[0] and used[1] < n[1]:
            f = lattice.features((used[0], used[1]), last)
            f[f"run={min(run, RUN_CAP)}"] = 1.0
            rows.append(f)
            labels.append(int(side != last))
        run = run + 1 if side == last else 1
        last = side
        used[side] += 1
    return rows, labels


# ---------------------------------------------------------------------------------------------------------------
# Fitting and decoding


def fit_order_model(known: Sequence[KnownOrder], order_c: float = 1.0, role_c: float = 3.0) -> OrderModel:
    """Fit the role and order scorers on dialogues whose true interleaving is known.

    Args:
        known: At least `MIN_KNOWN` dialogues (e.g. from `known_orders`).
        order_c: Inverse L2 strength of the order logistic regression (1.0 was best of 0.3/1/3 in the
            benchmark's cross-validation, but the differences were under one point).
        role_c: Inverse L2 strength of the role logistic regression (3.0 was best of 0.3/1/3/10).

    Returns:
        The fitted model.

    Raises:
        DataError: Too few dialogues, or their messages never leave a choice to learn from.
    """
    # scikit-learn comes with sentence-transformers; imported here so reading the file does not need it.
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(known) < MIN_KNOWN:
        raise DataError(f"the turn-order model needs at least {MIN_KNOWN} lossy dialogues of known order, got "
                        f"{len(known)}; pass the train dialogues (KGSF/iEvaLM valid) as `known`")
    order_rows: list[dict[str, float]] = []
    order_labels: list[int] = []
    role_rows: list[dict[str, float]] = []
    role_labels: list[int] = []
    for k in known:
        if (len(k.sides) != len(k.questions) + len(k.answers) or k.sides.count(1) != len(k.answers)
                or (k.sides and k.sides[0] != 0)):
            raise DataError(f"KnownOrder sides {k.sides} do not fit {len(k.questions)} questions and "
                            f"{len(k.answers)} answers starting with questions[0]")
        lattice = _Lattice(k.questions, k.answers)
        rows, labels = _order_rows(lattice, k.sides)
        order_rows += rows
        order_labels += labels
        # Each dialogue is used in both orientations so the role model has no side bias but "spoke_first".
        features = _role_features(lattice)
        is_user = int(k.first_role == "user")
        role_rows += [features, {name: -v for name, v in features.items()}]
        role_labels += [is_user, 1 - is_user]
    if len(set(order_labels)) < 2 or len(set(role_labels)) < 2:
        raise DataError(f"the {len(known)} dialogues of known order give no contrast to learn the turn order "
                        "from; pass more (or longer) dialogues as `known`")

    vectorizer = DictVectorizer()
    order_lr = LogisticRegression(C=order_c, max_iter=3000).fit(vectorizer.fit_transform(order_rows), order_labels)
    order_weights = {name: float(w) for name, w in zip(vectorizer.feature_names_, order_lr.coef_[0], strict=True) if w}
    vectorizer = DictVectorizer()
    role_lr = LogisticRegression(C=role_c, max_iter=3000, fit_intercept=False)
    role_lr.fit(vectorizer.fit_transform(role_rows), role_labels)
    role_weights = {name: float(w) for name, w in zip(vectorizer.feature_names_, role_lr.coef_[0], strict=True) if w}
    logger.info("turn-order model fitted on %d dialogues (%d order decisions)", len(known), len(order_labels))
    return OrderModel(order_weights=order_weights, order_bias=float(order_lr.intercept_[0]),
                      role_weights=role_weights, fitted_on=len(known))


def _dot(weights: Mapping[str, float], features: Mapping[str, float]) -> float:
    return sum(weights.get(name, 0.0) * value for name, value in features.items())


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _role(lattice: _Lattice, model: OrderModel) -> tuple[Role, float]:
    p_user = math.exp(_log_sigmoid(_dot(model.role_weights, _role_features(lattice))))
    return ("user" if p_user >= 0.5 else "assistant"), p_user


def first_speaker_role(questions: Sequence[str], answers: Sequence[str], model: OrderModel) -> tuple[Role, float]:
    """Who the first speaker (the `questions` side) is.

    Returns:
        ("user" or "assistant", P(first speaker is the seeker)).
    """
    return _role(_Lattice(questions, answers), model)


def _interleave(lattice: _Lattice, model: OrderModel) -> list[int]:
    n, m = len(lattice.sides[0]), len(lattice.sides[1])
    run_weight = [0.0] + [model.order_weights.get(f"run={r}", 0.0) for r in range(1, RUN_CAP + 1)]
    # best[(q, a, last, run)] = (log-probability, previous state); the first message is questions[0].
    best: dict[tuple[int, int, int, int], tuple[float, tuple[int, int, int, int] | None]] = {(1, 0, 0, 1): (0.0, None)}
    for total in range(1, n + m):
        for q in range(max(1, total - m), min(n, total) + 1):
            a = total - q
            logits: dict[int, float] = {}
            for last in (0, 1):
                for run in range(1, RUN_CAP + 1):
                    state = (q, a, last, run)
                    if state not in best:
                        continue
                    score = best[state][0]
                    if q < n and a < m:
                        if last not in logits:
                            logits[last] = model.order_bias + _dot(model.order_weights,
                                                                   lattice.features((q, a), last))
                        x = logits[last] + run_weight[run]
                        moves = ((1 - last, _log_sigmoid(x)), (last, _log_sigmoid(-x)))
                    else:  # one side is exhausted: the other must speak
                        moves = ((0 if q < n else 1, 0.0),)
                    for side, logp in moves:
                        nxt = (q + (side == 0), a + (side == 1), side, min(run + 1, RUN_CAP) if side == last else 1)
                        if nxt not in best or score + logp > best[nxt][0]:
                            best[nxt] = (score + logp, state)
    finals = [(v[0], s) for s, v in best.items() if s[0] == n and s[1] == m]
    state: tuple[int, int, int, int] | None = max(finals)[1]
    sides: list[int] = []
    while state is not None:
        sides.append(state[2])
        state = best[state][1]
    return sides[::-1]


def interleave(questions: Sequence[str], answers: Sequence[str], model: OrderModel) -> list[int]:
    """The most probable merge of the two message lists (Viterbi over the lattice, see the module docstring).

    Returns:
        For each message in the reconstructed order, 0 for the next of `questions`, 1 for the next of `answers`;
        it starts with 0 because `questions` holds the first speaker's messages.
    """
    return _interleave(_lattice(questions, answers), model)


def _lattice(questions: Sequence[str], answers: Sequence[str]) -> _Lattice:
    if not questions:
        raise DataError("questions is empty; the lossy file puts the first speaker's messages there")
    return _Lattice(questions, answers)


def _reconstruct_order(questions: Sequence[str], answers: Sequence[str], model: OrderModel) -> tuple[list[int], Role]:
    lattice = _lattice(questions, answers)
    return _interleave(lattice, model), _role(lattice, model)[0]


def _assemble(questions: Sequence[str], answers: Sequence[str], sides: Sequence[int], first_role: Role,
              resolve: Callable[[str], tuple[str, list[str]]] | None = None) -> list[Turn]:
    """Messages in `sides` order, roles assigned, `@id`s resolved by `resolve(text) -> (text, ids)`, merged."""
    roles: tuple[Role, Role] = (first_role, "assistant" if first_role == "user" else "user")
    lists = (questions, answers)
    used = [0, 0]
    messages: list[tuple[Role, str, list[str]]] = []
    for side in sides:
        text = _clean(lists[side][used[side]])
        used[side] += 1
        if resolve is None:
            item_ids = list(dict.fromkeys(_MENTION.findall(text)))
        else:
            text, item_ids = resolve(text)
        messages.append((roles[side], text, item_ids))
    return merge_turns(messages)


def reconstruct(questions: list[str], answers: list[str], model: OrderModel) -> list[Turn]:
    """Restore one lossy dialogue: roles from the role scorer, order from `interleave`, messages merged into turns.

    Args:
        questions: The first speaker's messages, in order (the lossy file's `questions`).
        answers: The other speaker's messages, in order.
        model: From `fit_order_model`.

    Returns:
        Merged turns; `content` keeps the `@id` mentions (HTML escapes undone, whitespace collapsed) and
        `item_ids` lists them in order of first mention. `lossy_dialogues` resolves them to titles.

    Example:
        >>> turns = reconstruct(["Hi! Any comedies?", "I loved @123"], ["Hello! Try @123"], model)
        >>> [t.role for t in turns]
        ['user', 'assistant', 'user']
    """
    sides, role = _reconstruct_order(questions, answers, model)
    return _assemble(questions, answers, sides, role)


def alternate(n_questions: int, n_answers: int) -> list[int]:
    """Baseline order: strict alternation, starting with the first speaker, the longer side's rest at the end."""
    return [side for k in range(max(n_questions, n_answers))
            for side, n in ((0, n_questions), (1, n_answers)) if k < n]


def concatenate(n_questions: int, n_answers: int) -> list[int]:
    """Baseline order: all of the first speaker's messages, then all of the other's."""
    return [0] * n_questions + [1] * n_answers


# ---------------------------------------------------------------------------------------------------------------
# Matching lossy entries to dialogues of known order


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
        first_role: The role of the entry's `questions` side (the first speaker).
        exact: Whether the text matched exactly.
    """

    dialogue: Dialogue
    first_role: Role
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
        found = [(i, LossyMatch(dialogue, "user" if self.sides[i][0] == user else "assistant", True))
                 for i in self.by_text.get(frozenset((user, assistant)), []) if self.ids[i] == ids]
        if found:
            return found
        best: tuple[float, int, Role] | None = None
        for i in self.by_ids.get(ids, []):
            q, a = self.sides[i]
            for score, role in ((min(fuzz.ratio(q, user), fuzz.ratio(a, assistant)), "user"),
                                (min(fuzz.ratio(q, assistant), fuzz.ratio(a, user)), "assistant")):
                if score >= min_similarity and (best is None or score > best[0]):
                    best = (score, i, role)
        return [] if best is None else [(best[1], LossyMatch(dialogue, best[2], False))]


def _split_by_length(lengths: Sequence[int], targets: Sequence[int]) -> list[int] | None:
    """Cut `lengths` (message text lengths) into len(targets) consecutive non-empty groups whose total lengths
    are closest to `targets` (the turn lengths), by dynamic programming over the cut points.

    Returns:
        The group index of each message, or None when there are fewer messages than turns.
    """
    n, k = len(lengths), len(targets)
    if k == 0 or n < k:
        return None if n or k else []
    cum = [0]
    for x in lengths:
        cum.append(cum[-1] + x)
    goal = [0]
    for x in targets:
        goal.append(goal[-1] + x)
    inf = float("inf")
    # cost[g][b]: best cost with the first g groups ending after message b.
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for g in range(1, k + 1):
        for b in range(g, n - (k - g) + 1):
            for prev in range(g - 1, b):
                c = cost[g - 1][prev] + abs(cum[b] - goal[g])
                # On ties the later cut wins: an empty or emoji-only message (length 0) usually trails its
                # speaker's turn rather than opening the next one (checked on the KGSF raw order).
                if c <= cost[g][b]:
                    cost[g][b], back[g][b] = c, prev
    groups = [0] * n
    b = n
    for g in range(k, 0, -1):
        prev = back[g][b]
        for i in range(prev, b):
            groups[i] = g - 1
        b = prev
    return groups


def known_order(entry: dict[str, Any], dialogue: Dialogue, first_role: Role,
                movie_names: Mapping[str, str]) -> KnownOrder | None:
    """Recover the true message order of a lossy entry from the same dialogue with merged turns.

    Each speaker's turns in `dialogue` are consecutive runs of that speaker's lossy messages; the cut points are
    found by text length (titles resolved the same way on both sides), then the turns give the interleaving.

    Args:
        entry: The lossy entry.
        dialogue: The same dialogue with its true turn order (from the ReDial loader).
        first_role: The role of the entry's `questions` side.
        movie_names: id -> title, to resolve `@id`s the way the loader did.

    Returns:
        The known order, or None when the turns cannot be laid over the messages (a speaker has more turns
        than messages, or the dialogue does not start with the first speaker).
    """
    if not dialogue.turns or dialogue.turns[0].role != first_role:
        return None
    resolver = _Resolver(movie_names)
    lists = (entry["questions"], entry["answers"])
    roles: tuple[Role, Role] = (first_role, "assistant" if first_role == "user" else "user")
    groups_per_side = []
    for side in (0, 1):
        lengths = [len(_key(resolver(t)[0])) for t in lists[side]]
        targets = [len(_key(t.content)) for t in dialogue.turns if t.role == roles[side]]
        groups = _split_by_length(lengths, targets)
        if groups is None:
            return None
        groups_per_side.append(groups)
    sides: list[int] = []
    turn_index = [0, 0]
    for turn in dialogue.turns:
        side = roles.index(turn.role)
        sides += [side] * groups_per_side[side].count(turn_index[side])
        turn_index[side] += 1
    return KnownOrder(questions=list(entry["questions"]), answers=list(entry["answers"]), sides=sides,
                      first_role=first_role)


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


def known_orders(entries: Sequence[dict[str, Any]], matched: Mapping[int, LossyMatch],
                 movie_names: Mapping[str, str]) -> dict[int, KnownOrder]:
    """The true message order of each matched entry (`known_order`); entries that cannot be aligned are left out.

    Returns:
        {entry index: KnownOrder}.
    """
    out: dict[int, KnownOrder] = {}
    for i, m in matched.items():
        k = known_order(entries[i], m.dialogue, m.first_role, movie_names)
        if k is not None:
            out[i] = k
    if len(out) < len(matched):
        logger.warning("%d of %d matched dialogues could not be aligned with their lossy messages; not used",
                       len(matched) - len(out), len(matched))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def lossy_dialogues(path: Path, exclude: list[Dialogue], movie_names: dict[str, str], known: Sequence[Dialogue],
                    show_progress: bool = False) -> list[Dialogue]:
    """Reconstruct the lossy file's dialogues that no other input already has, leaving out held-out ones.

    The order and role scorers are fitted on the lossy copies of `known` (dialogues of known order, e.g. the
    train split of KGSF/iEvaLM valid), then every entry that matches neither `known` nor `exclude` is
    reconstructed (see the module docstring for the method and its accuracy).

    Args:
        path: `precessed.json.zip`.
        exclude: Dialogues that must not leak (dev and test); every entry matching one (by text and mention
            set) is dropped. Test dialogues are not in the (train) file, so they match nothing.
        movie_names: movieId -> "Title (Year)" (`read_movie_names`); an id missing here keeps the text
            `MISSING_TITLE` in `content` and is counted in the log.
        known: Dialogues with their true order; they train the scorers and their entries are not returned
            (the caller has them already), so `known` + the result covers the file once, minus `exclude`.
        show_progress: Show a tqdm bar over the entries.

    Returns:
        Reconstructed dialogues with ids "lossy-<entry index>" (5 digits), in file order.

    Raises:
        DataError: The file cannot be read, or too few of `known` are in it to fit the scorers.

    Example:
        >>> names = read_movie_names("movies_with_mentions.csv")
        >>> extra = lossy_dialogues(Path("precessed.json.zip"), dev + test, names, known=train)
        >>> len(train) + len(extra)  # 1,522 + 8,193: the file minus the 291 dev dialogues (data.dev_fraction=0.16)
        9715
    """
    entries = load_lossy(path)
    index = _LossyIndex(entries, _Resolver(movie_names))
    excluded, unmatched = _match_all(index, exclude)
    logger.info("lossy file: %d entries match excluded dialogues (%d fuzzy) and are dropped; %d of the %d excluded "
                "dialogues are not in the file (expected for test dialogues)", len(excluded),
                sum(not m.exact for m in excluded.values()), unmatched, len(exclude))
    matched, unmatched = _match_all(index, known)
    logger.info("lossy file: %d entries match known dialogues (%d fuzzy); %d of the %d known dialogues are not in "
                "the file", len(matched), sum(not m.exact for m in matched.values()), unmatched, len(known))
    training = known_orders(entries, matched, movie_names)
    leaked = sorted(set(training) & set(excluded))
    if leaked:
        logger.warning("%d known dialogues are also excluded (entries %s...); they are not used for fitting",
                       len(leaked), leaked[:3])
    model = fit_order_model([k for i, k in sorted(training.items()) if i not in excluded])
    resolver = _Resolver(movie_names)
    dialogues = []
    for index, entry in enumerate(tqdm(entries, desc="lossy", disable=not show_progress)):
        if index in excluded or index in training:
            continue
        questions, answers = entry["questions"], entry["answers"]
        sides, role = _reconstruct_order(questions, answers, model)
        dialogues.append(Dialogue(dialogue_id=f"lossy-{index:05d}",
                                  turns=_assemble(questions, answers, sides, role, resolver)))
    if resolver.missing:
        logger.warning("lossy file: %d mentions of %d movie ids have no title in movie_names (shown as %r), "
                       "e.g. %s", sum(resolver.missing.values()), len(resolver.missing), MISSING_TITLE,
                       sorted(resolver.missing)[:5])
    logger.info("lossy file: %d dialogues reconstructed (%d excluded, %d known, %d known but unalignable)",
                len(dialogues), len(excluded), len(training), len(set(matched) - set(training) - set(excluded)))
    return dialogues
