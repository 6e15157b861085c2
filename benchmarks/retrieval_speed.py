"""Retrieval speed: card indexing rate, query latency and throughput, and flat vs HNSW vs IVF search.

Needs a run directory whose `data` and `catalog` stages are complete (e.g. after
`reges data` and `reges catalog` with configs/redial.yaml). Queries are the dev split's full dialogue
contexts, exactly as the retrieve stage builds them.

Usage:
    .venv/bin/python benchmarks/retrieval_speed.py --run-dir runs/redial --queries 200 \
        --synthetic-items 100000 --out docs/results/retrieval_speed.json

It prints markdown tables and, with --out, writes the raw numbers there (JSON) and the tables next to it (.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reges.catalog import read_catalog
from reges.config import IndexConfig
from reges.io import RunDir, now_iso
from reges.retrieval.encoder import SentenceEncoder, l2_normalize, load_encoder
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("benchmarks.retrieval_speed")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
    }


def bench_index_types(
    embeddings: np.ndarray, ids: list[str], queries: np.ndarray, top_k: int, seed: int
) -> dict[str, dict[str, float]]:
    """Build time, single-query and batch-64 search latency, and overlap with the exact top-k."""
    base = IndexConfig()
    configs = {
        "flat": dataclasses.replace(base, index_type="flat"),
        "hnsw": dataclasses.replace(base, index_type="hnsw", hnsw_m=32, ef_search=128),
        "ivf": dataclasses.replace(base, index_type="ivf", nlist=min(256, max(1, len(ids) // 39)), nprobe=16),
    }
    exact: list[set[str]] = []
    out: dict[str, dict[str, float]] = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        index = ItemIndex.from_embeddings(embeddings, ids, cfg, seed=seed)
        build_s = time.perf_counter() - t0
        index.search(queries[:1], top_k)  # warm-up
        single = []
        for q in queries:
            t0 = time.perf_counter()
            index.search(q[None, :], top_k)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = []
        for start in range(0, len(queries), 64):
            results += index.search(queries[start : start + 64], top_k)
        batch_s = time.perf_counter() - t0
        found = [{h.item_id for h in hits} for hits in results]
        if name == "flat":
            exact = found
        overlap = float(np.mean([len(a & b) / len(a) for a, b in zip(exact, found, strict=True)]))
        out[name] = {
            "build_s": build_s,
            **percentiles(single),
            "batch64_queries_per_s": len(queries) / batch_s,
            f"overlap@{top_k}_vs_flat": overlap,
            "params": {k: v for k, v in index.meta.items() if v is not None and k not in ("encoder", "rows", "dim")},
        }
        logger.info("%s: %s", name, out[name])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--queries", type=int, default=200, help="dev queries used for latency")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--max-query-chars", type=int, default=2000)
    parser.add_argument("--synthetic-items", type=int, default=0, help="also compare index types on N random vectors")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    run_dir = RunDir(args.run_dir)
    items = read_catalog(run_dir.require("catalog") / "items.jsonl")
    examples = read_examples(run_dir.require("data") / f"{args.split}.jsonl")
    rng = np.random.default_rng(0)
    texts = [context_to_query(ex.context, "full", args.max_query_chars) for ex in examples]
    texts = [t for t in texts if t.strip()]
    texts = [texts[i] for i in rng.permutation(len(texts))[: args.queries]]
    if args.threads:  # this script is the process's entry point, as the CLI is for `reges`
        torch.set_num_threads(args.threads)
    encoder = SentenceEncoder(load_encoder(args.encoder, "cpu", 256))
    load_before = os.getloadavg()

    # 1. Indexing: embed every card (batch 64), then build the exact index.
    t0 = time.perf_counter()
    cards = encoder.encode([it.text for it in items], 64, False)  # (num_items, 384)
    encode_s = time.perf_counter() - t0
    ids = [it.item_id for it in items]
    index = ItemIndex.from_embeddings(cards, ids, IndexConfig(), seed=0)
    indexing = {"items": len(items), "encode_s": encode_s, "items_per_s": len(items) / encode_s}
    logger.info("indexing: %s", indexing)

    # 2. Single-query latency (encode + flat search) and 3. batch-64 throughput.
    encoder.encode(texts[:2], 1, False)  # warm-up
    enc_t, search_t, total_t = [], [], []
    for text in texts:
        t0 = time.perf_counter()
        q = encoder.encode([text], 1, False)
        t1 = time.perf_counter()
        index.search(q, args.top_k)
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        search_t.append(t2 - t1)
        total_t.append(t2 - t0)
    t0 = time.perf_counter()
    query_emb = encoder.encode(texts, 64, False)
    index.search(query_emb, args.top_k)
    batch_s = time.perf_counter() - t0
    latency = {
        "queries": len(texts),
        "query_chars_mean": float(np.mean([len(t) for t in texts])),
        "single_total": percentiles(total_t),
        "single_encode": percentiles(enc_t),
        "single_search": percentiles(search_t),
        "batch64_queries_per_s": len(texts) / batch_s,
    }
    logger.info("latency: %s", latency)

    # 4. Index types on the real catalog, and optionally on a larger synthetic one.
    types_real = bench_index_types(cards, ids, query_emb, args.top_k, seed=0)
    types_synth = {}
    if args.synthetic_items:
        synth = l2_normalize(rng.standard_normal((args.synthetic_items, cards.shape[1])).astype(np.float32))
        synth_ids = [f"s{i}" for i in range(args.synthetic_items)]
        types_synth = bench_index_types(synth, synth_ids, query_emb, args.top_k, seed=0)

    result = {
        "date": now_iso(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "encoder": args.encoder,
        "indexing": indexing,
        "latency": latency,
        "index_types_catalog": types_real,
        "index_types_synthetic": types_synth,
        "synthetic_items": args.synthetic_items,
    }
    markdown = render(result)
    sys.stdout.write(markdown + "\n")
    if args.out:
        # The JSON at --out, the tables next to it (.md): a generated page, quoted by docs/results/retrieval.md.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        command = " ".join([".venv/bin/python", "benchmarks/retrieval_speed.py", *sys.argv[1:]])
        header = f"# Retrieval speed: {args.run_dir}\n\nMeasured {result['date']}; raw numbers in the .json next to " \
                 f"this file.\n\n```\n{command}\n```\n\n"
        args.out.with_suffix(".md").write_text(header + markdown + "\n", encoding="utf-8")


def render(r: dict) -> str:
    lat = r["latency"]
    lines = [
        f"Indexing: {r['indexing']['items']} cards in {r['indexing']['encode_s']:.1f} s "
        f"= **{r['indexing']['items_per_s']:.1f} items/s** ({r['encoder']}, batch 64, CPU)",
        "",
        f"| query latency ({lat['queries']} dev queries, mean {lat['query_chars_mean']:.0f} chars) "
        "| p50 ms | p95 ms |",
        "|---|---:|---:|",
    ]
    for key, label in (("single_total", "encode + search"), ("single_encode", "encode"), ("single_search", "search")):
        lines.append(f"| {label} | {lat[key]['p50_ms']:.1f} | {lat[key]['p95_ms']:.1f} |")
    lines += ["", f"Batch 64 (encode + search): **{lat['batch64_queries_per_s']:.1f} queries/s**", ""]
    for title, key in (("catalog", "index_types_catalog"), ("synthetic", "index_types_synthetic")):
        if not r[key]:
            continue
        n = r["indexing"]["items"] if key == "index_types_catalog" else r["synthetic_items"]
        overlap_key = next(k for k in r[key]["flat"] if k.startswith("overlap@"))
        lines += [
            f"| index ({title}, {n} items) | build s | search p50 ms | search p95 ms | batch-64 queries/s "
            f"| {overlap_key} | params |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, m in r[key].items():
            params = ", ".join(f"{k}={v}" for k, v in m["params"].items() if k != "index_type")
            lines.append(
                f"| {name} | {m['build_s']:.2f} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} "
                f"| {m['batch64_queries_per_s']:.0f} | {m[overlap_key]:.3f} | {params} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
