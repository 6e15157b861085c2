"""Ablation of the learned retriever: what each part adds, with 95% CIs, on one split (default dev).

Needs a run dir whose `train-retriever` stage is complete. Every method ranks the FULL catalog for every example
(scores computed exactly, ties broken as in the pipeline) and is scored with `reges.eval.metrics` under protocols
"all" and "novel" (95% clustered-bootstrap CIs over dialogues):

    popularity            train mention counts (`popularity_ranking`, as the evaluate stage)
    frozen_full           frozen index encoder (index/), query = full raw dialogue (2000 chars, the evaluate baseline)
    frozen_last2          the same, last two turns
    tuned_full            the train-retriever encoder over the dialogue text (its own query settings)
    comention             the co-mention prior alone (ties at random, seeded)
    fused_no_query        the tuned fusion without the Query Expert's query
    student_query         the tuned encoder over `rewrite/{split}.jsonl` queries alone      (when that file exists)
    teacher_query         the same over `distill/{split}.jsonl` queries: the upper bound     (when that file exists)
    fused_student_query   the fusion with the student query ("with_query" weights)          (when both exist)

Every example leaves its own dialogue out of the counts (matters only for split=train).

Usage:
    .venv/bin/python benchmarks/retrieval_ablation.py runs/redial --split dev --teacher-run runs/redial-teacher \
        --out docs/results/retrieval_ablation_redial.md
(`runs/redial-teacher`: `reges distill distill.splits=[dev]` in a run dir linking data/, catalog/, index/.)
Writes the markdown table to --out and the full numbers (means, CIs, counts) to the same path with .json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reges.catalog import run_aliases
from reges.eval.metrics import PROTOCOLS, TargetRank, summarize
from reges.io import RunDir, machine_info, now_iso
from reges.records import RecExample
from reges.retrieval.encoder import SentenceEncoder, load_encoder
from reges.retrieval.fusion import (
    NO_QUERY,
    WITH_QUERY,
    FusedRetriever,
    FusionSettings,
    TunePairs,
    fuse,
    pair_ranks,
    zscore_rows,
)
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import read_queries
from reges.retrieval.retrieve import item_popularity, popularity_ranking, read_dialogues, read_examples

logger = logging.getLogger("retrieval_ablation")
CUTOFFS = (1, 10, 20, 50)


def to_target_ranks(examples: list[RecExample], pairs: TunePairs, ranks: np.ndarray, item_ids: list[str]) -> list[
    TargetRank
]:
    """The metrics module's pair records from array ranks (a rank past the catalog = not retrieved)."""
    out = []
    k = 0
    catalog = set(item_ids)
    for ex in examples:
        for target, mentioned in zip(ex.target_item_ids, ex.target_mentioned, strict=True):
            rank = int(ranks[k])
            out.append(TargetRank(ex.example_id, ex.dialogue_id, target, mentioned, target in catalog,
                                  rank if rank <= len(item_ids) else None))
            k += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", type=Path, required=True, help="markdown output; JSON goes next to it (.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--max-examples", type=int, default=0, help="first N examples only (0: all)")
    parser.add_argument(
        "--teacher-run", type=Path, default=None,
        help="run dir whose distill/{split}.jsonl holds teacher queries for this split (default: run_dir); the "
        "teacher sees the true item, so dev teacher queries belong in a separate evaluation-only run",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rd = RunDir(args.run_dir)
    aliases = run_aliases(rd.path)
    examples = read_examples(rd.require("data") / f"{args.split}.jsonl", aliases)
    if args.max_examples:
        examples = examples[: args.max_examples]
    if args.threads:  # this script is the process's entry point, as the CLI is for `reges`
        torch.set_num_threads(args.threads)
    retriever = FusedRetriever.load(rd.path, device=args.device)
    item_ids = retriever.item_ids
    pairs = TunePairs.from_examples(examples, item_ids)
    contexts = [ex.context for ex in examples]
    dialogue_ids: list[str | None] = [ex.dialogue_id for ex in examples]
    seed = retriever.settings.seed
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        scores[name] = fn()
        seconds[name] = round(time.perf_counter() - t0, 2)
        logger.info("%s scored in %.1f s", name, seconds[name])

    # popularity, as the evaluate stage ranks it
    counts = item_popularity(read_dialogues(rd.stage_dir("data") / "train_dialogues.jsonl", aliases))
    order = {h.item_id: r for r, h in enumerate(popularity_ranking(counts, item_ids, seed))}
    timed("popularity", lambda: np.repeat(-np.array([order[i] for i in item_ids], float)[None, :], len(examples), 0))

    # frozen index encoder over the raw dialogue
    frozen_index = ItemIndex.load(rd.stage_dir("index"))
    frozen_emb = np.load(rd.stage_dir("index") / "embeddings.npy", allow_pickle=False)
    if frozen_index.item_ids != item_ids:
        raise SystemExit("index/ and train-retriever/index/ list items in different orders; rebuild one of them")
    frozen_enc = SentenceEncoder(load_encoder(frozen_index.encoder, args.device,
                                              int(frozen_index.meta.get("max_seq_length") or 256)))
    for mode in ("full", "last2"):
        frozen = FusedRetriever(frozen_enc, frozen_emb, item_ids, retriever.counts, {NO_QUERY: {"dense_dialogue": 1}},
                                FusionSettings(mode, 2000, retriever.settings.normalization, 64, seed))
        timed(f"frozen_{mode}", lambda f=frozen: f.scores(contexts, [None] * len(contexts), dialogue_ids))

    # the learned retriever's parts
    no_query = [None] * len(contexts)
    # every feature the run's weights use (people, content, ...), not a fixed list that goes stale with new ones
    names = sorted({"dense_dialogue", "comention"}
                   | {f for w in retriever.weights.values() for f, v in w.items() if v and f != "dense_query"})
    rewrite_path = rd.stage_dir("rewrite") / f"{args.split}.jsonl"
    teacher_rd = RunDir(args.teacher_run) if args.teacher_run else rd
    distill_path = teacher_rd.stage_dir("distill") / f"{args.split}.jsonl"
    student = read_queries(rewrite_path) if rd.is_complete("rewrite") and rewrite_path.is_file() else None
    teacher = read_queries(distill_path) if teacher_rd.is_complete("distill") and distill_path.is_file() else None
    t0 = time.perf_counter()
    raw = retriever.features(contexts, no_query, dialogue_ids, names)
    z = {name: zscore_rows(x) for name, x in raw.items()}
    features_s = time.perf_counter() - t0
    scores["tuned_full"] = fuse({"d": z["dense_dialogue"]}, {"d": 1.0}, retriever.tie)
    scores["comention"] = fuse({"c": z["comention"]}, {"c": 1.0}, retriever.tie)
    scores["fused_no_query"] = fuse(z, retriever.weights[NO_QUERY], retriever.tie)
    seconds["fused_no_query"] = round(features_s, 2)
    if student is not None:
        z["dense_query"] = zscore_rows(retriever.dense([student.get(ex.example_id, "") for ex in examples]))
        scores["student_query"] = fuse({"q": z["dense_query"]}, {"q": 1.0}, retriever.tie)
        if WITH_QUERY in retriever.weights:
            scores["fused_student_query"] = fuse(z, retriever.weights[WITH_QUERY], retriever.tie)
    if teacher is not None:
        zt = zscore_rows(retriever.dense([teacher.get(ex.example_id, "") for ex in examples]))
        scores["teacher_query"] = fuse({"q": zt}, {"q": 1.0}, retriever.tie)

    results: dict[str, Any] = {}
    for method, s in scores.items():
        ranks = pair_ranks(s, pairs, retriever.id_rank)
        target_ranks = to_target_ranks(examples, pairs, ranks, item_ids)
        results[method] = {p: summarize(target_ranks, p, CUTOFFS, args.bootstrap, seed) for p in PROTOCOLS}

    m = machine_info()
    lines = [
        f"# Retrieval ablation: {rd.path} / {args.split}",
        "",
        f"Measured {now_iso()} on {m['cpu_model']} ({m['cores']} logical cores; {m['platform']}, "
        f"Python {m['python']}, {args.threads} torch thread(s)); load average (1/5/15 min) at the end "
        f"{m['load_average']}.",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/retrieval_ablation.py", *sys.argv[1:]]),
        "```",
        "",
        f"Retrieval ablation on {rd.path} / {args.split}: {len(examples)} examples, full catalog of {len(item_ids)} "
        f"items, R@k with 95% clustered-bootstrap CI ({args.bootstrap} resamples).",
        "",
    ]
    for protocol in PROTOCOLS:
        first = next(iter(results.values()))[protocol]
        lines += [
            f"**protocol {protocol}** ({first['n_examples']} examples, {first['n_targets']} targets)",
            "",
            "| method | " + " | ".join(f"R@{k}" for k in CUTOFFS) + " | R@10 95% CI | R@50 95% CI |",
            "|---|" + "---:|" * len(CUTOFFS) + "---|---|",
        ]
        for method, by_protocol in results.items():
            m = by_protocol[protocol]
            cells = " | ".join(f"{m[f'recall@{k}']['mean']:.3f}" for k in CUTOFFS)
            ci = {k: m[f"recall@{k}"] for k in (10, 50)}
            cis = " | ".join(f"[{ci[k]['ci_low']:.3f}, {ci[k]['ci_high']:.3f}]" for k in (10, 50))
            lines.append(f"| {method} | {cells} | {cis} |")
        lines.append("")
    markdown = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown + "\n", encoding="utf-8")
    payload = {"date": now_iso(), "machine": m, "command": sys.argv,
               "run_dir": str(rd.path), "split": args.split, "examples": len(examples), "cutoffs": list(CUTOFFS),
               "weights": retriever.weights, "seconds": seconds, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(markdown + "\n")


if __name__ == "__main__":
    main()
