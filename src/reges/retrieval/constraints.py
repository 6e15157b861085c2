"""What the seeker asks for beyond films: genres they want, genres they refuse, and who is watching.

Why: the fused retriever ranks by similarity, co-mentions and popularity, so "I hate horror movies, something funny
with Jim Carrey" can come back with a horror film (the word "horror" makes horror cards similar), and "something
for my kids, they loved Frozen" with It (2017). No score learnt from ReDial fixes that: such turns are rare in
training data, and a negation is exactly what bag-of-words similarity reads the wrong way round. So the seeker's
own words are read for three kinds of constraint, and the candidates are re-ordered, never dropped:

    avoid    genres the seeker refuses ("I hate horror", "nothing scary", "not a fan of musicals") and, for
             children, horror
    prefer   genres the seeker asks for in their latest turn ("something funny", "a good documentary") while the
             dialogue names no film (once it does, the films say more than a genre word: on INSPIRED dev,
             re-ordering dialogues that name films by their genre words cost R@10), and, for children, family
             and animation
    children "for my kids", "my 6 year old", "family movie night" (not "as a kid", "when I was a kid")

Re-ordering: a stable sort on (has an avoided genre, lacks every preferred genre), so within each group the
retriever's order is kept, and a film of an avoided genre comes back only when nothing else is left. Only seeker
turns are read (role "user"): what the recommender said is not a wish. Genres are matched to the catalog's
`meta["genre"]` (IMDb genre names, lower case).

Example:
    >>> c = parse_constraints([Turn("user", "Something for my kids, they are 6 and 8. They loved Frozen.")])
    >>> c.children, sorted(c.avoid), sorted(c.prefer)
    (True, ['horror'], ['animation', 'family'])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reges.genres import genre_words
from reges.records import Hit, Item, Turn, mentioned_item_ids

# A seeker's word -> catalog genre (reges.genres); the audience words ("kids" -> family) are left to the children
# rule, which also refuses horror.
GENRE_WORDS: dict[str, str] = {w: g for w, g in genre_words().items() if g != "family" or w == "family"}
CHILD_GENRES_AVOID = frozenset({"horror"})
CHILD_GENRES_PREFER = frozenset({"family", "animation"})

_GENRE = "|".join(sorted((re.escape(w) for w in GENRE_WORDS), key=len, reverse=True))
# Verbs of dislike may stand up to three words before the genre ("I don't really like scary movies"); the short
# negations ("no", "not", "nothing") one word at most ("no scary stuff", "nothing too gory"), so "no problem with
# horror" stays a wish.
_DISLIKE = (r"(?:hate|hated|dislike|disliked|(?:do|did|does)\s*n[o']?t\s+(?:really\s+)?(?:like|love|enjoy|want)|"
            r"can'?t\s+stand|cannot\s+stand|not\s+(?:a\s+(?:big\s+)?fan\s+of|into|in\s+the\s+mood\s+for)|"
            r"tired\s+of|sick\s+of|avoid|anything\s+but|except|other\s+than|rather\s+not|scared\s+of)")
_NEGATION = re.compile(
    rf"\b(?:{_DISLIKE}(?:\s+\S+){{0,3}}?|(?:no|not|nothing|without|never)(?:\s+\S+)?)\s+(?P<genre>{_GENRE})s?\b",
    re.IGNORECASE,
)
_WISH = re.compile(rf"\b(?P<genre>{_GENRE})s?\b", re.IGNORECASE)  # "s?": thrillers, westerns, romances
_CHILDREN = re.compile(
    r"\b(?:(?:my|our|the|for)\s+(?:\w+\s+)?(?:kids?|children|child|son|daughter|sons|daughters|toddlers?|"
    r"little\s+ones|grandkids|grandchildren)|kid[- ]friendly|family[- ]friendly|family\s+(?:movie|film|night)|"
    r"\d{1,2}\s*(?:and\s+\d{1,2}\s*)?(?:-\s*)?years?[- ]olds?|(?:kids?|children)'?s?\s+(?:movies?|films?))\b",
    re.IGNORECASE,
)
_NOT_CHILDREN = re.compile(r"\b(?:as\s+a\s+(?:kid|child)|when\s+i\s+was\s+(?:a\s+)?(?:kid|child|little)|"
                           r"since\s+i\s+was\s+(?:a\s+)?(?:kid|child)|childhood)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Constraints:
    """What re-orders a seeker's candidates (see the module docstring).

    Attributes:
        avoid: Catalog genres pushed to the end.
        prefer: Catalog genres brought forward (films with at least one of them).
        children: The seeker asks for children.
    """

    avoid: frozenset[str] = frozenset()
    prefer: frozenset[str] = frozenset()
    children: bool = False

    def __bool__(self) -> bool:
        return bool(self.avoid or self.prefer)


def _genres(text: str, pattern: re.Pattern[str]) -> set[str]:
    return {GENRE_WORDS[m.group("genre").lower()] for m in pattern.finditer(text)}


def parse_constraints(context: Sequence[Turn]) -> Constraints:
    """The constraints the seeker's turns state: refusals from every seeker turn, wishes from the latest one."""
    seeker = [t.content for t in context if t.role == "user" and t.content]
    if not seeker:
        return Constraints()
    avoid: set[str] = set()
    for text in seeker:
        avoid |= _genres(text, _NEGATION)
    latest = seeker[-1]
    negated_spans = [m.span("genre") for m in _NEGATION.finditer(latest)]
    prefer: set[str] = set()
    if not mentioned_item_ids(context):  # once films are named, they carry the taste better than a genre word
        prefer = {GENRE_WORDS[m.group("genre").lower()] for m in _WISH.finditer(latest)
                  if m.span("genre") not in negated_spans}
    text = " ".join(seeker)
    children = bool(_CHILDREN.search(_NOT_CHILDREN.sub(" ", text)))
    if children:
        avoid |= CHILD_GENRES_AVOID
        prefer |= CHILD_GENRES_PREFER
    prefer -= avoid
    return Constraints(frozenset(avoid), frozenset(prefer), children)


def _group(hit: Hit, constraints: Constraints, items: Mapping[str, Item]) -> tuple[bool, bool]:
    """(has an avoided genre, lacks every preferred genre): False sorts first."""
    item = items.get(hit.item_id)
    genres = {g.lower() for g in (item.meta.get("genre", []) if item is not None else [])}
    return bool(genres & constraints.avoid), bool(constraints.prefer) and not genres & constraints.prefer


def apply_constraints(hits: Sequence[Hit], constraints: Constraints, items: Mapping[str, Item]) -> list[Hit]:
    """`hits` re-ordered: films without an avoided genre first, among them those with a preferred genre first;
    the retriever's order within each group. Nothing is dropped, so recall@len(hits) does not change."""
    if not constraints:
        return list(hits)
    return sorted(hits, key=lambda h: _group(h, constraints, items))


def leading_group_size(hits: Sequence[Hit], constraints: Constraints, items: Mapping[str, Item]) -> int:
    """How many of `hits` (already re-ordered by `apply_constraints`) belong to its first group: the films that
    meet the constraints best. The final pick is made among them, so no re-ranker can bring a refused film back."""
    if not hits or not constraints:
        return len(hits)
    first = _group(hits[0], constraints, items)
    return next((n for n, h in enumerate(hits) if _group(h, constraints, items) != first), len(hits))
