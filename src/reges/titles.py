"""Title normalisation and matching: the one place where reges decides what a title is.

Dataset titles are messy: ReDial writes "Cosmos  (2015)" with two spaces and "Why Him%3F (2016)" with a
URL escape, INSPIRED drops years or writes "Frozen 2" where the metadata says "Frozen II", accents come and
go ("Amelie"/"Amélie"), articles move ("Matrix, The"), and id2info.json has 7 names that belong to two ids.
Every stage that turns a title into an item id goes through this module, so they all agree.

Levels, from strict to loose:
- `normalize_title`: the display form (still a title to show).
- `title_slug`: a readable id-safe string (lowercase, no accents, year kept): the default `item_id` of custom
  catalog records that have none.
- `title_key`: the matching key (no case, accents, punctuation, articles or year); `TitleMatcher` matches on
  it, then on fuzzy scores with the years checked.
- `title_id`: the item id of title-keyed datasets (INSPIRED): the key without spaces plus the year, so every
  spelling of one film gets one id, computed from that title alone.
`match_one_to_one` merges two title lists.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rapidfuzz import fuzz, process

from reges.errors import CatalogError

_WS = re.compile(r"\s+")
# ReDial's movie names carry URL escapes for "?" and '"' ("Why Him%3F (2016)"). Only escapes of ASCII
# punctuation are decoded, so a literal "100% Wolf" stays as it is.
_URL_ESCAPE = re.compile(r"%(2[0-9A-Fa-f]|3[A-Fa-f]|40|5[B-Fb-f]|60|7[B-Eb-e])")
# A trailing "(1999)" (also "( 1999 )"); four digits from 1000 to 2099 (book catalogs have old years), so
# "Ocean's (11)" keeps its number.
_YEAR = re.compile(r"^(?P<name>.*?)\s*\(\s*(?P<year>1\d{3}|20\d\d)\s*\)$")
# Anything but letters and digits, in any script (a Japanese title keeps its characters), becomes "-".
_NON_ALNUM = re.compile(r"[\W_]+")
# Wrapping an LLM (or a crowd worker) puts around a title: quotes, markdown emphasis, a final full stop.
_WRAPPING = "\"'“”‘’*_`«» "
_ARTICLES = ("the", "a", "an")
_TRAILING_ARTICLE = re.compile(r"^(?P<name>.+?),\s*(?P<article>the|a|an)$", re.IGNORECASE)
# "Frozen II" and "Frozen 2" are the same film; "I" is left alone ("I Am Legend"), and so is "v", which is
# mostly "versus" ("Ford v Ferrari") or a letter ("V for Vendetta"): see _ROMAN_V and _VERSUS_V.
_ROMAN = {"ii": "2", "iii": "3", "iv": "4", "vi": "6", "vii": "7", "viii": "8", "ix": "9"}
# "v" is the numeral 5 after a word at the end ("Rocky V") or before a subtitle ("Death Wish V: The Face of
# Death", "Episode V - The Empire Strikes Back"), and after "part"/"episode"/... ("V" alone stays a letter).
# Applied to the lowercased text.
_ROMAN_V = re.compile(
    r"(?:(?<=\bpart )|(?<=\bepisode )|(?<=\bchapter )|(?<=\bvolume )|(?<=\bvol )|(?<=\bvol\. ))v\b"
    r"|(?<=\w )v(?=\s*(?:$|[:\-–—]))"
)
# Between two words, "v"/"v." is "versus": "Batman v Superman" = "Batman vs. Superman".
_VERSUS_V = re.compile(r"(?<=\w) v\.? (?=\w)")


def normalize_title(title: str) -> str:
    """Canonical display form: Unicode NFC, ReDial's URL escapes decoded, whitespace collapsed, ends stripped.

    ReDial writes "Cosmos  (2015)" with two spaces before the year and "Why Him%3F (2016)"; this gives
    "Cosmos (2015)" and "Why Him? (2016)". Case, accents and punctuation are kept: this is still a title to
    show, not a matching key (see `title_key`).
    """
    text = _URL_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), unicodedata.normalize("NFC", title))
    return _WS.sub(" ", text).strip()


def split_year(title: str) -> tuple[str, int | None]:
    """Split a trailing "(Year)" off a title.

    Returns:
        (name, year): the normalised name without the year, and the year, or None when the title has none.

    Example:
        >>> split_year("Cosmos  (2015)")
        ('Cosmos', 2015)
        >>> split_year("Cosmos")
        ('Cosmos', None)
    """
    t = normalize_title(title)
    if t.endswith("()") and t[:-2].strip():  # "Akira ()": INSPIRED's UniCRS files leave empty parentheses
        t = t[:-2].rstrip()
    m = _YEAR.match(t)
    if m is None or not m.group("name").strip():
        return t, None
    return m.group("name").strip(), int(m.group("year"))


def format_title(name: str, year: int | None) -> str:
    """The display title "Name (Year)", or just the name when the year is unknown."""
    name = normalize_title(name)
    return f"{name} ({year})" if year is not None else name


def title_from_slug(slug: str) -> str:
    """Best-effort display title for an id whose title is lost ("thirst-2016" -> "Thirst (2016)").

    Works on `title_slug` and `title_id` ids alike; a `title_id` has lost its word breaks and articles
    ("knivesout-2019" -> "Knivesout (2019)"), so this is the last resort when no file gives the title.
    """
    words = slug.split("-")
    year = None
    if len(words) > 1 and words[-1].isdigit() and len(words[-1]) == 4 and 1000 <= int(words[-1]) <= 2099:
        year = int(words.pop())
    return format_title(" ".join(w.capitalize() for w in words), year)


def strip_accents(text: str) -> str:
    """Remove combining marks ("Amélie" -> "Amelie") so accented and plain spellings agree.

    The result is recomposed (NFC): NFKD splits Hangul syllables into jamo, which are no combining marks and
    would otherwise leave ids and keys in a decomposed form that prints the same but compares differently.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def title_slug(title: str) -> str:
    """A stable, readable, id-safe string for a title: lowercase, no accents, "-" between words, year kept.

    The default `item_id` of custom catalog records without one: users read and type these ids, so words stay
    apart ("knives-out-2019"). Spelling variants that differ only in case or punctuation
    ("GoodFellas"/"Goodfellas", "Emma. (2020)"/"Emma (2020)") get the same slug; articles, roman numerals and
    hyphens inside words still make different slugs ("Frozen II"/"Frozen 2"): `title_id` is the id that
    groups those, for datasets whose items exist only as titles.

    Raises:
        CatalogError: The title has no letter or digit at all.

    Example:
        >>> title_slug("Amélie  (2001)")
        'amelie-2001'
    """
    name, year = split_year(title)
    base = _NON_ALNUM.sub("-", strip_accents(name).lower()).strip("-")
    if year is not None:
        base = f"{base}-{year}" if base else str(year)
    if not base:
        raise CatalogError(f"title {title!r} has no letters or digits to build an id from; give the item an item_id")
    return base


def _unwrap(title: str) -> str:
    """Drop what surrounds a title in free text ('"Inception (2010)".', '**Inception**')."""
    t = normalize_title(title).strip(_WRAPPING)
    while t.endswith((".", ",", ";", ":")) and not t.endswith("..."):
        t = t[:-1].rstrip(_WRAPPING)
    return t


def parse_title(title: str) -> tuple[str, int | None]:
    """(matching key, year) of a title as written anywhere (dataset, user, LLM output)."""
    name, year = split_year(_unwrap(title))
    return title_key(name), year


def title_key(title: str, keep_article: bool = False) -> str:
    """Matching key of a title, without its year: what two spellings of one film have in common.

    Lowercase, accents stripped, "&" -> "and", apostrophes dropped ("Schindler's" = "Schindlers"), other
    punctuation -> space, a leading or trailing article dropped ("The Matrix" = "Matrix, The" = "Matrix"),
    roman numerals ii-ix -> digits ("Frozen II" = "Frozen 2"; "v" only where it is a numeral: "Rocky V",
    "Episode V - ...", while "Ford v Ferrari" = "Ford vs. Ferrari" and "V for Vendetta" keeps its letter).
    Tokens stay space-separated for fuzzy scoring; `TitleMatcher` also compares them with spaces removed
    ("Spider-Man" = "Spiderman"), and `title_id` builds ids from them the same way.

    Args:
        title: Any title, with or without a year.
        keep_article: Keep the article, moved to the front ("Matrix, The" -> "the matrix"): the stricter key
            `TitleMatcher` uses when other evidence (the year) is weak.

    Example:
        >>> title_key("Matrix, The (1999)")
        'matrix'
    """
    name, _ = split_year(_unwrap(title))
    m = _TRAILING_ARTICLE.match(name)
    if m is not None:
        name = f"{m.group('article')} {m.group('name')}" if keep_article else m.group("name")
    words = name.split()
    # The article is a whole first word: "A Star Is Born" loses it, "A.I. Artificial Intelligence" does not.
    if not keep_article and len(words) > 1 and words[0].casefold() in _ARTICLES:
        name = " ".join(words[1:])
    text = strip_accents(name).casefold().replace("&", " and ")
    text = _VERSUS_V.sub(" vs ", _ROMAN_V.sub("5", text))
    text = re.sub(r"['’‘`´]", "", text)
    tokens = _NON_ALNUM.sub(" ", text).split()
    tokens = [_ROMAN.get(t, t) for t in tokens]
    return " ".join(tokens)


def _parse(title: str) -> tuple[str, str, int | None]:
    """(key, key with article, year) of a title."""
    name, year = split_year(_unwrap(title))
    return title_key(name), title_key(name, keep_article=True), year


def _compact(key: str) -> str:
    return key.replace(" ", "")


def title_id(title: str) -> str:
    """The item id of a title-keyed dataset (INSPIRED): every spelling of one film gets the same id.

    Built from the compact matching key (`title_key` without spaces: no articles, case, accents or
    punctuation; roman numerals as digits; "&" as "and") plus "-" and the year: "The Avengers (2012)" and
    "Avengers (2012)" -> "avengers-2012", "Frozen II (2019)" and "Frozen 2 (2019)" -> "frozen2-2019",
    "Spider-Man (2002)" and "Spiderman (2002)" -> "spiderman-2002". A title without a year gets the bare key
    ("Akira ()" -> "akira"): keys hold no "-", so it never collides with a dated id, and a year-less mention
    is too vague to be merged with a dated one.

    Why a function of one title and not of the whole title list: an id must not depend on which titles
    happen to be loaded. Picking a representative per group (say, the smallest slug) would change the id of a
    trained run's items when a new file (the official test split) brings a new spelling. Here a new
    spelling can only join an existing id, never rename one. The price: the id changes if `title_key`'s
    rules change, so `tests/test_titles.py` pins ids by hand.

    Falls back to `title_slug` when the key is empty (nothing left after the key's cleaning). Non-Latin
    titles keep their letters in the key ("千と千尋の神隠し (2001)" -> "千と千尋の神隠し-2001"), though
    combining marks go the way accents do (the kana voicing mark: "ジブリ" -> "シフリ"). Ids contain no
    whitespace.

    Raises:
        CatalogError: The title has no letter or digit at all.

    Example:
        >>> title_id("The Avengers (2012)"), title_id("Frozen II (2019)"), title_id("Akira ()")
        ('avengers-2012', 'frozen2-2019', 'akira')
    """
    key, year = parse_title(title)
    compact = _compact(key)
    if not compact or not any(c.isalnum() for c in title):  # "&" alone has the key "and" but is no title
        return title_slug(title)
    return f"{compact}-{year}" if year is not None else compact


def _numbers(key: str) -> list[str]:
    return [t for t in key.split() if t.isdigit()]


def title_numbers(key: str) -> list[str]:
    """The numbers of a matching key, in order: what tells a sequel from its original ("home alone 2" -> ["2"]).

    Example:
        >>> title_numbers(title_key("Rocky II")), title_numbers(title_key("Rocky"))
        (['2'], [])
    """
    return _numbers(key)


def compact_key(key: str) -> str:
    """A matching key without spaces: "slap shot" and "slapshot", "spider man" and "spiderman" become one."""
    return _compact(key)


@dataclass(frozen=True)
class TitleMatch:
    """How a title matched the catalog.

    Attributes:
        item_ids: Every id tied at the best level, smallest first (several when ids share a title).
        stage: "exact" (same key and year), "year" (same key, year missing on one side or near), "fuzzy".
        score: rapidfuzz score (100 for the key stages).
        year_gap: Years between query and match (0 when one side has none).
    """

    item_ids: list[str]
    stage: Literal["exact", "year", "fuzzy"]
    score: float
    year_gap: int

    @property
    def rank(self) -> tuple[int, float, int]:
        """Sort key, smaller is better: compares matches of different titles to one item."""
        return (("exact", "year", "fuzzy").index(self.stage), -self.score, self.year_gap)


class TitleMatcher:
    """Map free-form titles to catalog item ids.

    Stages, first hit wins:
    1. "exact": same key (spaces ignored, so "Spiderman" = "Spider-Man") and same year (or both none);
    2. "year": same key, year compatible: missing on one side, or at most `year_tolerance` apart (release
       dates differ by country, and datasets disagree by one year); the nearest year wins. When the query
       names a year, the article must agree too: two weak signals together are a different film
       ("The Predator (2018)" is not a year-less "Predator", "The Darkness (2016)" is not "Darkness (2015)").
       A query without a year is vague anyway: "Hunger Games" finds "The Hunger Games (2012)";
    3. "fuzzy": rapidfuzz `token_sort_ratio` >= `fuzzy_threshold` on the keys with articles, years
       compatible as in 2, the same numbers in both keys (sequels), and at least two words in the query
       (one-word titles are too short to score: "Haunted" vs "Hunted" is 92).
    Ties are broken by item_id, so the answer is deterministic. Titles that several ids share (id2info.json
    gives "Frozen (2010)" to two ids) come back together from `match_all`; `match` returns the first.

    A year that disagrees by more than `year_tolerance` never matches: "The Lion King (2019)" must not
    resolve to the 1994 film just because the remake is absent from the catalog.

    Example:
        >>> m = TitleMatcher([("1", "The Matrix (1999)"), ("2", "Frozen (2013)")])
        >>> m.match("Matrix, The")
        '1'
        >>> m.match("frozen (2010)") is None
        True
    """

    def __init__(
        self, items: Iterable[tuple[str, str]], fuzzy_threshold: float = 92.0, year_tolerance: int = 1
    ) -> None:
        """Args:
        items: (item_id, title) pairs; each id at most once.
        fuzzy_threshold: Minimum rapidfuzz score (0-100) for stage 3; above 100 turns fuzzy matching off.
        year_tolerance: Largest year difference still treated as the same film.

        Raises:
            CatalogError: An item id appears twice.
        """
        self.fuzzy_threshold = fuzzy_threshold
        self.year_tolerance = year_tolerance
        self._ids: list[str] = []
        self._keys: list[str] = []
        self._full_keys: list[str] = []
        self._years: list[int | None] = []
        self._by_compact: dict[str, list[int]] = {}
        seen: dict[str, str] = {}
        for item_id, title in items:
            if item_id in seen:
                raise CatalogError(
                    f"item id {item_id!r} given twice to TitleMatcher ({seen[item_id]!r} and {title!r}); "
                    "ids must be unique"
                )
            seen[item_id] = title
            key, full_key, year = _parse(title)
            self._by_compact.setdefault(_compact(key), []).append(len(self._ids))
            self._ids.append(item_id)
            self._keys.append(key)
            self._full_keys.append(full_key)
            self._years.append(year)

    def __len__(self) -> int:
        return len(self._ids)

    def _year_gap(self, a: int | None, b: int | None) -> int | None:
        """Distance between two years; 0 when one is missing; None when they are too far apart."""
        if a is None or b is None:
            return 0
        gap = abs(a - b)
        return gap if gap <= self.year_tolerance else None

    def lookup(self, title: str) -> TitleMatch | None:
        """Match `title` and say how; None when nothing matches."""
        key, full_key, year = _parse(title)
        if not key:
            return None
        rows = self._by_compact.get(_compact(key), [])
        exact = [i for i in rows if self._years[i] == year]
        if exact:
            return TitleMatch(sorted(self._ids[i] for i in exact), "exact", 100.0, 0)
        if year is not None:
            rows = [i for i in rows if _compact(self._full_keys[i]) == _compact(full_key)]
        near = [(gap, self._ids[i]) for i in rows if (gap := self._year_gap(year, self._years[i])) is not None]
        if near:
            best = min(gap for gap, _ in near)
            return TitleMatch(sorted(i for gap, i in near if gap == best), "year", 100.0, best)
        if self.fuzzy_threshold > 100 or len(key.split()) < 2:
            return None
        scored = process.extract(
            full_key, self._full_keys, scorer=fuzz.token_sort_ratio, score_cutoff=self.fuzzy_threshold, limit=None
        )
        # Numbers tell sequels apart, and fuzzy scores barely see them ("... Part 1" vs "... Part 2" is 98).
        numbers = _numbers(key)
        fuzzy = [
            (-score, gap, self._ids[i])
            for _, score, i in scored
            if (gap := self._year_gap(year, self._years[i])) is not None and _numbers(self._keys[i]) == numbers
        ]
        if not fuzzy:
            return None
        neg_score, gap = min((s, g) for s, g, _ in fuzzy)
        return TitleMatch(sorted(i for s, g, i in fuzzy if (s, g) == (neg_score, gap)), "fuzzy", -neg_score, gap)

    def match_all(self, title: str) -> list[str]:
        """Every id tied at the best level for `title`, smallest first; [] when nothing matches."""
        found = self.lookup(title)
        return found.item_ids if found is not None else []

    def match(self, title: str) -> str | None:
        """The catalog id for `title`, or None. Ties (shared titles) go to the smallest id."""
        found = self.lookup(title)
        return found.item_ids[0] if found is not None else None


def match_one_to_one(titles: dict[str, str], matcher: TitleMatcher) -> dict[str, str]:
    """Match many titles at once, giving each catalog item to at most one of them.

    When two titles claim one item, the better match (`TitleMatch.rank`) keeps it and the other gets
    nothing; on a tie nobody gets it. This is what merging two title lists needs: "Lady and the Tramp
    (1955)" and "(2019)" both land on a year-less "Lady and the Tramp", and borrowing its plot for either
    would be a guess.

    Args:
        titles: query id -> title.
        matcher: The catalog to match against.

    Returns:
        query id -> item id, for the queries that won an item.
    """
    claims: dict[str, list[tuple[tuple[int, float, int], str]]] = {}
    for query_id in sorted(titles):
        found = matcher.lookup(titles[query_id])
        if found is not None:
            claims.setdefault(found.item_ids[0], []).append((found.rank, query_id))
    assigned: dict[str, str] = {}
    for item_id, item_claims in claims.items():
        item_claims.sort()
        if len(item_claims) == 1 or item_claims[0][0] < item_claims[1][0]:
            assigned[item_claims[0][1]] = item_id
    return assigned
