"""Metric definitions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from reges.errors import ConfigError, DataError
from reges.eval.metrics import (
    TargetRank,
    bootstrap_recall_ci,
    dialogue_hits,
    hit_at_k,
    paired_cells,
    paired_recall_table,
    recall_at_k,
    recall_key,
    select_protocol,
    summarize,
    target_ranks,
)
from reges.retrieval.fusion import TunePairs


def _pair(dialogue_id: str, rank: int | None, example_id: str = "", mentioned: bool = False) -> TargetRank:
    return TargetRank(example_id or f"{dialogue_id}_x", dialogue_id, "i", mentioned, True, rank)


def test_recall_at_k_by_hand() -> None:
    ranks = [1, 3, None, 10]
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 3) == 0.5
    assert recall_at_k(ranks, 9) == 0.5
    assert recall_at_k(ranks, 10) == 0.75
    assert recall_at_k([], 5) == 0.0
    assert hit_at_k(5, 5) and not hit_at_k(6, 5) and not hit_at_k(None, 50)
    assert recall_key(50) == "recall@50"
    with pytest.raises(ConfigError, match="cutoff must be >= 1"):
        recall_at_k(ranks, 0)


def test_target_ranks_positions_missing_items_and_first_occurrence() -> None:
    ranked = ["a", "b", "a", "c"]  # a repeated id keeps its first (best) position
    pairs = target_ranks("e1", "d1", ["c", "a", "zz", "q"], [False, True, False, False], ranked, frozenset("abcq"))
    assert [p.rank for p in pairs] == [4, 1, None, None]
    assert [p.in_catalog for p in pairs] == [True, True, False, True]
    assert [p.mentioned for p in pairs] == [False, True, False, False]
    with pytest.raises(DataError, match="2 targets but 1 target_mentioned"):
        target_ranks("e1", "d1", ["a", "b"], [False], ranked, frozenset("ab"))


def test_micro_average_over_pairs_and_protocols() -> None:
    # e1 has 3 targets (2 found at ranks 1 and 2, one already mentioned), e2 has 1 target, not found.
    pairs = [
        TargetRank("e1", "d1", "a", True, True, 1),
        TargetRank("e1", "d1", "b", False, True, 2),
        TargetRank("e1", "d1", "c", False, True, None),
        TargetRank("e2", "d2", "x", False, False, None),
    ]
    assert len(select_protocol(pairs, "novel")) == 3
    out = summarize(pairs, "all", [1, 2], resamples=0, seed=0)
    # all: hits@1 = 1/4, hits@2 = 2/4 (a micro average; the per-example average would be (2/3 + 0)/2 = 1/3)
    assert out["recall@1"]["mean"] == 0.25
    assert out["recall@2"]["mean"] == 0.5
    assert (out["n_examples"], out["n_targets"], out["n_dialogues"], out["missing_targets"]) == (2, 4, 2, 1)
    novel = summarize(pairs, "novel", [1, 2], resamples=0, seed=0)
    assert novel["recall@1"]["mean"] == 0.0
    assert novel["recall@2"]["mean"] == pytest.approx(1 / 3)
    assert (novel["n_examples"], novel["n_targets"], novel["missing_targets"]) == (2, 3, 1)
    # resamples=0 collapses the interval to the point estimate
    assert novel["recall@2"]["ci_low"] == novel["recall@2"]["ci_high"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="protocol must be"):
        select_protocol(pairs, "seen")  # type: ignore[arg-type]


def test_bootstrap_resamples_whole_dialogues() -> None:
    # d1: 3 hits, d2: 1 miss. Resampling two dialogues gives only {d1,d1}=1.0, {d1,d2}=0.75, {d2,d2}=0.0
    # (each with probability 1/4, 1/2, 1/4), so the 95% interval is exactly [0, 1]. Resampling pairs
    # independently would also produce 0.25 and 0.5 and never reach those ends as often.
    pairs = [_pair("d1", 1), _pair("d1", 1), _pair("d1", 1), _pair("d2", None)]
    cis = bootstrap_recall_ci(pairs, [1], resamples=2000, seed=0)
    assert cis[1] == (0.0, 1.0)


def test_clustered_interval_is_wider_than_pairwise() -> None:
    # 10 dialogues of 10 pairs each: 5 all hits, 5 all misses. Recall 0.5 either way, but the information is
    # in 10 dialogues, not 100 pairs: the cluster bootstrap's sd is about 0.5/sqrt(10) = 0.16 (95% CI ~ 0.2-0.8)
    # while a pair bootstrap would give 0.5/sqrt(100) = 0.05 (~0.4-0.6).
    pairs = [_pair(f"d{d}", 1 if d < 5 else None, example_id=f"d{d}_{i}") for d in range(10) for i in range(10)]
    low, high = bootstrap_recall_ci(pairs, [1], resamples=2000, seed=0)[1]
    assert low < 0.3 and high > 0.7
    assert high - low > 0.4


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    pairs = [_pair(f"d{d}", (d % 7) + 1, example_id=f"e{d}") for d in range(40)]
    a = bootstrap_recall_ci(pairs, [1, 3, 10], resamples=500, seed=3)
    b = bootstrap_recall_ci(pairs, [1, 3, 10], resamples=500, seed=3)
    assert a == b
    for k, (low, high) in a.items():
        mean = recall_at_k([p.rank for p in pairs], k)
        assert low <= mean <= high
    assert a[10] == (1.0, 1.0)  # every target is within the top 10 in every resample
    assert bootstrap_recall_ci([], [1], resamples=100, seed=0) == {1: (0.0, 0.0)}
    with pytest.raises(ConfigError, match="bootstrap must be >= 0"):
        bootstrap_recall_ci(pairs, [1], resamples=-1, seed=0)


def test_full_and_fresh_drop_examples_without_context() -> None:
    """Kostric & Balog's sets: "full" = "all" minus context-less examples, "fresh" = "novel" minus them."""
    pairs = [
        *target_ranks("e1", "d1", ["a", "b"], [True, False], ["a", "b"], frozenset("ab")),
        *target_ranks("e2", "d2", ["c"], [False], ["c"], frozenset("c"), has_context=False),
        *target_ranks("e3", "d3", ["a"], [True], [], frozenset("a")),
    ]
    assert [p.item_id for p in select_protocol(pairs, "full")] == ["a", "b", "a"]
    assert [(p.example_id, p.item_id) for p in select_protocol(pairs, "fresh")] == [("e1", "b")]
    fresh = summarize(pairs, "fresh", [1, 2], resamples=0, seed=0)
    # e3 has no fresh target, so it is dropped like an example the dedup set never builds
    assert (fresh["n_examples"], fresh["n_targets"], fresh["recall@2"]["mean"]) == (1, 1, 1.0)
    assert summarize(pairs, "full", [1], resamples=0, seed=0)["recall@1"]["mean"] == pytest.approx(1 / 3)


def test_paired_recall_table_differences_by_dialogue() -> None:
    # three pairs: two targets of dialogue d1 (the second one mentioned before), one of d2
    pairs = TunePairs(np.array([0, 0, 1]), np.array([3, 4, 5]), np.array([True, False, True]))
    ranks = {"base": np.array([1, 20, 60]), "better": np.array([1, 5, 8])}
    assert dialogue_hits(ranks["better"], pairs, ["d1", "d2"], novel=True, k=10) == {"d1": [1.0], "d2": [1.0]}
    table = paired_recall_table(ranks, "base", pairs, ["d1", "d2"], (1, 10), resamples=50, seed=0)
    assert table["base"]["all/recall@10"] == {"mean": 0.3333, "diff": 0.0, "diff_ci": [0.0, 0.0]}
    assert table["better"]["all/recall@10"]["mean"] == 1.0 and table["better"]["all/recall@10"]["diff"] == 0.6667
    assert table["better"]["novel/recall@10"]["diff"] == 0.5 and table["better"]["all/recall@1"]["diff"] == 0.0


def test_paired_cells_print_the_base_plainly_and_the_others_with_their_difference():
    table = {"base": {"all/recall@10": {"mean": 0.25, "diff": 0.0, "diff_ci": [0.0, 0.0]}},
             "variant": {"all/recall@10": {"mean": 0.2812, "diff": 0.0312, "diff_ci": [-0.004, 0.0651]}}}
    assert paired_cells(table, "base", "base", ["all/recall@10"]) == ["0.250"]
    assert paired_cells(table, "variant", "base", ["all/recall@10"]) == ["0.281 (+0.031 [-0.004, +0.065])"]
