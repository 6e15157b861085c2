"""The neighbours feature: votes of the nearest train contexts for their targets (`reges.retrieval.neighbours`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from candidate_fixtures import (
    ITEM_IDS,
    N_ITEMS,
    WEIGHTS,
    assert_candidates_exact,
    candidate_queries,
    candidate_retriever,
)

from reges.config import IndexConfig
from reges.errors import ConfigError, DataError
from reges.retrieval.fusion import NO_QUERY, WITH_QUERY, FusedRetriever, top_hits
from reges.retrieval.neighbours import NEIGHBOURS_FILE, DialogueNeighbours

# four train examples in a 4-dimensional space; the query's cosines with them are 0.9, 0.5, 0.8, 0.1
TRAIN = np.eye(4, dtype=np.float32)
QUERY = np.array([[0.9, 0.5, 0.8, 0.1]], dtype=np.float32)
TARGETS = [[0], [1], [0, 2], [1]]  # catalog columns of each example's targets (3 items)


def _neighbours(m: int, tau: float = 0.1) -> DialogueNeighbours:
    return DialogueNeighbours.build(TRAIN, TARGETS, ["d0", "d1", "d2", None], num_items=3, m=m, tau=tau)


def test_the_m_nearest_vote_for_their_targets_by_similarity() -> None:
    w0, w2 = np.exp((0.9 - 1.0) / 0.1), np.exp((0.8 - 1.0) / 0.1)
    assert _neighbours(2).scores(QUERY, [None]) == pytest.approx(np.array([[w0 + w2, 0.0, w2]]))
    w1, w3 = np.exp((0.5 - 1.0) / 0.1), np.exp((0.1 - 1.0) / 0.1)
    assert _neighbours(10).scores(QUERY, [None]) == pytest.approx(np.array([[w0 + w2, w1 + w3, w2]]))  # m > n


def test_a_query_never_votes_with_its_own_dialogue() -> None:
    """A train example retrieved for mining would otherwise read its own target."""
    w1, w2 = np.exp((0.5 - 1.0) / 0.1), np.exp((0.8 - 1.0) / 0.1)
    assert _neighbours(2).scores(QUERY, ["d0"]) == pytest.approx(np.array([[w2, w1, w2]]))
    cols, votes = _neighbours(2).row(QUERY[0], "d0")
    assert cols.tolist() == [0, 1, 2] and votes == pytest.approx([w2, w1, w2])


def test_an_empty_context_gets_no_votes_and_row_matches_scores() -> None:
    nb = _neighbours(3, tau=0.5)
    assert not nb.scores(np.zeros((1, 4), dtype=np.float32), [None]).any()
    assert nb.row(np.zeros(4, dtype=np.float32), None)[0].size == 0
    cols, votes = nb.row(QUERY[0], "d2")
    dense = nb.scores(QUERY, ["d2"])[0]
    assert cols.tolist() == np.flatnonzero(dense).tolist() and votes == pytest.approx(dense[cols])


def test_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    nb = _neighbours(2)
    assert nb.save(tmp_path) == 4
    back = DialogueNeighbours.load(tmp_path, 3)
    assert (back.m, back.tau) == (2, 0.1) and back.dialogue_ids.tolist() == ["d0", "d1", "d2", ""]
    np.testing.assert_array_equal(back.scores(QUERY, ["d1"]), nb.scores(QUERY, ["d1"]))
    with pytest.raises(DataError, match="built for 3 catalog items, the index has 5"):
        DialogueNeighbours.load(tmp_path, 5)
    (tmp_path / NEIGHBOURS_FILE).unlink()
    with pytest.raises(DataError, match="train_retriever.neighbours=true writes it"):
        DialogueNeighbours.load(tmp_path, 3)
    with pytest.raises(DataError, match="m must be >= 1"):
        _neighbours(0)


def _with_neighbours(index_cfg: IndexConfig | None, pool: int, weights: dict) -> FusedRetriever:
    """The candidate tests' retriever plus neighbours: 300 train contexts over the first 400 items."""
    base = candidate_retriever(index_cfg, pool)
    rng = np.random.default_rng(3)
    contexts, _, _ = candidate_queries(300)
    emb = base.dialogue_vectors(contexts)
    targets = [rng.choice(400, size=int(rng.integers(1, 3)), replace=False).tolist() for _ in contexts]
    nb = DialogueNeighbours.build(emb, targets, [f"d{i % 50}" for i in range(300)], N_ITEMS, m=40, tau=0.2)
    return FusedRetriever(base.encoder, base.item_embeddings, ITEM_IDS, base.counts, weights, base.settings,
                          index=base.index, candidate_pool=pool, neighbours=nb)


@pytest.mark.parametrize("dense_weight", [1.0, 0.0])
def test_neighbours_on_the_candidate_path_stay_exact(dense_weight: float) -> None:
    """The candidates include every item a neighbour voted for: identical hits and scores (also when the dialogue's
    own dense feature has no weight, so its vector is embedded for the neighbours alone)."""
    weights = {NO_QUERY: {**WEIGHTS[NO_QUERY], "dense_dialogue": dense_weight, "neighbours": 0.8},
               WITH_QUERY: {**WEIGHTS[WITH_QUERY], "neighbours": -0.3}}
    fast = _with_neighbours(IndexConfig(index_type="ivf", nlist=16, nprobe=16), 300, weights)
    want = assert_candidates_exact(fast)
    contexts, queries, exclude = candidate_queries(40)
    # the feature comes last among the raw features, as train-retriever lists them (the weight search follows it)
    assert list(fast.features(contexts[:2], queries[:2], exclude[:2], sorted(weights[WITH_QUERY])))[-1] == "neighbours"
    # and the feature moves the ranking: without it the lists differ
    without = {k: {f: v for f, v in w.items() if f != "neighbours"} for k, w in weights.items()}
    plain = top_hits(_with_neighbours(None, 300, without).scores(contexts, queries, exclude), ITEM_IDS,
                     fast.id_rank, 20)
    assert [[h.item_id for h in g] for g in plain] != [[h.item_id for h in w] for w in want]


def test_a_neighbours_weight_without_the_neighbours_is_refused() -> None:
    with pytest.raises(ConfigError, match="neighbours fusion feature needs"):
        candidate_retriever(None, 300, {NO_QUERY: {"dense_dialogue": 1.0, "neighbours": 0.5}})
