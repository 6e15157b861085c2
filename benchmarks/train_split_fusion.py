"""Fusion weights learned on the train split: ten times tune's supervision, at the price of the encoder's bias.

Why: the fusion weights are searched on `tune` (449 ReDial examples, 202 INSPIRED ones), and a single search moves
dev R@50 by 0.03-0.07 between resamples of tune (docs/results/signals.md); bagging over resamples halves that but
cannot add examples. The train split has 9x as many (4,015 / 1,868), and every feature but the dense ones can be
computed for a train example honestly: the co-mention prior, popularity and the neighbours vote each leave the
example's own dialogue out (`FusedRetriever.features`, `exclude_dialogue_ids`), and content, people and mentioned
read nothing trained. The dense features are the catch: the encoder was fine-tuned on these very train pairs, so
dense_dialogue is stronger on train than anywhere else, and weights searched on train trust it too much. This
script measures that bias (each feature alone on train vs tune) and what the weights learned on train, on train
and tune together, and per context kind (a weight set for contexts that name a film and one for those that do not,
which the extra examples could afford) do on dev, each paired with the run's own weights.

Rows (each searched with the stage's grid and passes, no Query Expert query):
    run's weights              fusion.json's no-query weights (the tune search): the base of every pairing
    tune, re-searched          the search repeated here on tune: must equal the run's (printed)
    train                      the search on the train split's features
    train + tune               the search on both splits' examples together
    train, by context kind     two searches on train: contexts that name a catalog film, contexts that name none
    tune, by context kind      the same two on tune (to tell the split's size from the split itself)

With `--neighbours` the neighbours feature is fitted as the stage fits it (`fit_neighbours`: train voters, (M, tau)
on tune) and joins every row's features; the base is then the tune search with it.

Usage:
    .venv/bin/python benchmarks/train_split_fusion.py --run-dir runs/inspired \\
        --out docs/results/train_split_fusion_inspired.md
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
from reges.retrieval.comention import context_item_ids
from reges.retrieval.fusion import (
    NO_QUERY,
    FusedRetriever,
    TunePairs,
    fuse,
    pair_ranks,
    recall_table,
    subset_pairs,
    tune_weights,
)
from reges.retrieval.retrieve import read_examples, split_features
from reges.retrieval.train import fit_neighbours

logger = logging.getLogger("train_split_fusion")

CUTOFFS = (10, 50)
SPLITS = ("train", "tune", "dev")


def names_a_film(examples: list[RecExample], column: dict[str, int]) -> np.ndarray:
    """(n,) True for examples whose context names a catalog film (the co-mention prior has something to say)."""
    return np.array([any(i in column for i in context_item_ids(ex.context)) for ex in examples], dtype=bool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with data and train-retriever complete")
    parser.add_argument("--neighbours", action="store_true", help="add the neighbours feature as the stage fits it")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    tc = load_config(args.run_dir / "config.yaml").train_retriever  # the stage's grid and passes
    names = list(fr.weights[NO_QUERY])  # every feature the stage searched, in its order (the search is path-dependent)
    if args.neighbours and "neighbours" not in names:
        data_dir = args.run_dir / "data"
        aliases = run_aliases(args.run_dir)
        fr.neighbours, _ = fit_neighbours(fr, read_examples(data_dir / "train.jsonl", aliases),
                                          read_examples(data_dir / "tune.jsonl", aliases))
        names.append("neighbours")
    examples: dict[str, list[RecExample]] = {}
    pairs: dict[str, TunePairs] = {}
    z: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        examples[split], _, z[split] = split_features(fr, args.run_dir, split, names, with_query=False)
        pairs[split] = TunePairs.from_examples(examples[split], fr.item_ids)
        logger.info("%s: %d examples, %d pairs", split, len(examples[split]), len(pairs[split].query_index))
    # the bias: each feature alone on train and on tune (the dense ones were trained on train's pairs)
    alone = {split: {f: recall_table(pair_ranks(fuse({f: z[split][f]}, {f: 1.0}, fr.tie), pairs[split],
                                                fr.id_rank), pairs[split])["objective"] for f in names}
             for split in ("train", "tune")}

    def search(split_z: dict[str, np.ndarray], split_pairs: TunePairs) -> dict[str, float]:
        return tune_weights(split_z, split_pairs, fr.tie, fr.id_rank, tc.weight_grid, tc.tune_passes)[0]

    def rows(split: str, sel: np.ndarray) -> tuple[dict[str, np.ndarray], TunePairs]:
        idx = np.flatnonzero(sel)
        return {f: x[idx] for f, x in z[split].items()}, subset_pairs(pairs[split], idx)

    both_z = {f: np.concatenate([z["train"][f], z["tune"][f]]) for f in names}
    both_pairs = TunePairs.from_examples(examples["train"] + examples["tune"], fr.item_ids)
    kind = {split: names_a_film(examples[split], fr.column) for split in SPLITS}
    retuned = search(z["tune"], pairs["tune"])
    added = args.neighbours and "neighbours" not in fr.weights[NO_QUERY]  # then the stage's search is this one
    single = {  # one weight set for every example
        "run's weights": dict(retuned) if added else {f: fr.weights[NO_QUERY].get(f, 0.0) for f in names},
        "tune, re-searched": retuned,
        "train": search(z["train"], pairs["train"]),
        "train + tune": search(both_z, both_pairs),
    }
    by_kind = {f"{source}, by context kind": {label: search(*rows(source, kind[source] == named))  # one set per kind
                                              for label, named in (("names a film", True), ("names none", False))}
               for source in ("train", "tune")}
    dev_scores = {label: fuse(z["dev"], w, fr.tie) for label, w in single.items()}
    for label, ws in by_kind.items():  # each dev row fused with its kind's weights
        dev_scores[label] = np.where(kind["dev"][:, None], fuse(z["dev"], ws["names a film"], fr.tie),
                                     fuse(z["dev"], ws["names none"], fr.tie))
    ranks = {label: pair_ranks(s, pairs["dev"], fr.id_rank) for label, s in dev_scores.items()}
    base = "run's weights"
    reproduced = all(abs(single["tune, re-searched"][f] - single[base][f]) < 1e-9 for f in names)
    dev_ids = [ex.dialogue_id for ex in examples["dev"]]
    table = paired_recall_table(ranks, base, pairs["dev"], dev_ids, CUTOFFS, args.bootstrap, args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/train_split_fusion.py", *sys.argv[1:]])
    mi = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    n = {s: len(examples[s]) for s in SPLITS}
    lines = [f"# Fusion weights learned on the train split ({args.run_dir}, dev: {n['dev']} examples)", "",
             f"Generated by `{command}` on {now_iso()} ({mi['cpu_model']}, {mi['cores']} cores). Why and what each "
             f"row is: the script's docstring. Examples: train {n['train']}, tune {n['tune']}; contexts that name a "
             "catalog film: " + ", ".join(f"{s} {kind[s].mean():.0%}" for s in SPLITS) + ". Features: "
             + ", ".join(names) + ". The tune search repeated here reproduces the base row's weights: "
             + ("yes" if reproduced else "**no**") + ". Each cell: dev recall, then the paired difference to the "
             "base row with its 95 % interval (bootstrap over dialogues).", "",
             "| weights searched on | " + " | ".join(cols) + " | weights |", "|---|" + "---:|" * len(cols) + "---|"]
    def shown(w: dict[str, float]) -> str:
        return ", ".join(f"{f} {v:g}" for f, v in w.items() if v)

    weight_cells = {label: shown(w) for label, w in single.items()}
    weight_cells |= {label: "; ".join(f"{k}: {shown(w)}" for k, w in ws.items()) for label, ws in by_kind.items()}
    for label, text in weight_cells.items():
        lines.append(f"| {label} | " + " | ".join(paired_cells(table, label, base, cols)) + f" | {text} |")
    lines += ["", "Each feature alone (the search's objective: mean of R@10 and R@50 under all and novel). The "
              "dense features were fine-tuned on the train split's pairs, so their train column is optimistic; "
              "the others leave each example's own dialogue out.", "",
              "| feature | train | tune | train - tune |", "|---|---:|---:|---:|"]
    for f in names:
        lines.append(f"| {f} | {alone['train'][f]:.4f} | {alone['tune'][f]:.4f} | "
                     f"{alone['train'][f] - alone['tune'][f]:+.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "table": table,
                                               "weights": single | by_kind, "features": names, "alone": alone,
                                               "examples": n,
                                               "names_a_film": {s: float(kind[s].mean()) for s in SPLITS},
                                               "reproduces_run_weights": reproduced, "command": command,
                                               "machine": mi})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
