"""The people feature: directors and stars the dialogue names, matched whole, their films idf-weighted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from retrieval_fakes import SeededTextEncoder

from reges.config import IndexConfig
from reges.errors import ConfigError, DataError
from reges.records import Item, Turn
from reges.retrieval.comention import CoMention
from reges.retrieval.fusion import NO_QUERY, FusedRetriever, FusionSettings, top_hits
from reges.retrieval.index import ItemIndex
from reges.retrieval.people import PeopleIndex, name_tokens


def _film(item_id: str, director: str, *stars: str) -> Item:
    return Item(item_id, item_id, item_id, meta={"director": [director], "star": list(stars), "genre": ["comedy"]})


FILMS = [
    _film("ace", "Tom Shadyac", "Jim Carrey", "Courteney Cox"),
    _film("mask", "Chuck Russell", "Jim Carrey", "Cameron Diaz"),
    _film("green-mile", "Frank Darabont", "Tom Hanks", "Michael Clarke Duncan"),
    _film("big", "Penny Marshall", "Tom Hanks", "J.K. Simmons"),
    _film("cast-away", "Robert Zemeckis", "Tom Hanks"),
    _film("other", "Madonna", "Cher"),  # one-word names are never matched
]
IDS = [f.item_id for f in FILMS]


def test_names_are_matched_whole_in_any_turn_and_weighted_by_rarity() -> None:
    people = PeopleIndex.from_items(FILMS)
    context = [Turn("user", "Something funny, I love JIM CARREY!"), Turn("assistant", "Like Tom Hanks movies?"),
               Turn("user", "Hanks is fine, Carrey better. Madonna? j.k. simmons")]
    assert people.named(context) == [("jim", "carrey"), ("tom", "hanks"), ("j", "k", "simmons")]
    scores = people.scores([context, [Turn("user", "nobody named here, Carrey alone")]])
    carrey, hanks, simmons = math.log1p(6 / 2), math.log1p(6 / 3), math.log1p(6 / 1)
    assert scores[0].tolist() == pytest.approx([carrey, carrey, hanks, hanks + simmons, hanks, 0.0])
    assert not scores[1].any()
    assert name_tokens("Michael Clarke-Duncan") == ("michael", "clarke", "duncan")


def test_two_spellings_of_one_name_pool_their_films() -> None:
    films = [_film("a", "X Y", "Robert Downey Jr."), _film("b", "X Y", "Robert Downey Jr"),
             _film("c", "Z W", "Robert Downey Jr."), _film("d", "Z W", "Someone Else")]
    people = PeopleIndex.from_items(films)
    scores = people.scores([[Turn("user", "anything with robert downey jr?")]])[0]
    # one person on 3 of the 4 films, whichever spelling each card uses (before: the last spelling read won)
    assert scores.tolist() == pytest.approx([math.log1p(4 / 3)] * 3 + [0.0])


def test_people_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    people = PeopleIndex.from_items(FILMS, item_ids=list(reversed(IDS)))
    assert people.save(tmp_path) == 11  # every name of two or more tokens (not Madonna, Cher)
    again = PeopleIndex.load(tmp_path, IDS)
    ctx = [[Turn("user", "tom hanks")]]
    assert again.scores(ctx)[0].tolist() == people.scores(ctx)[0][::-1].tolist()
    with pytest.raises(DataError, match="train_retriever.people=true"):
        PeopleIndex.load(tmp_path / "missing", IDS)
    with pytest.raises(ConfigError, match="people fusion feature needs a PeopleIndex"):
        FusedRetriever(None, None, IDS, CoMention.fit([]), {NO_QUERY: {"people": 1.0}}, FusionSettings())


def test_a_named_star_lifts_their_films_in_the_fused_ranking() -> None:
    """The issue's request: "I hate horror movies, something funny with Jim Carrey"."""
    people = PeopleIndex.from_items(FILMS)
    retriever = FusedRetriever(None, None, IDS, CoMention.fit([]), {NO_QUERY: {"people": 1.0}}, FusionSettings(),
                               people=people)
    hits = retriever.search([[Turn("user", "I hate horror movies, something funny with Jim Carrey")]], [None], 2)[0]
    assert {h.item_id for h in hits} == {"ace", "mask"}


def test_people_on_the_candidate_path_stay_exact() -> None:
    """With an approximate index the people's films join the candidates; scores equal whole-catalog scoring."""
    n, dim = 600, 8
    enc = SeededTextEncoder(dim)
    ids = [f"f{j:04d}" for j in range(n)]
    stars = ["Tom Hanks", "Jim Carrey", "Meryl Streep"]
    items = [Item(i, i, i, meta={"star": [stars[j % 3]] if j % 7 == 0 else []}) for j, i in enumerate(ids)]
    cards = enc.encode([f"card {i}" for i in ids], 64, False)
    index = ItemIndex.from_embeddings(cards, ids, IndexConfig(index_type="ivf", nlist=8, nprobe=8), seed=0)
    weights = {NO_QUERY: {"dense_dialogue": 1.0, "people": 0.8, "popularity": 0.1}}
    fast = FusedRetriever(enc, cards, ids, CoMention.fit([]), weights, FusionSettings(batch_size=64), index=index,
                          candidate_pool=20, people=PeopleIndex.from_items(items))
    contexts = [[Turn("user", f"request {q} " + ("with Meryl Streep" if q % 2 else ""))] for q in range(12)]
    got = fast.search(contexts, [None] * 12, 10)
    want = top_hits(fast.scores(contexts, [None] * 12), ids, fast.id_rank, 10)
    assert [[h.item_id for h in g] for g in got] == [[h.item_id for h in w] for w in want]
    assert np.allclose([h.score for g in got for h in g], [h.score for w in want for h in w], rtol=1e-6)
