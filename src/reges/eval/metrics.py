"""Retrieval metrics, each defined once here, with its formula and evaluation protocol.

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
    An example counts in a protocol's `n_examples` when it has at least one target under that protocol.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from reges.errors import ConfigError, DataError

EvalProtocol = Literal["all", "novel"]
PROTOCOLS: tuple[EvalProtocol, ...] = ("all", "novel")


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
    """

    example_id: str
    dialogue_id: str
    item_id: str
    mentioned: bool
    in_catalog: bool
    rank: int | None


def recall_key(top_k: int) -> str:
    """Metric name for a cutoff: "recall@10"."""
    return f"recall@{top_k}"


def hit_at_k(rank: int | None, top_k: int) -> bool:
    """Whether a target ranked `rank` (1-based, None = not retrieved) is within the first `top_k`."""
    return rank is not None and rank <= top_k


def recall_at_k(ranks: Sequence[int | None], top_k: int) -> float:
    """Recall@k over (example, target) pairs.

    Formula:
        recall@k = (1 / |P|) * sum over pairs (e, t) in P of [rank_e(t) <= k]
    where P is the set of pairs under the protocol and rank_e(t) the 1-based rank of target t in the list
    returned for example e (infinite when absent). Equivalently sum_e |T_e ∩ top_k(e)| / sum_e |T_e|: a
    micro average over targets, so an example with more targets weighs more (the CRSLab/UniCRS convention).

    Args:
        ranks: One rank per pair (None = not retrieved, including targets absent from the catalog).
        top_k: The cutoff k >= 1.

    Returns:
        The recall in [0, 1]; 0.0 for no pairs.
    """
    if top_k < 1:
        raise ConfigError(f"recall cutoff must be >= 1, got {top_k}; fix evaluate.cutoffs")
    if not ranks:
        return 0.0
    return sum(hit_at_k(r, top_k) for r in ranks) / len(ranks)


def target_ranks(
    example_id: str,
    dialogue_id: str,
    target_item_ids: Sequence[str],
    target_mentioned: Sequence[bool],
    ranked_item_ids: Sequence[str],
    catalog_ids: set[str] | frozenset[str],
) -> list[TargetRank]:
    """Score one example's targets against one ranked list.

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
        TargetRank(example_id, dialogue_id, t, bool(m), t in catalog_ids, position.get(t))
        for t, m in zip(target_item_ids, target_mentioned, strict=True)
    ]


def select_protocol(pairs: Sequence[TargetRank], protocol: EvalProtocol) -> list[TargetRank]:
    """The pairs a protocol scores: all of them, or the not-yet-mentioned targets only."""
    if protocol == "all":
        return list(pairs)
    if protocol == "novel":
        return [p for p in pairs if not p.mentioned]
    raise ConfigError(f"protocol must be 'all' or 'novel', got {protocol!r}")


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


def summarize(
    pairs: Sequence[TargetRank], protocol: EvalProtocol, cutoffs: Sequence[int], resamples: int, seed: int
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
