"""TitleSpotter: titles named in free text -> catalog ids, conservative on common words."""

from __future__ import annotations

from reges.linking import TitleSpotter
from reges.records import Item


def _items(*titles: str) -> list[Item]:
    return [Item(f"i{n}", t, t, year=int(t[-5:-1]) if t.endswith(")") else None) for n, t in enumerate(titles)]


ITEMS = _items("Inception (2010)", "Interstellar (2014)", "Up (2009)", "Her (2013)", "Loved (1997)",
               "The Dark Knight (2008)", "Toy Story (1995)", "Dune (1984)", "Dune (2021)", "2 (1980)", "A (1998)",
               "It (1990)", "It (2017)", "The Watch (2012)")


def _titles(spotter: TitleSpotter, text: str) -> list[str]:
    by_id = {i.item_id: i.title for i in ITEMS}
    return [by_id[i] for i in spotter.spot(text)]


def test_names_in_free_text_are_linked_in_order_without_duplicates() -> None:
    spotter = TitleSpotter(ITEMS)
    assert _titles(spotter, "I loved Inception and Interstellar, and inception again") == [
        "Inception (2010)", "Interstellar (2014)"]
    # Multi-word titles match in lower case; the longest span wins.
    assert _titles(spotter, "have you seen the dark knight or toy story?") == ["The Dark Knight (2008)",
                                                                               "Toy Story (1995)"]


def test_common_words_match_only_when_written_as_titles() -> None:
    spotter = TitleSpotter(ITEMS)
    assert _titles(spotter, "I want to watch a good movie, something up my alley like Up or Her") == [
        "Up (2009)", "Her (2013)"]
    assert _titles(spotter, "Loved it. it was a lot of fun, 2 hours") == []
    assert _titles(spotter, "Up was great") == []  # a capitalised common word at the start is just a word


def test_a_year_picks_among_remakes_else_the_most_mentioned() -> None:
    assert _titles(TitleSpotter(ITEMS), "Dune (2021) or the other Dune 1984") == ["Dune (2021)", "Dune (1984)"]
    counts = {"i12": 50.0, "i11": 3.0}
    assert _titles(TitleSpotter(ITEMS, counts), "scary like It") == ["It (2017)"]
    assert _titles(TitleSpotter(ITEMS), "scary like It") == ["It (1990)"]  # no counts: a stable order by id


def test_a_common_word_starting_a_sentence_is_not_a_title() -> None:
    items = _items("They (2002)", "Frozen (2013)")
    spotter = TitleSpotter(items)
    by_id = {i.item_id: i.title for i in items}
    # "They" opens the second sentence: just a word (the shipped recommender linked They (2002) here)
    text = "Something for my kids, they are 6 and 8. They loved Frozen."
    assert [by_id[i] for i in spotter.spot(text)] == ["Frozen (2013)"]
    assert [by_id[i] for i in spotter.spot("Have you seen They? It is creepy")] == ["They (2002)"]


def test_folded_ids_count_for_their_item() -> None:
    """Raw dataset counts name folded ids too; they add up for the item that kept them."""
    items = [Item("82894", "Frozen (2013)", "x", 2013, {"alias_ids": ["107018"]}),
             Item("123210", "Frozen (2010)", "x", 2010, {"alias_ids": ["151348"]})]
    counts = {"82894": 10.0, "107018": 9.0, "123210": 15.0, "151348": 1.0}
    assert TitleSpotter(items, counts).spot("We loved Frozen") == ["82894"]  # 19 against 16


def test_same_title_ids_cover_every_film_of_a_title() -> None:
    spotter = TitleSpotter(ITEMS)
    by_title = {i.title: i.item_id for i in ITEMS}
    assert spotter.same_title_ids({by_title["Dune (1984)"]}) == {by_title["Dune (1984)"], by_title["Dune (2021)"]}
    assert spotter.same_title_ids({by_title["Up (2009)"], "not-in-catalog"}) == {by_title["Up (2009)"],
                                                                                  "not-in-catalog"}
    assert spotter.same_title_ids(set()) == set()
