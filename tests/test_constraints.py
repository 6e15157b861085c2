"""Constraints the seeker states: refused genres, wished genres, children; and how they re-order candidates."""

from __future__ import annotations

import pytest

from reges.records import Hit, Item, Turn
from reges.retrieval.constraints import Constraints, apply_constraints, leading_group_size, parse_constraints


def _parse(*user_turns: str) -> Constraints:
    return parse_constraints([Turn("user", t) for t in user_turns])


@pytest.mark.parametrize(
    ("text", "avoid", "prefer", "children"),
    [
        ("Something for my kids, they are 6 and 8. They loved Frozen.", {"horror"}, {"family", "animation"}, True),
        ("I hate horror movies, something funny with Jim Carrey", {"horror"}, {"comedy"}, False),
        ("I love romantic movies, like The Notebook.", set(), {"romance"}, False),
        ("I have no problem with horror, give me something scary", set(), {"horror"}, False),
        ("I loved Jaws as a kid. Any good thrillers?", set(), {"thriller"}, False),
        ("nothing too scary please", {"horror"}, set(), False),
        ("I don't really like scary movies", {"horror"}, set(), False),
        ("My 7 year old loves dinosaurs", {"horror"}, {"family", "animation"}, True),
        ("Not a fan of musicals. Something with action?", {"musical"}, {"action"}, False),
        ("Hi! How are you?", set(), set(), False),
    ],
)
def test_what_a_seeker_asks_for(text: str, avoid: set[str], prefer: set[str], children: bool) -> None:
    c = _parse(text)
    assert (set(c.avoid), set(c.prefer), c.children) == (avoid, prefer, children)


def test_genre_wishes_count_only_while_no_film_is_named() -> None:
    named = parse_constraints([Turn("user", "I loved Alien (1979), any good thrillers?", ["10"])])
    assert not named.prefer and not named.children
    kids = parse_constraints([Turn("user", "My kids loved Frozen, anything funny?", ["20"])])
    assert set(kids.prefer) == {"family", "animation"} and set(kids.avoid) == {"horror"}


def test_refusals_last_the_whole_dialogue_and_wishes_come_from_the_latest_turn() -> None:
    c = parse_constraints([Turn("user", "I hate horror."), Turn("assistant", "How about a comedy?"),
                           Turn("user", "Sure, or a good thriller")])
    assert set(c.avoid) == {"horror"} and set(c.prefer) == {"thriller"}  # "comedy" was the recommender's word


def _item(item_id: str, *genres: str) -> Item:
    return Item(item_id, f"Film {item_id}", f"Film {item_id}", meta={"genre": list(genres)})


def test_candidates_are_reordered_never_dropped() -> None:
    items = {i.item_id: i for i in [_item("it", "Horror"), _item("lambs", "Crime", "Thriller"),
                                     _item("frozen2", "Animation", "Family"), _item("cars", "Animation"),
                                     _item("nogenre")]}
    hits = [Hit(i, 1.0 - n / 10) for n, i in enumerate(["it", "lambs", "frozen2", "nogenre", "cars"])]
    kids = _parse("Something for my kids please")
    ordered = apply_constraints(hits, kids, items)
    assert [h.item_id for h in ordered] == ["frozen2", "cars", "lambs", "nogenre", "it"]
    assert leading_group_size(ordered, kids, items) == 2  # the pick is made among Frozen 2 and Cars
    assert leading_group_size(hits, Constraints(), items) == len(hits)
    assert apply_constraints(hits, Constraints(), items) == hits
    only_horror = [Hit("it", 1.0)]
    assert apply_constraints(only_horror, kids, items) == only_horror  # nothing else left: it stays
