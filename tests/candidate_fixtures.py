"""A 3,000-item fused retriever with an exact (IVF, every cell probed) or approximate index, and test requests:
the candidate path's fixtures, shared by tests/test_fusion_candidates.py and tests/test_neighbours.py."""

from __future__ import annotations

import numpy as np
import pytest
from retrieval_fakes import SeededTextEncoder

from reges.config import IndexConfig
from reges.records import Dialogue, Turn
from reges.retrieval.comention import CoMention
from reges.retrieval.fusion import NO_QUERY, WITH_QUERY, FusedRetriever, FusionSettings, top_hits
from reges.retrieval.index import ItemIndex

N_ITEMS, DIM = 3000, 16
ITEM_IDS = [f"i{j:05d}" for j in range(N_ITEMS)]
ENCODER = SeededTextEncoder(DIM)
WEIGHTS = {
    NO_QUERY: {"dense_dialogue": 1.0, "comention": 0.7, "popularity": 0.3, "mentioned": -0.5},
    WITH_QUERY: {"dense_dialogue": 0.6, "dense_query": 0.8, "comention": 0.5, "popularity": 0.2, "mentioned": 0.1},
}


def candidate_dialogues(rng: np.random.Generator) -> list[Dialogue]:
    """200 dialogues over the first 400 items (a catalog much bigger than what dialogues mention, as at scale)."""
    out = []
    for d in range(200):
        items = [ITEM_IDS[j] for j in rng.choice(400, size=int(rng.integers(1, 6)), replace=False)]
        out.append(Dialogue(f"d{d}", [Turn("user", "x", items[:2]), Turn("assistant", "y", items[2:])]))
    return out


def candidate_retriever(index_cfg: IndexConfig | None, pool: int, weights=WEIGHTS) -> FusedRetriever:
    rng = np.random.default_rng(0)
    cards = ENCODER.encode([f"card {i}" for i in ITEM_IDS], 64, False)
    index = ItemIndex.from_embeddings(cards, ITEM_IDS, index_cfg, seed=0) if index_cfg is not None else None
    counts = CoMention.fit(candidate_dialogues(rng))
    return FusedRetriever(ENCODER, cards, ITEM_IDS, counts, weights, FusionSettings(batch_size=64), index=index,
                          candidate_pool=pool)


def candidate_queries(n: int) -> tuple[list[list[Turn]], list[str | None], list[str | None]]:
    rng = np.random.default_rng(1)
    contexts, queries, exclude = [], [], []
    for q in range(n):
        # mentioned items from the counted range, the uncounted range, or none
        known = [ITEM_IDS[j] for j in rng.choice(400, size=int(rng.integers(0, 4)), replace=False)]
        unknown = [ITEM_IDS[j] for j in rng.choice(np.arange(400, N_ITEMS), size=int(q % 2), replace=False)]
        contexts.append([Turn("user", f"request {q}", known), Turn("assistant", "ok", unknown)])
        queries.append(f"query {q}" if q % 3 else None)
        exclude.append(f"d{q}" if q % 4 == 0 else None)
    return contexts, queries, exclude


def assert_candidates_exact(fast: FusedRetriever, n: int = 40) -> list:
    """The candidate path gives the whole catalog's hits and scores for `n` test requests; returns those hits."""
    contexts, queries, exclude = candidate_queries(n)
    got = fast.search(contexts, queries, 20, exclude)
    want = top_hits(fast.scores(contexts, queries, exclude), ITEM_IDS, fast.id_rank, 20)
    assert [[h.item_id for h in g] for g in got] == [[h.item_id for h in w] for w in want]
    assert [h.score for g in got for h in g] == pytest.approx([h.score for w in want for h in w], rel=1e-6)
    return want
