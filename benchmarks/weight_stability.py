"""How much the tuned fusion weights depend on which tune examples they saw, and whether bagging them helps dev.

Why: the retriever's fusion weights come from a coordinate search on 200-450 tune examples. Two weight sets of the
same features already differ by 0.01-0.03 in dev recall (docs/results/signals.md), the size of most gains we
measure, and the shipped ReDial recommender's dev R@50 (0.465) overstates its held-out test R@50 (0.404, the
official test split, measured by the maintainers) by about 13 %. This script redoes the run's search on
`--resamples` bootstrap resamples of the tune dialogues and reports:

- the spread: the dev recall of each resample's weights (median and the 2.5-97.5 % range over resamples), and
  each resample's objective on the tune dialogues it did not draw (out of bag, no dev involved);
- bagging (`reges.retrieval.fusion.bagged_weights`, `train_retriever.weight_resamples`): the resamples' weights
  averaged, scored on dev next to the run's own weights, paired (bootstrap over dialogues, 95 % interval).

Every row ranks the full catalog for every example (`FusedRetriever.features`, z-scored per row, fused as the
retrieve stage does). The weight set is the one the run serves: "with_query" when it was tuned and the run has
`rewrite/{tune,dev}.jsonl`, else "no_query" (`--weights` picks). Search grid and passes: the run's config.

Usage:
    .venv/bin/python benchmarks/weight_stability.py --run-dir runs/inspired --resamples 30 \\
        --out docs/results/weight_stability_inspired.md
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
from reges.retrieval.fusion import (
    NO_QUERY,
    WITH_QUERY,
    FusedRetriever,
    TunePairs,
    bagged_weights,
    fuse,
    pair_ranks,
    recall_table,
    tune_weights,
)
from reges.retrieval.retrieve import split_features

logger = logging.getLogger("weight_stability")

CUTOFFS = (1, 10, 50)
BASE = "the run's weights (one search on all of tune)"
BAGGED = "bagged: mean of the resamples' weights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with train-retriever complete")
    parser.add_argument("--weights", choices=("auto", NO_QUERY, WITH_QUERY), default="auto")
    parser.add_argument("--resamples", type=int, default=30, help="bootstrap resamples of the tune dialogues")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the paired dev intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tc = load_config(args.run_dir / "config.yaml").train_retriever
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    has_queries = all((args.run_dir / "rewrite" / f"{s}.jsonl").is_file() for s in ("tune", "dev"))
    which = args.weights
    if which == "auto":
        which = WITH_QUERY if fr.weights.get(WITH_QUERY) and has_queries else NO_QUERY
    if not fr.weights.get(which):
        raise DataError(f"{args.run_dir}/train-retriever has no {which!r} weights; pass --weights {NO_QUERY}")
    if which == WITH_QUERY and not has_queries:
        raise DataError(f"{args.run_dir}/rewrite has no tune.jsonl and dev.jsonl for the {WITH_QUERY!r} weights; run "
                        f"`reges rewrite` or pass --weights {NO_QUERY}")
    run_weights = dict(fr.weights[which])
    names = list(run_weights)
    tune_ex, _, tune_z = split_features(fr, args.run_dir, "tune", names, which == WITH_QUERY)
    dev_ex, _, dev_z = split_features(fr, args.run_dir, "dev", names, which == WITH_QUERY)
    tune_pairs, dev_pairs = (TunePairs.from_examples(ex, fr.item_ids) for ex in (tune_ex, dev_ex))
    retuned, _ = tune_weights(tune_z, tune_pairs, fr.tie, fr.id_rank, tc.weight_grid, tc.tune_passes)
    same = all(abs(retuned[n] - run_weights[n]) < 1e-9 for n in names)
    bagged, report = bagged_weights(tune_z, tune_pairs, [ex.dialogue_id for ex in tune_ex], fr.tie, fr.id_rank,
                                    args.resamples, args.seed, tc.weight_grid, tc.tune_passes)

    def dev_ranks(w: dict[str, float]) -> np.ndarray:
        return pair_ranks(fuse(dev_z, w, fr.tie), dev_pairs, fr.id_rank)

    dialogue_ids = [ex.dialogue_id for ex in dev_ex]
    table = paired_recall_table({BASE: dev_ranks(run_weights), BAGGED: dev_ranks(bagged)}, BASE, dev_pairs,
                                dialogue_ids, CUTOFFS, args.bootstrap, args.seed)
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    spread = {c: [] for c in cols}
    for r in report["resamples"]:
        t = recall_table(dev_ranks(r["weights"]), dev_pairs, CUTOFFS)
        r["dev"] = t
        for c in cols:
            p, k = c.split("/")
            spread[c].append(t[p][k])
    spread_summary = {c: {"median": round(float(np.median(v)), 4),
                          "range95": [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]}
                      for c, v in spread.items()}
    oob = [r["out_of_bag_objective"] for r in report["resamples"] if r["out_of_bag_objective"] is not None]
    tune_objective = {"run": recall_table(pair_ranks(fuse(tune_z, run_weights, fr.tie), tune_pairs, fr.id_rank),
                                          tune_pairs)["objective"], "bagged": report["fused"]["objective"]}

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/weight_stability.py", *sys.argv[1:]])
    m = machine_info()
    nonzero = sorted({n for r in report["resamples"] for n, w in r["weights"].items() if w})
    lines = [
        f"# Fusion weights: spread over tune resamples, and bagging ({args.run_dir}, {which} weights)", "",
        f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). Tune: {len(tune_ex)} "
        f"examples ({len(tune_pairs.query_index)} targets); dev: {len(dev_ex)} examples "
        f"({len(dev_pairs.query_index)} targets). Search grid and passes from the run's config; the search redone "
        f"here on all of tune {'gives the run’s weights exactly' if same else f'gives {retuned} (not the run’s)'}. "
        "Why and how: the script's docstring.", "",
        "## Dev recall", "",
        f"Each cell: recall, then the paired difference to **{BASE}** with its 95 % interval (bootstrap over "
        f"dialogues); the last row is the spread of a single search: the median and 2.5-97.5 % range of dev recall "
        f"over the {args.resamples} resamples' weights.", "",
        "| weights | " + " | ".join(cols) + " | tune objective |", "|---|" + "---:|" * len(cols) + "---:|"]
    for label, key in ((BASE, "run"), (BAGGED, "bagged")):
        cells = paired_cells(table, label, BASE, cols)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {tune_objective[key]:.4f} |")
    lines.append(f"| one search on a resample ({args.resamples}): median [range] | " + " | ".join(
        f"{spread_summary[c]['median']:.3f} [{spread_summary[c]['range95'][0]:.3f}, "
        f"{spread_summary[c]['range95'][1]:.3f}]" for c in cols) + " | |")
    lines += ["", "## Weights", "",
              "| feature | the run | bagged | resamples: median [min, max] | resamples with weight 0 |",
              "|---|---:|---:|---|---:|"]
    for n in names:
        # each resample's weights scaled to unit L1, as bagging averages them
        vals = [r["weights"][n] / (sum(abs(w) for w in r["weights"].values()) or 1.0) for r in report["resamples"]]
        zeros = sum(1 for r in report["resamples"] if not r["weights"][n])
        top = max(abs(w) for w in run_weights.values()) or 1.0
        lines.append(f"| {n} | {run_weights[n] / top:.3f} | {bagged[n]:.3f} | {np.median(vals):.3f} "
                     f"[{min(vals):.3f}, {max(vals):.3f}] (unit L1) | {zeros} |")
    lines += ["", f"Out-of-bag tune objective of a single search (mean of R@10 and R@50, all and novel, on the tune "
              f"dialogues a resample did not draw): median {np.median(oob):.4f}, range "
              f"[{min(oob):.4f}, {max(oob):.4f}] over {len(oob)} resamples. Features that some resample weighted: "
              f"{', '.join(nonzero)}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {
        "run_dir": str(args.run_dir), "weights_set": which, "run_weights": run_weights, "retuned": retuned,
        "retuned_equals_run": same, "bagged": bagged, "table": table, "spread": spread_summary,
        "tune_objective": tune_objective, "resamples": report["resamples"], "command": command, "machine": m,
        "date": now_iso()})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
