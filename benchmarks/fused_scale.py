"""The fused retriever at 1e4-1e6 items: whole-catalog scoring next to the candidate path, per query.

`FusedRetriever.search` scores every catalog item when its index is flat, and only candidates when the index that
train-retriever built is approximate (`index.index_type: hnsw` or `ivf`; module docstring of
`reges.retrieval.fusion`). This script times both on the same catalogs and requests, side by side, and checks that
the candidate path returns the whole-catalog top-50.

Catalogs and requests are those of `benchmarks/scale_catalog.py` (same helpers): the run's real card embeddings
plus synthetic vectors from a Gaussian mixture fitted on them; synthetic co-mention counts with the run's sparsity;
per request a context naming as many counted items as a real one, and a real dev query embedding for both dense
features (a lookup encoder: no model cost). Fusion weights: ReDial's shipped ones (all five features).

Per catalog size:
    whole catalog   `search` with no index (what a flat index gives): p50 [95 % CI] and p95 per query, batch 1
    index build     reges' `ItemIndex.from_embeddings` with the given HNSW (or IVF) settings
    candidates      `search` with that index, per --pool: p50 [CI], p95, the share of the whole-catalog top-50 it
                    returns (mean [CI] over requests) and how many requests fell back to whole-catalog scoring

Usage:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/fused_scale.py \\
        --run-dir runs/redial --sizes 10000 100000 1000000 --out docs/results/scale_fusion.md

The run dir needs complete `data` and `catalog` stages; a complete `index` stage is reused, else the cards are
embedded here.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from scale_catalog import (
    FUSION_WEIGHTS,
    TOP_K,
    LookupEncoder,
    fit_mixture,
    latency_stats,
    mean_ci,
    mention_stats,
    real_cards,
    resource_peak_mib,
    sample_mixture,
    synthetic_comention,
    synthetic_requests,
)

from reges.config import IndexConfig
from reges.io import RunDir, machine_info, now_iso
from reges.retrieval.encoder import SentenceEncoder, load_encoder
from reges.retrieval.fusion import FusedRetriever, FusionSettings
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("benchmarks.fused_scale")


def time_search(retriever: FusedRetriever, contexts: list, texts: list[str]) -> tuple[list[float], list[list[str]]]:
    """Per-request wall time of `search` at batch 1 (after one warm-up), and each request's top-50 ids."""
    retriever.search(contexts[:1], texts[:1], TOP_K)
    retriever.fallbacks = 0  # count the timed requests only
    seconds, tops = [], []
    for c, q in zip(contexts, texts, strict=True):
        t0 = time.perf_counter()
        hits = retriever.search([c], [q], TOP_K)[0]
        seconds.append(time.perf_counter() - t0)
        tops.append([h.item_id for h in hits])
    return seconds, tops


def bench_size(x: np.ndarray, item_ids: list[str], queries: np.ndarray, stats: Any, args: argparse.Namespace,
               rng: np.random.Generator) -> dict[str, Any]:
    n = len(x)
    settings = FusionSettings()
    counts, _ = synthetic_comention(stats, item_ids, rng)
    contexts, texts, table = synthetic_requests(stats, counts, queries, settings, rng)
    encoder = LookupEncoder(table)
    whole = FusedRetriever(encoder, x, item_ids, counts, FUSION_WEIGHTS, settings)
    whole_s, exact = time_search(whole, contexts, texts)
    del whole
    gc.collect()
    cfg = IndexConfig(index_type=args.index, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                      ef_search=args.ef_search, nlist=max(1, min(args.nlist or int(2 ** round(np.log2(np.sqrt(n)))),
                                                                 n)),
                      nprobe=args.nprobe)
    t0 = time.perf_counter()
    index = ItemIndex.from_embeddings(x, item_ids, cfg, args.seed)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "items": n, "requests": len(contexts), "counted_items": len(counts.item_ids),
        "whole_catalog": latency_stats(whole_s, rng), "index": {**index.meta, "build_s": round(build_s, 1)},
        "pools": {},
    }
    logger.info("%d items: whole catalog p50 %.1f ms; %s index built in %.0f s", n,
                out["whole_catalog"]["p50_ms"], args.index, build_s)
    for pool in args.pool:
        fast = FusedRetriever(encoder, x, item_ids, counts, FUSION_WEIGHTS, settings, index=index,
                              candidate_pool=pool)
        fast_s, tops = time_search(fast, contexts, texts)
        agree = np.array([len(set(t) & set(e)) / len(e) for t, e in zip(tops, exact, strict=True)])
        latency = latency_stats(fast_s, rng)
        out["pools"][str(pool)] = {
            "search": latency, "top50_agreement": mean_ci(agree, rng),
            "identical_top50": int(sum(t == e for t, e in zip(tops, exact, strict=True))),
            "fallbacks": fast.fallbacks, "speedup_p50": round(out["whole_catalog"]["p50_ms"] / latency["p50_ms"], 1),
        }
        logger.info("%d items, pool %d: %s", n, pool, out["pools"][str(pool)])
        del fast
    return out


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    lines = [
        "# The fused retriever at a million items: whole-catalog scoring vs candidates from the index",
        "",
        f"Measured {r['date']} on {m['cpu_model']} ({m['cores']} logical cores), **{s['threads']} thread** "
        f"(OMP_NUM_THREADS={m['omp_num_threads']}); load average before {m['load_average']}, after "
        f"{m['load_average_after']} (other jobs share these cores: latencies are upper bounds). Peak RSS "
        f"{r['peak_rss_mib']:,.0f} MiB. Raw numbers: the .json next to this file.",
        "",
        f"```\n{r['command']}\n```",
        "",
        f"Catalogs: {r['real_items']:,} real ReDial cards (all-MiniLM-L6-v2) plus synthetic vectors from a "
        f"{s['components']}-component Gaussian mixture fitted on them; synthetic co-mention counts with the run's "
        f"sparsity; {s['requests']} requests per size, each a real `{s['split']}` query embedding for both dense "
        "features and a context naming as many counted items as a real context (benchmarks/scale_catalog.py's "
        "helpers). Fusion weights: ReDial's shipped ones, all five features. Latency: `FusedRetriever.search` of "
        "one request, median [95 % bootstrap CI] and p95 in ms. Agreement: the share of the whole-catalog top-50 "
        "that the candidate path returns, mean [95 % CI] over requests; identical: requests whose top-50 list is the "
        "same, order included. Fallbacks: requests whose candidates could not prove their top-50, scored over the "
        f"whole catalog instead. Index: `{s['index']}`"
        + (f", hnsw_m {s['hnsw_m']}, efConstruction {s['ef_construction']}, efSearch {s['ef_search']}"
           if s["index"] == "hnsw" else f", nprobe {s['nprobe']}") + ".",
        "",
        "| items | counted items | whole catalog p50 (p95) | index build | pool | candidates p50 (p95) | speed-up "
        "| top-50 agreement | identical | fallbacks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in r["sizes"]:
        w = size["whole_catalog"]
        for pool, p in size["pools"].items():
            a = p["top50_agreement"]
            lines.append(
                f"| {size['items']:,} | {size['counted_items']:,} | {w['p50_ms']:.1f} [{w['p50_ci_ms'][0]:.1f}, "
                f"{w['p50_ci_ms'][1]:.1f}] ({w['p95_ms']:.1f}) | {size['index']['build_s']:,.0f} s | {pool} "
                f"| {p['search']['p50_ms']:.2f} [{p['search']['p50_ci_ms'][0]:.2f}, {p['search']['p50_ci_ms'][1]:.2f}]"
                f" ({p['search']['p95_ms']:.2f}) | {p['speedup_p50']}x | {a['mean']:.4f} [{a['ci'][0]:.4f}, "
                f"{a['ci'][1]:.4f}] | {p['identical_top50']}/{size['requests']} | {p['fallbacks']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="run dir with complete data and catalog")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=50, help="requests timed per size")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--index", choices=["hnsw", "ivf"], default="hnsw")
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig.ef_construction)
    parser.add_argument("--ef-search", type=int, default=1024, help="at least the largest --pool")
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells (0: the power of two nearest sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=IndexConfig.nprobe)
    parser.add_argument("--pool", type=int, nargs="+", default=[100, 300, 1000], help="candidate_pool values")
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="markdown page; the JSON goes next to it")
    args = parser.parse_args(argv)
    if min(args.requests, args.threads, *args.pool) < 1:
        parser.error("--requests, --threads and --pool must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join([".venv/bin/python", "benchmarks/fused_scale.py", *given])
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)  # this script is the process's entry point, as the CLI is for `reges`
    rng = np.random.default_rng(args.seed)
    machine = {**machine_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    run_dir = RunDir(args.run_dir)

    encoder = SentenceEncoder(load_encoder("all-MiniLM-L6-v2", "cpu", IndexConfig.max_seq_length))
    cards, card_ids, _ = real_cards(run_dir, encoder, "all-MiniLM-L6-v2")
    examples = read_examples(run_dir.require("data") / f"{args.split}.jsonl")
    texts = [t for t in (context_to_query(ex.context, "full", 2000) for ex in examples) if t.strip()]
    texts = [texts[i] for i in rng.permutation(len(texts))[: args.requests]]
    queries = encoder.encode(texts, 64, False)  # (requests, dim)
    del encoder
    n_real, dim = cards.shape
    if min(args.sizes) < n_real:
        parser.error(f"every size must be >= the {n_real} real cards, got {min(args.sizes)}")
    x = np.empty((max(args.sizes), dim), dtype=np.float32)
    x[:n_real] = cards
    sample_mixture(fit_mixture(cards, args.components, args.seed), x[n_real:], rng)
    item_ids = card_ids + [f"synthetic-{j}" for j in range(len(x) - n_real)]
    stats = mention_stats(run_dir, card_ids, args.split)
    sizes = [bench_size(x[:n], item_ids[:n], queries, stats, args, rng) for n in args.sizes]
    result = {
        "date": now_iso(), "command": command,
        "machine": {**machine, "load_average_after": machine_info()["load_average"]},
        "settings": {"split": args.split, "requests": len(queries), "index": args.index, "hnsw_m": args.hnsw_m,
                     "ef_construction": args.ef_construction, "ef_search": args.ef_search, "nprobe": args.nprobe,
                     "pools": args.pool, "components": args.components, "threads": args.threads, "seed": args.seed},
        "real_items": n_real, "sizes": sizes, "peak_rss_mib": resource_peak_mib(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(result), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
