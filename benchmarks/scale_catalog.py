"""Million-item catalogs: flat vs IVF vs IVF-PQ vs HNSW at 1e5-1e6 items, and the fused retriever's cost per query.

Catalog of N items = the run's real card embeddings (all-MiniLM-L6-v2, as the `index` stage makes them) + N - n_real
synthetic vectors drawn from a Gaussian mixture fitted on them:
    k-means (k = --components) on the real embeddings; component c has weight n_c / n_real and mean = the mean of its
    cards; every component shares the pooled within-cluster covariance (Sigma = sum_c sum_{x in c} (x - mu_c)(x -
    mu_c)^T / (n_real - k)); a draw mu_c + L z (L L^T = Sigma, z ~ N(0, I)) is L2-normalised like a real card.
    --components 1 is one Gaussian with the real mean and covariance.
Queries: `--queries` contexts of the run's `--split` examples, rendered like the retrieve stage (`context_to_query`,
mode "full") and embedded with the same encoder: real query embeddings, none of them part of the catalog.

Per catalog size and index (one thread: faiss.omp_set_num_threads, torch threads; run with OMP_NUM_THREADS=1):
    build s      wall time of building the index (IVF: k-means training + adding; HNSW: adding = building the graph)
    size MiB     bytes of the serialized index (faiss.write_index), and the process RSS growth across the build
    recall@50    per query |approximate top-50 ids & exact top-50 ids| / 50; the exact top-50 is the flat index's,
                 itself checked against a numpy float32 matmul + argpartition (ties at the cut-off count as found)
    latency      `index.search(q, 50)` wall time per query: batch 1 (every query once), batch 64 (random batches of
                 64 queries; time / 64); p50 with a 95 % bootstrap interval, and p95
flat, ivf (IVF-flat) and hnsw are built by reges' own `build_faiss_index` (what `reges index` builds); ivf_pq is the
same IVF with 8-bit product-quantised codes (`--pq-m` bytes per vector), which reges does not offer.

Fused retriever (`reges.retrieval.fusion.FusedRetriever`, what `retrieve` and the server use once `train-retriever`
is complete): per-query wall time of `search` at each of --fusion-sizes, with a lookup encoder (no model cost) and
synthetic co-mention counts whose sparsity copies the run's (train + lossy dialogues: the set-size and item-count
distributions; dialogues scaled with the catalog). It scores the whole catalog, so its cost grows with N.

Usage:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/scale_catalog.py \\
        --run-dir runs/redial --sizes 100000 1000000 --queries 200 --out docs/results/scale.md

The run dir needs complete `data` and `catalog` stages; a complete `index` stage (same encoder) is reused, else the
cards are embedded here (batch 64, as `reges index` does). Writes the page to --out and every number to .json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shlex
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from reges.catalog import read_catalog
from reges.config import IndexConfig
from reges.data.lossy import LOSSY_DIALOGUES_FILE
from reges.io import RunDir, machine_info, now_iso, read_json, read_jsonl
from reges.records import Dialogue, Turn
from reges.retrieval.comention import CoMention, context_item_ids
from reges.retrieval.encoder import SentenceEncoder, l2_normalize, load_encoder
from reges.retrieval.fusion import FusedRetriever, FusionSettings, fuse, top_hits, zscore_rows
from reges.retrieval.index import build_faiss_index
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("benchmarks.scale_catalog")

TOP_K = 50
BATCH = 64
BOOTSTRAP = 1000
SAMPLE_CHUNK = 65536  # synthetic rows drawn per step: (chunk, dim) float32 temporaries of ~100 MB
# ReDial's shipped fusion weights (src/reges/shipped/redial/train-retriever/fusion.json): every feature is used, so
# the timing covers all five; the values do not change the cost.
FUSION_WEIGHTS = {
    "no_query": {"dense_dialogue": 1.0, "comention": 1.5, "popularity": 1.5, "mentioned": 1.5},
    "with_query": {"dense_dialogue": 1.0, "dense_query": 0.3, "comention": 2.0, "popularity": 1.5, "mentioned": 1.5},
}
AIM = {"recall": 0.95, "p50_ms": 20.0, "size": 1_000_000}


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def latency_stats(seconds: Sequence[float], rng: np.random.Generator) -> dict[str, Any]:
    """p50 (with a 95 % bootstrap interval), p95 and mean of latencies, in ms."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    boot = np.median(rng.choice(ms, size=(BOOTSTRAP, len(ms)), replace=True), axis=1)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.median(ms)), 3),
        "p50_ci_ms": [round(float(np.percentile(boot, 2.5)), 3), round(float(np.percentile(boot, 97.5)), 3)],
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def mean_ci(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Mean with a 95 % bootstrap interval (resampling queries)."""
    boot = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(axis=1)
    return {"mean": round(float(values.mean()), 4),
            "ci": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)]}


def recall_per_query(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(num_queries,) |found_i & exact_i| / top_k for (num_queries, top_k) id arrays (-1 = no result)."""
    return np.array([len(set(f[f >= 0].tolist()) & set(e.tolist())) / exact.shape[1]
                     for f, e in zip(found, exact, strict=True)])


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


# ---------------------------------------------------------------------------------------------------------------
# Inputs: real cards, queries, synthetic vectors


def real_cards(run_dir: RunDir, encoder: SentenceEncoder, encoder_name: str) -> tuple[np.ndarray, list[str], str]:
    """The run's card embeddings (index/embeddings.npy when the index stage is complete, else embedded here)."""
    items = read_catalog(run_dir.require("catalog") / "items.jsonl")
    if run_dir.is_complete("index"):
        index_dir = run_dir.stage_dir("index")
        meta = read_json(index_dir / "index.json")
        if meta["encoder"] != encoder_name:
            raise SystemExit(f"{index_dir} was built with encoder {meta['encoder']!r}, not --encoder "
                             f"{encoder_name!r}; pass --encoder to match, or a run dir without an index stage")
        ids = (index_dir / "item_ids.txt").read_text(encoding="utf-8").splitlines()
        cards = np.load(index_dir / "embeddings.npy", allow_pickle=False).astype(np.float32, copy=False)
        return cards, ids, f"`{index_dir}/embeddings.npy` (the `index` stage's output)"
    t0 = time.perf_counter()
    cards = encoder.encode([it.text for it in items], BATCH, False)  # (num_items, dim)
    logger.info("embedded %d cards in %.1f s", len(items), time.perf_counter() - t0)
    return cards, [it.item_id for it in items], f"the {len(items)} cards of `{run_dir.path}/catalog/items.jsonl`, " \
                                                "embedded here (batch 64, as `reges index` does)"


def time_encoder(encoder: SentenceEncoder, texts: list[str], cards: int, rng: np.random.Generator) -> dict[str, Any]:
    """Seconds to embed a seeded sample of `cards` card texts (batch 64), extrapolated to 1e4 / 1e5 / 1e6 cards."""
    sample = [texts[i] for i in rng.choice(len(texts), size=min(cards, len(texts)), replace=False)]
    encoder.encode(sample[:2], BATCH, False)  # warm-up
    t0 = time.perf_counter()
    encoder.encode(sample, BATCH, False)
    seconds = time.perf_counter() - t0
    per_card = seconds / len(sample)
    return {"cards": len(sample), "seconds": round(seconds, 2), "cards_per_s": round(len(sample) / seconds, 1),
            "mean_chars": round(float(np.mean([len(t) for t in sample])), 1),
            "extrapolated_s": {str(n): round(per_card * n, 1) for n in (10_000, 100_000, 1_000_000)}}


@dataclass(frozen=True)
class Mixture:
    """Gaussian mixture with one shared covariance (see the module docstring).

    Attributes:
        weights: (k,) component probabilities.
        means: (k, dim) component means.
        chol: (dim, dim) lower Cholesky factor of the pooled within-component covariance.
    """

    weights: np.ndarray
    means: np.ndarray
    chol: np.ndarray


def fit_mixture(real: np.ndarray, components: int, seed: int) -> Mixture:
    """Fit the mixture on the real (n, dim) embeddings: k-means cells, their means, the pooled covariance."""
    n, dim = real.shape
    x = real.astype(np.float64)
    if components == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        kmeans = faiss.Kmeans(dim, components, niter=25, seed=seed, verbose=False)
        kmeans.train(np.ascontiguousarray(real, dtype=np.float32))
        labels = kmeans.index.search(np.ascontiguousarray(real, dtype=np.float32), 1)[1][:, 0]
    counts = np.bincount(labels, minlength=components).astype(np.float64)  # (k,)
    means = np.zeros((components, dim))
    np.add.at(means, labels, x)
    means /= np.maximum(counts, 1.0)[:, None]
    resid = x - means[labels]  # (n, dim)
    cov = resid.T @ resid / max(n - components, 1)
    # A tiny ridge keeps the factorisation defined for small fixtures (fewer cards than dimensions).
    cov += np.eye(dim) * 1e-6 * np.trace(cov) / dim
    return Mixture(counts / n, means, np.linalg.cholesky(cov))


def sample_mixture(mix: Mixture, out: np.ndarray, rng: np.random.Generator) -> None:
    """Fill `out` (rows, dim) float32 with L2-normalised mixture draws, in chunks."""
    chol_t = mix.chol.T.astype(np.float32)
    means = mix.means.astype(np.float32)
    for start in range(0, len(out), SAMPLE_CHUNK):
        rows = min(SAMPLE_CHUNK, len(out) - start)
        comp = rng.choice(len(mix.weights), size=rows, p=mix.weights)
        z = rng.standard_normal((rows, out.shape[1]), dtype=np.float32)
        out[start:start + rows] = l2_normalize(z @ chol_t + means[comp])


def describe(vectors: np.ndarray, queries: np.ndarray, mean_dir: np.ndarray, sample: int) -> dict[str, float]:
    """Shape of a set of unit vectors: what the synthetic rows must match in the real ones.

    mean_norm2 (= mean pairwise cosine, self pairs included), cosine to the real mean direction, nearest-neighbour
    cosine within the set (`sample` rows against all), and the queries' best cosine in the set.
    """
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    nn = index.search(vectors[:sample], 2)[0][:, 1]
    best = index.search(queries, 1)[0][:, 0]
    return {"rows": len(vectors), "mean_norm2": round(float(np.square(vectors.mean(0, dtype=np.float64)).sum()), 4),
            "cos_to_real_mean": round(float((vectors @ mean_dir).mean()), 4),
            "nn_cos_mean": round(float(nn.mean()), 4), "query_top1_cos_mean": round(float(best.mean()), 4)}


# ---------------------------------------------------------------------------------------------------------------
# Indexes


def build(kind: str, x: np.ndarray, args: argparse.Namespace, nlist: int) -> faiss.Index:
    """flat / ivf / hnsw through reges' `build_faiss_index`; ivf_pq the same IVF with PQ codes."""
    if kind == "flat":
        return build_faiss_index(x, IndexConfig(index_type="flat"), args.seed)
    if kind == "ivf":
        return build_faiss_index(x, IndexConfig(index_type="ivf", nlist=nlist, nprobe=1), args.seed)
    if kind == "hnsw":
        return build_faiss_index(x, IndexConfig(index_type="hnsw", hnsw_m=args.hnsw_m, ef_search=TOP_K), args.seed)
    if kind.startswith("hnsw_efc"):  # what reges builds with `index.ef_construction` set to this value
        cfg = IndexConfig(index_type="hnsw", hnsw_m=args.hnsw_m, ef_search=TOP_K,
                          ef_construction=int(kind.removeprefix("hnsw_efc")))
        return build_faiss_index(x, cfg, args.seed)
    assert kind == "ivf_pq", kind
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFPQ(quantizer, x.shape[1], nlist, args.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = args.seed
    index.train(x)
    index.add(x)
    return index


def serialized_bytes(index: faiss.Index, tmp_dir: Path) -> int:
    """Size of `faiss.write_index`'s file (written to disk: an in-memory copy would double the peak)."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def time_search(index: faiss.Index, queries: np.ndarray, rounds: int, rng: np.random.Generator
                ) -> tuple[list[float], list[float], np.ndarray]:
    """(batch-1 seconds per query, batch-64 seconds per query per round, (num_queries, TOP_K) ids from batch 1)."""
    index.search(queries[:1], TOP_K)  # warm-up
    single, ids = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        _, found = index.search(queries[i:i + 1], TOP_K)
        single.append(time.perf_counter() - t0)
        ids.append(found[0])
    batched = []
    for _ in range(rounds):
        rows = rng.choice(len(queries), size=BATCH, replace=len(queries) < BATCH)
        q = np.ascontiguousarray(queries[rows])
        t0 = time.perf_counter()
        index.search(q, TOP_K)
        batched.append((time.perf_counter() - t0) / BATCH)
    return single, batched, np.stack(ids)


def numpy_recall(x: np.ndarray, queries: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """Recall of `found` ids against a numpy matmul + argpartition top-k: (strict, ties at the cut-off counted).

    Strict: |found & numpy's top-k| / k. Tie-aware: a found id counts when its score reaches numpy's k-th score
    (minus 1e-5 for float32 rounding in a different summation order), so duplicate cards cannot fail it.
    """
    strict, tie = [], []
    for start in range(0, len(queries), 16):
        scores = queries[start:start + 16] @ x.T  # (16, n) float32
        top = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
        for j, row in enumerate(top):
            kth = scores[j, row].min()
            f = found[start + j]
            strict.append(len(set(f.tolist()) & set(row.tolist())) / TOP_K)
            tie.append(float((scores[j, f] >= kth - 1e-5).sum()) / TOP_K)
    return float(np.mean(strict)), float(np.mean(tie))


def bench_size(x: np.ndarray, n_real: int, queries: np.ndarray, args: argparse.Namespace,
               rng: np.random.Generator) -> dict[str, Any]:
    """Every index type on the catalog `x` (its first `n_real` rows are real cards)."""
    n = len(x)
    nlist = int(2 ** round(np.log2(np.sqrt(n))))  # ~sqrt(N) cells: 256 at 1e5, 1024 at 1e6
    out: dict[str, Any] = {"items": n, "real_items": n_real, "nlist": nlist, "indexes": {}}
    exact: np.ndarray | None = None
    kinds = [*args.index_types, *(f"hnsw_efc{v}" for v in args.hnsw_ef_construction)]
    for kind in kinds:
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        index = build(kind, x, args, nlist)
        build_s = time.perf_counter() - t0
        gc.collect()
        entry: dict[str, Any] = {"build_s": round(build_s, 2), "rss_growth_bytes": rss_bytes() - rss0,
                                 "serialized_bytes": serialized_bytes(index, args.tmp_dir)}
        if kind.startswith("hnsw"):
            entry["params"] = {"hnsw_m": args.hnsw_m, "ef_construction": int(index.hnsw.efConstruction)}
            knob, values = "ef_search", args.ef_search
        elif kind in ("ivf", "ivf_pq"):
            entry["params"] = {"nlist": nlist, **({"pq_m": args.pq_m, "pq_bits": 8} if kind == "ivf_pq" else {})}
            knob, values = "nprobe", [v for v in args.nprobe if v <= nlist]
        else:
            entry["params"] = {}
            knob, values = "", [0]
        logger.info("%d items, %s: built in %.1f s, %.1f MiB serialized", n, kind, build_s,
                    entry["serialized_bytes"] / 2**20)
        entry["sweep"] = []
        for value in values:
            if kind.startswith("hnsw"):
                index.hnsw.efSearch = value
            elif kind in ("ivf", "ivf_pq"):
                index.nprobe = value
            single, batched, found = time_search(index, queries, args.batch_rounds, rng)
            point: dict[str, Any] = {knob: value} if knob else {}
            if kind == "flat":
                exact = found
                strict, tie = numpy_recall(x, queries, found)
                out["flat_vs_numpy"] = {"recall_strict": round(strict, 6), "recall_ties_counted": round(tie, 6)}
                out["real_share_of_exact_top50"] = round(float((exact < n_real).mean()), 4)
            assert exact is not None, "the flat index runs first: it gives the exact top-k"
            point.update(recall=mean_ci(recall_per_query(found, exact), rng),
                         batch1=latency_stats(single, rng), batch64=latency_stats(batched, rng))
            logger.info("%d items, %s %s: recall@%d %.3f, batch-1 p50 %.2f ms, batch-64 p50 %.3f ms/query", n, kind,
                        point, TOP_K, point["recall"]["mean"], point["batch1"]["p50_ms"], point["batch64"]["p50_ms"])
            entry["sweep"].append(point)
        out["indexes"][kind] = entry
        del index
    return out


# ---------------------------------------------------------------------------------------------------------------
# Fused retriever


class LookupEncoder:
    """An `Encoder` that returns precomputed embeddings for known texts (the benchmark times scoring, not BERT)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        missing = [t for t in texts if t not in self.table]
        if missing:
            raise KeyError(f"LookupEncoder has no embedding for {missing[0][:60]!r}; add it to the table")
        return np.stack([self.table[t] for t in texts])


@dataclass(frozen=True)
class MentionStats:
    """What the synthetic co-mention counts copy from the real ones.

    Attributes:
        set_sizes: (D,) distinct items per counted dialogue.
        item_counts: (n_catalog,) dialogues mentioning each catalog item (0: never mentioned).
        context_items: (num_examples,) distinct items mentioned per example context of the split.
    """

    set_sizes: np.ndarray
    item_counts: np.ndarray
    context_items: np.ndarray


def mention_stats(run_dir: RunDir, catalog_ids: list[str], split: str) -> MentionStats:
    """Fit the co-mention prior on train + lossy dialogues (as `train-retriever` does) and read its shape."""
    data = run_dir.require("data")
    dialogues = [Dialogue.from_dict(d) for name in ("train_dialogues.jsonl", LOSSY_DIALOGUES_FILE)
                 if (data / name).is_file() for d in read_jsonl(data / name)]
    cm = CoMention.fit(dialogues)
    counts = np.array([cm.item_counts[cm.row[i]] if i in cm.row else 0.0 for i in catalog_ids])
    examples = read_examples(data / f"{split}.jsonl")
    return MentionStats(np.array([len(s) for s in cm.dialogues.values()]), counts,
                        np.array([len(context_item_ids(ex.context)) for ex in examples]))


def synthetic_comention(stats: MentionStats, item_ids: list[str], rng: np.random.Generator) -> tuple[CoMention, int]:
    """Co-mention counts over a catalog of len(item_ids) items with the real sparsity.

    Dialogues: len(set_sizes) * N / n_real of them (as many per catalog item as in the real data), set sizes drawn
    from the real ones; each catalog item's popularity is a real item's dialogue count (drawn with replacement, so
    as many items are never mentioned). Sets with a repeated item are dropped (returned count). No dialogue list is
    kept, so leave-one-out is not exercised (a served user's dialogue is not in the counts).
    """
    n = len(item_ids)
    weights = rng.choice(stats.item_counts, size=n, replace=True)  # (n,)
    p = weights / weights.sum()
    num_dialogues = int(round(len(stats.set_sizes) * n / len(stats.item_counts)))
    sizes = rng.choice(stats.set_sizes, size=num_dialogues, replace=True)
    rows, cols = [], []
    dropped = 0
    for s in np.unique(sizes[sizes > 0]):
        sets = np.sort(rng.choice(n, size=(int((sizes == s).sum()), int(s)), p=p), axis=1).astype(np.int32)
        ok = (np.diff(sets, axis=1) > 0).all(axis=1)
        dropped += int((~ok).sum())
        sets = sets[ok]
        rows.append(np.repeat(sets, s, axis=1).ravel())  # every ordered pair, diagonal included
        cols.append(np.tile(sets, (1, s)).ravel())
    r, c = np.concatenate(rows), np.concatenate(cols)
    used = np.unique(r)  # the counted items (a catalog item never drawn has no row, as in CoMention.fit)
    remap = np.full(n, -1, dtype=np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    counts = sp.coo_matrix((np.ones(len(r), dtype=np.int32), (remap[r], remap[c])),
                           shape=(len(used), len(used))).tocsr()
    del r, c, rows, cols
    counts.sum_duplicates()
    return CoMention([item_ids[j] for j in used], counts, {}), dropped


def synthetic_requests(stats: MentionStats, counts: CoMention, queries: np.ndarray, settings: FusionSettings,
                       rng: np.random.Generator) -> tuple[list[list[Turn]], list[str], dict[str, np.ndarray]]:
    """One request per query embedding: a context naming as many counted items as a real context does (drawn by
    popularity), an expert query, and the lookup table that gives both texts that embedding.

    Returns:
        (contexts, query texts, text -> embedding for `LookupEncoder`).
    """
    counted = np.array(counts.item_ids)
    pop = counts.item_counts / counts.item_counts.sum()
    contexts, texts, table = [], [], {}
    for i, embedding in enumerate(queries):
        m = int(rng.choice(stats.context_items))
        mentioned = rng.choice(counted, size=min(m, len(counted)), replace=False, p=pop).tolist() if m else []
        context = [Turn("user", f"synthetic context {i}", [str(j) for j in mentioned])]
        query = f"synthetic expert query {i}"
        table[context_to_query(context, settings.query_mode, settings.max_query_chars)] = embedding
        table[query] = embedding
        contexts.append(context)
        texts.append(query)
    return contexts, texts, table


def bench_fusion(x: np.ndarray, item_ids: list[str], queries: np.ndarray, stats: MentionStats,
                 args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Per-query cost of `FusedRetriever.search` (all five features) over the first N rows of `x`, per N."""
    out: dict[str, Any] = {}
    settings = FusionSettings()
    num = min(args.fusion_queries, len(queries))
    for n in args.fusion_sizes:
        gc.collect()
        t0 = time.perf_counter()
        counts, dropped = synthetic_comention(stats, item_ids[:n], rng)
        counts_s = time.perf_counter() - t0
        contexts, texts, table = synthetic_requests(stats, counts, queries[:num], settings, rng)
        t0 = time.perf_counter()
        retriever = FusedRetriever(LookupEncoder(table), x[:n], item_ids[:n], counts, FUSION_WEIGHTS, settings)
        setup_s = time.perf_counter() - t0
        retriever.search(contexts[:1], texts[:1], TOP_K)  # warm-up
        steps = ("dense_dialogue", "dense_query", "comention", "comention_id_map", "popularity", "mentioned", "zscore",
                 "fuse", "top_hits")
        total, parts = [], {name: [] for name in steps}
        for c, q in zip(contexts, texts, strict=True):
            t0 = time.perf_counter()
            retriever.search([c], [q], TOP_K)
            total.append(time.perf_counter() - t0)
            # The same work step by step (what `scores` + `top_hits` do), to see where the time goes.
            feats = {}
            for name in FUSION_WEIGHTS["with_query"]:
                t0 = time.perf_counter()
                feats.update(retriever.features([c], [q], [None], [name]))
                parts[name].append(time.perf_counter() - t0)
            # The catalog id -> count row map (a Python loop over the catalog); `search` computes it once at load.
            t0 = time.perf_counter()
            counts.count_columns(retriever.item_ids)
            parts["comention_id_map"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            z = {name: zscore_rows(v) for name, v in feats.items()}
            parts["zscore"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scores = fuse(z, FUSION_WEIGHTS["with_query"], retriever.tie)
            parts["fuse"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            top_hits(scores, retriever.item_ids, retriever.id_rank, TOP_K)
            parts["top_hits"].append(time.perf_counter() - t0)
        tracemalloc.start()
        retriever.search(contexts[:1], texts[:1], TOP_K)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[str(n)] = {
            "items": n, "queries": num, "counted_items": len(counts.item_ids), "count_nnz": int(counts.counts.nnz),
            "synthetic_dialogues_dropped": dropped, "counts_build_s": round(counts_s, 2),
            "setup_s": round(setup_s, 2), "search": latency_stats(total, rng),
            "parts_p50_ms": {k: round(float(np.median(v)) * 1000, 3) for k, v in parts.items()},
            "search_peak_bytes": int(peak),
            "mean_context_items": round(float(np.mean([len(context_item_ids(c)) for c in contexts])), 2),
        }
        logger.info("fusion at %d items: %s", n, out[str(n)])
        del retriever, counts
    return out


# ---------------------------------------------------------------------------------------------------------------
# Report


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def aim_check(result: dict[str, Any]) -> dict[str, Any]:
    """Does HNSW at 1e6 items keep >= 0.95 of the exact top-50 at p50 <= 20 ms per query (batch 1)?

    Per HNSW variant measured: the fastest setting that meets the aim (on the mean recall), else the one with the
    best recall; `met` when any variant meets it.
    """
    size = next((s for s in result["sizes"] if s["items"] == AIM["size"]), None)
    if size is None or not any(k.startswith("hnsw") for k in size["indexes"]):
        return {"measured": False}
    variants = {}
    for kind, entry in size["indexes"].items():
        if not kind.startswith("hnsw"):
            continue
        sweep = entry["sweep"]
        ok = [p for p in sweep if p["recall"]["mean"] >= AIM["recall"] and p["batch1"]["p50_ms"] <= AIM["p50_ms"]]
        best = min(ok, key=lambda p: p["batch1"]["p50_ms"]) if ok else max(sweep, key=lambda p: p["recall"]["mean"])
        variants[kind] = {"met": bool(ok), "ef_construction": entry["params"]["ef_construction"],
                          "ef_search": best["ef_search"], "recall": best["recall"]["mean"],
                          "recall_ci": best["recall"]["ci"], "p50_ms": best["batch1"]["p50_ms"],
                          "p95_ms": best["batch1"]["p95_ms"],
                          "largest_ef_search": best["ef_search"] == max(p["ef_search"] for p in sweep)}
    return {"measured": True, "met": any(v["met"] for v in variants.values()), "variants": variants}


def compare_build(r: dict[str, Any]) -> str:
    """A sentence comparing the largest catalog's slowest index build with embedding that many cards."""
    size = r["sizes"][-1]
    kind, entry = max(size["indexes"].items(), key=lambda ke: ke[1]["build_s"])
    encode_s = r["encoder_timing"]["seconds"] / r["encoder_timing"]["cards"] * size["items"]
    return (f" At {size['items']:,} items the slowest build measured ({kind}, {entry['build_s'] / 60:,.1f} min) is "
            f"{entry['build_s'] / encode_s:.1%} of the time embedding that many cards would take "
            f"({encode_s / 60:,.0f} min).")


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    lines = [
        "# Million-item catalogs: FAISS index types at scale, and the fused retriever's cost per query",
        "",
        f"Measured {r['date']} on {m['cpu_model']} ({m['cores']} logical cores, {m['cores_usable']} usable; "
        f"{m['platform']}, Python {m['python']}, faiss {m['faiss']} ({m['faiss_compile']}), numpy {m['numpy']}, "
        f"torch {m['torch']}), **{s['threads']} thread** (faiss, torch; OMP_NUM_THREADS={m['omp_num_threads']}). "
        f"Load average (1/5/15 min) before {m['load_average']}, after {m['load_average_after']}: other jobs share "
        "these cores. Peak RSS of the whole run: "
        f"{r['peak_rss_mib']:,.0f} MiB. Raw numbers: the .json next to this file. What follows for the config: "
        "[scale_notes.md](scale_notes.md).",
        "",
        f"```\n{r['command']}\n```",
        "",
        "## Setup",
        "",
        f"- **Real cards**: {r['real']['source']}: {r['real']['items']:,} items, {s['encoder']}, "
        f"{r['real']['dim']}-d, L2-normalised.",
        "- **Synthetic cards** (the rest of each catalog): a Gaussian mixture fitted on the real embeddings: "
        f"k-means with k = {s['components']} on the real cards; component weight = its share of cards, mean = its "
        "cards' mean; one covariance shared by all components (the pooled within-cluster covariance); each draw "
        f"mu_c + L z is L2-normalised like a real card (seed {s['seed']}). Row order: the real cards first, then "
        "the synthetic ones; a catalog of N items is the first N rows.",
        f"- **Queries**: {s['queries']} real queries: contexts of `{s['split']}` examples (seeded sample), rendered "
        f"as the retrieve stage does (`context_to_query`, mode full, {s['max_query_chars']} chars at most) and "
        "embedded with the same encoder; no query is in the catalog.",
        f"- **Recall@{TOP_K}**: per query, the share of the exact top-{TOP_K} ids (the flat index's) found in the "
        "index's top-50; mean over queries [95 % bootstrap interval]. **Latency**: `index.search(q, 50)` per query, "
        f"batch 1 (each query once) and batch 64 ({s['batch_rounds']} random batches, time / 64); median [95 % "
        "bootstrap interval] and p95, in ms. `ItemIndex.search` adds the id lookup and fetches 16 extra rows for "
        "ties. **Size**: bytes of `faiss.write_index`; RSS growth across the build (an estimate: memory freed by "
        "the previous index is reused or returned during the build, so it can read low or even negative).",
        "- flat, ivf and hnsw are built by `reges.retrieval.index.build_faiss_index` (what `reges index` builds: "
        "`IndexFlatIP`, `IndexIVFFlat`, `IndexHNSWFlat` with the default `index.ef_construction`: faiss' 40 in the "
        "run of 2026-12-06 (scale.md), 200 since; the table header says which); ivf_pq is `IndexIVFPQ` "
        f"with the same cells and {s['pq_m']} 8-bit sub-quantisers ({s['pq_m']} bytes per vector), not in reges; "
        "hnsw_efcE is reges' HNSW built with `index.ef_construction: E`.",
        "",
        "How close the synthetic rows are to the real ones (same number of rows each; nearest-neighbour cosine over "
        f"{s['describe_rows']} rows):",
        "",
        "| set | rows | mean pairwise cosine | cosine to the real mean direction | nearest-neighbour cosine "
        "| queries' best cosine |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in r["distribution"].items():
        lines.append(f"| {name} | {d['rows']:,} | {d['mean_norm2']:.3f} | {d['cos_to_real_mean']:.3f} "
                     f"| {d['nn_cos_mean']:.3f} | {d['query_top1_cos_mean']:.3f} |")
    real, synth = r["distribution"]["real"], r["distribution"]["synthetic"]
    enc = r["encoder_timing"]
    lines += [
        "",
        f"The synthetic rows copy the real spread (mean pairwise cosine {synth['mean_norm2']:.3f} vs "
        f"{real['mean_norm2']:.3f}) but are {'less' if synth['nn_cos_mean'] < real['nn_cos_mean'] else 'more'} "
        f"clustered (nearest-neighbour cosine {synth['nn_cos_mean']:.3f} vs {real['nn_cos_mean']:.3f}), and the "
        f"queries' best match among them is {synth['query_top1_cos_mean']:.3f} vs {real['query_top1_cos_mean']:.3f}. "
        + ("Less clustered data is harder for graph and cell search, so the approximate indexes' recall on a real "
           "catalog of the same size is probably no lower than here" if synth["nn_cos_mean"] < real["nn_cos_mean"]
           else "More clustered data is easier for graph and cell search, so the approximate indexes' recall on a "
           "real catalog of the same size may be lower than here")
        + " (not measured: no real catalog this large).",
        "",
        "## Encoding the cards",
        "",
        f"{s['encoder']} embedded {enc['cards']:,} real cards (seeded sample, mean {enc['mean_chars']:.0f} chars, "
        f"batch 64, {s['threads']} thread) in {enc['seconds']:.1f} s = **{enc['cards_per_s']:.1f} cards/s**. "
        "Extrapolated linearly (not measured): "
        + ", ".join(f"{int(k):,} cards {v / 60:,.1f} min" for k, v in enc["extrapolated_s"].items())
        + f" ({enc['extrapolated_s']['10000'] / 60:.1f} min per 10k cards)." + compare_build(r),
        "",
        "## Index types",
        "",
    ]
    for size in r["sizes"]:
        fv = size["flat_vs_numpy"]
        lines += [
            f"### {size['items']:,} items ({size['real_items']:,} real), nlist {size['nlist']}",
            "",
            f"Flat vs numpy (matmul + argpartition): recall@{TOP_K} {fv['recall_strict']:.4f} strict, "
            f"{fv['recall_ties_counted']:.4f} with ties at the cut-off counted. Real cards make up "
            f"{size['real_share_of_exact_top50']:.1%} of the exact top-50s ({size['real_items'] / size['items']:.1%} "
            "of the catalog).",
            "",
            "| index | build s | serialized MiB | RSS growth MiB | knob | recall@50 | batch-1 p50 ms | batch-1 p95 ms "
            "| batch-64 p50 ms/query | batch-64 p95 ms/query |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for kind, e in size["indexes"].items():
            params = ", ".join(f"{k}={v}" for k, v in e["params"].items())
            for i, p in enumerate(e["sweep"]):
                knob = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("recall", "batch1", "batch64"))
                head = (f"| {kind}{f' ({params})' if params else ''} | {e['build_s']:,.1f} | "
                        f"{_mib(e['serialized_bytes'])} | {_mib(e['rss_growth_bytes'])} |") if i == 0 else "| | | | |"
                rc, b1, b64 = p["recall"], p["batch1"], p["batch64"]
                lines.append(
                    f"{head} {knob or '-'} | {rc['mean']:.3f} [{rc['ci'][0]:.3f}, {rc['ci'][1]:.3f}] "
                    f"| {b1['p50_ms']:.2f} [{b1['p50_ci_ms'][0]:.2f}, {b1['p50_ci_ms'][1]:.2f}] | {b1['p95_ms']:.2f} "
                    f"| {b64['p50_ms']:.3f} [{b64['p50_ci_ms'][0]:.3f}, {b64['p50_ci_ms'][1]:.3f}] "
                    f"| {b64['p95_ms']:.3f} |"
                )
        lines.append("")
    aim = r["aim"]
    if aim["measured"]:
        parts = []
        for kind, v in aim["variants"].items():
            ci = f"[{v['recall_ci'][0]:.3f}, {v['recall_ci'][1]:.3f}]"
            head = f"{kind} (efConstruction {v['ef_construction']})"
            if v["met"]:
                straddle = " (the interval reaches below the bar: a borderline pass)" if v["recall_ci"][0] < \
                    AIM["recall"] else ""
                parts.append(f"{head} meets it at efSearch {v['ef_search']}: recall@50 {v['recall']:.3f} {ci}"
                             f"{straddle}, p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms")
            else:
                largest = " (the largest measured)" if v["largest_ef_search"] else ""
                parts.append(f"{head} does not: its best recall@50 is {v['recall']:.3f} {ci} at efSearch "
                             f"{v['ef_search']}{largest}, p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms")
        lines += [
            f"**Aim** (HNSW at {AIM['size']:,} items keeps >= {AIM['recall']} of the exact top-50 at p50 <= "
            f"{AIM['p50_ms']:.0f} ms per query, batch 1, this CPU): **{'met' if aim['met'] else 'not met'}**. "
            + "; ".join(parts) + ".",
            "",
        ]
    fu = r["fusion"]
    if fu:
        sizes = list(fu)
        parts = list(fu[sizes[0]]["parts_p50_ms"])
        lines += [
            "## The fused retriever's cost per query",
            "",
            "`FusedRetriever.search` (the `retrieve` stage and the server use it once `train-retriever` is complete) "
            "scores **every catalog item** for every query: `dense` is a matrix product with all card embeddings "
            "(the FAISS index is not used at all on this path), and co-mention, popularity and `mentioned` are "
            "dense (num_queries, num_items) float64 arrays, each z-scored over the whole catalog, summed, then "
            "partitioned for the top-k. Measured here with one query per call (a chat turn), all five features "
            "(ReDial's shipped weights), a lookup encoder (the query encoder costs the same at any catalog size: "
            "see retrieval.md) and synthetic co-mention counts with the run's sparsity (dialogues per item, set "
            "sizes and item popularity copied; context items drawn by popularity, as many as real "
            f"`{s['split']}` contexts mention).",
            "",
            "| items | counted items | count nnz | setup s | search p50 ms [95 % CI] | search p95 ms | "
            + " | ".join(f"{p} p50 ms" for p in parts) + " | peak MiB per call |",
            "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(parts) + "---:|",
        ]
        for n in sizes:
            f = fu[n]
            lines.append(
                f"| {int(n):,} | {f['counted_items']:,} | {f['count_nnz']:,} | {f['setup_s']:.2f} "
                f"| {f['search']['p50_ms']:.1f} [{f['search']['p50_ci_ms'][0]:.1f}, {f['search']['p50_ci_ms'][1]:.1f}]"
                f" | {f['search']['p95_ms']:.1f} | " + " | ".join(f"{f['parts_p50_ms'][p]:.2f}" for p in parts)
                + f" | {f['search_peak_bytes'] / 2**20:,.0f} |"
            )
        lo, hi = fu[sizes[0]], fu[sizes[-1]]
        ratio = hi["search"]["p50_ms"] / lo["search"]["p50_ms"]
        per_million = (hi["search"]["p50_ms"] - lo["search"]["p50_ms"]) / ((hi["items"] - lo["items"]) / 1e6)
        # linear: the cost ratio is at least half the size ratio (a fixed per-call overhead pulls it below 1:1)
        growth = "linear in the catalog" if ratio >= 0.5 * hi["items"] / lo["items"] else "sub-linear"
        lines += [
            "",
            f"From {lo['items']:,} to {hi['items']:,} items ({hi['items'] / lo['items']:.0f}x) the per-query cost "
            f"grows {ratio:.0f}x ({lo['search']['p50_ms']:.1f} -> {hi['search']['p50_ms']:.1f} ms p50): about "
            f"**{per_million:,.0f} ms per million items** per query ({growth}), and a single call "
            f"allocates {hi['search_peak_bytes'] / 2**20:,.0f} MiB at {hi['items']:,} items (tracemalloc peak; a "
            "batch of B queries allocates about B times that). The step columns are the same work timed step by step "
            "(`features` per feature, then `zscore_rows`, `fuse`, `top_hits`); they repeat the work of `search` "
            "and are not added to it. `comention_id_map` is `CoMention.count_columns` over the catalog (a Python "
            "loop): `CoMention.scores` runs it at every call unless the caller passes `columns`, which "
            "`FusedRetriever` computes once when it is built (in `setup s`), so it is not part of `search` or of "
            "the `comention` column. The fix is in [scale_notes.md](scale_notes.md): score only the index's "
            "top-N candidates plus the items the co-mention rows and the context name, with the catalog-wide "
            "z-score statistics computed in closed form.",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None, help="run dir with complete data and catalog stages")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="catalog sizes")
    parser.add_argument("--fusion-sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                        help="catalog sizes for the fused retriever's cost (none: skip)")
    parser.add_argument("--index-types", nargs="+", default=["flat", "ivf", "ivf_pq", "hnsw"],
                        choices=["flat", "ivf", "ivf_pq", "hnsw"], help="flat is always run first")
    parser.add_argument("--queries", type=int, default=200, help="real queries (split contexts)")
    parser.add_argument("--fusion-queries", type=int, default=50, help="queries timed per fusion size")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--encoder-cards", type=int, default=2000, help="cards embedded to time the encoder")
    parser.add_argument("--max-query-chars", type=int, default=2000)
    parser.add_argument("--components", type=int, default=128, help="mixture components (1: one Gaussian)")
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, nargs="*", default=[],
                        help="also build HNSW with these efConstruction values (reges' default: "
                             "IndexConfig.ef_construction)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[50, 64, 128, 256, 512])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--pq-m", type=int, default=48, help="IVF-PQ sub-quantisers (bytes per vector)")
    parser.add_argument("--batch-rounds", type=int, default=20, help="batch-64 searches timed per setting")
    parser.add_argument("--threads", type=int, default=1, help="faiss and torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()), help="for serialized indexes")
    parser.add_argument("--out", type=Path, required=True, help="markdown page; the JSON goes next to it (.json)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: render --out from this script's JSON (its command and numbers)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        result["aim"] = aim_check(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(result), encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    if args.run_dir is None:
        parser.error("--run-dir is required (unless --from-json)")
    if args.index_types[0] != "flat":
        parser.error("--index-types must start with flat: it gives the exact top-50 the others are scored against")
    if min(args.queries, args.fusion_queries, args.encoder_cards, args.components, args.threads) < 1:
        parser.error("--queries, --fusion-queries, --encoder-cards, --components and --threads must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    command = shlex.join([".venv/bin/python", "benchmarks/scale_catalog.py",
                          *(argv if argv is not None else sys.argv[1:])])
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    machine = {**machine_info(), "faiss": faiss.__version__, "faiss_compile": faiss.get_compile_options(),
               "numpy": np.__version__, "torch": torch.__version__,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    run_dir = RunDir(args.run_dir)

    # 1. Real cards, the encoder's rate, real queries.
    torch.set_num_threads(args.threads)  # this script is the process's entry point, as the CLI is for `reges`
    encoder = SentenceEncoder(load_encoder(args.encoder, "cpu", IndexConfig.max_seq_length))
    cards, card_ids, source = real_cards(run_dir, encoder, args.encoder)
    texts = {it.item_id: it.text for it in read_catalog(run_dir.require("catalog") / "items.jsonl")}
    encoder_timing = time_encoder(encoder, [texts[i] for i in card_ids], args.encoder_cards, rng)
    logger.info("encoder: %s", encoder_timing)
    examples = read_examples(run_dir.require("data") / f"{args.split}.jsonl")
    query_texts = [t for t in (context_to_query(ex.context, "full", args.max_query_chars) for ex in examples)
                   if t.strip()]
    query_texts = [query_texts[i] for i in rng.permutation(len(query_texts))[: args.queries]]
    queries = encoder.encode(query_texts, BATCH, False)  # (num_queries, dim)
    del encoder
    gc.collect()

    # 2. The catalog: real rows, then synthetic ones, in one array (a catalog of N items is a prefix view).
    n_real, dim = cards.shape
    total = max([*args.sizes, *args.fusion_sizes])
    if min([*args.sizes, *args.fusion_sizes]) < n_real:
        parser.error(f"every size must be >= the {n_real} real cards, got {min([*args.sizes, *args.fusion_sizes])}")
    if args.components > n_real:
        parser.error(f"--components must be <= the {n_real} real cards, got {args.components}")
    mixture = fit_mixture(cards, args.components, args.seed)
    x = np.empty((total, dim), dtype=np.float32)  # (total, dim)
    x[:n_real] = cards
    t0 = time.perf_counter()
    sample_mixture(mixture, x[n_real:], rng)
    logger.info("drew %d synthetic vectors in %.1f s", total - n_real, time.perf_counter() - t0)
    item_ids = card_ids + [f"synthetic-{j}" for j in range(total - n_real)]
    mean_dir = cards.mean(0) / np.linalg.norm(cards.mean(0))
    rows = min(n_real, total - n_real)
    describe_rows = min(rows, 2000)
    distribution = {"real": describe(cards[:rows], queries, mean_dir, describe_rows),
                    "synthetic": describe(x[n_real:n_real + rows], queries, mean_dir, describe_rows)}
    logger.info("distribution: %s", distribution)

    # 3. Index types per size, 4. the fused retriever per size.
    sizes = [bench_size(x[:n], n_real, queries, args, rng) for n in args.sizes]
    fusion = {}
    if args.fusion_sizes:
        stats = mention_stats(run_dir, card_ids, args.split)
        fusion = bench_fusion(x, item_ids, queries, stats, args, rng)

    result: dict[str, Any] = {
        "date": now_iso(), "command": command, "machine": {**machine, "load_average_after": machine_info()[
            "load_average"]},
        "settings": {"split": args.split, "queries": len(queries), "encoder": args.encoder, "threads": args.threads,
                     "components": args.components, "seed": args.seed, "pq_m": args.pq_m, "hnsw_m": args.hnsw_m,
                     "batch_rounds": args.batch_rounds, "max_query_chars": args.max_query_chars, "top_k": TOP_K,
                     "describe_rows": describe_rows, "fusion_queries": args.fusion_queries},
        "real": {"source": source, "items": n_real, "dim": dim},
        "distribution": distribution, "encoder_timing": encoder_timing, "sizes": sizes, "fusion": fusion,
        "peak_rss_mib": resource_peak_mib(),
    }
    result["aim"] = aim_check(result)
    markdown = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s", args.out, args.out.with_suffix(".json"))
    return 0


def resource_peak_mib() -> float:
    """Peak RSS of this process so far (ru_maxrss, KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


if __name__ == "__main__":
    raise SystemExit(main())
