"""The nearest training dialogues as a fusion feature: what recommenders suggested to seekers who wrote alike.

Why: the run's features reach an item through the films the dialogue names (co-mention prior), the people it names,
or one text-to-card encoder trained on a few thousand (dialogue, card) pairs. A request that names no film ("a sad
drama", "something funny with Jim Carrey, I hate horror") has only the last, and long-tail films are the misses
(docs/results/signals.md: targets talked about in fewer than 20 training dialogues are 57 % of ReDial's misses at
50). A non-parametric route from text to items: embed the context with the run's own tuned encoder (the text the
dense_dialogue feature embeds), find the M most similar train contexts, and let each vote for the films its
recommender then suggested, weighted by similarity:

    neighbours_j = sum over the M nearest train examples e of exp((cos(q, e) - 1) / tau) * [j is a target of e]

(M, tau) from a small grid, chosen by the feature's own objective alone on tune (as comention_variants picks EASE's
lambda). The feature and that choice are the train-retriever stage's (`train_retriever.neighbours`,
`reges.retrieval.neighbours`, `reges.retrieval.train.fit_neighbours`); this script adds it to a run trained without
it, so both feature sets share one encoder. Train examples only: tune and dev dialogues are never neighbours, and
their targets are never read. The feature is added to the run's features (no-query weight set), the weights re-tuned
on tune with the stage's coordinate search; recall@10/50 on dev under protocols all and novel, paired with the run's
features re-tuned the same way (95 % interval, bootstrap over dialogues). A single weight search moves dev R@50 by
up to 0.03-0.07 between resamples of tune (signals.md, last section), so a gain has to be read against that too.

Usage:
    .venv/bin/python benchmarks/dialogue_neighbours.py --run-dir runs/redial-nq \\
        --out docs/results/dialogue_neighbours_redial.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from reges.catalog import run_aliases
from reges.config import load_config
from reges.eval.metrics import paired_cells, paired_recall_table
from reges.io import machine_info, now_iso, write_json
from reges.records import RecExample
from reges.retrieval.fusion import (
    NO_QUERY,
    FusedRetriever,
    TunePairs,
    bagged_weights,
    fuse,
    pair_ranks,
    tune_weights,
)
from reges.retrieval.retrieve import read_examples, split_features
from reges.retrieval.train import fit_neighbours

logger = logging.getLogger("dialogue_neighbours")

CUTOFFS = (10, 50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with data and train-retriever complete")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=0,
                        help="also both feature sets with bagged weights (train_retriever.weight_resamples), N >= 2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    tc = load_config(args.run_dir / "config.yaml").train_retriever  # the stage's grid and passes
    names = list(fr.weights[NO_QUERY])  # every feature the stage searched, in its order (the search is path-dependent)
    if "neighbours" in names:
        parser.error(f"{args.run_dir} was trained with train_retriever.neighbours=true; give a run without it")
    data_dir = args.run_dir / "data"
    aliases = run_aliases(args.run_dir)
    fr.neighbours, report = fit_neighbours(fr, read_examples(data_dir / "train.jsonl", aliases),
                                           read_examples(data_dir / "tune.jsonl", aliases))
    m, tau, alone = report["m"], report["tau"], report["tune_objective"]
    z: dict[str, dict[str, np.ndarray]] = {}
    data: dict[str, tuple[list[RecExample], TunePairs]] = {}
    for split in ("tune", "dev"):  # one pass embeds each context once for dense_dialogue and the neighbours
        examples, _, z[split] = split_features(fr, args.run_dir, split, [*names, "neighbours"], with_query=False)
        data[split] = (examples, TunePairs.from_examples(examples, fr.item_ids))
    variants = {"run's features": names, "+ neighbours": [*names, "neighbours"], "neighbours alone": ["neighbours"]}
    if args.resamples:  # the weight search's own noise: both feature sets with weights bagged over tune resamples
        variants |= {"run's features, bagged": names, "+ neighbours, bagged": [*names, "neighbours"]}
    examples, pairs = data["dev"]
    tune_ids = [ex.dialogue_id for ex in data["tune"][0]]
    weights, ranks = {}, {}
    for label, feats in variants.items():
        zs = {f: z["tune"][f] for f in feats}
        if label == "neighbours alone":
            weights[label] = {"neighbours": 1.0}
        elif label.endswith(", bagged"):
            weights[label], _ = bagged_weights(zs, data["tune"][1], tune_ids, fr.tie, fr.id_rank, args.resamples,
                                               args.seed, tc.weight_grid, tc.tune_passes)
        else:
            weights[label], _ = tune_weights(zs, data["tune"][1], fr.tie, fr.id_rank, tc.weight_grid, tc.tune_passes)
        ranks[label] = pair_ranks(fuse({f: z["dev"][f] for f in feats}, weights[label], fr.tie), pairs, fr.id_rank)
    base = "run's features"
    same = all(abs(weights[base][n] - fr.weights[NO_QUERY].get(n, 0.0)) < 1e-9 for n in names)
    dev_ids = [ex.dialogue_id for ex in examples]
    single = {label: r for label, r in ranks.items() if not label.endswith(", bagged")}
    table = paired_recall_table(single, base, pairs, dev_ids, CUTOFFS, args.bootstrap, args.seed)
    bagged_base = "run's features, bagged"  # a bagged row is paired with the run's features bagged the same way
    if args.resamples:
        bagged = {label: r for label, r in ranks.items() if label.endswith(", bagged")}
        table |= paired_recall_table(bagged, bagged_base, pairs, dev_ids, CUTOFFS, args.bootstrap, args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/dialogue_neighbours.py", *sys.argv[1:]])
    mi = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    lines = [f"# The nearest training dialogues as a fusion feature ({args.run_dir}, dev: {len(examples)} examples)",
             "", f"Generated by `{command}` on {now_iso()} ({mi['cpu_model']}, {mi['cores']} cores). What the feature "
             f"is: the script's docstring. {report['train_examples']} train examples with a target are the "
             f"neighbours; M {m}, tau {tau:g} chosen on tune by the feature alone (objective, the mean of R@10 and "
             "R@50 under all and novel: "
             + ", ".join(f"{k}: {v:.4f}" for k, v in alone.items()) + "). Weights re-tuned on tune for every row "
             "(no query) with the stage's grid and passes; the first row's are the run's own: "
             + ("yes" if same else "**no**") + ". Each cell: recall, then the paired difference to the run's "
             "features with its 95 % interval (bootstrap over dialogues)"
             + (f"; rows marked bagged: weights averaged over {args.resamples} bootstrap resamples of the tune "
                "dialogues (`train_retriever.weight_resamples`), paired with the run's features bagged the same way"
                if args.resamples else "") + ".", "",
             "| features | " + " | ".join(cols) + " | weights |", "|---|" + "---:|" * len(cols) + "---|"]
    for label in variants:
        cells = paired_cells(table, label, bagged_base if label.endswith(", bagged") else base, cols)
        w = ", ".join(f"{f} {v:g}" for f, v in weights[label].items() if v)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {w} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "table": table, "weights": weights,
                                               "reproduces_run_weights": same, "neighbours": m, "tau": tau,
                                               "objective_alone": alone,
                                               "train_examples": report["train_examples"], "command": command,
                                               "machine": mi})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
