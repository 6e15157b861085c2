"""Variants of the collaborative signal as extra fusion features of a trained run: tuned on tune, scored on dev.

Why: the co-mention prior counts only direct, symmetric co-occurrence, and counts every film the dialogue names,
also one the user says they did not like. Fixes that suggested themselves while reading ReDial dev misses, and the
standard collaborative models that a dialogue's mention set supports:
    two_hop   sum_k P(k | context) P(j | k): films co-mentioned with films co-mentioned with the context (sparse
              counts miss pairs that a second hop could reach)
    liked     the prior over the named films minus those the user's own turn dislikes ("I didn't like Titanic":
              the rule of the grounded teacher, `reges.query_expert.teacher`)
    oracle_liked  DIAGNOSTIC, never a signal: the prior over the named films minus those the seeker's own form
              labels (ReDial `initiatorQuestions`, liked = 0) mark as disliked, read for tune and dev examples too.
              It is the ceiling of any model that predicts likes from the text at test time: if perfect labels
              add nothing, no such model can (ReDial data only; absent elsewhere).
    ease      EASE (Steck 2019), the closed-form linear item-to-item model over the same dialogue mention sets:
              B = I - P diag(1/diag P), P = (G + lambda I)^-1, G the co-mention matrix; score = sum of B's rows of
              the named films. lambda in (20, 100, 500), chosen by the feature's own objective on tune.
    directed  who recommends what: sum over the named films i of D[i, j] / n_i, D[i, j] the dialogues where the
              seeker named i and the recommender then named j (train examples: context -> target; the lossy
              file's dialogues: the seeker's films -> the recommender's other films, seeker told by
              `reges.data.lossy.seeker_turn`), n_i the dialogues where the seeker named i
    recpop    log(1 + how often a film is recommended) in the same dialogues: what recommenders suggest, not what
              anyone mentions (the run's popularity feature)
Each is measured next to the run's own features (fusion weights re-tuned on tune with the same coordinate search as
train-retriever, `reges.retrieval.fusion.tune_weights`): added to them, and (liked, ease, directed) in place of
the plain prior. A last row asks how much of any difference the weight search alone makes: the run's own features
with the search started from each feature in turn, the start with the best tune objective kept. Recall@10/50 on
dev under protocols all and novel with the paired difference to the run's own features re-tuned the same way
(95 % interval, bootstrap over dialogues). The Query Expert's query is not used (the "no_query" weight set).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/comention_variants.py --run-dir runs/redial-signals-people \\
        --out docs/results/comention_variants_redial.md
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

from reges.catalog import read_catalog, run_aliases
from reges.data.lossy import LOSSY_DIALOGUES_FILE, seeker_turn
from reges.eval.metrics import paired_cells, paired_recall_table
from reges.io import machine_info, now_iso, write_json
from reges.query_expert.teacher import disliked_in
from reges.records import RecExample, Turn
from reges.retrieval.comention import context_item_ids
from reges.retrieval.fusion import (
    NO_QUERY,
    FusedRetriever,
    TunePairs,
    fuse,
    pair_ranks,
    recall_table,
    tune_weights,
    zscore_rows,
)
from reges.retrieval.retrieve import read_dialogues, read_examples

logger = logging.getLogger("comention_variants")

CUTOFFS = (10, 50)
EASE_LAMBDAS = (20.0, 100.0, 500.0)


def on_catalog(fr: FusedRetriever, contexts: Sequence[Sequence[str]],
               score: Callable[[list[int]], np.ndarray]) -> np.ndarray:
    """(num_contexts, num_items): `score(rows)` of each context's counted films (a vector over the counted films),
    spread onto the catalog's columns; a context without a counted film scores 0 everywhere."""
    col = fr.counts.count_columns(fr.item_ids)
    known = col >= 0
    out = np.zeros((len(contexts), len(fr.item_ids)))
    for q, items in enumerate(contexts):
        rows = sorted({fr.counts.row[i] for i in items if i in fr.counts.row})
        if rows:
            out[q, known] = score(rows)[col[known]]
    return out


def two_hop(fr: FusedRetriever, contexts: Sequence[Sequence[str]]) -> np.ndarray:
    """(num_contexts, num_items) sum over context films i of sum_k P(k | i) P(j | k), context films left at 0."""
    counts = fr.counts.counts.astype(np.float64).tolil()
    counts.setdiag(0)
    step = sp.diags(1.0 / np.maximum(fr.counts.item_counts, 1.0)) @ counts.tocsr()  # P(j | i), rows i

    def score(rows: list[int]) -> np.ndarray:
        x = np.zeros(step.shape[0])
        x[rows] = 1.0
        s = step.T @ (step.T @ x)
        s[rows] = 0.0
        return s

    return on_catalog(fr, contexts, score)


def ease_matrix(gram: sp.spmatrix, lam: float) -> np.ndarray:
    """EASE item-to-item weights (dense, zero diagonal): B = -P / diag(P), P = (G + lam I)^-1, for G = X^T X, X the
    dialogues' binary mention sets: the co-mention matrix, diagonal included. Column j is the ridge regression of
    item j's column of X on the other items' columns."""
    g = gram.astype(np.float64).toarray()
    p = np.linalg.inv(g + lam * np.eye(len(g)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def recommendations(run_dir: Path, fr: FusedRetriever) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(seeker's films, films the recommender then names) as count-matrix rows, from the train examples (context ->
    targets) and the lossy dialogues (the seeker's side by `seeker_turn`); and how many lossy dialogues gave one."""
    def rows(items: Sequence[str]) -> list[int]:
        return sorted({fr.counts.row[i] for i in items if i in fr.counts.row})

    out = []
    aliases = run_aliases(run_dir)
    for ex in read_examples(run_dir / "data" / "train.jsonl", aliases):
        named = set(context_item_ids(ex.context))
        out.append((rows(list(named)), rows([t for t in ex.target_item_ids if t not in named])))
    lossy = run_dir / "data" / LOSSY_DIALOGUES_FILE
    n_lossy = 0
    for d in read_dialogues(lossy, aliases) if lossy.is_file() else []:
        side = seeker_turn(d)
        if side is not None:
            named = set(d.turns[side].item_ids)
            out.append((rows(list(named)), rows([i for i in d.turns[1 - side].item_ids if i not in named])))
            n_lossy += 1
    return out, n_lossy


def directed_features(fr: FusedRetriever, pairs: list[tuple[list[int], list[int]]],
                      contexts: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The directed prior (sum over the named films i of D[i, j] / n_i) and recpop, log(1 + times recommended)."""
    n = len(fr.counts.item_ids)
    seeds = np.zeros(n)
    recommended = np.zeros(n)
    r, c = [], []
    for named, recs in pairs:
        seeds[named] += 1.0
        recommended[recs] += 1.0
        r.extend(np.repeat(named, len(recs)))
        c.extend(np.tile(recs, len(named)))
    d = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    cond = sp.diags(1.0 / np.maximum(seeds, 1.0)) @ d
    directed = on_catalog(fr, contexts, lambda rows: np.asarray(cond[rows].sum(0)).ravel())
    col = fr.counts.count_columns(fr.item_ids)
    recpop = np.where(col >= 0, np.log1p(recommended[np.maximum(col, 0)]), 0.0)  # (num_items,)
    return directed, np.repeat(recpop[None, :], len(contexts), axis=0)


def seeker_dislikes(run_dir: Path) -> dict[str, set[str]] | None:
    """dialogue id -> films the seeker's form labels mark as disliked (ReDial `initiatorQuestions`, liked == 0),
    from the run's `data.train_files`; None when the run's data is not in ReDial's format."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    if cfg.get("data", {}).get("format") != "redial":
        return None
    out: dict[str, set[str]] = {}
    for path in cfg["data"]["train_files"]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                raw = json.loads(line)
                labels = raw.get("initiatorQuestions") or {}
                out[str(raw["conversationId"])] = {i for i, q in labels.items() if q.get("liked") == 0}
    return out


def liked_contexts(contexts: Sequence[Sequence[Turn]], items: dict) -> tuple[list[list[str]], int]:
    """Each context's named films minus those a user turn dislikes; and how many contexts lost one."""
    out, changed = [], 0
    for context in contexts:
        disliked = {i for t in context if t.role == "user" for i in t.item_ids
                    if i in items and disliked_in(t.content, items[i])}
        changed += bool(disliked)
        out.append([i for i in context_item_ids(context) if i not in disliked])
    return out, changed


def oracle_contexts(examples: Sequence[RecExample], dislikes: dict[str, set[str]]) -> tuple[list[list[str]], int]:
    """Each context's named films minus those its seeker's form labels mark as disliked; contexts that lost one."""
    out, changed = [], 0
    for ex in examples:
        named = context_item_ids(ex.context)
        kept = [i for i in named if i not in dislikes.get(ex.dialogue_id, set())]
        changed += len(kept) < len(named)
        out.append(kept)
    return out, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with train-retriever and data complete")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fr = FusedRetriever.load(args.run_dir, device="cpu")
    items = {it.item_id: it for it in read_catalog(args.run_dir / "catalog" / "items.jsonl")}
    names = sorted(f for f, w in fr.weights[NO_QUERY].items() if w)
    dislikes = seeker_dislikes(args.run_dir)
    recs, n_lossy = recommendations(args.run_dir, fr)
    z: dict[str, dict[str, np.ndarray]] = {}
    data: dict[str, tuple[list[RecExample], TunePairs]] = {}
    named: dict[str, list[list[str]]] = {}
    changed: dict[str, dict[str, int]] = {}
    for split in ("tune", "dev"):
        examples = read_examples(args.run_dir / "data" / f"{split}.jsonl", run_aliases(args.run_dir))
        contexts = [ex.context for ex in examples]
        named[split] = [context_item_ids(c) for c in contexts]
        feats = fr.features(contexts, [None] * len(examples), [None] * len(examples), names)
        liked, n_liked = liked_contexts(contexts, items)
        changed[split] = {"liked": n_liked}
        feats["two_hop"] = two_hop(fr, named[split])
        feats["liked"] = fr.counts.scores(liked, fr.item_ids, fr.settings.normalization)
        if dislikes is not None:
            oracle, changed[split]["oracle_liked"] = oracle_contexts(examples, dislikes)
            feats["oracle_liked"] = fr.counts.scores(oracle, fr.item_ids, fr.settings.normalization)
        feats["directed"], feats["recpop"] = directed_features(fr, recs, named[split])
        z[split] = {name: zscore_rows(x) for name, x in feats.items()}
        data[split] = (examples, TunePairs.from_examples(examples, fr.item_ids))
    ease_objective: dict[float, float] = {}
    best: tuple[float, np.ndarray] | None = None  # lambda and its B: the first best EASE feature alone on tune
    for lam in EASE_LAMBDAS:
        b = ease_matrix(fr.counts.counts, lam)
        zs = zscore_rows(on_catalog(fr, named["tune"], lambda rows, b=b: b[rows].sum(0)))
        scores_alone = fuse({"ease": zs}, {"ease": 1.0}, fr.tie)
        ease_objective[lam] = recall_table(pair_ranks(scores_alone, data["tune"][1], fr.id_rank),
                                           data["tune"][1])["objective"]
        if best is None or ease_objective[lam] > ease_objective[best[0]]:
            best, z["tune"]["ease"] = (lam, b), zs
    assert best is not None
    lam, b = best
    z["dev"]["ease"] = zscore_rows(on_catalog(fr, named["dev"], lambda rows: b[rows].sum(0)))
    logger.info("EASE lambda %g (tune objective alone: %s)", lam, ease_objective)

    def instead(new: str) -> list[str]:
        return [n if n != "comention" else new for n in names]

    variants = {
        "run's features": names,
        "+ two_hop": [*names, "two_hop"],
        "+ liked": [*names, "liked"],
        "liked in place of comention": instead("liked"),
    }
    if dislikes is not None:
        variants["+ oracle_liked (diagnostic)"] = [*names, "oracle_liked"]
        variants["oracle_liked in place of comention (diagnostic)"] = instead("oracle_liked")
    variants |= {
        "+ ease": [*names, "ease"],
        "ease in place of comention": instead("ease"),
        "+ directed": [*names, "directed"],
        "+ recpop": [*names, "recpop"],
        "+ directed + recpop": [*names, "directed", "recpop"],
        "directed in place of comention": instead("directed"),
    }
    examples, pairs = data["dev"]
    scores = {}
    weights = {}
    for label, feats in variants.items():
        weights[label], _ = tune_weights({f: z["tune"][f] for f in feats}, data["tune"][1], fr.tie, fr.id_rank)
        scores[label] = fuse({f: z["dev"][f] for f in feats}, weights[label], fr.tie)
    # How flat is the tune objective? The same search started from every feature of the run's own: the start with
    # the best tune objective becomes one more row, and every start's tune and dev objectives go to the JSON.
    starts: dict[str, dict[str, Any]] = {}
    for anchor in names:
        w, report = tune_weights({f: z["tune"][f] for f in names}, data["tune"][1], fr.tie, fr.id_rank, anchor=anchor)
        dev_scores = fuse({f: z["dev"][f] for f in names}, w, fr.tie)
        starts[anchor] = {"weights": w, "tune_objective": report["fused"]["objective"],
                          "dev_objective": recall_table(pair_ranks(dev_scores, pairs, fr.id_rank), pairs)["objective"]}
    best_start = max(starts, key=lambda a: starts[a]["tune_objective"])
    label = "run's features, best of every start (search from each feature)"
    variants[label] = names
    weights[label] = starts[best_start]["weights"]
    scores[label] = fuse({f: z["dev"][f] for f in names}, weights[label], fr.tie)
    base = "run's features"
    ranks = {label: pair_ranks(scores[label], pairs, fr.id_rank) for label in variants}
    table = paired_recall_table(ranks, base, pairs, [ex.dialogue_id for ex in examples], CUTOFFS, args.bootstrap,
                                args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/comention_variants.py", *sys.argv[1:]])
    m = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    lines = [f"# Collaborative-signal variants as fusion features ({args.run_dir}, dev: {len(examples)} examples)", "",
             f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). What each variant "
             "is: the script's docstring. Fusion weights re-tuned on tune for every row (no query); each cell: "
             "recall, then the paired difference to the run's own features with its 95 % interval (bootstrap over "
             f"dialogues). Contexts where a film is dropped (tune / dev): dislike rule {changed['tune']['liked']} / "
             f"{changed['dev']['liked']}"
             + (f", seeker's form labels {changed['tune']['oracle_liked']} / {changed['dev']['oracle_liked']}"
                if dislikes is not None else "")
             + f". EASE lambda {lam:g} (tune objective alone: "
             + ", ".join(f"{k:g}: {v:.4f}" for k, v in ease_objective.items())
             + f"). Directed prior and recpop: {len(recs) - n_lossy} train examples and {n_lossy} lossy dialogues. "
             "The weight search of the run's own features started from each of them (tune objective / dev "
             "objective, the mean of R@10 and R@50 under all and novel): "
             + ", ".join(f"{a} {v['tune_objective']:.4f} / {v['dev_objective']:.4f}" for a, v in starts.items())
             + ".",
             "",
             "| features | " + " | ".join(cols) + " | weights |", "|---|" + "---:|" * len(cols) + "---|"]
    for label in variants:
        cells = paired_cells(table, label, base, cols)
        w = ", ".join(f"{f} {v:g}" for f, v in weights[label].items() if v)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {w} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "table": table, "weights": weights,
                                               "changed_contexts": changed, "ease_lambda": lam,
                                               "search_starts": starts,
                                               "ease_objective_alone": {str(k): v for k, v in ease_objective.items()},
                                               "directed_sources": {"train_examples": len(recs) - n_lossy,
                                                                    "lossy_dialogues": n_lossy},
                                               "command": command, "machine": m})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
