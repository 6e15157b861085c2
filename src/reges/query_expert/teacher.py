"""Teachers that write pseudo-queries for the Query Expert, and the grounding filter every candidate goes through.

Why grounding (measured in the Query Expert issue): a teacher that writes queries from the true item's director,
stars and plot retrieves it with R@50 0.79, but a small student trained to imitate it learns the shape and invents
the names ("Michael Cera" in 270 of 854 queries), because those facts are not in the dialogue. So a teacher here
may use the true item only to *choose and phrase* what the dialogue supports, never to add to it:

- `dialogue_vocabulary` is what a query may say: the words of the dialogue, the titles of the items it mentions,
  and the genre words a small synonym map derives from them ("scary" grounds "horror").
- `ground_query` removes from a candidate every content word outside that vocabulary and every occurrence of a
  true item's title (a leak), and reports both, so the `distill` stage can count them.

Two teachers implement the `Teacher` shape:

- `GroundedTeacher` (offline, the default): extracts facets from the dialogue (genres, reference titles the user did
  not dislike, people from the catalog's people fields, preference phrases, era/audience constraints), orders them
  by the true item's card (overlapping genres/people/plot words first, reference titles by embedding similarity to
  the true item) and assembles `num_queries` different short queries. Pure Python: thousands of examples a minute.
- `LLMTeacher`: any `reges.llm` backend (a large model behind an OpenAI-compatible URL in the paper's setting) is
  shown the dialogue and the true item's card without its title and samples `num_queries` queries.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from reges.errors import ConfigError, DataError
from reges.genres import GENRE_SYNONYMS
from reges.llm.base import LLM
from reges.query_expert.prompts import teacher_prompt
from reges.records import Item, RecExample, Turn
from reges.titles import split_year, strip_accents, title_key

logger = logging.getLogger(__name__)


class Teacher(Protocol):
    """Writes candidate pseudo-queries for recommendation examples.

    `write` returns, for each example in order, its candidate queries (best first in the teacher's own view; the
    `distill` stage re-orders them by retrieval feedback). Candidates may be empty strings or repeat; they are
    filtered and de-duplicated by the caller.
    """

    def write(self, examples: Sequence[RecExample], items: dict[str, Item]) -> list[list[str]]: ...


# ----------------------------------------------------------------------------------------------------------------
# Words

# Function words: never content, always allowed in a query.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each either else ever every few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just let me more most much must
    my myself neither no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too under until
    up upon us very was we were what when where which while who whom whose why will with within without would you
    your yours yourself yourselves s t d ll m re ve don doesn didn isn wasn aren weren won wouldn couldn shouldn
    haven hasn hadn ain""".split()
)

# Conversation words that carry no preference: left out of preference phrases (they are still grounded when used).
CHITCHAT = frozenset(
    """hi hello hey hiya howdy thanks thank thx ty yes yeah yep yup yea no nope nah ok okay sure great good cool
    awesome nice fine fun well lol haha wow oh ah um hmm bye goodbye welcome please sorry like liked likes love
    loved loves enjoy enjoyed enjoys enjoying watch watched watching watches seen see saw seeing movie movies
    film films flick flicks show shows book books item items recommend recommended recommendation
    recommendations suggest suggested suggestion suggestions heard hear know knew think thought really
    definitely probably maybe actually also lot lots one ones something anything everything nothing thing things
    kind kinds type types sort sorts looking look looks want wanted wants wanna need interested interest
    favorite favourite favorites fan fans day today tonight weekend time times check try tried sounds sound
    sounding pretty quite little bit much many more most last next first get got go going gone give gave make
    made take took come came say said tell told again ever never always still already yet though even just whats
    thats im ive id dont didnt doesnt havent hasnt isnt wasnt cant wont couldnt wouldnt youre youve theyre
    theres heres lets gonna gotta kinda sorta ill glad happy help hope hoping idea ideas chat chatting talk
    talking talked mean means recently right exactly totally absolutely agree read reading guess reason head
    best better worse seem seems seemed tough filled played play plays likewise familiar open morning afternoon
    evening directed original bet remember mood wonderful amazing excellent fantastic perfect terrific super
    stuff whatever anyway honestly seriously literally basically certainly especially usually lately currently
    someone somebody anyone anybody everyone everybody people person guy guys genre genres style category keep
    kept put use used wait waiting wish wonder wondering ask asked answer plan planning decide thinking believe
    feel felt find found share mention mentioned start started finish finished year years ago bad worst awful
    terrible boring alright lovely far other else different similar same sometimes often mostly actor actors
    actress actresses star stars starring character characters plot story cast director scene scenes series
    sequel sequels trailer version remake part parts might may shall should must ought easy long short shot
    review reviews rated rating ratings soon later tomorrow yesterday week month hour hours minute minutes omg
    btw idk tbh cute""".split()
)

# Connectives a query may use although no dialogue says them.
TEMPLATE_WORDS = frozenset({"like", "similar", "with", "about"})

# Colloquial words -> catalog genres (reges.genres). A genre is used only when the catalog has it (see
# GroundedTeacher), and it counts as grounded only when one of its source words is in the dialogue (see
# dialogue_vocabulary).

# Era and audience words kept as constraints (surface form as the user wrote it).
ERA_WORDS = frozenset(
    """old older oldie oldies classic classics new newer newest recent latest modern current contemporary theaters
    theater theatre cinema cinemas vintage retro""".split()
)
AUDIENCE_WORDS = frozenset(
    """kid kids children child family families teen teens teenager teenagers adult adults date girlfriend boyfriend
    wife husband son daughter grandkids toddler toddlers""".split()
)
_DECADE = re.compile(
    r"\b(?:(?:19|20)?\d0['’]?s|fifties|sixties|seventies|eighties|nineties)\b", re.IGNORECASE
)

# Dislike cues: a reference title, genre or person in a clause with one of these is not a preference.
_DISLIKE = re.compile(
    r"\b(?:hate[sd]?|hating|dislike[sd]?|(?:did|do|does|could|can|would)(?:n['’]?t| not) (?:really )?"
    r"(?:like|enjoy|love|stand|care for|get into)|not (?:\w+ ){0,5}fan"
    r"|wasn['’]?t (?:a fan|good|great|that good|very good)|not (?:really |that |very |too )?(?:into|interested)"
    r"|boring|awful|terrible|worst|overrated|not my (?:thing|cup|type)|not for me|can['’]?t stand|stupid|dumb"
    r"|waste of time|too scary|too violent|too slow)\b",
    re.IGNORECASE,
)
# Negators right before a genre or phrase ("no horror", "not scary", "nothing too violent").
_NEGATORS = frozenset({"no", "not", "nothing", "without", "except", "never", "dont", "don't", "didnt", "didn't",
                       "hate", "hated", "dislike", "disliked", "avoid", "besides", "nor", "neither"})
_CLAUSE = re.compile(r"[.!?;\n]+|\bbut\b|\bhowever\b|\balthough\b|\bthough\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*(?:-[^\W_]+)*")
_SUBWORD = re.compile(r"[^\W_]+")
# Facet extraction tokens: words (inner apostrophes kept) and the punctuation that ends a phrase. Hyphens are
# dropped, so "sci-fi" is the two words a genre n-gram matches.
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[,:;()|/\"&+]")
_YEAR_PAREN = re.compile(r"\(\s*\d{4}\s*\)")
_SEPARATORS = ",;.:"


def norm(word: str) -> str:
    """A word's comparison form: no accents or case, apostrophes dropped ("Don't" -> "dont", "Pan's" -> "pans")."""
    return re.sub(r"['’`]", "", strip_accents(word).casefold())


def stem(word: str) -> str:
    """A crude stem for membership tests, so inflections of one word agree ("movies"/"movie", "comedies"/"comedy").

    Not a linguistic stemmer: it only has to map the forms a query and a dialogue use for the same word to one key.

    Example:
        >>> [stem(w) for w in ("Movies", "movie", "comedies", "comedy", "loved", "loving")]
        ['movi', 'movi', 'comedi', 'comedi', 'lov', 'lov']
    """
    w = norm(word)
    if w.isdigit() or len(w) <= 3:
        return w
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    if w.endswith("y") and len(w) > 3:
        w = w[:-1] + "i"
    return w


_STOP_STEMS = frozenset(stem(w) for w in STOPWORDS) | frozenset(STOPWORDS)
_TEMPLATE_STEMS = frozenset(stem(w) for w in TEMPLATE_WORDS)
_CHITCHAT_STEMS = frozenset(stem(w) for w in CHITCHAT) | frozenset(norm(w) for w in CHITCHAT)


def words(text: str) -> list[str]:
    """The alphanumeric words of `text` (hyphens split: "sci-fi" -> "sci", "fi"), original spelling kept."""
    return _SUBWORD.findall(text)


def is_content(word: str) -> bool:
    """Whether a word carries meaning a query must be able to justify (not a function or template word)."""
    s = stem(word)
    return s not in _STOP_STEMS and s not in _TEMPLATE_STEMS and norm(word) not in STOPWORDS


def _phrase_stems(phrase: str) -> tuple[str, ...]:
    return tuple(stem(w) for w in words(phrase))


_SYNONYM_STEMS: dict[tuple[str, ...], str] = {_phrase_stems(k): v for k, v in GENRE_SYNONYMS.items()}


def _ngrams(stems: Sequence[str], max_n: int) -> Iterable[tuple[int, tuple[str, ...]]]:
    for n in range(1, max_n + 1):
        for i in range(len(stems) - n + 1):
            yield i, tuple(stems[i : i + n])


# ----------------------------------------------------------------------------------------------------------------
# Grounding


def dialogue_vocabulary(context: Sequence[Turn], items: dict[str, Item]) -> frozenset[str]:
    """The stems a query about this dialogue may use.

    The words of every turn, the titles of the items the turns mention (the dialogue names them, maybe spelt
    differently), and the genres the synonym map derives from the dialogue's words and word pairs.

    Args:
        context: The turns before the recommendation.
        items: The catalog by item id (mentioned ids missing from it are skipped).
    """
    vocab: set[str] = set()
    for turn in context:
        stems = [stem(w) for w in words(turn.content)]
        vocab.update(stems)
        for _, gram in _ngrams(stems, 2):
            genre = _SYNONYM_STEMS.get(gram)
            if genre is not None:
                vocab.update(_phrase_stems(genre))
        for item_id in turn.item_ids:
            item = items.get(item_id)
            if item is not None:
                vocab.update(stem(w) for w in words(item.title))
    for m in _DECADE.finditer(" ".join(t.content for t in context)):
        vocab.add(stem(m.group(0)))
    return frozenset(vocab)


@dataclass(frozen=True)
class GroundingReport:
    """A candidate query after the grounding filter.

    Attributes:
        query: The filtered query (may be empty when nothing grounded was left).
        title_leak: The candidate named a true item's title (removed from `query`).
        ungrounded_words: Content words the dialogue gives no ground for, removed from `query`.
    """

    query: str
    title_leak: bool
    ungrounded_words: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _TitleKey:
    tokens: list[str]
    year: str | None  # the title's year, if known
    needs_year: bool  # only function words ("It", "Up"): a leak only when followed by the year


def _title_keys(titles: Iterable[str]) -> list[_TitleKey]:
    keys = []
    for title in titles:
        tokens = title_key(title).split()
        if not tokens:
            continue
        _, year = split_year(title)
        all_stop = all(t in STOPWORDS for t in tokens)
        if all_stop and year is None:
            continue  # "Her", "Us" without a year: no way to tell the title from the word
        keys.append(_TitleKey(tokens, None if year is None else str(year), all_stop))
    return keys


def _key_tokens(token: str) -> list[str]:
    """A surface token in `title_key`'s normalisation, split like it ("Spider-Man," -> ["spider", "man"]).

    A "(2017)" token becomes ["2017"] (`title_key` would drop it as the title's year; here years tell films apart).
    """
    year = _YEAR_PAREN.fullmatch(token.strip(_SEPARATORS))
    if year:
        return [token.strip(_SEPARATORS)[1:-1].strip()]
    return title_key(f"x {token}").split()[1:] if token.strip() else []


def _find_leaks(tokens: list[str], target_titles: Sequence[str]) -> set[int]:
    """Indices of the surface tokens that spell a target title (plus its "(Year)" and a leading article)."""
    flat: list[tuple[str, int]] = [(k, i) for i, tok in enumerate(tokens) for k in _key_tokens(tok)]
    keys = [k for k, _ in flat]
    drop: set[int] = set()
    for title in _title_keys(target_titles):
        n = len(title.tokens)
        for start in range(len(keys) - n + 1):
            if keys[start : start + n] != title.tokens:
                continue
            end = start + n  # exclusive, in flat positions
            if title.needs_year and (end >= len(keys) or keys[end] != title.year):
                continue
            # A year right after the match that is not the title's: another film ("Daddy's Home 2 (2017)" when the
            # answer is "Daddy's Home (2015)", "Death Wish (1974)" when it is the 2018 remake).
            later_years = [k for k in keys[end : end + 4] if len(k) == 4 and k.isdigit()]
            if title.year is not None and later_years and later_years[0] != title.year:
                continue
            span = {flat[j][1] for j in range(start, end)}
            first, last = min(span), max(span)
            if last + 1 < len(tokens) and _YEAR_PAREN.fullmatch(tokens[last + 1].strip(_SEPARATORS)):
                span.add(last + 1)
            if first > 0 and norm(tokens[first - 1]) in ("the", "a", "an"):
                span.add(first - 1)
            drop |= span
    return drop


def _tidy(tokens: Sequence[str]) -> str:
    """Join surface tokens and clean the punctuation that removals leave behind."""
    text = " ".join(t for t in tokens if t)
    text = re.sub(r"\(\s*\)", " ", text)
    text = re.sub(r"\s+([,;.:])", r"\1", text)
    text = re.sub(r"([,;.:])(?:\s*[,;.:])+", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(_SEPARATORS + " ")


def cut_words(text: str, max_words: int) -> str:
    """The first `max_words` whitespace-separated words of `text`, trailing separators removed."""
    return _tidy(text.split()[:max_words])


def ground_query(
    query: str, vocabulary: frozenset[str], target_titles: Sequence[str], max_words: int
) -> GroundingReport:
    """Remove title leaks and ungrounded content words from a candidate query; report both.

    A surface token (whitespace-separated) is kept when each of its content words has its stem in `vocabulary`;
    function and template words are always allowed. A true item's title is removed wherever it appears (with its
    "(Year)"), even when the dialogue mentioned it: a query that names the answer teaches the student nothing it
    can use on a new dialogue.

    A query left with no content word at all becomes "".

    Args:
        query: The teacher's candidate (only its first line is used).
        vocabulary: `dialogue_vocabulary` of the example.
        target_titles: Titles of the example's true items.
        max_words: The kept query is cut to this many words.

    Returns:
        The filtered query and what was removed.

    Example:
        >>> vocab = dialogue_vocabulary([Turn("user", "Something scary like Alien (1979)", ["a"])], {"a": alien})
        >>> query = "horror like Alien (1979) with Sigourney Weaver, Aliens"
        >>> report = ground_query(query, vocab, ["Aliens (1986)"], max_words=32)
        >>> report.query, report.title_leak, report.ungrounded_words
        ('horror like Alien (1979) with', True, ('Sigourney', 'Weaver'))
    """
    line = next((ln for ln in query.strip().splitlines() if ln.strip()), "")
    line = line.strip().strip("\"'“”`*").strip()
    tokens = line.split()
    leaked = _find_leaks(tokens, target_titles)
    kept: list[str] = []
    ungrounded: list[str] = []
    for i, tok in enumerate(tokens):
        if i in leaked:
            kept.append(tok[-1] if tok[-1] in _SEPARATORS else "")
            continue
        bad = [w for w in words(tok) if is_content(w) and stem(w) not in vocabulary]
        if bad:
            ungrounded.extend(bad)
            kept.append(tok[-1] if tok[-1] in _SEPARATORS else "")
            continue
        kept.append(tok)
    query = cut_words(_tidy(kept), max_words)
    if not any(is_content(w) for w in words(query)):
        query = ""  # only function words left ("with the"): nothing to search for
    return GroundingReport(query, bool(leaked), tuple(ungrounded))


# ----------------------------------------------------------------------------------------------------------------
# The grounded teacher


@dataclass
class Facets:
    """What one dialogue supports, each list best first for the true item.

    Attributes:
        genres: Catalog genre names the dialogue asks for (directly or through a synonym).
        references: Titles of items the dialogue mentions and the user did not dislike.
        people: Names of catalog people (director, star, author, ...) as the dialogue writes them.
        phrases: Preference phrases: runs of content words of the user's turns.
        constraints: Era and audience words as the user wrote them ("80s", "recent", "kids").
        fit: For each kind, how many of its first values fit the true item (its genres, its people, words of its
            card, its decade; for references: the most similar one).
    """

    genres: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    people: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    fit: dict[str, int] = field(default_factory=dict)


FACET_KINDS = ("genres", "references", "people", "phrases", "constraints")
# Each plan takes, per facet kind, the first n values, all of them (None), or the ones that fit the true item
# ("fit"); kinds it does not name are left out. The candidates differ in what they stress, and retrieval feedback
# keeps the best; the order here is the teacher's preference when feedback ties.
_FIT = {"genres": "fit", "people": "fit", "phrases": "fit", "constraints": "fit"}
PLANS: list[tuple[str, dict[str, int | str | None]]] = [
    ("fitting", {**_FIT, "references": 1}),
    ("balanced", {"genres": 3, "references": 2, "people": 2, "phrases": "fit", "constraints": 2}),
    ("fitting+references", {**_FIT, "references": 3}),
    ("fitting-references", dict(_FIT)),
    ("everything", {"genres": None, "references": None, "people": None, "phrases": None, "constraints": None}),
]


def render_query(facets: Facets, plan: dict[str, int | str | None], max_words: int) -> str:
    """Assemble a query from the facets `plan` picks, in a fixed layout, at most `max_words` words.

    Layout: facet kinds in `FACET_KINDS` order, ". " between kinds and ", " within one, e.g. "comedy, romance. The
    Big Sick (2017), Coco (2017). Tom Hanks. quirky road trip. 80s". No "like"/"with" labels: on 300 ReDial train
    examples the bare layout retrieved as well or slightly better with MiniLM (R@50 +0.00-0.015 per plan). Whole
    facets are added while they fit, so a cut never splits a title or a name.
    """
    out: list[str] = []
    used = 0
    for kind in FACET_KINDS:
        if kind not in plan:
            continue
        values: list[str] = getattr(facets, kind)
        n = plan[kind]
        chosen = values if n is None else values[: facets.fit.get(kind, 0)] if n == "fit" else values[: int(n)]
        fitted: list[str] = []
        for v in chosen:
            w = len(v.split())
            if used + w > max_words:
                break
            fitted.append(v)
            used += w
        if fitted:
            out.append(", ".join(fitted))
    return ". ".join(out)


class GroundedTeacher:
    """Assembles queries from what the dialogue supports, chosen and ordered by the true item.

    Args:
        catalog: Every item (its genre vocabulary and people names are what the teacher can recognise).
        num_queries: Candidates per example (at most `len(PLANS)` distinct ones).
        max_query_words: Word limit per candidate.
        item_embeddings: (num_items, dim) L2-normalised card embeddings of the frozen index, rows aligned with
            `item_ids`: reference titles are ordered by cosine similarity to the true item. None: by shared genres
            and people instead.
        item_ids: The ids of the rows of `item_embeddings`.
        people_fields: Item meta fields that hold people names.
        min_genre_share: Genres on fewer than this share of the catalog's items are not recognised: they are rare
            and mostly common words ("news", "short") that would match chit-chat.

    Example:
        >>> teacher = GroundedTeacher(items, num_queries=4, max_query_words=32)
        >>> # example: "Something scary in space, like Alien (1979)?" -> The Thing (1982)
        >>> teacher.write([example], {i.item_id: i for i in items})[0]
        ['horror. Alien (1979)', 'horror', 'horror. Alien (1979). space']
    """

    def __init__(
        self,
        catalog: Sequence[Item],
        num_queries: int,
        max_query_words: int,
        item_embeddings: np.ndarray | None = None,
        item_ids: Sequence[str] | None = None,
        people_fields: Sequence[str] = ("director", "star", "author"),
        min_genre_share: float = 0.01,
    ) -> None:
        if num_queries < 1:
            raise ConfigError(f"distill.num_queries must be >= 1, got {num_queries}")
        if max_query_words < 3:
            raise ConfigError(f"distill.max_query_words must be >= 3, got {max_query_words}")
        if (item_embeddings is None) != (item_ids is None):
            raise ConfigError("pass item_embeddings and item_ids together (rows of the index), or neither")
        if item_embeddings is not None and item_ids is not None and len(item_ids) != item_embeddings.shape[0]:
            raise DataError(
                f"{item_embeddings.shape[0]} item embeddings for {len(item_ids)} item ids; rebuild the index"
            )
        self.num_queries = num_queries
        self.max_query_words = max_query_words
        self.embeddings = item_embeddings  # (num_items, dim)
        self.row = {item_id: i for i, item_id in enumerate(item_ids or [])}
        self.people_fields = tuple(people_fields)
        genre_counts: Counter[str] = Counter()
        people: dict[tuple[str, ...], str] = {}
        for item in catalog:
            genre_counts.update({g.casefold() for g in _meta_list(item, "genre")})
            for name in self._people(item):
                key = tuple(norm(w) for w in _TOKEN.findall(name))
                if len(key) >= 2:
                    people.setdefault(key, name)
        genres = {g for g, c in genre_counts.items() if c >= min_genre_share * len(catalog)}
        self.genres = genres
        # Genres match on the words as written (plural "s" dropped), not on crude stems: "news" must not match "new".
        # The catalog's own genre names win over synonyms (a book catalog's "detective" stays "detective").
        self.genre_by_words: dict[tuple[str, ...], str] = {
            tuple(_genre_word(w) for w in words(k)): v for k, v in GENRE_SYNONYMS.items() if v in genres
        }
        self.genre_by_words.update({tuple(_genre_word(w) for w in words(g)): g for g in genres})
        self.max_genre_len = max((len(k) for k in self.genre_by_words), default=1)
        self.people = people
        self.max_name_len = max((len(k) for k in people), default=2)

    def _people(self, item: Item) -> list[str]:
        return [p for f in self.people_fields for p in _meta_list(item, f)]

    # -- facets ---------------------------------------------------------------------------------------------------
    def facets(self, example: RecExample, items: dict[str, Item]) -> Facets:
        """Extract the grounded facets of one example, ordered for its true item(s)."""
        targets = [items[t] for t in example.target_item_ids if t in items]
        target_genres = {g.casefold() for t in targets for g in _meta_list(t, "genre")}
        target_people = {self.people.get(tuple(norm(w) for w in _TOKEN.findall(p))) for t in targets
                         for p in self._people(t)}
        target_stems = {stem(w) for t in targets for w in words(t.text) if is_content(w)}
        target_years = [t.year for t in targets if t.year]
        # User turns first (what the user asks for), latest first within each role; assistant turns after.
        order = sorted(range(len(example.context)), key=lambda i: (example.context[i].role != "user", -i))
        genres: dict[str, tuple[int, int]] = {}
        people: dict[str, tuple[int, int, str]] = {}
        phrases: dict[str, tuple[int, int, str]] = {}
        constraints: dict[str, tuple[int, int, str]] = {}
        for rank, i in enumerate(order):
            turn = example.context[i]
            is_user = turn.role == "user"
            for clause in _CLAUSE.split(_without_titles(turn, items)):
                if not clause.strip():
                    continue
                disliked = bool(_DISLIKE.search(clause))
                tokens = _TOKEN.findall(clause)  # words and the punctuation that separates phrases
                normed = [norm(w) for w in tokens]
                taken: set[int] = set()
                # people: catalog names as the dialogue writes them (two words or more, so "Will" is no person)
                for start, gram in _ngrams(normed, self.max_name_len):
                    if len(gram) < 2 or gram not in self.people:
                        continue
                    taken.update(range(start, start + len(gram)))
                    if not disliked:
                        name = self.people[gram]
                        surface = " ".join(tokens[start : start + len(gram)])
                        people.setdefault(name, (0 if name in target_people else 1, rank, surface))
                # genres (directly or through a synonym), unless negated
                for start, gram in _ngrams([_genre_word(w) for w in tokens], self.max_genre_len):
                    genre = self.genre_by_words.get(gram)
                    if genre is None or any(k in taken for k in range(start, start + len(gram))):
                        continue
                    taken.update(range(start, start + len(gram)))
                    if disliked or set(normed[max(0, start - 3) : start]) & _NEGATORS:
                        continue
                    score = (0 if genre in target_genres else 1) + (0 if is_user else 2)
                    genres[genre] = min(genres.get(genre, (score, rank)), (score, rank))
                if disliked:
                    continue
                if is_user:  # constraints are the user's own
                    for j, w in enumerate(tokens):
                        if normed[j] in ERA_WORDS or normed[j] in AUDIENCE_WORDS or _DECADE.fullmatch(w):
                            taken.add(j)
                            constraints.setdefault(stem(w), (0 if _decade_fits(w, target_years) else 1, rank, w))
                for start, run in _content_runs(tokens, taken):
                    if set(normed[max(0, start - 2) : start]) & _NEGATORS:
                        continue
                    overlap = sum(stem(w) in target_stems for w in run)
                    if not is_user and not overlap:
                        continue  # the recommender's words count only where they describe the true item
                    phrases.setdefault(" ".join(stem(w) for w in run), (-overlap, rank, " ".join(run)))
        references = self._references(example, items, targets)
        target_titles = [t.title for t in targets]
        phrases = {k: v for k, v in phrases.items() if not _find_leaks(v[2].split(), target_titles)}
        genre_list = sorted(genres, key=lambda g: genres[g])
        genre_stems = {stem(w) for g in genre_list for w in words(g)}
        ref_keys = {title_key(r) for r in references}
        phrase_list = [p for _, _, p in sorted(phrases.values()) if title_key(p) not in ref_keys]
        # A constraint that repeats a genre ("family" after "kids" -> family) says nothing new.
        constraint_items = [v for k, v in constraints.items() if k not in genre_stems]
        constraint_list = [w for _, _, w in sorted(constraint_items)]
        people_list = [p for _, _, p in sorted(people.values())]
        return Facets(
            genres=genre_list,
            references=references,
            people=people_list,
            phrases=phrase_list,
            constraints=constraint_list,
            fit={
                "genres": sum(genres[g][0] in (0, 2) for g in genre_list),
                "references": min(1, len(references)),
                "people": sum(v[0] == 0 for v in people.values()),
                "phrases": sum(-v[0] > 0 for v in phrases.values()),
                "constraints": sum(v[0] == 0 for v in constraint_items),
            },
        )

    def _references(self, example: RecExample, items: dict[str, Item], targets: list[Item]) -> list[str]:
        """Titles of the mentioned items the user did not dislike, most similar to the true item(s) first.

        The true items themselves are left out, even when the dialogue already mentioned them (that would leak the
        answer), and so is any item with one of their titles.
        """
        context = example.context
        target_keys = {title_key(t.title) for t in targets}
        disliked: set[str] = set()
        mentioned: list[str] = []
        for i, turn in enumerate(context):
            for item_id in turn.item_ids:
                if item_id not in mentioned:
                    mentioned.append(item_id)
                item = items.get(item_id)
                if item is None:
                    continue
                if turn.role == "user":
                    if disliked_in(turn.content, item):
                        disliked.add(item_id)
                elif i + 1 < len(context) and context[i + 1].role == "user":
                    # The user's answer to a suggestion: a dislike in its first clause rejects the suggestion.
                    reply = _CLAUSE.split(context[i + 1].content, maxsplit=1)[0]
                    if _DISLIKE.search(reply) and not context[i + 1].item_ids:
                        disliked.add(item_id)
        eligible = []
        seen_keys = set(target_keys)
        for m in mentioned:
            if m not in items or m in example.target_item_ids or m in disliked:
                continue
            key = title_key(items[m].title)
            if key in seen_keys or _find_leaks(items[m].title.split(), [t.title for t in targets]):
                continue  # a true item under another id, a title that contains the answer's, or a repeat
            seen_keys.add(key)
            eligible.append(m)
        scores = {m: self._similarity(items[m], targets) for m in eligible}
        eligible.sort(key=lambda m: -scores[m])  # stable: earlier mentions first among equals
        return [items[m].title for m in eligible]

    def _similarity(self, item: Item, targets: list[Item]) -> float:
        if not targets:
            return 0.0
        if self.embeddings is not None:
            row = self.row.get(item.item_id)
            rows = [self.row[t.item_id] for t in targets if t.item_id in self.row]
            if row is not None and rows:
                return float(np.max(self.embeddings[rows] @ self.embeddings[row]))
        mine = {g.casefold() for g in _meta_list(item, "genre")} | set(self._people(item))
        best = 0.0
        for t in targets:
            theirs = {g.casefold() for g in _meta_list(t, "genre")} | set(self._people(t))
            if mine | theirs:
                best = max(best, len(mine & theirs) / len(mine | theirs))
        return best

    # -- queries --------------------------------------------------------------------------------------------------
    def queries(self, facets: Facets, target_titles: Sequence[str] = ()) -> list[str]:
        """Up to `num_queries` distinct candidate queries from one example's facets.

        A query that spells a true title across two facets ("video game, night" for "Game Night") is left out.
        """
        out: list[str] = []
        for _, plan in PLANS:
            q = render_query(facets, plan, self.max_query_words)
            if q and q not in out and not _find_leaks(q.split(), target_titles):
                out.append(q)
            if len(out) == self.num_queries:
                break
        return out

    def write(self, examples: Sequence[RecExample], items: dict[str, Item]) -> list[list[str]]:
        """See `Teacher.write`. An example whose dialogue supports nothing gets no candidate."""
        out = []
        for ex in examples:
            titles = [items[t].title for t in ex.target_item_ids if t in items]
            out.append(self.queries(self.facets(ex, items), titles))
        return out


def _genre_word(word: str) -> str:
    """A word as genre names are matched: normalised, a plural "s" dropped ("thrillers" -> "thriller")."""
    n = norm(word)
    return n[:-1] if len(n) > 4 and n.endswith("s") and not n.endswith("ss") else n


def _meta_list(item: Item, name: str) -> list[str]:
    value = item.meta.get(name)
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, str) and value.strip():
        return [value.strip()]
    return []


def _without_titles(turn: Turn, items: dict[str, Item]) -> str:
    """The turn's text with its mentioned titles and "(Year)"s blanked (their words are not preferences)."""
    text = turn.content
    for item_id in turn.item_ids:
        item = items.get(item_id)
        if item is None:
            continue
        name, _ = split_year(item.title)
        if len(name) >= 2:
            # Whole words only: "It (2017)" must not cut "favorite" into "favor" and "e". "|" ends a phrase.
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", " | ", text, flags=re.IGNORECASE)
    return _YEAR_PAREN.sub(" ", text)


def disliked_in(text: str, item: Item) -> bool:
    """Whether the clause of `text` that names `item` (or the whole text) has a dislike cue."""
    name, _ = split_year(item.title)
    for clause in _CLAUSE.split(text):
        if name.casefold() in clause.casefold():
            return bool(_DISLIKE.search(clause))
    return bool(_DISLIKE.search(text)) and len(_CLAUSE.split(text)) == 1


def _content_runs(tokens: Sequence[str], taken: set[int], max_len: int = 4) -> list[tuple[int, list[str]]]:
    """Maximal runs of preference words (not function/chit-chat words, not already a facet), cut to `max_len`."""
    runs: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for j, w in enumerate(list(tokens) + [""]):
        keep = bool(w) and j not in taken and _is_preference_word(w)
        if keep:
            if not current:
                start = j
            current.append(w)
        elif current:
            runs.append((start, current[:max_len]))
            current = []
    return runs


def _is_preference_word(word: str) -> bool:
    n = norm(word)
    return (
        len(n) >= 3
        and not any(c.isdigit() for c in n)
        and is_content(word)
        and n not in CHITCHAT
        and stem(word) not in _CHITCHAT_STEMS
    )


def _decade_fits(word: str, years: list[int]) -> bool:
    """Whether an era word like "80s" or "1980s" matches one of the target years (False for other words)."""
    m = re.fullmatch(r"(?:(19|20)?(\d)0)['’]?s", word.casefold())
    if not m or not years:
        return False
    century = m.group(1)
    decade = int(m.group(2))
    for y in years:
        if (y // 10) % 10 == decade and (century is None or str(y)[:2] == century):
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------
# The LLM teacher


class LLMTeacher:
    """Any `reges.llm` model writes the candidates: one greedy query and `num_queries - 1` sampled ones.

    The model sees the dialogue and the true item's card without its title (`prompts.teacher_prompt`). Its output is
    not trusted: the `distill` stage passes every candidate through `ground_query`, which removes and counts title
    leaks and ungrounded words.

    Args:
        llm: The teacher model (e.g. `load_llm(LLMConfig(model="http://host:8000/v1"))`).
        num_queries: Candidates per example.
        max_query_words: Word limit stated in the prompt.
        temperature: Sampling temperature of the extra candidates.
        max_new_tokens: Most tokens per candidate.
        batch_size: Prompts per `llm.generate` call.
    """

    def __init__(
        self,
        llm: LLM,
        num_queries: int,
        max_query_words: int,
        temperature: float = 0.8,
        max_new_tokens: int = 64,
        batch_size: int = 16,
    ) -> None:
        if num_queries < 1:
            raise ConfigError(f"distill.num_queries must be >= 1, got {num_queries}")
        if temperature <= 0 and num_queries > 1:
            raise ConfigError(
                f"distill.teacher_temperature must be > 0 to sample {num_queries} different candidates, got "
                f"{temperature}; raise it (e.g. 0.8) or set distill.num_queries=1"
            )
        self.llm = llm
        self.num_queries = num_queries
        self.max_query_words = max_query_words
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def write(self, examples: Sequence[RecExample], items: dict[str, Item]) -> list[list[str]]:
        """See `Teacher.write`. Examples without a catalog target get no candidate (nothing to hint)."""
        prompts = []
        owners = []
        for i, ex in enumerate(examples):
            targets = [items[t] for t in ex.target_item_ids if t in items]
            if targets:
                prompts.append(teacher_prompt(ex.context, targets, self.max_query_words))
                owners.append(i)
        out: list[list[str]] = [[] for _ in examples]
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            answers = self.llm.generate(batch, self.max_new_tokens, temperature=0.0, stop=["\n"])
            for _ in range(self.num_queries - 1):
                answers_s = self.llm.generate(batch, self.max_new_tokens, temperature=self.temperature, stop=["\n"])
                answers = [*answers, *answers_s]
            n = len(batch)
            for j in range(n):
                out[owners[start + j]] = [answers[k * n + j] for k in range(self.num_queries)]
        return out
