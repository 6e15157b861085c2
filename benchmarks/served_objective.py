"""Fusion weights searched for the list users are served (named films dropped, fresh targets only), next to the run's.

Why: the stage's weight search maximises the mean of R@10 and R@50 under protocols "all" and "novel" over the full
ranked list, films the dialogue named included. Under "all" a named film that is recommended again counts, so the
search rewards the `mentioned` feature and lets the other weights settle around it. The served recommender
(`reges recommend`, the as-served pick) drops every film whose title the dialogue named, and what it should
get right are the fresh targets. This script searches the same features' weights for that list instead: each
query's named films (and every catalog film of the same title, as served) dropped before ranking, the objective
the mean of R@10 and R@50 over fresh targets (`tune_weights(exclude=...)`, the stage's grid and passes, one search
on tune). Dev chooses nothing.

Rows, on dev, paired with the run's weights (bootstrap over dialogues, 95 % intervals): the full list under "all"
(R@10, R@50: what the retrieve stage is scored on) and the served list under "novel" (R@1 = the as-served top-1
per (example, fresh target) pair, R@10, R@50).

Usage:
    .venv/bin/python benchmarks/served_objective.py --run-dir runs/redial-nq \\
        --out docs/results/served_objective_redial.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from reges.catalog import read_catalog
from reges.config import load_config
from reges.eval.metrics import paired_cells, paired_recall_table
from reges.io import machine_info, now_iso, write_json
from reges.linking import TitleSpotter
from reges.records import RecExample, mentioned_item_ids
from reges.retrieval.fusion import NO_QUERY, FusedRetriever, TunePairs, fuse, pair_ranks, recall_table, tune_weights
from reges.retrieval.retrieve import split_features

logger = logging.getLogger("served_objective")

CUTOFFS = (1, 10, 50)
BASE = "the run's weights"
SERVED = "weights searched for the served list"


def named_mask(examples: list[RecExample], item_ids: list[str], spotter: TitleSpotter) -> np.ndarray:
    """(examples, items) True for each film the example's dialogue named and every film of the same title."""
    col = {item_id: j for j, item_id in enumerate(item_ids)}
    mask = np.zeros((len(examples), len(item_ids)), dtype=bool)
    for row, ex in enumerate(examples):
        for item_id in spotter.same_title_ids(mentioned_item_ids(ex.context)):
            if item_id in col:
                mask[row, col[item_id]] = True
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with train-retriever complete")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the paired dev intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tc = load_config(args.run_dir / "config.yaml").train_retriever
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    run_weights = dict(fr.weights[NO_QUERY])
    names = list(run_weights)
    spotter = TitleSpotter(read_catalog(args.run_dir / "catalog" / "items.jsonl"))
    split: dict[str, tuple[list[RecExample], dict[str, np.ndarray], TunePairs, np.ndarray]] = {}
    for name in ("tune", "dev"):
        examples, _, z = split_features(fr, args.run_dir, name, names, with_query=False)
        split[name] = (examples, z, TunePairs.from_examples(examples, fr.item_ids),
                       named_mask(examples, fr.item_ids, spotter))
    tune_ex, tune_z, tune_pairs, tune_named = split["tune"]
    fresh = TunePairs(tune_pairs.query_index[tune_pairs.novel], tune_pairs.item_index[tune_pairs.novel],
                      tune_pairs.novel[tune_pairs.novel])
    served_weights, report = tune_weights(tune_z, fresh, fr.tie, fr.id_rank, tc.weight_grid, tc.tune_passes,
                                          exclude=tune_named)

    def ranks(which: str, weights: dict[str, float], served: bool, pairs: TunePairs | None = None) -> np.ndarray:
        _, z, split_pairs, named = split[which]
        scores = fuse(z, weights, fr.tie)
        if served:
            scores[named] = -np.inf
        return pair_ranks(scores, pairs or split_pairs, fr.id_rank)

    dev_ex, _, dev_pairs, _ = split["dev"]
    dialogue_ids = [ex.dialogue_id for ex in dev_ex]
    rows = {BASE: run_weights, SERVED: served_weights}
    full = paired_recall_table({label: ranks("dev", w, False) for label, w in rows.items()}, BASE, dev_pairs,
                               dialogue_ids, CUTOFFS, args.bootstrap, args.seed)
    served = paired_recall_table({label: ranks("dev", w, True) for label, w in rows.items()}, BASE, dev_pairs,
                                 dialogue_ids, CUTOFFS, args.bootstrap, args.seed)
    tune_objective = {label: recall_table(ranks("tune", w, True, fresh), fresh)["objective"]
                      for label, w in rows.items()}

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/served_objective.py", *sys.argv[1:]])
    m = machine_info()
    full_cols, served_cols = ["all/recall@10", "all/recall@50"], [f"novel/recall@{k}" for k in CUTOFFS]
    lines = [
        f"# Fusion weights searched for the served list ({args.run_dir}, no-query features)", "",
        f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). Tune: {len(tune_ex)} "
        f"examples ({int(tune_pairs.novel.sum())} fresh targets); dev: {len(dev_ex)} examples "
        f"({int(dev_pairs.novel.sum())} fresh targets). Why and how: the script's docstring.", "",
        f"Each cell: recall, then the paired difference to **{BASE}** with its 95 % interval (bootstrap over "
        "dialogues). Full list: every film ranked, all targets (the retrieve stage's list). Served list: the "
        "films the dialogue named (and their same-title namesakes) dropped, fresh targets only; its R@1 is the "
        "as-served top-1 counted per (example, fresh target) pair, so it is below the as-served pick's success "
        "rate, which counts an example once when the pick is any of its fresh targets.", "",
        "| weights | full R@10 all | full R@50 all | served R@1 novel | served R@10 novel | served R@50 novel | "
        "tune objective (served) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label in rows:
        cells = paired_cells(full, label, BASE, full_cols) + paired_cells(served, label, BASE, served_cols)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {tune_objective[label]:.4f} |")
    top = {label: max(abs(v) for v in w.values()) or 1.0 for label, w in rows.items()}
    lines += ["", "| feature | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    lines += [f"| {n} | " + " | ".join(f"{w[n] / top[label]:.3f}" for label, w in rows.items()) + " |"
              for n in names]
    lines += ["", "Weights scaled so that the largest is 1 (only ratios matter)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {
        "run_dir": str(args.run_dir), "weights": rows, "full": full, "served": served,
        "tune_objective": tune_objective, "search": report, "command": command, "machine": m, "date": now_iso()})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
