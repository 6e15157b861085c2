"""Speed of the retriever's encoder fine-tuning per compute dtype (`train_retriever.dtype`), on a run's own pairs.

Builds the training pairs and hard negatives as `reges train-retriever` does (`training_pairs`: `data/train.jsonl`,
and `distill/train.jsonl` when the stage would use it; mined from the frozen index), takes the same seeded sample
of `--steps` x batch-size pairs for every dtype, and fine-tunes a freshly loaded encoder on it once per dtype and
round, alternating the dtypes so a change in machine load hits both. Reports pairs/s per round (median over
rounds) and the loss at the start and end, so a dtype that trains faster but learns differently shows. Nothing is
written to the run dir.

Usage:
    .venv/bin/python benchmarks/encoder_finetune.py --run-dir runs/inspired-e2e --steps 8 --rounds 2 \\
        --threads 2 --out docs/results/encoder_finetune.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reges.catalog import read_catalog
from reges.config import load_config
from reges.data.sampling import sample_rows
from reges.io import RunDir, machine_info
from reges.retrieval.encoder import SentenceEncoder, load_encoder
from reges.retrieval.finetune import finetune_encoder, mine_hard_negatives
from reges.retrieval.index import EMBEDDINGS_FILE, ItemIndex
from reges.retrieval.train import distill_pairs_file, training_pairs

logger = logging.getLogger("encoder_finetune")


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Fine-tune once per dtype and round on the same pairs; return every number of the report."""
    torch.set_num_threads(args.threads)
    run_dir = RunDir(args.run_dir)
    cfg = load_config(run_dir.path / "config.yaml", [])
    items = {it.item_id: it for it in read_catalog(run_dir.require("catalog") / "items.jsonl")}
    tc = cfg.train_retriever
    pairs, _ = training_pairs(cfg, run_dir, items, distill_pairs_file(cfg, run_dir))  # the stage's own pairs
    n_pairs = min(len(pairs), args.steps * tc.batch_size)
    pairs = sample_rows(pairs, n_pairs, cfg.run.seed, "--steps")
    frozen = ItemIndex.load(run_dir.require("index"))
    embeddings = np.load(run_dir.stage_dir("index") / EMBEDDINGS_FILE, allow_pickle=False)
    model = load_encoder(cfg.index.encoder, "cpu", tc.max_seq_length)
    negatives = mine_hard_negatives(pairs, SentenceEncoder(model), embeddings, frozen.item_ids, tc.hard_negatives,
                                    cfg.run.seed, cfg.index.batch_size, False)
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {d: [] for d in args.dtypes}
    for round_ in range(args.rounds):
        for dtype in args.dtypes:
            model = load_encoder(cfg.index.encoder, "cpu", tc.max_seq_length)
            result = finetune_encoder(model, pairs, negatives, items,
                                      dataclasses.replace(tc, dtype=dtype, save_every_steps=0, epochs=1), cfg.run.seed)
            logger.info("round %d %s: %.2f pairs/s", round_, dtype, result.pairs_per_s)
            runs[dtype].append(dataclasses.asdict(result))
    summary = {
        d: {
            "pairs_per_s_median": round(statistics.median(r["pairs_per_s"] for r in rs), 2),
            "seconds_median": round(statistics.median(r["seconds"] for r in rs), 2),
            "loss_start": round(rs[0]["loss_start"], 4),
            "loss_end": round(rs[0]["loss_end"], 4),
            "resolved_dtype": rs[0]["dtype"],
        }
        for d, rs in runs.items()
    }
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {**machine_info(), "torch": torch.__version__, "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"run_dir": str(run_dir.path), "pairs": n_pairs, "steps": args.steps,
                     "batch_size": tc.batch_size, "hard_negatives": tc.hard_negatives, "rounds": args.rounds,
                     "threads": args.threads, "max_seq_length": tc.max_seq_length, "encoder": cfg.index.encoder},
        "summary": summary,
        "runs": runs,
    }


def render(result: dict[str, Any]) -> str:
    """The markdown report of `measure`'s result."""
    m, s = result["machine"], result["settings"]
    lines = [
        "# Encoder fine-tuning speed per compute dtype",
        "",
        f"Measured {result['date']} on {m['cpu_model']} ({m['cores']} logical cores; {m['platform']}, torch "
        f"{m['torch']}); load average before {m['load_average_before']}, after {m['load_average_after']}. Raw "
        "numbers: the .json next to this file.",
        "",
        f"```\n{result['command']}\n```",
        "",
        f"Run dir `{s['run_dir']}`: {s['pairs']} training pairs ({s['steps']} steps of {s['batch_size']}, "
        f"{s['hard_negatives']} hard negative(s) each), encoder {s['encoder']} (max {s['max_seq_length']} tokens), "
        f"{s['threads']} thread(s), {s['rounds']} round(s) per dtype, dtypes alternating.",
        "",
        "| train_retriever.dtype | computes in | pairs/s (median) | seconds (median) | loss, first tenth | "
        "loss, last tenth |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dtype, row in result["summary"].items():
        lines.append(f"| {dtype} | {row['resolved_dtype']} | {row['pairs_per_s_median']:.2f} | "
                     f"{row['seconds_median']:.1f} | {row['loss_start']:.3f} | {row['loss_end']:.3f} |")
    first = next(iter(result["summary"].values()))
    for dtype, row in list(result["summary"].items())[1:]:
        ratio = row["pairs_per_s_median"] / first["pairs_per_s_median"]
        lines += ["", f"{dtype} vs {next(iter(result['summary']))}: **{ratio:.2f}x** the pairs per second."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run dir with data, catalog and index")
    parser.add_argument("--steps", type=int, default=8, help="fine-tuning steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per dtype")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, required=True, help="markdown report; the JSON goes next to it (.json)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--steps, --rounds and --threads must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    command = shlex.join([".venv/bin/python", "benchmarks/encoder_finetune.py",
                          *(argv if argv is not None else sys.argv[1:])])
    result = measure(args, command)
    markdown = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
