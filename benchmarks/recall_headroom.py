"""Where a run's retrieval misses: recall by how often the target was talked about in training, and by context.

Why: every signal tried on ReDial since 2026-12-06 (people aside) moved dev R@50 by less than its interval
(docs/results/signals.md, comention_variants_redial.md), and the quality aims stay 0.04-0.06 away. Before the next
signal, this asks where the missing recall sits: a target no training dialogue mentions can only be found by its
card (encoder, people), one mentioned in hundreds of dialogues by the collaborative prior; a context that names no
film gives the prior nothing to start from.

For each (example, target) pair of the split under protocols all and novel (`reges.eval.metrics`), it buckets the
target by the number of training dialogues that mention it (the co-mention prior's own counts,
`train-retriever/comention*`: train + lossy dialogues, tune/dev/test removed) and, separately, by whether the
context names a counted film. Per bucket: share of pairs, R@10 and R@50 with 95 % intervals (clustered bootstrap
over dialogues), and the bucket's share of all misses at 50.

Usage:
    .venv/bin/python benchmarks/recall_headroom.py --run-dir runs/redial --split dev \\
        --out docs/results/recall_headroom_redial.md
Reads `evaluate/per_example.jsonl` (method `retrieve`) and `data/<split>.jsonl`; writes --out and .json next to it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from reges.catalog import run_aliases
from reges.eval.metrics import bootstrap_mean_ci
from reges.io import machine_info, now_iso, read_jsonl, write_json
from reges.retrieval.comention import CoMention, context_item_ids
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("recall_headroom")

BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 99), (100, None))
"""Training dialogues that mention the target: inclusive ranges (None: no upper end)."""
CUTOFFS = (10, 50)


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"


def bucket_of(count: int) -> str:
    for low, high in BUCKETS:
        if count >= low and (high is None or count <= high):
            return bucket_label(low, high)
    raise AssertionError(count)


def pair_rows(run_dir: Path, split: str) -> list[dict[str, Any]]:
    """One row per (example, target): dialogue, mentioned, rank (None: beyond the run's list), the target's training
    dialogue count and whether the context names a film the prior has counted."""
    counts = CoMention.load(run_dir / "train-retriever")
    contexts = {ex.example_id: context_item_ids(ex.context)
                for ex in read_examples(run_dir / "data" / f"{split}.jsonl", run_aliases(run_dir))}
    rows = []
    for r in read_jsonl(run_dir / "evaluate" / "per_example.jsonl"):
        if r["split"] != split or r["method"] != "retrieve":
            continue
        seeded = any(i in counts.row for i in contexts[r["example_id"]])
        for t in r["targets"]:
            c = int(counts.item_counts[counts.row[t["item_id"]]]) if t["item_id"] in counts.row else 0
            rows.append({"dialogue_id": r["dialogue_id"], "mentioned": bool(t["mentioned"]), "rank": t["rank"],
                         "train_dialogues": c, "context_names_counted_film": seeded})
    if not rows:
        raise SystemExit(f"{run_dir}/evaluate/per_example.jsonl has no `retrieve` rows for split {split!r}; "
                         "run `reges evaluate` first")
    return rows


def table(rows: list[dict[str, Any]], key: str, order: list[Any], resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per value of `key` (in `order`): pairs, share, R@k with intervals, share of the misses at the last cutoff."""
    misses = sum(1 for r in rows if r["rank"] is None or r["rank"] > CUTOFFS[-1])
    out = []
    for value in order:
        sel = [r for r in rows if r[key] == value]
        if not sel:
            continue
        cell: dict[str, Any] = {key: value, "pairs": len(sel), "share": round(len(sel) / len(rows), 4)}
        for k in CUTOFFS:
            flags = [r["rank"] is not None and r["rank"] <= k for r in sel]
            low, high = bootstrap_mean_ci(flags, [r["dialogue_id"] for r in sel], resamples, seed)
            cell[f"recall@{k}"] = {"mean": round(sum(flags) / len(flags), 4), "ci": [round(low, 4), round(high, 4)]}
        missed = sum(1 for r in sel if r["rank"] is None or r["rank"] > CUTOFFS[-1])
        cell[f"share_of_misses@{CUTOFFS[-1]}"] = round(missed / misses, 4) if misses else 0.0
        out.append(cell)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with train-retriever and evaluate complete")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = pair_rows(args.run_dir, args.split)
    for r in rows:
        r["bucket"] = bucket_of(r["train_dialogues"])
    labels = [bucket_label(low, high) for low, high in BUCKETS]
    result: dict[str, Any] = {}
    for protocol in ("all", "novel"):
        sel = [r for r in rows if protocol == "all" or not r["mentioned"]]
        result[protocol] = {
            "pairs": len(sel),
            "by_train_dialogues": table(sel, "bucket", labels, args.bootstrap, args.seed),
            "by_context": table(sel, "context_names_counted_film", [True, False], args.bootstrap, args.seed),
        }
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/recall_headroom.py", *sys.argv[1:]])
    m = machine_info()
    lines = [f"# Where the retrieval misses ({args.run_dir}, split {args.split})", "",
             f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). Method: the script's "
             "docstring. Each cell: recall [95 % interval, clustered bootstrap over dialogues]; *misses*: the "
             f"bucket's share of all pairs not in the top {CUTOFFS[-1]}.", ""]
    for protocol, res in result.items():
        for name, key, rows_ in (("training dialogues that mention the target", "bucket", res["by_train_dialogues"]),
                                 ("the context names a film the prior has counted", "context_names_counted_film",
                                  res["by_context"])):
            lines += [f"## Protocol {protocol} ({res['pairs']} pairs): by {name}", "",
                      f"| {name} | pairs | share | " + " | ".join(f"R@{k}" for k in CUTOFFS)
                      + f" | misses@{CUTOFFS[-1]} |", "|---|---:|---:|" + "---:|" * len(CUTOFFS) + "---:|"]
            for cell in rows_:
                recalls = " | ".join(f"{cell[f'recall@{k}']['mean']:.3f} [{cell[f'recall@{k}']['ci'][0]:.3f}, "
                                     f"{cell[f'recall@{k}']['ci'][1]:.3f}]" for k in CUTOFFS)
                value = {True: "yes", False: "no"}.get(cell[key], cell[key])
                lines.append(f"| {value} | {cell['pairs']} | {cell['share']:.3f} | {recalls} | "
                             f"{cell[f'share_of_misses@{CUTOFFS[-1]}']:.3f} |")
            lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "split": args.split, "result": result,
                                               "command": command, "machine": m})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
