"""Find the catalog items a free-text message names ("I loved Inception and Interstellar" -> two item ids).

Why: dataset turns come with their mentions resolved (ReDial `@id`s, INSPIRED titles), but a person typing into
`reges recommend`, `reges chat` or the HTTP API does not. The co-mention prior, the "already mentioned" feature
and the no-repeat rule all work on item ids, so without linking a typed dialogue would lose the strongest signal
the learned retriever has.

How: every span of 1-8 words of the message is keyed with `reges.titles.title_key` (case, accents, articles,
punctuation, roman numerals) and looked up among the catalog's title keys; the longest spans win and spans do not
overlap. A year right after the span ("Dune (1984)", "Dune 2021") picks among films sharing a title; otherwise the
one most mentioned in the training dialogues does, its folded duplicate ids counted with it (a cleaned catalog lists
them in `meta["alias_ids"]`, see `reges.catalog.clean_catalog`): a typed "Frozen" is Frozen (2013), not the 2010
thriller. Titles that are one common word ("Up", "Her", "It", "They") match only when capitalised in the message
and not at the start of one of its sentences, and a span that is only stopwords never matches: better to miss a
mention than to invent one.

Films sharing a title: once a dialogue names a title, every catalog film of that title is taken as named
(`TitleSpotter.same_title_ids`): a user who loved The Notebook (2004) must not be offered The Notebook (2013), and a
user who rejected Titanic (1997) must not get Titanic (2012) back.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from reges.records import Item
from reges.titles import split_year, title_key

MAX_SPAN_WORDS = 8
# Words too common to be a title on their own unless written like one (capitalised, not sentence-initial).
_COMMON = frozenset(
    """a about after again all also am an and any are as at away back be before big but by can come could day did do
    down even ever every find first for from get give go going good great had has have he her here him his home how
    i if in into is it its just know last life like little long look love made make man me more most much my never
    new no not now of off old on one only or other our out over people right say see she so some something still
    such take tell than that the their them then there these they thing think this those time to too two under up
    us very want was way we well were what when where which who why will with work would year yes you your
    action adventure alone animated animation awesome best better boring cartoon chick classic comedies comedy crazy
    dark drama enjoy enjoyed epic family fan fantasy favorite fun funny genre girl girls gone great happy hello hey
    hi horror kid kids laugh like liked lol loved loves maybe movie movies mystery nice night okay perfect please
    recommend recommendation romance romantic sad scary seen sure thanks thank thriller thrillers tonight watch
    watched watching weekend wonderful yeah""".split()
)
_ARTICLES = frozenset({"the", "a", "an"})
_WORD = re.compile(r"[\w'’&:!?.-]+", re.UNICODE)
_YEAR = re.compile(r"^\(?((?:19|20)\d\d)\)?[.,;:!?]*$")


class TitleSpotter:
    """Links title mentions in free text to catalog item ids.

    Example:
        >>> spotter = TitleSpotter(items, mention_counts)
        >>> spotter.spot("I loved Inception and Interstellar, something mind-bending please")
        ['1234', '5678']
    """

    def __init__(self, items: Sequence[Item], mention_counts: Mapping[str, float] | None = None) -> None:
        """Index the catalog's titles by key.

        Args:
            items: The catalog.
            mention_counts: item id -> how often training dialogues mention it; breaks ties between films with one
                title (remakes) when the message gives no year. Counts of an item's folded ids
                (`meta["alias_ids"]`) are added to its own, so raw dataset counts can be passed.
        """
        counts = dict(mention_counts or {})
        by_key: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            name, _ = split_year(item.title)
            key = title_key(name)
            if key:
                by_key[key].append(item)

        def mentions(item: Item) -> float:
            return counts.get(item.item_id, 0.0) + sum(counts.get(str(a), 0.0) for a in item.meta.get("alias_ids", []))

        self._by_key = {k: sorted(v, key=lambda it: (-mentions(it), it.item_id)) for k, v in by_key.items()}
        self._key_of = {it.item_id: key for key, group in self._by_key.items() for it in group}
        self._max_words = min(MAX_SPAN_WORDS, max((len(k.split()) for k in self._by_key), default=1))

    def same_title_ids(self, item_ids: Iterable[str]) -> set[str]:
        """`item_ids` and every catalog item sharing a title with one of them (remakes, other films of that name).

        What a recommender excludes once a dialogue names a film: the user means the title, not the id that linking
        or the dataset picked. Ids absent from the catalog are kept as they are.

        Example:
            >>> spotter.same_title_ids({"185139"})  # The Notebook (2004)
            {'185139', '97219'}
        """
        out = set(item_ids)
        for item_id in list(out):
            key = self._key_of.get(item_id)
            if key is not None:
                out.update(it.item_id for it in self._by_key[key])
        return out

    def _resolve(self, key: str, year: int | None) -> str:
        candidates = self._by_key[key]
        if year is not None:
            for item in candidates:
                if item.year == year or split_year(item.title)[1] == year:
                    return item.item_id
        return candidates[0].item_id

    def spot(self, text: str) -> list[str]:
        """Item ids of the titles named in `text`, in order of first mention, without duplicates."""
        words = _WORD.findall(text)
        found: list[str] = []
        i = 0
        while i < len(words):
            match = None
            for n in range(min(self._max_words, len(words) - i), 0, -1):
                span = words[i : i + n]
                key = title_key(" ".join(span))
                # a sentence starts at the message's start and after ".", "!" or "?"
                sentence_start = i == 0 or words[i - 1][-1:] in ".!?"
                if key not in self._by_key or not self._plausible(span, key, sentence_start):
                    continue
                year_match = _YEAR.match(words[i + n]) if i + n < len(words) else None
                year = int(year_match.group(1)) if year_match else None
                match = (self._resolve(key, year), n + (1 if year_match else 0))
                break
            if match is None:
                i += 1
                continue
            item_id, consumed = match
            if item_id not in found:
                found.append(item_id)
            i += consumed
        return found

    @staticmethod
    def _plausible(span: list[str], key: str, sentence_start: bool) -> bool:
        """Reject spans that are likely ordinary words, not a title."""
        content = [w for w in span if w.lower() not in _ARTICLES]
        tokens = [t for t in key.split() if t not in _ARTICLES]
        if not content or not tokens or (len(tokens) == 1 and tokens[0].isdigit()):
            return False
        if len(tokens) >= 2 and not all(t in _COMMON for t in tokens):
            return True  # "toy story", "the dark knight": several words, not all common ones
        # One content word, or only common words ("Up", "Her", "The Others"): it must be written like a title, and
        # at the start of a sentence a common word is just a capitalised word ("They loved Frozen.").
        capitalised = all(w[:1].isupper() or not w[:1].isalpha() for w in content)
        return capitalised and (not sentence_start or not all(t in _COMMON for t in tokens))
