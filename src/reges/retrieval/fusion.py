"""Fused retrieval: dense similarity, the Query Expert's query, co-mentions, popularity and repeats in one score.

Features, for each (query, catalog item):
    dense_dialogue  cosine of the dialogue context text (`context_to_query`) and the item card, tuned encoder
    dense_query     cosine of the Query Expert's query and the card (when the example has one)
    comention       the co-mention prior (`comention.CoMention.scores`)
    popularity      log(1 + number of counted dialogues of this dataset mentioning the item; not cross_dataset ones)
    mentioned       1 when the item is already mentioned in the context (under protocol "all" a recommender
                    often repeats one: ~8 % of ReDial targets), else 0

Each feature is z-scored per query over the whole catalog (a constant feature, e.g. co-mentions of a context
that mentions no item, becomes 0, so the other features decide alone), and the score is sum_f w_f * z_f. The
weights are tuned on the `tune` split (`tune_weights`): a coordinate search over a small grid maximising the
mean of R@10 and R@50 under protocols "all" and "novel". Two weight sets: "with_query" for queries that have a
Query Expert query, "no_query" for those that do not.

Ties: a seeded tie-break in [0, 0.5) (the one `popularity_ranking` uses), times 1e-6, is added to every score,
so equal fused scores come out in a reproducible random order that survives the (-score, item_id) re-sort of
TREC files. Scoring covers the whole catalog exactly (a matrix product per batch); that is what the z-scores
need, and it costs ~1 ms per query for 7k items.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reges.errors import ConfigError, DataError, StageNotReadyError
from reges.io import read_json
from reges.records import CROSS_DIALOGUE_PREFIX, Hit, RecExample, Turn
from reges.retrieval.comention import CoMention, Normalization, context_item_ids
from reges.retrieval.encoder import Encoder, SentenceEncoder, load_encoder
from reges.retrieval.queries import QueryMode, context_to_query
from reges.retrieval.recall import PROTOCOLS

logger = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = ("dense_dialogue", "dense_query", "comention", "popularity", "mentioned")
NO_QUERY = "no_query"
WITH_QUERY = "with_query"
TIE_SCALE = 1e-6
TUNE_CUTOFFS: tuple[int, ...] = (10, 50)
DEFAULT_GRID: tuple[float, ...] = (
    -0.5, -0.2, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0
)

FUSION_FILE = "fusion.json"
ENCODER_DIR = "encoder"
INDEX_DIR = "index"
EMBEDDINGS_FILE = "embeddings.npy"


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Per-row z-scores (float64); a constant row becomes all zeros instead of NaN."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=1, keepdims=True)  # (n, 1)
    std = x.std(axis=1, keepdims=True)  # (n, 1)
    return np.divide(x - mean, std, out=np.zeros_like(x), where=std > 1e-12)


def tiebreak(item_ids: Sequence[str], seed: int) -> np.ndarray:
    """(n,) tie-break fractions in [0, 0.5), aligned with `item_ids`; the same draw as `popularity_ranking`."""
    rng = np.random.default_rng(seed)
    ordered = sorted(item_ids)  # independent of catalog order
    position = rng.permutation(len(ordered))
    n = len(ordered)
    frac = {i: 0.5 * (n - p) / (n + 1) for i, p in zip(ordered, position, strict=True)}
    return np.array([frac[i] for i in item_ids], dtype=np.float64)


def fuse(zfeatures: dict[str, np.ndarray], weights: dict[str, float], tie: np.ndarray) -> np.ndarray:
    """Weighted sum of z-scored features plus the tie-break: (num_queries, num_items) float64.

    Features with weight 0, or absent from `zfeatures`, are skipped.
    """
    shape = next(iter(zfeatures.values())).shape
    score = np.zeros(shape, dtype=np.float64)
    for name, w in weights.items():
        if w and name in zfeatures:
            score += w * zfeatures[name]
    return score + TIE_SCALE * tie[None, :]


def top_hits(scores: np.ndarray, item_ids: Sequence[str], id_rank: np.ndarray, top_k: int) -> list[list[Hit]]:
    """Best `top_k` items per row, ordered by (-score, item_id) like the TREC writer."""
    out = []
    keep = min(top_k, len(item_ids))
    for row in scores:
        # argpartition narrows to a candidate set that surely holds the top `keep` (ties at the cut included)
        if keep < len(row):
            cut = np.partition(-row, keep - 1)[keep - 1]
            candidates = np.flatnonzero(-row <= cut)
        else:
            candidates = np.arange(len(row))
        order = candidates[np.lexsort((id_rank[candidates], -row[candidates]))][:keep]
        out.append([Hit(item_ids[j], float(row[j])) for j in order])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Weight tuning


@dataclass(frozen=True)
class TunePairs:
    """The (example, target) pairs of a split, in array form for fast recall computation.

    Attributes:
        query_index: (P,) row of each pair's example in the feature matrices.
        item_index: (P,) column of each pair's target (-1: not in the catalog, always a miss).
        novel: (P,) True for targets not mentioned earlier (protocol "novel").
    """

    query_index: np.ndarray
    item_index: np.ndarray
    novel: np.ndarray

    @classmethod
    def from_examples(cls, examples: Sequence[RecExample], item_ids: Sequence[str]) -> TunePairs:
        col = {item_id: j for j, item_id in enumerate(item_ids)}
        q, j, novel = [], [], []
        for row, ex in enumerate(examples):
            for target, mentioned in zip(ex.target_item_ids, ex.target_mentioned, strict=True):
                q.append(row)
                j.append(col.get(target, -1))
                novel.append(not mentioned)
        return cls(np.array(q, dtype=np.int64), np.array(j, dtype=np.int64), np.array(novel, dtype=bool))


def pair_ranks(scores: np.ndarray, pairs: TunePairs, id_rank: np.ndarray) -> np.ndarray:
    """(P,) 1-based rank of each pair's target under (-score, item_id) order; a huge rank when not in the catalog."""
    ranks = np.full(len(pairs.query_index), np.iinfo(np.int64).max, dtype=np.int64)
    ok = pairs.item_index >= 0
    rows = scores[pairs.query_index[ok]]  # (P_ok, n)
    target = rows[np.arange(len(rows)), pairs.item_index[ok]][:, None]  # (P_ok, 1)
    ahead = (rows > target) | ((rows == target) & (id_rank[None, :] < id_rank[pairs.item_index[ok]][:, None]))
    ranks[ok] = ahead.sum(axis=1) + 1
    return ranks


def recall_table(ranks: np.ndarray, pairs: TunePairs, cutoffs: Sequence[int] = TUNE_CUTOFFS) -> dict[str, Any]:
    """{"all": {"recall@k": r, ...}, "novel": {...}, "objective": mean of all of them}."""
    out: dict[str, Any] = {}
    values = []
    for protocol in PROTOCOLS:
        sel = ranks if protocol == "all" else ranks[pairs.novel]
        out[protocol] = {}
        for k in cutoffs:
            r = float((sel <= k).mean()) if len(sel) else 0.0
            out[protocol][f"recall@{k}"] = round(r, 4)
            values.append(r)
    out["objective"] = round(float(np.mean(values)), 5)
    return out


def tune_weights(
    zfeatures: dict[str, np.ndarray],
    pairs: TunePairs,
    tie: np.ndarray,
    id_rank: np.ndarray,
    grid: Sequence[float] = DEFAULT_GRID,
    passes: int = 3,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Coordinate search for the fusion weights on a tune split.

    The feature that is best alone starts at weight 1 (the scale is arbitrary: only ratios matter), the others
    at 0. Each pass tries every grid value for each feature in turn and keeps a change only when it raises the
    objective (mean of R@10 and R@50 under "all" and "novel"); it stops after `passes` or a pass without change.
    The anchor feature may move only among positive grid values, so the scale can never collapse to all zeros.

    Args:
        zfeatures: name -> (num_queries, num_items) z-scored feature matrix.
        pairs: The tune split's (example, target) pairs.
        tie: (num_items,) tie-break fractions.
        id_rank: (num_items,) rank of each item id in sorted order (the final tie-break).
        grid: Candidate weights.
        passes: Most coordinate passes.

    Returns:
        (weights for every feature in `zfeatures`, report with each feature alone and the fused result).
    """
    if not zfeatures:
        raise ConfigError("no fusion feature to tune; enable at least one of the train_retriever features")
    names = list(zfeatures)

    def objective(weights: dict[str, float]) -> tuple[float, dict[str, Any]]:
        table = recall_table(pair_ranks(fuse(zfeatures, weights, tie), pairs, id_rank), pairs)
        return table["objective"], table

    alone = {name: objective({name: 1.0})[1] for name in names}
    anchor = max(names, key=lambda n: (alone[n]["objective"], -names.index(n)))
    weights = {name: (1.0 if name == anchor else 0.0) for name in names}
    best, best_table = objective(weights)
    history = [{"pass": 0, "objective": best}]
    for p in range(1, passes + 1):
        changed = False
        for name in names:
            for value in grid:
                if value == weights[name] or (name == anchor and value <= 0):
                    continue
                trial = {**weights, name: value}
                score, table = objective(trial)
                if score > best + 1e-9:
                    best, best_table, weights, changed = score, table, trial, True
        history.append({"pass": p, "objective": best})
        if not changed:
            break
    logger.info("fusion weights %s: tune objective %.4f (best single feature %s: %.4f)", weights, best, anchor,
                alone[anchor]["objective"])
    return weights, {"alone": alone, "fused": best_table, "anchor": anchor, "history": history}


# ---------------------------------------------------------------------------------------------------------------
# The retriever


@dataclass(frozen=True)
class FusionSettings:
    """How queries are built and features computed; saved in fusion.json so serving repeats training exactly.

    Attributes:
        query_mode: Dialogue text for dense_dialogue: "full" or "last2".
        max_query_chars: Dialogue text cap (the end is kept).
        normalization: Co-mention normalisation (see `comention.NORMALIZATIONS`).
        batch_size: Texts per encoder batch.
        seed: Tie-break seed.
    """

    query_mode: QueryMode = "full"
    max_query_chars: int = 1000
    normalization: Normalization = "conditional"
    batch_size: int = 64
    seed: int = 0


class FusedRetriever:
    """In-memory fused retrieval over a whole catalog (the retrieve stage and the server use it).

    Example:
        >>> retriever = FusedRetriever.load(Path("runs/redial"))
        >>> retriever.search([context], ["dark thriller like Se7en"], top_k=20)[0][0]
        Hit(item_id='1234', score=8.37)

    Args:
        encoder: Embeds dialogue texts and queries (None when no dense feature has a weight).
        item_embeddings: (num_items, dim) L2-normalised card embeddings from that encoder, rows = `item_ids`.
        item_ids: The catalog ids: the columns of every score matrix.
        counts: Co-mention and popularity counts.
        weights: {"no_query": {feature: w}, optionally "with_query": {feature: w}}.
        settings: Query text and normalisation settings.
        encoder_name: The encoder's name or folder (for manifests).
    """

    def __init__(
        self,
        encoder: Encoder | None,
        item_embeddings: np.ndarray | None,
        item_ids: list[str],
        counts: CoMention,
        weights: dict[str, dict[str, float]],
        settings: FusionSettings,
        encoder_name: str = "",
    ) -> None:
        if not item_ids:
            raise DataError("the fused retriever needs a non-empty catalog")
        if item_embeddings is not None and item_embeddings.shape[0] != len(item_ids):
            raise DataError(f"{item_embeddings.shape[0]} item embeddings for {len(item_ids)} item ids")
        if NO_QUERY not in weights:
            raise ConfigError(f"fusion weights need a {NO_QUERY!r} set, got {sorted(weights)}")
        used = {f for w in weights.values() for f, v in w.items() if v}
        unknown = used - set(FEATURES)
        if unknown:
            raise ConfigError(f"unknown fusion features {sorted(unknown)}; known: {list(FEATURES)}")
        if used & {"dense_dialogue", "dense_query"} and (encoder is None or item_embeddings is None):
            raise ConfigError("dense fusion features need an encoder and item embeddings")
        self.encoder = encoder
        self.item_embeddings = item_embeddings  # (num_items, dim) L2-normalised, or None
        self.item_ids = item_ids
        self.counts = counts
        self.weights = weights
        self.settings = settings
        self.encoder_name = encoder_name
        self.column = {item_id: j for j, item_id in enumerate(item_ids)}
        self.tie = tiebreak(item_ids, settings.seed)  # (num_items,)
        self.id_rank = np.argsort(np.argsort(np.array(item_ids, dtype=object)))  # (num_items,) rank of each id
        self._count_column = counts.count_columns(item_ids)
        self._popularity = self._own_item_counts()  # (num_items,)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> FusedRetriever:
        """Load `run_dir/train-retriever/` (fusion.json, index/, encoder/ when fine-tuned, co-mention counts).

        Args:
            run_dir: The run directory.
            device: Encoder device ("auto", "cpu", "cuda").

        Raises:
            StageNotReadyError: train-retriever is not complete.
        """
        stage = Path(run_dir) / "train-retriever"
        if not (stage / "manifest.json").is_file():
            raise StageNotReadyError(f"{stage}/ has no manifest.json; run `reges train-retriever --run-dir {run_dir}`")
        spec = read_json(stage / FUSION_FILE)
        settings = FusionSettings(**spec["settings"])
        counts = CoMention.load(stage)
        index_dir = stage / INDEX_DIR
        item_ids = (index_dir / "item_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
        needs_dense = any(
            w.get(f) for w in spec["weights"].values() if w for f in ("dense_dialogue", "dense_query")
        )
        encoder = embeddings = None
        name = str(stage / ENCODER_DIR) if spec["encoder"] == ENCODER_DIR else spec["encoder"]
        if needs_dense:
            # float32 for scoring; a shipped bundle stores them as float16 (reges.shipped)
            embeddings = np.load(index_dir / EMBEDDINGS_FILE, allow_pickle=False).astype(np.float32, copy=False)
            encoder = SentenceEncoder(load_encoder(name, device, int(spec["max_seq_length"])))
        weights = {k: v for k, v in spec["weights"].items() if v is not None}
        return cls(encoder, embeddings, item_ids, counts, weights, settings, name)

    def _own_item_counts(self) -> np.ndarray:
        """(num_items,) dialogues mentioning each item, other datasets' dialogues (`reges.data.cross`) left out.

        Why: another dataset's dialogues say which films go together (the co-mention prior counts them), but how
        often a film comes up there is another population's taste and era (ReDial's talk of 2017 would push its
        hits above INSPIRED's 2019 ones); measured on INSPIRED's tune split, counting them in popularity lost more
        than the co-mentions gained.
        """
        n = np.where(self._count_column >= 0, self.counts.item_counts[np.maximum(self._count_column, 0)], 0.0)
        for dialogue_id, items in self.counts.dialogues.items():
            if dialogue_id.startswith(CROSS_DIALOGUE_PREFIX):
                for item_id in items:
                    if item_id in self.column:
                        n[self.column[item_id]] -= 1.0
        return n

    def popularity(self, exclude_dialogue_ids: Sequence[str | None]) -> np.ndarray:
        """(num_queries, num_items) log(1 + dialogue count), each query without its own dialogue's mentions."""
        out = np.repeat(self._popularity[None, :], len(exclude_dialogue_ids), axis=0)  # (num_queries, num_items)
        for q, dialogue_id in enumerate(exclude_dialogue_ids):
            own = self.counts.dialogues.get(dialogue_id) if dialogue_id is not None else None
            for item_id in own or []:
                if item_id in self.column:
                    out[q, self.column[item_id]] -= 1.0
        return np.log1p(np.maximum(out, 0.0))

    def features(
        self,
        contexts: Sequence[Sequence[Turn]],
        queries: Sequence[str | None],
        exclude_dialogue_ids: Sequence[str | None],
        names: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Raw feature matrices (num_queries, num_items) for the features in `names`.

        dense_query rows of queries without a query text are zero (constant: they z-score to 0).
        """
        n_q, n_items = len(contexts), len(self.item_ids)
        out: dict[str, np.ndarray] = {}
        s = self.settings
        if "dense_dialogue" in names:
            assert self.encoder is not None and self.item_embeddings is not None
            texts = [context_to_query(list(c), s.query_mode, s.max_query_chars) for c in contexts]
            out["dense_dialogue"] = self.dense(texts)
        if "dense_query" in names:
            assert self.encoder is not None and self.item_embeddings is not None
            out["dense_query"] = self.dense([q or "" for q in queries])
        if "comention" in names:
            out["comention"] = self.counts.scores(
                [context_item_ids(c) for c in contexts], self.item_ids, s.normalization,
                exclude_dialogue_ids=exclude_dialogue_ids, columns=self._count_column,
            )
        if "popularity" in names:
            out["popularity"] = self.popularity(exclude_dialogue_ids)
        if "mentioned" in names:
            m = np.zeros((n_q, n_items), dtype=np.float64)
            for q, c in enumerate(contexts):
                cols = [self.column[i] for i in context_item_ids(c) if i in self.column]
                m[q, cols] = 1.0
            out["mentioned"] = m
        return out

    def dense(self, texts: list[str]) -> np.ndarray:
        """Cosine of each text with every card; empty texts give an all-zero row (no signal)."""
        assert self.encoder is not None and self.item_embeddings is not None
        out = np.zeros((len(texts), len(self.item_ids)), dtype=np.float64)
        rows = [i for i, t in enumerate(texts) if t.strip()]
        if rows:
            emb = self.encoder.encode([texts[i] for i in rows], self.settings.batch_size, False)  # (r, dim)
            out[rows] = emb @ self.item_embeddings.T
        return out

    def scores(
        self,
        contexts: Sequence[Sequence[Turn]],
        queries: Sequence[str | None],
        exclude_dialogue_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Fused scores (num_queries, num_items): "with_query" weights where a query is given, else "no_query"."""
        if len(queries) != len(contexts):
            raise DataError(f"{len(queries)} queries for {len(contexts)} contexts; pass None where there is none")
        if exclude_dialogue_ids is None:
            exclude_dialogue_ids = [None] * len(contexts)
        if len(exclude_dialogue_ids) != len(contexts):
            raise DataError(f"{len(exclude_dialogue_ids)} exclude_dialogue_ids for {len(contexts)} contexts")
        if not contexts:
            return np.zeros((0, len(self.item_ids)), dtype=np.float64)
        with_query = WITH_QUERY in self.weights
        uses = [WITH_QUERY if with_query and q and q.strip() else NO_QUERY for q in queries]
        names = sorted({f for u in set(uses) for f, w in self.weights[u].items() if w})
        if not names:  # every weight 0: the tie-break alone orders the catalog
            return np.repeat(TIE_SCALE * self.tie[None, :], len(contexts), axis=0)
        z = {name: zscore_rows(x) for name, x in self.features(contexts, queries, exclude_dialogue_ids, names).items()}
        out = np.zeros((len(contexts), len(self.item_ids)), dtype=np.float64)
        for use in set(uses):
            rows = np.array([i for i, u in enumerate(uses) if u == use], dtype=np.int64)
            out[rows] = fuse({k: v[rows] for k, v in z.items()}, self.weights[use], self.tie)
        return out

    def search(
        self,
        contexts: list[list[Turn]],
        queries: list[str | None],
        top_k: int,
        exclude_dialogue_ids: list[str | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-k fused hits per context, best first.

        Args:
            contexts: Dialogue turns before the recommendation, one list per query.
            queries: The Query Expert's query per context, or None.
            top_k: Hits per context.
            exclude_dialogue_ids: Per context, a counted dialogue to leave out of the co-mention and popularity
                statistics (the example's own dialogue when it is a training dialogue), or None.

        Returns:
            One list of hits per context, sorted by (-score, item_id).
        """
        if top_k < 1:
            raise ConfigError(f"retrieve.top_k must be >= 1, got {top_k}; set retrieve.top_k in the YAML")
        return top_hits(self.scores(contexts, queries, exclude_dialogue_ids), self.item_ids, self.id_rank, top_k)
