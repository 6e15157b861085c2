"""recall@k over (example, target) pairs and the two evaluation protocols, for every stage that scores a ranking.

Defined here, in the retrieval package, and not in `reges.eval.metrics`, because stages below `eval` score with it:
fusion weight tuning (`reges.retrieval.fusion`) and the distill stage's retrieval feedback
(`reges.query_expert.distill`). `reges.eval.metrics` imports and re-exports these names, and documents the unit of
evaluation, the protocols and how targets absent from the catalog count.

Protocols
    "all":   every target of every example (the usual CRSLab/UniCRS setting).
    "novel": only targets not mentioned earlier in the dialogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from reges.errors import ConfigError

EvalProtocol = Literal["all", "novel"]
PROTOCOLS: tuple[EvalProtocol, ...] = ("all", "novel")


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
