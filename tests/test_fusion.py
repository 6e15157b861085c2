"""Fusion: z-scoring, fallback when a feature is silent, weight tuning, tie-breaks and the FusedRetriever."""

from __future__ import annotations

import numpy as np
import pytest
from retrieval_fakes import KeywordEncoder

from reges.errors import ConfigError, DataError
from reges.records import Dialogue, RecExample, Turn
from reges.retrieval.comention import CoMention
from reges.retrieval.fusion import (
    FusedRetriever,
    FusionSettings,
    TunePairs,
    bagged_weights,
    fuse,
    pair_ranks,
    recall_table,
    resample_rows,
    subset_pairs,
    tiebreak,
    top_hits,
    tune_weights,
    zscore_rows,
)
from reges.retrieval.retrieve import popularity_ranking

CARDS = {
    "10": "alien horror space",
    "11": "family animation",
    "12": "crime heist",
    "13": "shark horror",
    "14": "romance comedy",
    "15": "space adventure",
}
ITEM_IDS = list(CARDS)
ENCODER = KeywordEncoder(["horror", "family", "crime", "shark", "space", "romance", "comedy", "adventure"])
TRAIN = [
    Dialogue("t1", [Turn("user", "x", ["10", "13"]), Turn("assistant", "y", ["12"])]),
    Dialogue("t2", [Turn("user", "x", ["10"]), Turn("assistant", "y", ["13"])]),
    Dialogue("t3", [Turn("user", "x", ["11"])]),
]


def _retriever(weights: dict[str, dict[str, float]]) -> FusedRetriever:
    emb = ENCODER.encode(list(CARDS.values()), 8, False)
    return FusedRetriever(ENCODER, emb, ITEM_IDS, CoMention.fit(TRAIN), weights, FusionSettings(batch_size=4))


def test_zscore_rows_and_constant_rows() -> None:
    z = zscore_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert z[0].tolist() == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert z[1].tolist() == [0.0, 0.0, 0.0]  # no signal: the feature drops out instead of becoming NaN


def test_tiebreak_matches_popularity_ranking() -> None:
    """With popularity alone the fused order is exactly `popularity_ranking`'s, ties included."""
    ids = [f"z{i:02d}" for i in range(20)] + ITEM_IDS
    cm = CoMention.fit(TRAIN)
    retriever = FusedRetriever(None, None, ids, cm, {"no_query": {"popularity": 1.0}}, FusionSettings(seed=3))
    hits = retriever.search([[]], [None], top_k=len(ids))[0]
    counts = {i: int(cm.item_counts[cm.row[i]]) for i in cm.item_ids}
    assert [h.item_id for h in hits] == [h.item_id for h in popularity_ranking(counts, ids, seed=3)]
    assert tiebreak(ids, 3).tolist() != tiebreak(ids, 4).tolist()
    # equal scores come out in item-id order, as in TREC files
    assert [h.item_id for h in top_hits(np.zeros((1, 3)), ["b", "c", "a"], np.array([1, 2, 0]), 2)[0]] == ["a", "b"]


def test_comention_falls_back_to_the_other_features_without_known_items() -> None:
    retriever = _retriever({"no_query": {"comention": 1.0, "dense_dialogue": 1.0}})
    dense_only = _retriever({"no_query": {"dense_dialogue": 1.0}})
    silent = [[Turn("user", "any shark horror film?")]]  # no item mentioned: co-mentions are all zero
    np.testing.assert_allclose(retriever.scores(silent, [None]), dense_only.scores(silent, [None]))
    with_item = [[Turn("user", "I liked Alien, any shark horror film?", ["10"])]]
    assert not np.allclose(retriever.scores(with_item, [None]), dense_only.scores(with_item, [None]))
    # an all-empty context still gets a full, deterministic ranking
    assert len(retriever.search([[]], [None], top_k=6)[0]) == 6


def test_features_leave_one_dialogue_out_and_mentioned() -> None:
    retriever = _retriever({"no_query": {"popularity": 1.0}})
    ctx = [[Turn("user", "x", ["10"])]] * 2
    f = retriever.features(ctx, [None, None], [None, "t1"], ["popularity", "comention", "mentioned"])
    col = {i: j for j, i in enumerate(ITEM_IDS)}
    assert f["popularity"][0, col["10"]] == pytest.approx(np.log1p(2))
    assert f["popularity"][1, col["10"]] == pytest.approx(np.log1p(1))  # t1 left out
    assert f["comention"][0, col["12"]] > 0 and f["comention"][1, col["12"]] == 0  # only t1 pairs 10 with 12
    assert f["mentioned"][0].tolist() == [1, 0, 0, 0, 0, 0]


def test_content_ranks_films_like_the_named_ones_without_an_encoder() -> None:
    """content: each card's cosine with the mean card of the named items; no item named, no signal."""
    emb = ENCODER.encode(list(CARDS.values()), 8, False)
    retriever = FusedRetriever(None, emb, ITEM_IDS, CoMention.fit(TRAIN), {"no_query": {"content": 1.0}},
                               FusionSettings(batch_size=4))
    # "I liked Alien" (horror, space): the other horror film and the other space film come next
    hits = retriever.search([[Turn("user", "I liked Alien", ["10"])]], [None], top_k=3)[0]
    assert hits[0].item_id == "10" and {h.item_id for h in hits[1:]} == {"13", "15"}
    both = retriever.features([[Turn("user", "x", ["11", "14"])], [Turn("user", "nothing named")]], [None, None],
                              [None, None], ["content"])["content"]
    mean = emb[[1, 4]].mean(axis=0)
    np.testing.assert_allclose(both[0], emb @ (mean / np.linalg.norm(mean)), rtol=1e-6)
    assert not both[1].any()
    with pytest.raises(ConfigError, match="content fusion feature needs the item embeddings"):
        FusedRetriever(None, None, ITEM_IDS, CoMention.fit(TRAIN), {"no_query": {"content": 1.0}}, FusionSettings())


def test_query_weights_apply_only_where_a_query_is_given() -> None:
    retriever = _retriever({"no_query": {"dense_dialogue": 1.0}, "with_query": {"dense_query": 1.0}})
    ctx = [Turn("user", "a romance comedy please")]
    no_q, with_q = retriever.search([ctx, ctx], [None, "a shark"], top_k=1)
    assert no_q[0].item_id == "14" and with_q[0].item_id == "13"
    with pytest.raises(DataError, match="1 queries for 2 contexts"):
        retriever.scores([ctx, ctx], [None])
    with pytest.raises(ConfigError, match="unknown fusion features"):
        _retriever({"no_query": {"bm25": 1.0}})


def _tuning_problem(examples_per_dialogue: int = 1
                    ) -> tuple[list[RecExample], TunePairs, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """40 examples over 60 items, one target each: a "good" feature where the target stands out and a "noise" one.

    Returns:
        (examples, pairs, z-scored features, tie-break, id ranks).
    """
    rng = np.random.default_rng(0)
    num_queries, num_items = 40, 60
    item_ids = [f"i{j:02d}" for j in range(num_items)]
    examples = [RecExample(f"e{q}", f"d{q // examples_per_dialogue}", [], [item_ids[q]], [q % 4 == 0])
                for q in range(num_queries)]
    good = rng.normal(size=(num_queries, num_items))
    good[np.arange(num_queries), np.arange(num_queries)] += 2.5  # the target stands out, not always at rank 1
    z = {"noise": zscore_rows(rng.normal(size=(num_queries, num_items))), "good": zscore_rows(good)}
    return examples, TunePairs.from_examples(examples, item_ids), z, tiebreak(item_ids, 0), np.arange(num_items)


def test_tune_weights_picks_the_informative_feature() -> None:
    _, pairs, z, tie, id_rank = _tuning_problem()
    weights, report = tune_weights(z, pairs, tie, id_rank, grid=(-0.5, 0.0, 0.5, 1.0, 2.0), passes=2)
    assert report["anchor"] == "good" and weights["good"] > 0
    assert abs(weights["noise"]) < weights["good"]
    assert report["alone"]["good"]["objective"] > report["alone"]["noise"]["objective"]
    assert report["fused"]["objective"] >= report["alone"]["good"]["objective"]
    # the reported table is what the weights give
    table = recall_table(pair_ranks(fuse(z, weights, tie), pairs, id_rank), pairs)
    assert table == report["fused"]
    assert 0 < table["novel"]["recall@10"] <= 1
    # another start: the named anchor keeps a positive weight, and the search never ends below where it started
    other, report2 = tune_weights(z, pairs, tie, id_rank, grid=(-0.5, 0.0, 0.5, 1.0, 2.0), passes=2, anchor="noise")
    assert report2["anchor"] == "noise" and other["noise"] > 0
    assert report2["fused"]["objective"] >= report2["alone"]["noise"]["objective"]
    # a weighted feature that was not computed is refused, not silently left out of the ranking
    with pytest.raises(DataError, match=r"features \['people'\] that were not computed"):
        fuse(z, {**weights, "people": 0.5}, tie)
    np.testing.assert_array_equal(fuse(z, {**weights, "people": 0.0}, tie), fuse(z, weights, tie))
    with pytest.raises(ConfigError, match="anchor 'nope'"):
        tune_weights(z, pairs, tie, id_rank, anchor="nope")


def test_tune_weights_ranks_without_the_excluded_items() -> None:
    """`exclude` drops items from each query's list before ranking (the served list: named films dropped)."""
    _, pairs, z, tie, id_rank = _tuning_problem()
    grid = (-0.5, 0.0, 0.5, 1.0, 2.0)
    decoy = np.zeros_like(z["good"])  # each query's next item, far ahead of everything
    rows = np.arange(decoy.shape[0])
    decoy[rows, rows + 1] = 10.0
    z = {**z, "decoy": zscore_rows(decoy)}
    exclude = np.zeros(decoy.shape, dtype=bool)
    exclude[rows, rows + 1] = True
    weights, report = tune_weights(z, pairs, tie, id_rank, grid, passes=2, exclude=exclude)
    scores = fuse(z, weights, tie)
    scores[exclude] = -np.inf
    assert report["fused"] == recall_table(pair_ranks(scores, pairs, id_rank), pairs)
    # the decoy beats every target when its items stay in the list
    assert tune_weights(z, pairs, tie, id_rank, grid, passes=1, anchor="decoy")[1]["alone"]["decoy"]["objective"] \
        < report["alone"]["decoy"]["objective"]
    # every target excluded: nothing can be found, whatever the weights
    targets = np.zeros(decoy.shape, dtype=bool)
    targets[pairs.query_index, pairs.item_index] = True
    _, none = tune_weights(z, pairs, tie, id_rank, grid, passes=1, exclude=targets)
    assert none["fused"]["objective"] == 0.0


def test_resample_rows_draws_whole_dialogues_and_subset_pairs_renumbers() -> None:
    dialogue_ids = ["a", "a", "b", None, "c", "c", "c"]
    rows = resample_rows(dialogue_ids, np.random.default_rng(1))
    groups = [[0, 1], [2], [3], [4, 5, 6]]
    # the draw is a sequence of whole dialogues, as many as there are dialogues (the id-less row is its own)
    i, drawn = 0, 0
    while i < len(rows):
        group = next(g for g in groups if g[0] == rows[i])
        assert list(rows[i:i + len(group)]) == group
        i, drawn = i + len(group), drawn + 1
    assert drawn == len(groups)
    examples = [RecExample("e0", "d0", [], ["x", "y"], [False, True]), RecExample("e1", "d1", [], ["z"], [False])]
    pairs = TunePairs.from_examples(examples, ["x", "y", "z"])
    sub = subset_pairs(pairs, np.array([1, 1, 0]))
    assert sub.query_index.tolist() == [0, 1, 2, 2] and sub.item_index.tolist() == [2, 2, 0, 1]
    assert sub.novel.tolist() == [True, True, True, False]


def test_bagged_weights_average_the_resamples() -> None:
    examples, pairs, z, tie, id_rank = _tuning_problem(examples_per_dialogue=2)
    grid = (-0.5, 0.0, 0.5, 1.0, 2.0)
    dialogue_ids = [ex.dialogue_id for ex in examples]
    weights, report = bagged_weights(z, pairs, dialogue_ids, tie, id_rank, resamples=5, seed=3, grid=grid, passes=2)
    runs = report["resamples"]
    assert len(runs) == 5 and all(r["out_of_bag_objective"] is not None for r in runs)
    # the mean of the unit-L1 resample weights, rescaled so that the largest is 1
    mean = {n: np.mean([r["weights"][n] / sum(abs(v) for v in r["weights"].values()) for r in runs]) for n in z}
    top = max(abs(v) for v in mean.values())
    assert weights == {n: round(mean[n] / top, 4) for n in z} and weights["good"] == 1.0
    assert report["fused"] == recall_table(pair_ranks(fuse(z, weights, tie), pairs, id_rank), pairs)
    # seeded: the same call gives the same weights
    assert bagged_weights(z, pairs, dialogue_ids, tie, id_rank, resamples=5, seed=3, grid=grid, passes=2)[0] == weights
    with pytest.raises(ConfigError, match="at least 2 resamples"):
        bagged_weights(z, pairs, dialogue_ids, tie, id_rank, resamples=1, seed=0)


def test_pair_ranks_by_hand() -> None:
    examples = [RecExample("e0", "d0", [], ["b", "zz"], [False, True])]
    pairs = TunePairs.from_examples(examples, ["a", "b", "c"])
    ranks = pair_ranks(np.array([[0.5, 0.5, 0.9]]), pairs, np.array([0, 1, 2]))
    assert ranks[0] == 3  # c scores higher, a ties and wins on id
    assert ranks[1] > 10**9  # not in the catalog: never retrieved
    table = recall_table(ranks, pairs, cutoffs=(3,))
    assert table["all"]["recall@3"] == 0.5 and table["novel"]["recall@3"] == 1.0
