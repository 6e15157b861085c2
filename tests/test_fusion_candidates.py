"""The fused retriever's candidate path (an approximate index): the same top-k as scoring the whole catalog.

Scoring every item of a million-item catalog costs ~140 ms per query (docs/results/scale_notes.md); with an IVF or
HNSW index `FusedRetriever.search` scores only the index hits, the counted items and the context's items, with
whole-catalog z-score statistics in closed form. An IVF index probing all its cells returns the exact top-N, so
here the candidate path must give exactly the whole-catalog answer, hits and scores, for every query: whether its
candidates prove their top-k or it falls back.
"""

from __future__ import annotations

import numpy as np
import pytest
from candidate_fixtures import (
    ITEM_IDS,
    WEIGHTS,
    assert_candidates_exact,
    candidate_queries,
    candidate_retriever,
)

from reges.config import IndexConfig
from reges.errors import ConfigError
from reges.retrieval.fusion import NO_QUERY, WITH_QUERY, top_hits


@pytest.mark.parametrize("pool", [300, 3])
def test_candidate_path_equals_whole_catalog_scoring(pool: int) -> None:
    """Exact candidates (IVF probing every cell): identical hits and scores, proven or after a fallback."""
    exhaustive = IndexConfig(index_type="ivf", nlist=16, nprobe=16)
    fast = candidate_retriever(exhaustive, pool)
    assert fast.index is not None
    contexts, queries, exclude = candidate_queries(40)
    got = fast.search(contexts, queries, 20, exclude)
    want = top_hits(fast.scores(contexts, queries, exclude), ITEM_IDS, fast.id_rank, 20)
    for g, w in zip(got, want, strict=True):
        assert [h.item_id for h in g] == [h.item_id for h in w]
        # float32 cosines summed in another order: the same scores to ~1e-7 relative
        assert [h.score for h in g] == pytest.approx([h.score for h in w], rel=1e-6)
    if pool == 300:
        assert fast.fallbacks + fast.deepened < 5  # most requests are proven by their first candidates
    else:
        # 3 index hits and 3 popular items rarely prove a top-20: the request reads deeper (up to 8x), then falls
        # back to the whole catalog; either way the answer is exact
        assert fast.deepened > 20 and fast.fallbacks > 0


def test_content_similarity_stays_exact() -> None:
    """content (the mean named card, read from the index like the dense features), with a positive and a negative
    weight: identical hits and scores."""
    weights = {NO_QUERY: {**WEIGHTS[NO_QUERY], "content": 0.4}, WITH_QUERY: {**WEIGHTS[WITH_QUERY], "content": -0.2}}
    fast = candidate_retriever(IndexConfig(index_type="ivf", nlist=16, nprobe=16), 300, weights)
    assert_candidates_exact(fast)


def test_negative_dense_weight_stays_exact() -> None:
    """A dense feature with a negative weight is bounded by the lowest cosine (-1), not by the index's hits."""
    weights = {NO_QUERY: {"dense_dialogue": -0.3, "comention": 1.0, "popularity": 0.5}}
    fast = candidate_retriever(IndexConfig(index_type="ivf", nlist=16, nprobe=16), 300, weights)
    contexts, queries, exclude = candidate_queries(10)
    got = fast.search(contexts, [None] * 10, 10, exclude)
    want = top_hits(fast.scores(contexts, [None] * 10, exclude), ITEM_IDS, fast.id_rank, 10)
    assert [[h.item_id for h in g] for g in got] == [[h.item_id for h in w] for w in want]


def test_hnsw_candidates_keep_the_top_k() -> None:
    """A real approximate index (HNSW): the candidate path keeps nearly all of the exact top-20."""
    fast = candidate_retriever(IndexConfig(index_type="hnsw", hnsw_m=16, ef_construction=100, ef_search=400), 300)
    contexts, queries, exclude = candidate_queries(40)
    got = fast.search(contexts, queries, 20, exclude)
    want = top_hits(fast.scores(contexts, queries, exclude), ITEM_IDS, fast.id_rank, 20)
    kept = np.mean([len({h.item_id for h in g} & {h.item_id for h in w}) / 20 for g, w in zip(got, want, strict=True)])
    assert kept >= 0.98


def test_a_flat_index_scores_the_whole_catalog_and_a_bad_pool_is_refused() -> None:
    assert candidate_retriever(IndexConfig(index_type="flat"), 300).index is None
    with pytest.raises(ConfigError, match="retrieve.candidate_pool must be >= 1"):
        candidate_retriever(IndexConfig(index_type="ivf", nlist=16, nprobe=16), 0)
