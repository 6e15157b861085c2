"""Beyond a linear weight set: a gradient-boosted reranker of the fused top-N, learned on the train split.

Why: the stage fuses its features with one linear weight set (z-scored rows, `fusion.fuse`), searched on a few
hundred tune examples or, with `weight_examples: train+tune`, on the train split too. A linear set cannot say
"trust the co-mention prior when the dialogue names three films, the encoder when it names none" or "popularity
matters among close dense scores only". With 9x the supervision the train split could pay for such interactions.
This script asks whether they exist: scikit-learn's HistGradientBoostingClassifier (pointwise: is this candidate a
target?) over the linear fusion's top-N candidates, per candidate each feature's z-score and its rank in the
example, the linear score and rank, and the context's size (films named, turns, characters). Items below the top N
keep the linear order under the reranked ones. Each train example's features leave its own dialogue out, as the
stage's train+tune search computes them; with `--cross-fit` its dense_dialogue comes from the run's cross-fitting
encoders (`train_retriever.cross_fit_folds`, `checkpoints/fold-k/encoder`), which never saw its dialogue.

Rows: the run's linear weights (no query: the base of every pairing), then the reranker for each setting of
`SETTINGS` trained on the train examples and on train + tune. Every tune number is of unseen examples: a train-only
reranker never saw tune, and a train + tune row's tune objective is cross-validated over two halves of the tune
dialogues (its dev rows use the reranker learned on all of tune). Dev chooses nothing.

Usage:
    .venv/bin/python benchmarks/learned_fusion.py --run-dir runs/redial-nq --out docs/results/learned_fusion_redial.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from reges.catalog import read_catalog
from reges.config import load_config
from reges.eval.metrics import paired_cells, paired_recall_table
from reges.io import machine_info, now_iso, read_json, write_json
from reges.records import RecExample
from reges.retrieval.comention import context_item_ids
from reges.retrieval.fusion import NO_QUERY, FusedRetriever, TunePairs, fuse, pair_ranks, recall_table, zscore_rows
from reges.retrieval.retrieve import split_features
from reges.retrieval.train import cross_fit_split, cross_fitted_dense

logger = logging.getLogger("learned_fusion")

CUTOFFS = (1, 10, 50)
SPLITS = ("train", "tune", "dev")
SETTINGS = {  # (learning rate, trees, leaves per tree); min 50 samples per leaf and l2 1.0 throughout
    "small": (0.05, 150, 15),
    "larger": (0.05, 300, 31),
}


def candidate_rows(z: dict[str, np.ndarray], linear: np.ndarray, examples: list[RecExample], pairs: TunePairs,
                   depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X (n, depth, f) features, y (n, depth) is-a-target, top (n, depth) catalog columns) of the linear top-N."""
    n = linear.shape[0]
    top = np.argsort(-linear, axis=1, kind="stable")[:, :depth]  # (n, depth)
    r = np.arange(n)[:, None]
    cols = [z[f][r, top] for f in z] + [linear[r, top]]
    for f in z:  # each feature's rank within the example, log-scaled
        order = np.argsort(-z[f], axis=1, kind="stable")
        rank = np.empty_like(order)
        rank[r, order] = np.arange(order.shape[1])[None, :]
        cols.append(np.log1p(rank[r, top]))
    cols.append(np.broadcast_to(np.log1p(np.arange(depth))[None, :], (n, depth)))
    size = np.array([[len(context_item_ids(ex.context)), len(ex.context), sum(len(t.content) for t in ex.context)]
                     for ex in examples], dtype=np.float64)  # (n, 3)
    cols += [np.broadcast_to(size[:, c:c + 1], (n, depth)) for c in range(size.shape[1])]
    x = np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=2)
    y = np.zeros((n, depth), dtype=bool)
    ok = pairs.item_index >= 0
    for q, j in zip(pairs.query_index[ok], pairs.item_index[ok], strict=True):
        y[q] |= top[q] == j
    return x, y, top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with data and train-retriever complete")
    parser.add_argument("--depth", type=int, default=100, help="candidates reranked per example")
    parser.add_argument("--cross-fit", action="store_true",
                        help="train rows' dense_dialogue from the run's cross-fitting encoders")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    names = list(fr.weights[NO_QUERY])
    weights = fr.weights[NO_QUERY]
    depth = min(args.depth, len(fr.item_ids))
    examples: dict[str, list[RecExample]] = {}
    pairs: dict[str, TunePairs] = {}
    linear: dict[str, np.ndarray] = {}
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        cross_fit = split == "train" and args.cross_fit  # then the run's encoder's dense rows are not computed
        computed = [f for f in names if not (cross_fit and f == "dense_dialogue")]
        examples[split], _, z = split_features(fr, args.run_dir, split, computed, with_query=False)
        if cross_fit:
            cfg = load_config(args.run_dir / "config.yaml")  # index batch size and device, the run's seed
            spec = read_json(args.run_dir / "train-retriever" / "fusion.json")
            if not spec.get("cross_fit"):
                parser.error(f"--cross-fit: {args.run_dir} was trained without train_retriever.cross_fit_folds")
            folds = cross_fit_split(examples[split], spec["cross_fit"]["folds"])
            if [f["held_out_dialogues"] for f in spec["cross_fit"]["finetune"]] != [len(f) for f in folds]:
                parser.error(f"--cross-fit: {args.run_dir}'s fold encoders were trained on other folds than its "
                             "train split gives now; rerun train-retriever with run.overwrite=true")
            ckpt = args.run_dir / "train-retriever" / "checkpoints"
            items = {it.item_id: it for it in read_catalog(args.run_dir / "catalog" / "items.jsonl")}
            dense, _ = cross_fitted_dense(fr, [ckpt / f"fold-{k}" / "encoder" for k in range(len(folds))], folds,
                                          examples[split], items, cfg)
            z["dense_dialogue"] = zscore_rows(dense)
            z = {f: z[f] for f in names}  # the column order of every split's candidate features
        pairs[split] = TunePairs.from_examples(examples[split], fr.item_ids)
        linear[split] = fuse(z, weights, fr.tie)
        data[split] = candidate_rows(z, linear[split], examples[split], pairs[split], depth)
        logger.info("%s: %d examples, a target in the top %d of %.3f", split, len(examples[split]), depth,
                    data[split][1].any(axis=1).mean())
        del z
    ranks: dict[str, dict[str, np.ndarray]] = {"tune": {}, "dev": {}}
    for split in ranks:
        ranks[split]["linear (the run's weights)"] = pair_ranks(linear[split], pairs[split], fr.id_rank)
    fit_s: dict[str, float] = {}
    tune_folds = cross_fit_split(examples["tune"], 2)  # for an honest tune objective of the train + tune rows
    in_fold = [np.array([ex.dialogue_id in f for ex in examples["tune"]]) for f in tune_folds]

    def fit(setting: str, rows: list[tuple[str, np.ndarray | None]]) -> HistGradientBoostingClassifier:
        """The reranker of `setting` fitted on the candidates of (split, example mask or None = all) rows."""
        lr, trees, leaves = SETTINGS[setting]
        x = np.concatenate([(data[s][0] if m is None else data[s][0][m]).reshape(-1, data[s][0].shape[2])
                            for s, m in rows])
        y = np.concatenate([(data[s][1] if m is None else data[s][1][m]).reshape(-1) for s, m in rows])
        if y.all() or not y.any():
            parser.error(f"the top {depth} candidates of the examples learned on are all targets or none: "
                         "nothing to learn; pass a larger --depth or a run with more examples")
        model = HistGradientBoostingClassifier(learning_rate=lr, max_iter=trees, max_leaf_nodes=leaves,
                                               min_samples_leaf=50, l2_regularization=1.0, random_state=args.seed)
        return model.fit(x, y)

    def reranked(model: HistGradientBoostingClassifier, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """The split's (or its `rows`') linear scores with the top N re-scored by `model` above all the others."""
        xs, _, top = data[split]
        lin = linear[split]
        if rows is not None:
            xs, top, lin = xs[rows], top[rows], lin[rows]
        n = xs.shape[0]
        p = model.predict_proba(xs.reshape(n * depth, -1))[:, 1].reshape(n, depth)
        r = np.arange(n)[:, None]
        scores = np.empty_like(lin)  # rank scores, all distinct: the rest below the reranked, in linear order
        scores[r, np.argsort(-lin, axis=1, kind="stable")] = -np.arange(lin.shape[1], dtype=np.float64)[None, :]
        # by probability, equal ones (trees give steps) in the linear order
        order = np.lexsort((np.broadcast_to(np.arange(depth), (n, depth)), -p), axis=1)
        scores[r, top[r, order]] = np.arange(depth, 0, -1, dtype=np.float64)[None, :]
        return scores

    honest_tune: dict[str, float] = {}
    for source in (("train",), ("train", "tune")):
        for setting in SETTINGS:
            label = f"reranker ({setting}), learned on {' + '.join(source)}"
            t0 = time.perf_counter()
            model = fit(setting, [(s, None) for s in source])
            fit_s[label] = round(time.perf_counter() - t0, 1)
            for split in ranks:
                ranks[split][label] = pair_ranks(reranked(model, split), pairs[split], fr.id_rank)
            if "tune" in source:  # each tune fold scored by a model learned on train and the other fold
                scores = np.zeros_like(linear["tune"])
                for rows in in_fold:
                    scores[rows] = reranked(fit(setting, [("train", None), ("tune", ~rows)]), "tune", rows)
                honest_tune[label] = recall_table(pair_ranks(scores, pairs["tune"], fr.id_rank),
                                                  pairs["tune"])["objective"]
            logger.info("%s: fitted in %.0f s", label, fit_s[label])
    base = "linear (the run's weights)"
    dev_ids = [ex.dialogue_id for ex in examples["dev"]]
    table = paired_recall_table(ranks["dev"], base, pairs["dev"], dev_ids, CUTOFFS, args.bootstrap, args.seed)
    tune_objective = {label: recall_table(r, pairs["tune"])["objective"] for label, r in ranks["tune"].items()}
    tune_objective |= honest_tune  # a train + tune row's own tune column would have seen the tune targets
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/learned_fusion.py", *sys.argv[1:]])
    mi = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    n = {s: len(examples[s]) for s in SPLITS}
    hit = {s: float(data[s][1].any(axis=1).mean()) for s in SPLITS}
    lines = [f"# A learned reranker of the fused top {depth} ({args.run_dir}, dev: {n['dev']} examples)", "",
             f"Generated by `{command}` on {now_iso()} ({mi['cpu_model']}, {mi['cores']} cores). Why and what each "
             f"row is: the script's docstring. Examples: train {n['train']}, tune {n['tune']}. Features: "
             + ", ".join(names) + " (no query); train rows' dense_dialogue "
             + ("cross-fitted" if args.cross_fit else "from the run's encoder, which was trained on them")
             + ". Share of examples with a target among the reranked candidates: "
             + ", ".join(f"{s} {hit[s]:.3f}" for s in SPLITS) + ". Each dev cell: recall, then the paired "
             "difference to the linear row with its 95 % interval (bootstrap over dialogues). Tune objective: the "
             "weight search's (mean of R@10 and R@50 under all and novel); for the rows learned on train + tune, "
             "cross-validated (each half of the tune dialogues scored by a reranker learned on train and the other "
             "half), so that every tune number is of examples the reranker did not learn from.", "",
             "| ranking | tune objective | " + " | ".join(cols) + " | fit s |",
             "|---|---:|" + "---:|" * len(cols) + "---:|"]
    for label in ranks["dev"]:
        lines.append(f"| {label} | {tune_objective[label]:.4f} | " + " | ".join(paired_cells(table, label, base, cols))
                     + f" | {fit_s.get(label, 0):g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "table": table, "features": names,
                                               "weights": weights, "tune_objective": tune_objective,
                                               "settings": SETTINGS, "depth": depth,
                                               "cross_fit": args.cross_fit, "examples": n, "target_in_top": hit,
                                               "fit_s": fit_s, "command": command, "machine": mi})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
