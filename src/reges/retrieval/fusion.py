"""Fused retrieval: dense similarity, the Query Expert's query, co-mentions, popularity and repeats in one score.

Features, for each (query, catalog item):
    dense_dialogue  cosine of the dialogue context text (`context_to_query`) and the item card, tuned encoder
    dense_query     cosine of the Query Expert's query and the card (when the example has one)
    content         cosine of the card with the mean card of the items the context names (none named: 0): films
                    like those the user talked about, by their cards' director, stars, genres and plot, for films
                    too rare to have co-mentions (`train_retriever.content`)
    people          the directors and stars the context names that the card lists, idf-weighted (`people.py`;
                    `train_retriever.people`)
    neighbours      similarity-weighted votes of the most similar train contexts (the dense_dialogue text, same
                    encoder) for the films recommended there (`neighbours.py`; `train_retriever.neighbours`)
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
TREC files.

Cost. With a flat index, `search` scores the whole catalog (a matrix product per batch): ~1 ms per query for 7k
items, but ~140 ms at a million (docs/results/scale_notes.md). With an approximate index (ivf or hnsw built by
train-retriever), `search` scores candidates only: the index's top `candidate_pool` for each dense feature, the
`candidate_pool` most popular items, every item with a co-mention for the context, every film of a person it names,
and the context's own items. The z-scores still use whole-catalog statistics, exactly: a dense feature's mean and
variance over the catalog are q.mu and q'Mq - (q.mu)^2 (mu, M: the card embeddings' mean and second moment,
computed once), popularity's come from catalog-wide sums corrected at the excluded dialogue's items, and
co-mention, people, neighbours and mentioned are zero outside the candidates (every item a neighbour's recommender
suggested is one); content is a dense feature whose vector is the mean card, so it is read from the index like the
others. Any other item then scores at most what the `candidate_pool`-th index hit's cosine and the
`candidate_pool`-th most popular item allow; a query whose k-th candidate does not beat that bound reads twice as
deep (Fagin's threshold algorithm), up to `MAX_DEEPENING` times the pool, then is scored over the whole catalog. So
the candidate path returns the whole-catalog top-k up to the index's recall (docs/results/scale_fusion.md).
"""

from __future__ import annotations

import dataclasses
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
from reges.retrieval.index import ItemIndex
from reges.retrieval.neighbours import DialogueNeighbours
from reges.retrieval.people import PeopleIndex
from reges.retrieval.queries import QueryMode, context_to_query
from reges.retrieval.recall import PROTOCOLS

logger = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = ("dense_dialogue", "dense_query", "content", "comention", "people", "popularity",
                             "mentioned", "neighbours")
NO_QUERY = "no_query"
WITH_QUERY = "with_query"
TIE_SCALE = 1e-6
TUNE_CUTOFFS: tuple[int, ...] = (10, 50)
DEFAULT_GRID: tuple[float, ...] = (
    -0.5, -0.2, -0.1, -0.05, 0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0
)

DENSE: tuple[str, ...] = ("dense_dialogue", "dense_query")  # the features whose vector is an encoded text
VECTOR: tuple[str, ...] = (*DENSE, "content")  # the features scored as (a vector) . (each card)
DEFAULT_CANDIDATE_POOL = 300  # index hits per dense feature on the candidate path (`retrieve.candidate_pool`)
MAX_DEEPENING = 8  # a request reads at most this many times the pool before it is scored over the whole catalog

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

    Features with weight 0 are skipped (they need not be computed); a weighted feature missing from `zfeatures` is
    refused: skipping it scored a ranking without it and looked like a result (benchmarks/retrieval_ablation.py
    once left out `people` that way).

    Raises:
        DataError: a feature with a nonzero weight is not in `zfeatures`.
    """
    missing = sorted(name for name, w in weights.items() if w and name not in zfeatures)
    if missing:
        raise DataError(f"fusion weights use features {missing} that were not computed (got {sorted(zfeatures)}); "
                        "compute every feature the weights name, or give it weight 0")
    shape = next(iter(zfeatures.values())).shape
    score = np.zeros(shape, dtype=np.float64)
    for name, w in weights.items():
        if w:
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
    anchor: str | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Coordinate search for the fusion weights on a tune split.

    The feature that is best alone (or `anchor`) starts at weight 1 (the scale is arbitrary: only ratios matter),
    the others at 0. Each pass tries every grid value for each feature in turn and keeps a change only when it
    raises the objective (mean of R@10 and R@50 under "all" and "novel"); it stops after `passes` or a pass
    without change.
    The anchor feature may move only among positive grid values, so the scale can never collapse to all zeros.

    Args:
        zfeatures: name -> (num_queries, num_items) z-scored feature matrix.
        pairs: The tune split's (example, target) pairs.
        tie: (num_items,) tie-break fractions.
        id_rank: (num_items,) rank of each item id in sorted order (the final tie-break).
        grid: Candidate weights.
        passes: Most coordinate passes.
        anchor: The feature to start from instead of the best one alone (another start of the same search:
            benchmarks/comention_variants.py compares starts to see how flat the objective is).
        exclude: (num_queries, num_items) True where an item is dropped from that query's list before ranking
            (benchmarks/served_objective.py: the films the dialogue named, as the served recommender drops them);
            None keeps every item.

    Returns:
        (weights for every feature in `zfeatures`, report with each feature alone and the fused result).
    """
    if not zfeatures:
        raise ConfigError("no fusion feature to tune; enable at least one of the train_retriever features")
    names = list(zfeatures)
    if anchor is not None and anchor not in zfeatures:
        raise ConfigError(f"anchor {anchor!r} is not among the fusion features {names}")

    def objective(weights: dict[str, float]) -> tuple[float, dict[str, Any]]:
        scores = fuse(zfeatures, weights, tie)
        if exclude is not None:
            scores[exclude] = -np.inf
        table = recall_table(pair_ranks(scores, pairs, id_rank), pairs)
        return table["objective"], table

    alone = {name: objective({name: 1.0})[1] for name in names}
    if anchor is None:
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


def resample_rows(dialogue_ids: Sequence[str | None], rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap resample by dialogue: dialogues drawn with replacement, all their rows kept.

    Why by dialogue: the examples of one dialogue share most of their context, so they are not independent draws.
    An example without a dialogue id is its own dialogue.
    """
    groups: dict[str, list[int]] = {}
    for row, d in enumerate(dialogue_ids):
        groups.setdefault(d if d is not None else f"\0row{row}", []).append(row)
    keys = list(groups)
    drawn = rng.integers(0, len(keys), size=len(keys))
    return np.array([row for k in drawn for row in groups[keys[k]]], dtype=np.int64)


def subset_pairs(pairs: TunePairs, rows: np.ndarray) -> TunePairs:
    """The pairs of `rows` (repeats allowed), renumbered so that row i of the subset is `rows[i]`."""
    by_row: dict[int, list[int]] = {}
    for p, r in enumerate(pairs.query_index):
        by_row.setdefault(int(r), []).append(p)
    picked = [(i, p) for i, r in enumerate(rows) for p in by_row.get(int(r), [])]
    q = np.array([i for i, _ in picked], dtype=np.int64)
    p_idx = np.array([p for _, p in picked], dtype=np.int64)
    return TunePairs(q, pairs.item_index[p_idx], pairs.novel[p_idx])


def bagged_weights(
    zfeatures: dict[str, np.ndarray],
    pairs: TunePairs,
    dialogue_ids: Sequence[str | None],
    tie: np.ndarray,
    id_rank: np.ndarray,
    resamples: int,
    seed: int,
    grid: Sequence[float] = DEFAULT_GRID,
    passes: int = 3,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fusion weights averaged over `tune_weights` on bootstrap resamples of the tune dialogues ("bagging").

    Why: on 200-450 tune examples the coordinate search lands on one of several near-equal optima, and which one
    depends on a handful of examples (two weight sets of the same features differ by 0.01-0.03 in dev recall,
    docs/results/signals.md). Averaging the weights found on many resamples keeps what most resamples agree on.
    Only ratios of weights matter, so each resample's weights are scaled to unit L1 norm before averaging; the mean
    is then rescaled so that its largest weight is 1. Each resample's weights are also scored on the tune
    dialogues it did not draw (out of bag): an estimate of how a single search generalises, without dev.

    Returns:
        (the averaged weights, report with every resample's weights and out-of-bag objective, the averaged
        weights' tune table).
    """
    if resamples < 2:
        raise ConfigError(f"bagged fusion weights need at least 2 resamples, got {resamples}")
    names = list(zfeatures)
    rng = np.random.default_rng(seed)
    total = dict.fromkeys(names, 0.0)
    runs = []
    for _ in range(resamples):
        rows = resample_rows(dialogue_ids, rng)
        weights, _ = tune_weights({n: z[rows] for n, z in zfeatures.items()}, subset_pairs(pairs, rows), tie,
                                  id_rank, grid, passes)
        norm = sum(abs(w) for w in weights.values()) or 1.0
        for n in names:
            total[n] += weights[n] / norm / resamples
        out_of_bag = np.setdiff1d(np.arange(len(dialogue_ids)), rows)
        oob = None
        if len(out_of_bag):
            oob_pairs = subset_pairs(pairs, out_of_bag)
            oob_z = {n: z[out_of_bag] for n, z in zfeatures.items()}
            oob = recall_table(pair_ranks(fuse(oob_z, weights, tie), oob_pairs, id_rank), oob_pairs)["objective"]
        runs.append({"weights": weights, "out_of_bag_objective": oob})
    top = max(abs(w) for w in total.values()) or 1.0
    averaged = {n: round(total[n] / top, 4) for n in names}
    table = recall_table(pair_ranks(fuse(zfeatures, averaged, tie), pairs, id_rank), pairs)
    logger.info("bagged fusion weights over %d resamples %s: tune objective %.4f", resamples, averaged,
                table["objective"])
    return averaged, {"resamples": runs, "fused": table, "seed": seed}


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
        index: An approximate index over `item_embeddings` (rows = `item_ids`): `search` then scores candidates
            only (see the module docstring). None, or an exact (flat) one: the whole catalog.
        candidate_pool: Index hits per dense feature on the candidate path.
        people: The catalog's directors and stars (needed when a weight uses the people feature).
        neighbours: The train contexts and their targets (needed when a weight uses the neighbours feature).
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
        index: ItemIndex | None = None,
        candidate_pool: int = DEFAULT_CANDIDATE_POOL,
        people: PeopleIndex | None = None,
        neighbours: DialogueNeighbours | None = None,
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
        if used & set(DENSE) and (encoder is None or item_embeddings is None):
            raise ConfigError("dense fusion features need an encoder and item embeddings")
        if "content" in used and item_embeddings is None:
            raise ConfigError("the content fusion feature needs the item embeddings")
        if "people" in used and (people is None or people.item_ids != item_ids):
            raise ConfigError("the people fusion feature needs a PeopleIndex over the same item ids")
        if "neighbours" in used and (neighbours is None or neighbours.num_items != len(item_ids) or encoder is None):
            raise ConfigError("the neighbours fusion feature needs the encoder and DialogueNeighbours over the same "
                              "catalog")
        self.people = people
        self.neighbours = neighbours
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
        self.index = None if index is None or index.exact else index
        self.candidate_pool = candidate_pool
        self.fallbacks = 0  # requests the candidate path handed to whole-catalog scoring (see `search`)
        self.deepened = 0  # times a request read deeper than the pool to prove its top-k
        if self.index is not None:
            if candidate_pool < 1:
                raise ConfigError(f"retrieve.candidate_pool must be >= 1, got {candidate_pool}")
            if self.index.item_ids != item_ids:
                raise DataError("the fused retriever's index rows are not its item ids; rebuild train-retriever")
            self._counted = np.flatnonzero(self._count_column >= 0)  # (num_counted,) catalog columns with counts
            self._pop_log = np.log1p(np.maximum(self._popularity, 0.0))  # (num_items,) the popularity feature
            self._pop_order = np.lexsort((self.id_rank, -self._pop_log))  # most popular first
            self._pop_sums = (float(self._pop_log.sum()), float((self._pop_log * self._pop_log).sum()))
            self._moments = _embedding_moments(item_embeddings) if item_embeddings is not None else None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", nprobe: int = 0, ef_search: int = 0,
             candidate_pool: int = DEFAULT_CANDIDATE_POOL) -> FusedRetriever:
        """Load `run_dir/train-retriever/` (fusion.json, index/, encoder/ when fine-tuned, co-mention counts).

        Args:
            run_dir: The run directory.
            device: Encoder device ("auto", "cpu", "cuda").
            nprobe, ef_search: Search-time settings of an approximate index (0: as built); `retrieve.*`.
            candidate_pool: Index hits per dense feature when the index is approximate; `retrieve.candidate_pool`.

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
        used = {f for w in spec["weights"].values() if w for f, v in w.items() if v}
        needs_dense = bool(used & {*DENSE, "neighbours"})
        needs_embeddings = bool(used & {*VECTOR, "neighbours"})
        encoder = embeddings = None
        name = str(stage / ENCODER_DIR) if spec["encoder"] == ENCODER_DIR else spec["encoder"]
        if needs_embeddings:
            # float32 for scoring; a shipped bundle stores them as float16 (reges.shipped)
            embeddings = np.load(index_dir / EMBEDDINGS_FILE, allow_pickle=False).astype(np.float32, copy=False)
        if needs_dense:
            if spec["encoder"] == ENCODER_DIR and not Path(name).is_dir() and spec.get("encoder_adapter"):
                # a shipped bundle: the tuned encoder is the base model plus its LoRA adapter
                encoder = SentenceEncoder(load_encoder(spec["base_encoder"], device, int(spec["max_seq_length"]),
                                                       adapter=stage / spec["encoder_adapter"]))
            else:
                encoder = SentenceEncoder(load_encoder(name, device, int(spec["max_seq_length"])))
        weights = {k: v for k, v in spec["weights"].items() if v is not None}
        index = None  # a shipped bundle carries the embeddings only: it scores the whole catalog
        meta = index_dir / "index.json"
        if needs_embeddings and meta.is_file() and read_json(meta).get("index_type", "flat") != "flat":
            index = ItemIndex.load(index_dir, nprobe, ef_search)
        people = PeopleIndex.load(stage, item_ids) if "people" in used else None
        neighbours = DialogueNeighbours.load(stage, len(item_ids)) if "neighbours" in used else None
        return cls(encoder, embeddings, item_ids, counts, weights, settings, name, index, candidate_pool, people,
                   neighbours)

    def _own_item_counts(self) -> np.ndarray:
        """(num_items,) dialogues mentioning each item, other datasets' dialogues (`reges.data.cross`) left out.

        Why: another dataset's dialogues say which films go together (the co-mention prior counts them), but how
        often a film comes up there is another population's taste and era (ReDial's talk of 2017 would push its
        hits above INSPIRED's 2019 ones); measured on INSPIRED's tune split, counting them in popularity lost more
        than the co-mentions gained.
        """
        n = np.zeros(len(self.item_ids), dtype=np.float64)
        counted = self._count_column >= 0  # (an empty count table, e.g. no train dialogue names an item, has none)
        n[counted] = self.counts.item_counts[self._count_column[counted]]
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
        vector_names = [name for name in VECTOR if name in names]
        embed = vector_names + (["dense_dialogue"] if "neighbours" in names and "dense_dialogue" not in names else [])
        vectors = self._vectors(embed, contexts, queries) if embed else None  # (len(embed) * n_q, dim)
        if vector_names:  # one product for all: the card matrix is read once (a million cards: 1.5 GB)
            assert self.item_embeddings is not None and vectors is not None
            all_ = (vectors[:len(vector_names) * n_q] @ self.item_embeddings.T).astype(np.float64)
            out.update({name: all_[i * n_q:(i + 1) * n_q] for i, name in enumerate(vector_names)})
        if "comention" in names:
            out["comention"] = self.counts.scores(
                [context_item_ids(c) for c in contexts], self.item_ids, s.normalization,
                exclude_dialogue_ids=exclude_dialogue_ids, columns=self._count_column,
            )
        if "people" in names:
            assert self.people is not None
            out["people"] = self.people.scores(contexts)
        if "popularity" in names:
            out["popularity"] = self.popularity(exclude_dialogue_ids)
        if "mentioned" in names:
            m = np.zeros((n_q, n_items), dtype=np.float64)
            for q, c in enumerate(contexts):
                cols = [self.column[i] for i in context_item_ids(c) if i in self.column]
                m[q, cols] = 1.0
            out["mentioned"] = m
        if "neighbours" in names:  # last, as train-retriever lists it: the weight search's order follows this dict
            assert self.neighbours is not None and vectors is not None
            i = embed.index("dense_dialogue")
            out["neighbours"] = self.neighbours.scores(vectors[i * n_q:(i + 1) * n_q], exclude_dialogue_ids)
        return out

    def dialogue_vectors(self, contexts: Sequence[Sequence[Turn]]) -> np.ndarray:
        """(num_contexts, dim) float32: each context's text as dense_dialogue embeds it (an empty one: a zero row)."""
        return self._vectors(["dense_dialogue"], contexts, [None] * len(contexts))

    def _vectors(self, names: Sequence[str], contexts: Sequence[Sequence[Turn]],
                 queries: Sequence[str | None]) -> np.ndarray:
        """(len(names) * num_queries, dim) float32: each vector feature's vector per query, feature-major.

        dense_dialogue embeds the dialogue text (`context_to_query`), dense_query the Query Expert's query, content
        is the L2-normalised mean card of the context's items. No text, or no named item: a zero row (no signal).
        """
        assert self.item_embeddings is not None
        n_q = len(contexts)
        out = np.zeros((len(names) * n_q, self.item_embeddings.shape[1]), dtype=np.float32)
        texts: dict[int, str] = {}
        for i, name in enumerate(names):
            for q in range(n_q):
                if name == "dense_dialogue":
                    s = self.settings
                    texts[i * n_q + q] = context_to_query(list(contexts[q]), s.query_mode, s.max_query_chars)
                elif name == "dense_query":
                    texts[i * n_q + q] = queries[q] or ""
                else:
                    cols = [self.column[j] for j in context_item_ids(contexts[q]) if j in self.column]
                    if cols:
                        mean = self.item_embeddings[cols].mean(axis=0)
                        norm = float(np.linalg.norm(mean))
                        out[i * n_q + q] = mean / norm if norm > 0 else 0.0
        rows = [r for r, t in texts.items() if t.strip()]
        if rows:
            assert self.encoder is not None
            out[rows] = self.encoder.encode([texts[r] for r in rows], self.settings.batch_size, False)
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

    def _uses(
        self,
        contexts: Sequence[Sequence[Turn]],
        queries: Sequence[str | None],
        exclude_dialogue_ids: Sequence[str | None] | None,
    ) -> tuple[list[str | None], list[str], list[str]]:
        """Checked inputs: (exclude ids, the weight set of each query, the features any of them uses)."""
        if len(queries) != len(contexts):
            raise DataError(f"{len(queries)} queries for {len(contexts)} contexts; pass None where there is none")
        if exclude_dialogue_ids is None:
            exclude_dialogue_ids = [None] * len(contexts)
        if len(exclude_dialogue_ids) != len(contexts):
            raise DataError(f"{len(exclude_dialogue_ids)} exclude_dialogue_ids for {len(contexts)} contexts")
        with_query = WITH_QUERY in self.weights
        uses = [WITH_QUERY if with_query and q and q.strip() else NO_QUERY for q in queries]
        names = sorted({f for u in set(uses) for f, w in self.weights[u].items() if w})
        return list(exclude_dialogue_ids), uses, names

    def scores(
        self,
        contexts: Sequence[Sequence[Turn]],
        queries: Sequence[str | None],
        exclude_dialogue_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Fused scores over the whole catalog (num_queries, num_items): "with_query" weights where a query is given,
        else "no_query"."""
        exclude, uses, names = self._uses(contexts, queries, exclude_dialogue_ids)
        if not contexts:
            return np.zeros((0, len(self.item_ids)), dtype=np.float64)
        if not names:  # every weight 0: the tie-break alone orders the catalog
            return np.repeat(TIE_SCALE * self.tie[None, :], len(contexts), axis=0)
        z = {name: zscore_rows(x) for name, x in self.features(contexts, queries, exclude, names).items()}
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
        if self.index is None:
            return top_hits(self.scores(contexts, queries, exclude_dialogue_ids), self.item_ids, self.id_rank, top_k)
        return self._search_candidates(contexts, queries, top_k, exclude_dialogue_ids)

    def _search_candidates(
        self,
        contexts: Sequence[Sequence[Turn]],
        queries: Sequence[str | None],
        top_k: int,
        exclude_dialogue_ids: Sequence[str | None] | None,
    ) -> list[list[Hit]]:
        """`search` over candidates from the approximate index (module docstring: "Cost")."""
        assert self.index is not None and self.item_embeddings is not None
        exclude, uses, names = self._uses(contexts, queries, exclude_dialogue_ids)
        n_q, n_items = len(contexts), len(self.item_ids)
        if not names or not n_q:
            return top_hits(self.scores(contexts, queries, exclude), self.item_ids, self.id_rank, top_k)
        dense_names = [name for name in VECTOR if name in names]
        emb = self._vectors(dense_names, contexts, queries)  # (len(dense_names) * n_q, dim)
        dialogue = None  # (n_q, dim) the context vectors the neighbours feature compares with the train contexts
        if "neighbours" in names:
            i = dense_names.index("dense_dialogue") if "dense_dialogue" in dense_names else -1
            dialogue = emb[i * n_q:(i + 1) * n_q] if i >= 0 else self.dialogue_vectors(contexts)
        pool = min(self.candidate_pool, n_items)
        found, rows = self.index.index.search(emb, pool) if len(emb) else (None, None)  # (len(texts), pool) each
        out: list[list[Hit]] = []
        for q in range(n_q):
            context_items = context_item_ids(contexts[q])
            context_cols = np.array([self.column[i] for i in context_items if i in self.column], dtype=np.int64)
            comention = None
            if "comention" in names:
                s = self.counts.row_scores(context_items, self.settings.normalization, exclude[q])
                comention = np.zeros(len(self._counted)) if s is None else s[self._count_column[self._counted]]
            people = self.people.row(contexts[q]) if "people" in names and self.people is not None else None
            votes = None
            if dialogue is not None and self.neighbours is not None:
                votes = self.neighbours.row(dialogue[q], exclude[q])
            mine = [i * n_q + q for i in range(len(dense_names))]  # this request's rows of `emb`
            vectors = emb[mine]  # (num_dense, dim)
            hits = (found[mine], rows[mine]) if found is not None else None
            depth = pool
            request = _Request(context_cols, comention, dict(zip(dense_names, vectors, strict=True)), hits,
                               exclude[q], self.weights[uses[q]], people, votes)
            while True:
                cand, score, bound = self._score_candidates(request, names, depth)
                keep = min(top_k, len(cand))
                order = np.lexsort((self.id_rank[cand], -score))[:keep]
                if len(cand) == n_items or (keep == top_k and score[order[-1]] > bound):
                    out.append([Hit(self.item_ids[cand[j]], float(score[j])) for j in order])
                    break
                if depth >= MAX_DEEPENING * pool or depth >= n_items:
                    self.fallbacks += 1  # the candidates cannot prove their top-k: score this query over the catalog
                    row = self.scores([contexts[q]], [queries[q]], [exclude[q]])
                    out.append(top_hits(row, self.item_ids, self.id_rank, top_k)[0])
                    break
                depth = min(2 * depth, n_items)  # Fagin's threshold algorithm: read the sorted lists deeper
                self.deepened += 1
                if found is not None:
                    request = dataclasses.replace(request, hits=self.index.index.search(vectors, depth))
        return out

    def _score_candidates(self, request: _Request, names: list[str], depth: int) -> tuple[np.ndarray, np.ndarray,
                                                                                          float]:
        """Fused scores of one request's candidates at `depth` (index hits and popular items read), and the best
        score any other item can reach.

        Returns:
            (sorted catalog columns of the candidates, their fused scores, the bound on every other item's score).
        """
        n_items = len(self.item_ids)
        parts = [self._pop_order[:depth], request.context_cols]
        if request.comention is not None:
            parts.append(self._counted[request.comention != 0])  # every item with a co-mention
        if request.people is not None:
            parts.append(request.people[0])  # every film of a named person
        if request.neighbours is not None:
            parts.append(request.neighbours[0])  # every film a neighbour's recommender suggested
        if request.hits is not None:
            parts += [r[r >= 0] for r in request.hits[1]]
        cand = np.unique(np.concatenate(parts))  # (num_candidates,) sorted catalog columns
        score = TIE_SCALE * self.tie[cand]  # (num_candidates,)
        bound = TIE_SCALE * 0.5  # the best any other item can score: the tie-break's maximum, plus per feature
        for name in names:
            w = request.weights.get(name, 0.0)
            if not w:
                continue
            if name in VECTOR:
                x, mean, std = self._dense_candidates(request.vectors[name], cand)
                assert request.hits is not None
                i = list(request.vectors).index(name)
                read = request.hits[0][i][request.hits[1][i] >= 0]
                rest = (float(read.min()) if len(read) else 1.0) if w > 0 else -1.0  # the others' cosines
            elif name == "popularity":
                x, mean, std = self._popularity_candidates(cand, request.exclude)
                # the others are less popular than the last one read (fewer still without the excluded dialogue)
                rest = float(self._pop_log[self._pop_order[depth]]) if w > 0 and depth < n_items else 0.0
            else:
                x = np.zeros(len(cand), dtype=np.float64)
                if name == "mentioned":
                    x[np.searchsorted(cand, request.context_cols)] = 1.0
                elif name == "people":
                    if request.people is not None:
                        x[np.searchsorted(cand, request.people[0])] = request.people[1]
                elif name == "neighbours":
                    if request.neighbours is not None:
                        x[np.searchsorted(cand, request.neighbours[0])] = request.neighbours[1]
                elif request.comention is not None:
                    nonzero = request.comention != 0
                    x[np.searchsorted(cand, self._counted[nonzero])] = request.comention[nonzero]
                mean, std = _mean_std(x, n_items)  # every other item is 0: sums over the candidates suffice
                rest = 0.0
            if std > 1e-12:
                score += w * (x - mean) / std
                bound += w * (rest - mean) / std
        return cand, score, bound

    def _dense_candidates(self, query: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, float, float]:
        """A dense feature on the candidates, and its mean and std over the whole catalog (closed form)."""
        assert self.item_embeddings is not None and self._moments is not None
        if not query.any():  # no text: zero everywhere, z-scores 0
            return np.zeros(len(cand)), 0.0, 0.0
        mu, second = self._moments
        v = query.astype(np.float64)
        mean = float(v @ mu)
        var = float(v @ second @ v) - mean * mean
        x = (self.item_embeddings[cand] @ query).astype(np.float64)  # (num_candidates,)
        return x, mean, float(np.sqrt(max(var, 0.0)))

    def _popularity_candidates(self, cand: np.ndarray, exclude_dialogue_id: str | None) -> tuple[np.ndarray, float,
                                                                                                   float]:
        """Popularity on the candidates, and its mean and std over the whole catalog, without the excluded
        dialogue's own mentions (as `popularity`): the catalog-wide sums, corrected at that dialogue's items."""
        x = self._pop_log[cand].copy()
        total, squares = self._pop_sums
        own = self.counts.dialogues.get(exclude_dialogue_id) if exclude_dialogue_id is not None else None
        own_cols = np.array([self.column[i] for i in own or [] if i in self.column], dtype=np.int64)
        if len(own_cols):
            before = self._pop_log[own_cols]
            after = np.log1p(np.maximum(self._popularity[own_cols] - 1.0, 0.0))
            total += float(after.sum() - before.sum())
            squares += float((after * after).sum() - (before * before).sum())
            at = np.searchsorted(cand, own_cols)
            inside = (at < len(cand)) & (cand[np.minimum(at, len(cand) - 1)] == own_cols)
            x[at[inside]] = after[inside]
        n_items = len(self.item_ids)
        mean = total / n_items
        return x, mean, float(np.sqrt(max(squares / n_items - mean * mean, 0.0)))


@dataclass(frozen=True)
class _Request:
    """What the candidate path knows of one request before it picks candidates.

    Attributes:
        context_cols: Catalog columns of the context's items.
        comention: Co-mention score of each counted item (`FusedRetriever._counted` order), or None when unused.
        vectors: Dense feature -> the embedded text (dim,) (all zeros: no text).
        hits: (scores, rows), each (num_dense, depth), the index's hits per dense feature, or None.
        exclude: The dialogue left out of the counts, or None.
        weights: The fusion weights for this request.
        people: (catalog columns, scores) of the people feature (`PeopleIndex.row`), or None when unused.
        neighbours: (catalog columns, votes) of the neighbours feature (`DialogueNeighbours.row`), or None.
    """

    context_cols: np.ndarray
    comention: np.ndarray | None
    vectors: dict[str, np.ndarray]
    hits: tuple[np.ndarray, np.ndarray] | None
    exclude: str | None
    weights: dict[str, float]
    people: tuple[np.ndarray, np.ndarray] | None = None
    neighbours: tuple[np.ndarray, np.ndarray] | None = None


def _mean_std(x: np.ndarray, n: int) -> tuple[float, float]:
    """Mean and std over `n` values of which `x` holds all the non-zero ones."""
    mean = float(x.sum()) / n
    return mean, float(np.sqrt(max(float((x * x).sum()) / n - mean * mean, 0.0)))


def _embedding_moments(embeddings: np.ndarray, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """(mean (dim,), second moment E[e e'] (dim, dim)) of the rows, float64, in chunks (a million rows at once would
    take 3 GB as float64)."""
    n, dim = embeddings.shape
    total = np.zeros(dim, dtype=np.float64)
    second = np.zeros((dim, dim), dtype=np.float64)
    for start in range(0, n, chunk):
        block = embeddings[start:start + chunk].astype(np.float64)
        total += block.sum(axis=0)
        second += block.T @ block
    return total / n, second / n
