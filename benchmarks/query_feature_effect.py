"""What the Query Expert's query itself adds to a trained run's fusion, with the weights held fixed.

Why: a run with `rewrite/` tunes two weight sets on `tune`, one without the query and one with it, and comparing
them (benchmarks/compare_runs.py against a no-query run) mixes two effects: the query's information and a second,
differently tuned weight set. On 202-449 tune examples two weight sets of the same features already differ by
0.01-0.02 in dev recall (docs/results/signals.md), so a gain of that size says nothing about the query. Here the
run's own "with_query" weights score dev twice, with the query and with its weight set to 0 (everything else
unchanged): the paired difference is the query's own contribution. The run's "no_query" weights are the third row.

`--early-turns N ...` tests the query where the dialogue is weak (docs/results/scaling.md, sixth session): the
query feature is kept only for contexts with at most N user turns so far (zero elsewhere, after z-scoring), and the
weights are re-tuned on `tune` with the run's grid and passes for each N; the row "re-tuned here, every turn" is the
same search without the gate (it should give the run's with_query weights), so a gated row differs from it by the
gate alone, not by a second search procedure.

Every row ranks the full catalog for every dev example (`FusedRetriever.features`, z-scored per row and fused as
the retrieve stage does); recall@k under protocols all and novel, with the paired difference to "with_query
weights, no query" and its 95 % interval (bootstrap over dialogues).

Usage:
    .venv/bin/python benchmarks/query_feature_effect.py --run-dir runs/inspired \\
        --out docs/results/query_feature_effect_inspired.md
Writes the markdown table to --out and the numbers to the same path with .json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from reges.config import load_config
from reges.errors import DataError
from reges.eval.metrics import paired_cells, paired_recall_table
from reges.io import machine_info, now_iso, write_json
from reges.records import RecExample
from reges.retrieval.fusion import (
    NO_QUERY,
    WITH_QUERY,
    FusedRetriever,
    TunePairs,
    fuse,
    pair_ranks,
    tune_weights,
)
from reges.retrieval.retrieve import split_features

logger = logging.getLogger("query_feature_effect")

CUTOFFS = (1, 10, 50)
BASE = "with_query weights, query removed"


def gate_query(z: dict[str, np.ndarray], examples: list[RecExample], max_user_turns: int | None
               ) -> dict[str, np.ndarray]:
    """The features with dense_query zeroed for contexts of more than `max_user_turns` user turns (None: kept)."""
    if max_user_turns is None:
        return z
    keep = np.array([sum(t.role == "user" for t in ex.context) <= max_user_turns for ex in examples], dtype=float)
    return {**z, "dense_query": z["dense_query"] * keep[:, None]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with train-retriever and rewrite complete")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--early-turns", type=int, nargs="*", default=[],
                        help="also: the query only in contexts with at most N user turns, weights re-tuned on tune")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    if WITH_QUERY not in fr.weights:
        raise DataError(f"{args.run_dir}/train-retriever has no {WITH_QUERY!r} weights: it was tuned without "
                        "rewrite/tune.jsonl (run `reges rewrite`, then redo train-retriever)")
    names = sorted({f for w in fr.weights.values() for f, v in w.items() if v})
    if args.early_turns:  # re-tuning searches every feature the run tuned, weighted or not
        names = sorted(set(names) | set(fr.weights[WITH_QUERY]))
    examples, texts, z = split_features(fr, args.run_dir, args.split, names)
    with_text = sum(1 for t in texts if t and t.strip())
    weights = {
        "with_query weights and the query (the run)": dict(fr.weights[WITH_QUERY]),
        BASE: {**fr.weights[WITH_QUERY], "dense_query": 0.0},
        "no_query weights": dict(fr.weights[NO_QUERY]),
    }
    zsets = dict.fromkeys(weights, z)
    if args.early_turns:
        tc = load_config(args.run_dir / "config.yaml").train_retriever
        tune_ex, _, tune_z = split_features(fr, args.run_dir, "tune", names)
        tune_pairs = TunePairs.from_examples(tune_ex, fr.item_ids)
        for n in [None, *args.early_turns]:
            label = "re-tuned here, every turn" if n is None else f"query only up to {n} user turns, re-tuned"
            weights[label], _ = tune_weights(gate_query(tune_z, tune_ex, n), tune_pairs, fr.tie, fr.id_rank,
                                             tc.weight_grid, tc.tune_passes)
            zsets[label] = gate_query(z, examples, n)
    pairs = TunePairs.from_examples(examples, fr.item_ids)
    dialogue_ids = [ex.dialogue_id for ex in examples]
    ranks = {label: pair_ranks(fuse({f: zsets[label][f] for f in w if w[f]}, w, fr.tie), pairs, fr.id_rank)
             for label, w in weights.items()}
    table = paired_recall_table(ranks, BASE, pairs, dialogue_ids, CUTOFFS, args.bootstrap, args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/query_feature_effect.py", *sys.argv[1:]])
    m = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    lines = [f"# The query's own effect in the fusion ({args.run_dir}, {args.split}: {len(examples)} examples, "
             f"{with_text} with a query)", "",
             f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). Each cell: recall, "
             f"then the paired difference to **{BASE}** (the run's with_query weights with dense_query set to 0) "
             "with its 95 % interval (bootstrap over dialogues). Why: the script's docstring.", "",
             "| weights | " + " | ".join(cols) + " | weights |", "|---|" + "---:|" * len(cols) + "---|"]
    for label, w in weights.items():
        cells = paired_cells(table, label, BASE, cols)
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + ", ".join(f"{f} {v:g}" for f, v in w.items() if v)
                     + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "split": args.split,
                                               "examples": len(examples), "with_query": with_text,
                                               "table": table, "weights": weights, "command": command,
                                               "machine": m, "date": now_iso()})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
