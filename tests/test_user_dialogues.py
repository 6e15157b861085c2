"""Scripted dialogues from the user test of 2026-12-05: what linking and the catalog must get right without any model.

The catalog is a real cut of ReDial's (tests/fixtures/catalog/cleaning_*): every "Frozen", "It", "The Notebook" and
"Titanic" entry, Goodfellas, Mean Girls. Train mention counts are set by hand, in the proportions of the real ones.
The last tests ask the real shipped recommender (slow): a request for children, a refused genre and requests that
name only a genre get films of the kind asked for (reges.retrieval.constraints).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reges.catalog import alias_map, clean_catalog, read_id2info, redial_items
from reges.config import load_config
from reges.data.redial import read_movie_names
from reges.linking import TitleSpotter
from reges.recommender import PipelineRecommender
from reges.records import Item, Turn, mentioned_item_ids

# Train turns mentioning each id (the real train + lossy counts are 128, 11, 16, 1, ...).
MENTIONS = {"82894": 128.0, "107018": 11.0, "123210": 16.0, "151348": 1.0, "104477": 1.0, "174518": 1.0,
            "187028": 520.0, "204794": 110.0, "116076": 2.0, "84831": 9.0, "143198": 80.0, "201091": 60.0,
            "185139": 120.0, "97219": 70.0, "175096": 160.0, "205480": 50.0, "99584": 1.0, "192470": 1.0}


@pytest.fixture(scope="module")
def catalog(fixtures_dir: Path) -> list[Item]:
    cfg = load_config(None, [])
    raw = redial_items(read_id2info(fixtures_dir / "catalog" / "cleaning_id2info.json"),
                       read_movie_names(fixtures_dir / "catalog" / "cleaning_movies_with_mentions.csv"), cfg.catalog)
    items, stats, _ = clean_catalog(raw, MENTIONS, cfg.catalog)
    assert (stats["items_before"], stats["items_after"]) == (18, 15)
    return items


@pytest.fixture(scope="module")
def spotter(catalog: list[Item]) -> TitleSpotter:
    return TitleSpotter(catalog, MENTIONS)


def _titles(catalog: list[Item], ids: set[str] | list[str]) -> list[str]:
    by_id = {it.item_id: it.title for it in catalog}
    return sorted(by_id[i] for i in ids)


def excluded(spotter: TitleSpotter, context: list[Turn]) -> set[str]:
    """What the served recommender must never offer: the films of every title the dialogue named."""
    linked = [t if t.item_ids else Turn(t.role, t.content, spotter.spot(t.content)) for t in context]
    return spotter.same_title_ids(mentioned_item_ids(linked))


def test_duplicates_are_folded_and_every_id_resolves(catalog: list[Item]) -> None:
    aliases = alias_map(catalog)
    # "Frozen" (no year) carries Frozen (2013)'s card; the two "Frozen (2010)" are one film; so are the two Titanic
    assert aliases == {"107018": "82894", "151348": "123210", "99584": "175096"}
    assert {it.item_id for it in catalog} | set(aliases) == set(MENTIONS)


def test_foreign_cards_are_dropped(catalog: list[Item]) -> None:
    by_id = {it.item_id: it for it in catalog}
    it_1990, goodfellas = by_id["204794"], by_id["143198"]
    assert it_1990.text == "It (1990)." and "Scorsese" not in it_1990.text  # was Goodfellas' card
    assert it_1990.meta["card_dropped"] == "imdb:tt0099685 is the card of Goodfellas (1990)"
    assert "Director: Martin Scorsese" in goodfellas.text and "card_dropped" not in goodfellas.meta
    assert by_id["116076"].meta["card_dropped"] == "imdb:tt0377092 is the card of Mean Girls (2004)"
    assert "Director: Mark Waters" in by_id["201091"].text
    # films that only share a title keep their own cards
    assert "Director: János Szász" in by_id["97219"].text and "Director: Adam Green" in by_id["123210"].text


def test_kids_who_loved_frozen(catalog: list[Item], spotter: TitleSpotter) -> None:
    """"They loved Frozen" names Frozen (2013): not the 2010 thriller, and "They" is no film."""
    context = [Turn("user", "Something for my kids, they are 6 and 8. They loved Frozen.")]
    assert _titles(catalog, spotter.spot(context[0].content)) == ["Frozen (2013)"]
    # Every film called Frozen is off the list; Frozen Fever (the short sequel) stays recommendable.
    assert _titles(catalog, excluded(spotter, context)) == ["Frozen (2007)", "Frozen (2010)", "Frozen (2013)"]


def test_romance_after_the_notebook_and_a_rejected_titanic(catalog: list[Item], spotter: TitleSpotter) -> None:
    context = [
        Turn("user", "I love romantic movies, like The Notebook."),
        Turn("assistant", "Have you seen Titanic (1997)?"),
        Turn("user", "I didn't like it at all, too long. Something lighter?"),
    ]
    assert [_titles(catalog, spotter.spot(t.content)) for t in context] == [
        ["The Notebook (2004)"], ["Titanic (1997)"], []]  # "it" is a pronoun here
    # Neither Notebook nor any Titanic may come back; Titanic II is another title
    assert _titles(catalog, excluded(spotter, context)) == [
        "The Notebook (2004)", "The Notebook (2013)", "Titanic (1997)", "Titanic (2012)"]


def test_a_dataset_turn_with_a_folded_id(catalog: list[Item], spotter: TitleSpotter) -> None:
    """Dataset turns carry raw ids: a folded id still excludes its film and every film of its title."""
    aliases = alias_map(catalog)
    context = [Turn("user", "I liked @99584", [aliases.get("99584", "99584")])]
    assert _titles(catalog, excluded(spotter, context)) == ["Titanic (1997)", "Titanic (2012)"]


def test_goodfellas_and_it_link_to_their_own_cards(catalog: list[Item], spotter: TitleSpotter) -> None:
    by_id = {it.item_id: it for it in catalog}
    [goodfellas] = spotter.spot("I liked Goodfellas")
    assert "Martin Scorsese" in by_id[goodfellas].text
    # a typed "It" is the most mentioned It, the 2017 horror film, never a card of Goodfellas or Mean Girls
    assert _titles(catalog, spotter.spot("Have you seen It?")) == ["It (2017)"]


@pytest.fixture(scope="module")
def shipped() -> PipelineRecommender:
    from reges.shipped import default_run_dir

    return PipelineRecommender.from_run_dir(default_run_dir())


def _genres(rec: PipelineRecommender, item_id: str) -> set[str]:
    return {g.lower() for g in rec.items[item_id].meta.get("genre", [])}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "wanted", "refused"),
    [
        ("Something for my kids, they are 6 and 8. They loved Frozen.", {"family", "animation"}, {"horror"}),
        ("I hate horror movies, something funny with Jim Carrey", {"comedy"}, {"horror"}),
        ("I'd like to watch a good documentary tonight", {"documentary"}, set()),
    ],
)
def test_the_shipped_recommender_gives_the_kind_of_film_asked_for(
    shipped: PipelineRecommender, text: str, wanted: set[str], refused: set[str]
) -> None:
    rec = shipped.recommend([Turn("user", text)], top_k=5)
    for c in rec.candidates:
        assert not _genres(shipped, c.item_id) & refused, (text, c.title)
    assert _genres(shipped, rec.item_id) & wanted, (text, rec.title)
