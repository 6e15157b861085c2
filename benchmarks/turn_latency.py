"""Per-turn latency of the whole recommender, in process: load time, p50/p95/mean per stage, peak RSS.

Loads `PipelineRecommender.from_run_dir(run_dir, overrides)` once (timed), then calls `recommend` once per turn on
the contexts of a seeded sample of `run_dir/data/{split}.jsonl` examples (one dialogue per call, no batching: the
latency one chat user sees on an otherwise idle server). One extra warm-up call on another sampled example comes
first and is reported on its own (lazy imports and first-call allocations land there), not in the statistics.

Per turn it records the wall time around `recommend` ("end to end": title linking, the stages and the answer
assembly) and the recommender's own `latency_ms` ("query", "retrieve", "pick", "total", for the stages it runs).
If the split has fewer usable examples than `--turns`, the sample is cycled (the report says how many were
distinct). Peak RSS is the process's `ru_maxrss` (models, indexes and every allocation so far).

Usage (the thread count goes to torch, and to `run.threads` unless an override sets it):
    .venv/bin/python benchmarks/turn_latency.py --run-dir runs/redial --split dev --turns 100 --threads 2 \\
        --out docs/results/turn_latency_redial.md --override generate.mode=constrained

Writes the markdown report to --out and every number (per-turn raw latencies included) to the same path with .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reges.errors import RegesError
from reges.io import machine_info
from reges.recommender import PipelineRecommender, check_context
from reges.records import RecExample
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("turn_latency")

STAGES = ("query", "retrieve", "pick", "total")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def thread_overrides(threads: int, overrides: list[str]) -> list[str]:
    """`run.threads` set to `threads` (what llama.cpp models take), unless the user's overrides set it; user's last."""
    given = {o.split("=", 1)[0].strip() for o in overrides}
    defaults = [f"run.threads={threads}"] if "run.threads" not in given else []
    return defaults + list(overrides)


def sample_examples(examples: list[RecExample], turns: int, seed: int) -> tuple[list[RecExample], int]:
    """`turns` + 1 examples (the first is the warm-up), a seeded sample; cycled when the split has too few.

    Returns:
        The examples in call order, and how many of them are distinct.
    """
    usable = []
    for ex in examples:
        try:
            check_context(ex.context)
        except RegesError:
            continue  # no user text yet: the recommender refuses such a dialogue, a client would not send it
        usable.append(ex)
    if not usable:
        raise SystemExit("no example of the split has a user turn with text; pick another --split")
    rng = random.Random(seed)
    order = rng.sample(usable, len(usable))
    wanted = turns + 1
    chosen = [order[i % len(order)] for i in range(wanted)]
    return chosen, min(wanted, len(order))


def stats(values_ms: list[float]) -> dict[str, float | int]:
    """p50/p95/mean/max (ms) and count of a list of latencies."""
    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms, dtype=float)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "mean": round(float(a.mean()), 2),
        "max": round(float(a.max()), 2),
    }


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Load the recommender, run the turns, and return every number of the report."""
    torch.set_num_threads(args.threads)
    overrides = thread_overrides(args.threads, args.overrides)
    examples = read_examples(Path(args.run_dir) / "data" / f"{args.split}.jsonl")
    chosen, distinct = sample_examples(examples, args.turns, args.seed)
    load_before = [round(x, 2) for x in os.getloadavg()]
    machine = {**machine_info(), "torch": torch.__version__}

    t0 = time.perf_counter()
    recommender = PipelineRecommender.from_run_dir(args.run_dir, overrides)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mib()
    logger.info("recommender loaded in %.2f s: %s", load_s, recommender.stages)

    def one_turn(ex: RecExample) -> tuple[float, dict[str, float]]:
        t = time.perf_counter()
        rec = recommender.recommend(ex.context, args.top_k)
        return (time.perf_counter() - t) * 1000.0, dict(rec.latency_ms)

    warmup_ms, warmup_stages = one_turn(chosen[0])
    wall: list[float] = []
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    errors: list[str] = []
    for ex in chosen[1:]:
        try:
            ms, stages_ms = one_turn(ex)
        except RegesError as e:  # e.g. every candidate already mentioned: counted, not timed
            errors.append(f"{ex.example_id}: {e}")
            continue
        wall.append(ms)
        for stage, value in stages_ms.items():
            per_stage.setdefault(stage, []).append(value)
    load_after = [round(x, 2) for x in os.getloadavg()]

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "run_dir": str(args.run_dir),
        "machine": {**machine, "load_average_before": load_before, "load_average_after": load_after},
        "settings": {
            "split": args.split,
            "turns": args.turns,
            "distinct_examples": distinct,
            "examples_in_split": len(examples),
            "top_k": args.top_k,
            "threads": args.threads,
            "seed": args.seed,
            "overrides": overrides,
        },
        "stages": recommender.stages,
        "load_s": round(load_s, 3),
        "peak_rss_mib_after_load": rss_after_load,
        "peak_rss_mib": peak_rss_mib(),
        "warmup": {"end_to_end_ms": round(warmup_ms, 2), "stages_ms": warmup_stages},
        "latency_ms": {"end_to_end": stats(wall), **{s: stats(v) for s, v in per_stage.items() if v}},
        "errors": errors,
        "raw_ms": {"end_to_end": [round(x, 3) for x in wall], **{s: v for s, v in per_stage.items() if v}},
    }


def render(result: dict[str, Any]) -> str:
    """The markdown report of `measure`'s result."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"# Per-turn latency: {result['run_dir']} / {s['split']}",
        "",
        f"Measured {result['date']} on {m['cpu_model']} ({m['cores']} logical cores, {m['cores_usable']} usable; "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']}). Load average (1/5/15 min) before "
        f"{m['load_average_before']}, after {m['load_average_after']}: other processes share these cores, so "
        "compare numbers only across runs with similar load. Raw numbers: the .json next to this file.",
        "",
        f"```\n{result['command']}\n```",
        "",
        f"{s['turns']} turns, one `recommend` call each (one dialogue, top_k {s['top_k']}), on the contexts of "
        f"{s['distinct_examples']} distinct `{s['split']}` examples (seeded sample, seed {s['seed']}, of "
        f"{s['examples_in_split']}); {s['threads']} thread(s); overrides `{' '.join(s['overrides']) or 'none'}`.",
        "",
        "Stages the recommender runs: " + "; ".join(f"**{k}**: {v}" for k, v in result["stages"].items()) + ".",
        "",
        f"- load (`PipelineRecommender.from_run_dir`, every model and index): **{result['load_s']:.2f} s**",
        f"- peak RSS: {result['peak_rss_mib_after_load']:.0f} MiB after loading, **{result['peak_rss_mib']:.0f} "
        "MiB** at the end (`ru_maxrss`, the whole process)",
        f"- warm-up call (not in the table): {result['warmup']['end_to_end_ms']:.1f} ms "
        f"(stages {result['warmup']['stages_ms']})",
        f"- errors: {len(result['errors'])}" + (f" (first: {result['errors'][0]})" if result["errors"] else ""),
        "",
        "| latency (ms) | turns | p50 | p95 | mean | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "end_to_end": "end to end (wall time of `recommend`)",
        "total": "model total (`latency_ms.total`)",
        "query": "query (Query Expert)",
        "retrieve": "retrieve",
        "pick": "pick",
    }
    for key in ("end_to_end", "total", "query", "retrieve", "pick"):
        st = result["latency_ms"].get(key)
        if not st or not st.get("n"):
            continue
        lines.append(
            f"| {names[key]} | {st['n']} | {st['p50']:.1f} | {st['p95']:.1f} | {st['mean']:.1f} | {st['max']:.1f} |"
        )
    lines += [
        "",
        "End to end includes linking typed titles to catalog ids and building the answer; *model total* is the "
        "recommender's own clock from the query stage to the pick. A stage missing from the table did not run "
        "(its part of the run dir is not complete or not loaded).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run dir made by `reges` (catalog, index, ...)")
    parser.add_argument("--split", default="dev", help="data split whose example contexts are the turns")
    parser.add_argument("--turns", type=int, default=100, help="timed recommend calls (one extra warm-up call)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; also run.threads")
    parser.add_argument("--top-k", type=int, default=5, help="candidates returned per call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example sample")
    # --override as in `reges recommend`, serving.py and item_expert.py; --overrides is what older commands wrote.
    parser.add_argument("--override", "--overrides", dest="overrides", nargs="*", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="config overrides on top of the run's config.yaml (e.g. generate.top_k=10)")
    parser.add_argument("--out", type=Path, required=True, help="markdown report; the JSON goes next to it (.json)")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.threads < 1:
        parser.error(f"--turns and --threads must be >= 1, got {args.turns} and {args.threads}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    command = shlex.join([".venv/bin/python", "benchmarks/turn_latency.py", *(argv if argv is not None
                                                                                 else sys.argv[1:])])
    try:
        result = measure(args, command)
    except RegesError as e:  # a bad override or an incomplete run dir: the message says what to fix
        logger.error("%s", e)
        return 2
    markdown = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(markdown)
    logger.info("wrote %s and %s", args.out, args.out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
