"""Retrieval and end-to-end metrics, each defined once, with its formula and evaluation protocol.

recall@k itself and the protocol names (`recall_at_k`, `hit_at_k`, `recall_key`, `PROTOCOLS`) are defined in
`reges.retrieval.recall`, below this package, because the retrieval and distill stages score with them too; they
are imported here, so `from reges.eval.metrics import recall_at_k` keeps working. Everything else is defined here.

Unit of evaluation: the (example, target) pair
    A recommendation example (`RecExample`) has one or more target items: the items the assistant
    mentions in the recommending turn. Following CRSLab and UniCRS, every (example, target) pair is
    scored on its own: an example with three targets contributes three pairs, each a hit or a miss.
    A `TargetRank` records one pair and the rank its item got (1-based; None when not retrieved).

Protocols
    "all":   every target of every example (the usual CRSLab/UniCRS setting).
    "novel": only targets not mentioned earlier in the dialogue (`target_mentioned` False). About half
             of the recall reported on ReDial comes from repeating items already in the context, which a
             retriever can copy from the query; "novel" measures actual recommendation.
    "full":  Kostric & Balog's standardised ReDial set (SIGIR 2026, iai-group/redial-reproducibility,
             `recommender_all`): every target of the examples with a non-empty context (they build an instance only
             when "there is previous conversation context").
    "fresh": their "dedup" set (`--fresh-only`): the "full" examples' targets not mentioned earlier by either
             party; an example left without such a target is dropped. It is "novel" without the examples that open
             a dialogue (a recommender whose first turn names a film).
    An example counts in a protocol's `n_examples` when it has at least one target under that protocol. The
    retrieval and distill stages score "all" and "novel" only (`reges.retrieval.recall.PROTOCOLS`); the evaluate
    stage reports all four (`EVAL_PROTOCOLS`).

Targets absent from the catalog
    They cannot be retrieved, so they count as misses (never dropped: dropping them would inflate
    recall) and are counted in `missing_targets`.

Confidence intervals
    95% percentile bootstrap, resampling *dialogues* (clusters) with replacement, not pairs. Examples of
    one dialogue share the user, the context prefix and often the targets, so their outcomes are
    correlated; resampling pairs independently would treat them as independent evidence and give
    intervals that are too narrow. The clustered bootstrap keeps each dialogue's pairs together, so the
    interval reflects the number of dialogues actually observed. Seeded for reproducibility.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reges.errors import ConfigError, DataError
from reges.retrieval.recall import PROTOCOLS as PROTOCOLS  # re-exported: evaluate and the benchmarks use it
from reges.retrieval.recall import EvalProtocol, hit_at_k, recall_at_k, recall_key

if TYPE_CHECKING:
    from reges.retrieval.fusion import TunePairs

# The evaluate stage's protocols: ours ("all", "novel") and Kostric & Balog's ("full", "fresh"); see the module
# docstring. Recall only: the end-to-end picks are scored under PROTOCOLS.
EvalSet = Literal["all", "novel", "full", "fresh"]
EVAL_PROTOCOLS: tuple[EvalSet, ...] = ("all", "novel", "full", "fresh")


@dataclass(frozen=True)
class TargetRank:
    """One (example, target) pair and where the method ranked the target.

    Attributes:
        example_id: The example.
        dialogue_id: Its dialogue (the bootstrap cluster).
        item_id: The target item.
        mentioned: Whether the target was already mentioned in the context (excluded by "novel").
        in_catalog: Whether the target exists in the catalog (False: always a miss).
        rank: 1-based rank of the target in the method's list; None when it is not in the list.
        has_context: Whether the example has earlier turns (protocols "full" and "fresh" need them).
    """

    example_id: str
    dialogue_id: str
    item_id: str
    mentioned: bool
    in_catalog: bool
    rank: int | None
    has_context: bool = True


def target_ranks(
    example_id: str,
    dialogue_id: str,
    target_item_ids: Sequence[str],
    target_mentioned: Sequence[bool],
    ranked_item_ids: Sequence[str],
    catalog_ids: set[str] | frozenset[str],
    has_context: bool = True,
) -> list[TargetRank]:
    """Score one example's targets against one ranked list.

    Args:
        has_context: Whether the example has earlier turns (recorded on every pair, for "full" and "fresh").

    Returns:
        One `TargetRank` per target, in target order.
    """
    if len(target_item_ids) != len(target_mentioned):
        raise DataError(
            f"example {example_id!r} has {len(target_item_ids)} targets but {len(target_mentioned)} "
            "target_mentioned flags; rerun `reges data`"
        )
    position: dict[str, int] = {}
    for i, item_id in enumerate(ranked_item_ids):
        position.setdefault(item_id, i + 1)
    return [
        TargetRank(example_id, dialogue_id, t, bool(m), t in catalog_ids, position.get(t), has_context)
        for t, m in zip(target_item_ids, target_mentioned, strict=True)
    ]


def select_protocol(pairs: Sequence[TargetRank], protocol: EvalProtocol | EvalSet) -> list[TargetRank]:
    """The pairs a protocol scores (see the module docstring)."""
    if protocol == "all":
        return list(pairs)
    if protocol == "novel":
        return [p for p in pairs if not p.mentioned]
    if protocol == "full":
        return [p for p in pairs if p.has_context]
    if protocol == "fresh":
        return [p for p in pairs if p.has_context and not p.mentioned]
    raise ConfigError(f"protocol must be one of {EVAL_PROTOCOLS}, got {protocol!r}")


def bootstrap_recall_ci(
    pairs: Sequence[TargetRank], cutoffs: Sequence[int], resamples: int, seed: int
) -> dict[int, tuple[float, float]]:
    """95% clustered-bootstrap interval of recall@k for each cutoff (clusters = dialogues).

    Each resample draws as many dialogues as there are, with replacement, and recomputes recall@k as
    (hits in the drawn dialogues) / (targets in the drawn dialogues), a dialogue drawn twice counting
    twice. The interval is the 2.5th and 97.5th percentile of the resampled values.

    Args:
        pairs: The pairs under one protocol.
        cutoffs: Recall cutoffs.
        resamples: Bootstrap resamples (0: the interval collapses to the point estimate).
        seed: Seed of the resampling.

    Returns:
        cutoff -> (ci_low, ci_high).
    """
    if resamples < 0:
        raise ConfigError(f"evaluate.bootstrap must be >= 0, got {resamples}")
    if not pairs:
        return {k: (0.0, 0.0) for k in cutoffs}
    dialogue_ids = sorted({p.dialogue_id for p in pairs})
    col = {d: i for i, d in enumerate(dialogue_ids)}
    num_dialogues = len(dialogue_ids)
    hits = np.zeros((num_dialogues, len(cutoffs)), dtype=np.float64)  # (D, K) hits per dialogue and cutoff
    targets = np.zeros(num_dialogues, dtype=np.float64)  # (D,) pairs per dialogue
    for p in pairs:
        d = col[p.dialogue_id]
        targets[d] += 1
        for j, k in enumerate(cutoffs):
            hits[d, j] += hit_at_k(p.rank, k)
    if resamples == 0:
        point = hits.sum(0) / targets.sum()
        return {k: (float(point[j]), float(point[j])) for j, k in enumerate(cutoffs)}
    rng = np.random.default_rng(seed)
    # How often each dialogue is drawn in each resample: (B, D) counts summing to D per row.
    draws = rng.multinomial(num_dialogues, np.full(num_dialogues, 1.0 / num_dialogues), size=resamples)
    recalls = (draws @ hits) / (draws @ targets)[:, None]  # (B, K); every dialogue has >= 1 target
    low = np.percentile(recalls, 2.5, axis=0)
    high = np.percentile(recalls, 97.5, axis=0)
    return {k: (float(low[j]), float(high[j])) for j, k in enumerate(cutoffs)}


def paired_bootstrap_diff(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], resamples: int, seed: int
) -> tuple[float, float, float, float, float]:
    """Mean of a, mean of b, and b - a with its 95 % interval, both resampled with the same dialogues.

    Why paired: two variants ranking the same examples share most of their sampling noise; the interval of the
    difference says whether one beats the other where two overlapping per-variant intervals cannot.

    Args:
        a: dialogue id -> per-target hit flags (1.0 / 0.0) of the baseline.
        b: The same dialogues and targets for the variant.
        resamples: Bootstrap resamples (>= 1).
        seed: Seed of the resampling.

    Returns:
        (mean a, mean b, mean b - mean a, ci low, ci high).
    """
    if sorted(a) != sorted(b) or any(len(a[d]) != len(b[d]) for d in a):
        raise DataError("paired bootstrap: both variants must score the same dialogues and targets")
    dialogues = sorted(a)
    if not dialogues:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    sums_a = np.array([sum(a[d]) for d in dialogues])
    sums_b = np.array([sum(b[d]) for d in dialogues])
    counts = np.array([len(a[d]) for d in dialogues])
    idx = np.random.default_rng(seed).integers(len(dialogues), size=(max(resamples, 1), len(dialogues)))
    diff = (sums_b[idx].sum(1) - sums_a[idx].sum(1)) / np.maximum(counts[idx].sum(1), 1)
    mean_a, mean_b = sums_a.sum() / max(counts.sum(), 1), sums_b.sum() / max(counts.sum(), 1)
    low, high = np.percentile(diff, [2.5, 97.5])
    return float(mean_a), float(mean_b), float(mean_b - mean_a), float(low), float(high)


def dialogue_hits(ranks: np.ndarray, pairs: TunePairs, dialogue_ids: Sequence[str | None], novel: bool,
                  k: int) -> dict[str, list[float]]:
    """dialogue id -> the hit flag at k of each of its (example, target) pairs (novel targets only when `novel`).

    The form `paired_bootstrap_diff` resamples (whole dialogues). `ranks` are `reges.retrieval.fusion.pair_ranks`
    of `pairs`; `dialogue_ids[q]` is the dialogue of example row q.
    """
    out: dict[str, list[float]] = {}
    for p, q in enumerate(pairs.query_index):
        if not novel or pairs.novel[p]:
            out.setdefault(str(dialogue_ids[q]), []).append(float(ranks[p] <= k))
    return out


def paired_recall_table(ranks: Mapping[str, np.ndarray], base: str, pairs: TunePairs,
                        dialogue_ids: Sequence[str | None], cutoffs: Sequence[int], resamples: int,
                        seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Recall@k of several rankings of the same pairs, each with its paired difference to `base`.

    Why: variants of one retriever (fusion weights, features) rank the same examples; the interval of the
    difference, resampled by dialogue, says whether one beats the other.

    Returns:
        {label: {"all/recall@k" and "novel/recall@k": {"mean", "diff", "diff_ci": [low, high]}}}, rounded to 4
        places; the base row's differences are 0.
    """
    table: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in ranks}
    for protocol in ("all", "novel"):
        for k in cutoffs:
            a = dialogue_hits(ranks[base], pairs, dialogue_ids, protocol == "novel", k)
            for label, r in ranks.items():
                b = dialogue_hits(r, pairs, dialogue_ids, protocol == "novel", k)
                _, mean, diff, low, high = paired_bootstrap_diff(a, b, resamples, seed)
                table[label][f"{protocol}/recall@{k}"] = {"mean": round(mean, 4), "diff": round(diff, 4),
                                                         "diff_ci": [round(low, 4), round(high, 4)]}
    return table



def paired_cells(table: Mapping[str, Mapping[str, Mapping[str, Any]]], label: str, base: str,
                 cols: Sequence[str]) -> list[str]:
    """One row of a paired table (`paired_recall_table`, benchmarks/compare_runs.py) as the result pages print it:
    each recall, and for rows other than `base` its paired difference with the 95 % interval."""
    cells = []
    for c in cols:
        v = table[label][c]
        cells.append(f"{v['mean']:.3f}" if label == base else
                     f"{v['mean']:.3f} ({v['diff']:+.3f} [{v['diff_ci'][0]:+.3f}, {v['diff_ci'][1]:+.3f}])")
    return cells


def summarize(
    pairs: Sequence[TargetRank], protocol: EvalProtocol | EvalSet, cutoffs: Sequence[int], resamples: int, seed: int
) -> dict[str, object]:
    """Recall@k with 95% CIs and counts for one method under one protocol.

    Returns:
        {"recall@k": {"mean", "ci_low", "ci_high"} for each cutoff, "n_examples", "n_targets",
        "n_dialogues", "missing_targets"}.
    """
    selected = select_protocol(pairs, protocol)
    ranks = [p.rank for p in selected]
    cis = bootstrap_recall_ci(selected, cutoffs, resamples, seed)
    out: dict[str, object] = {}
    for k in cutoffs:
        low, high = cis[k]
        out[recall_key(k)] = {"mean": recall_at_k(ranks, k), "ci_low": low, "ci_high": high}
    out["n_examples"] = len({p.example_id for p in selected})
    out["n_targets"] = len(selected)
    out["n_dialogues"] = len({p.dialogue_id for p in selected})
    out["missing_targets"] = sum(1 for p in selected if not p.in_catalog)
    return out


# ---------------------------------------------------------------------------------------------------------------
# End to end: the Item Expert's single pick per example.
#
# Unit of evaluation: the example (one pick each), not the (example, target) pair: a recommender that names one
# item is right when that item is any of the targets. Protocols select examples: "all" keeps examples with at least
# one target, "novel" keeps examples with at least one novel target and counts a pick as right only when it is a
# novel target (repeating an item already mentioned earlier in the dialogue does not count). Confidence intervals
# resample dialogues, as for recall, and for the same reason.


@dataclass(frozen=True)
class PickOutcome:
    """One example's final pick and what it is scored against.

    Attributes:
        example_id: The example.
        dialogue_id: Its dialogue (the bootstrap cluster).
        item_id: The picked item; None when the answer matched no item at all.
        in_candidates: The answer matched one of the candidates shown (False: a hallucination).
        in_catalog: The answer matched a catalog item (False: a catalog miss).
        target_item_ids: The example's targets.
        target_mentioned: For each target, whether it was mentioned earlier in the dialogue.
        candidate_ids: The candidates shown to the Item Expert, in order.
    """

    example_id: str
    dialogue_id: str
    item_id: str | None
    in_candidates: bool
    in_catalog: bool
    target_item_ids: tuple[str, ...]
    target_mentioned: tuple[bool, ...]
    candidate_ids: tuple[str, ...] = ()

    def targets(self, protocol: EvalProtocol) -> set[str]:
        """The targets a protocol scores: all, or those not mentioned earlier."""
        if protocol == "all":
            return set(self.target_item_ids)
        if protocol == "novel":
            return {t for t, m in zip(self.target_item_ids, self.target_mentioned, strict=True) if not m}
        raise ConfigError(f"protocol must be 'all' or 'novel', got {protocol!r}")

    def success(self, protocol: EvalProtocol) -> bool:
        """Whether the pick is a target under the protocol."""
        return self.item_id is not None and self.item_id in self.targets(protocol)

    def target_in_candidates(self, protocol: EvalProtocol) -> bool:
        """Whether a target under the protocol was among the candidates (so a perfect picker could succeed)."""
        return bool(self.targets(protocol) & set(self.candidate_ids))


def select_outcomes(outcomes: Sequence[PickOutcome], protocol: EvalProtocol) -> list[PickOutcome]:
    """The examples a protocol scores: those with at least one target under it."""
    return [o for o in outcomes if o.targets(protocol)]


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def success_rate(outcomes: Sequence[PickOutcome], protocol: EvalProtocol) -> float:
    """Share of examples whose single pick is a target.

    Formula:
        success_rate = (1 / |E|) * sum over e in E of [pick_e in T_e]
    where E is the set of examples with at least one target under the protocol and T_e their targets under it.
    Protocol "all": T_e = every target. Protocol "novel": E = examples with a novel target, T_e = the novel targets
    only (a pick repeating an item already in the dialogue is a failure). A pick that matched nothing, or a target
    missing from the catalog, is a miss. A retriever's top-1 is scored the same way, pick = its first candidate.

    Returns:
        The rate in [0, 1]; 0.0 when no example qualifies.
    """
    return _mean([o.success(protocol) for o in select_outcomes(outcomes, protocol)])


def hallucination_rate(outcomes: Sequence[PickOutcome], protocol: EvalProtocol = "all") -> float:
    """Share of examples whose answer matches none of the candidates it was shown.

    Formula:
        hallucination_rate = (1 / |E|) * sum over e in E of [answer_e matches no candidate of e]
    over the examples E a protocol scores (see `success_rate`). Free decoding can hallucinate (the paper's
    measurement); constrained decoding and ranking cannot (0 by construction).
    """
    return _mean([not o.in_candidates for o in select_outcomes(outcomes, protocol)])


def catalog_miss_rate(outcomes: Sequence[PickOutcome], protocol: EvalProtocol = "all") -> float:
    """Share of examples whose answer matches no catalog item at all (a title that does not exist in the catalog).

    Formula:
        catalog_miss_rate = (1 / |E|) * sum over e in E of [answer_e matches no catalog item]
    over the examples E a protocol scores; always <= hallucination_rate (a candidate is a catalog item).
    """
    return _mean([not o.in_catalog for o in select_outcomes(outcomes, protocol)])


def bootstrap_mean_ci(
    flags: Sequence[bool], dialogue_ids: Sequence[str], resamples: int, seed: int
) -> tuple[float, float]:
    """95% clustered-bootstrap interval of a share of examples (clusters = dialogues).

    Each resample draws as many dialogues as there are, with replacement, and recomputes the share as (flagged
    examples in the drawn dialogues) / (examples in the drawn dialogues); percentiles 2.5 and 97.5.

    Args:
        flags: One boolean per example.
        dialogue_ids: Each example's dialogue.
        resamples: Bootstrap resamples (0: the interval collapses to the point estimate).
        seed: Seed of the resampling.
    """
    if resamples < 0:
        raise ConfigError(f"evaluate.bootstrap must be >= 0, got {resamples}")
    if len(flags) != len(dialogue_ids):
        raise DataError(f"{len(flags)} flags but {len(dialogue_ids)} dialogue ids; pass one per example")
    if not flags:
        return (0.0, 0.0)
    clusters = sorted(set(dialogue_ids))
    col = {d: i for i, d in enumerate(clusters)}
    hits = np.zeros(len(clusters))  # (D,) flagged examples per dialogue
    counts = np.zeros(len(clusters))  # (D,) examples per dialogue
    for flag, d in zip(flags, dialogue_ids, strict=True):
        counts[col[d]] += 1
        hits[col[d]] += flag
    if resamples == 0:
        point = float(hits.sum() / counts.sum())
        return (point, point)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(clusters), np.full(len(clusters), 1.0 / len(clusters)), size=resamples)  # (B, D)
    shares = (draws @ hits) / (draws @ counts)  # (B,)
    return (float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5)))


def summarize_picks(
    outcomes: Sequence[PickOutcome], protocol: EvalProtocol, resamples: int, seed: int
) -> dict[str, object]:
    """End-to-end metrics with 95% CIs for one method under one protocol.

    Returns:
        {"success_rate", "success_given_candidates", "hallucination_rate", "catalog_miss_rate"}: each
        {"mean", "ci_low", "ci_high"}; plus "n_examples", "n_dialogues" and "n_target_in_candidates" (the
        examples `success_given_candidates` is computed over: a target under the protocol was shown).
    """
    selected = select_outcomes(outcomes, protocol)
    shown = [o for o in selected if o.target_in_candidates(protocol)]

    def entry(group: list[PickOutcome], flags: list[bool]) -> dict[str, float]:
        low, high = bootstrap_mean_ci(flags, [o.dialogue_id for o in group], resamples, seed)
        return {"mean": _mean(flags), "ci_low": low, "ci_high": high}

    return {
        "success_rate": entry(selected, [o.success(protocol) for o in selected]),
        "success_given_candidates": entry(shown, [o.success(protocol) for o in shown]),
        "hallucination_rate": entry(selected, [not o.in_candidates for o in selected]),
        "catalog_miss_rate": entry(selected, [not o.in_catalog for o in selected]),
        "n_examples": len(selected),
        "n_dialogues": len({o.dialogue_id for o in selected}),
        "n_target_in_candidates": len(shown),
    }
