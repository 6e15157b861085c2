"""Two variants of the co-mention prior as extra fusion features of a trained run: tuned on tune, scored on dev.

Why: the co-mention prior counts only direct co-occurrence, and counts every film the dialogue names, also one the
user says they did not like. Two cheap fixes suggested themselves while reading ReDial dev misses:
    two_hop   sum_k P(k | context) P(j | k): films co-mentioned with films co-mentioned with the context (sparse
              counts miss pairs that a second hop could reach)
    liked     the prior over the named films minus those the user's own turn dislikes ("I didn't like Titanic":
              the rule of the grounded teacher, `reges.query_expert.teacher`)
Each is measured three ways next to the run's own features (fusion weights re-tuned on tune with the same
coordinate search as train-retriever, `reges.retrieval.fusion.tune_weights`): added to them, and (liked) in place of
the plain prior. Recall@10/50 on dev under protocols all and novel with the paired difference to the run's own
features re-tuned the same way (95 % interval, bootstrap over dialogues). The Query Expert's query is not used
(the "no_query" weight set).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/comention_variants.py --run-dir runs/redial-signals-people \\
        --out docs/results/comention_variants_redial.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from reges.catalog import read_catalog
from reges.eval.metrics import paired_bootstrap_diff
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
    tune_weights,
    zscore_rows,
)
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("comention_variants")

CUTOFFS = (10, 50)


def two_hop(fr: FusedRetriever, contexts: Sequence[Sequence[str]]) -> np.ndarray:
    """(num_contexts, num_items) sum over context films i of sum_k P(k | i) P(j | k), context films left at 0."""
    counts = fr.counts.counts.astype(np.float64).tolil()
    counts.setdiag(0)
    step = sp.diags(1.0 / np.maximum(fr.counts.item_counts, 1.0)) @ counts.tocsr()  # P(j | i), rows i
    col = fr.counts.count_columns(fr.item_ids)
    known = col >= 0
    out = np.zeros((len(contexts), len(fr.item_ids)))
    for q, items in enumerate(contexts):
        rows = [fr.counts.row[i] for i in items if i in fr.counts.row]
        if not rows:
            continue
        x = np.zeros(step.shape[0])
        x[rows] = 1.0
        s = step.T @ (step.T @ x)
        s[rows] = 0.0
        out[q, known] = s[col[known]]
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


def hits(scores: np.ndarray, pairs: TunePairs, examples: Sequence[RecExample], fr: FusedRetriever, novel: bool,
         k: int) -> dict[str, list[float]]:
    """dialogue id -> hit flags at k of each (example, target) pair of the protocol."""
    ranks = pair_ranks(scores, pairs, fr.id_rank)
    out: dict[str, list[float]] = defaultdict(list)
    for p, q in enumerate(pairs.query_index):
        if novel and not pairs.novel[p]:
            continue
        out[examples[q].dialogue_id].append(float(ranks[p] <= k))
    return out


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
    z: dict[str, dict[str, np.ndarray]] = {}
    data: dict[str, tuple[list[RecExample], TunePairs]] = {}
    changed = {}
    for split in ("tune", "dev"):
        examples = read_examples(args.run_dir / "data" / f"{split}.jsonl")
        contexts = [ex.context for ex in examples]
        feats = fr.features(contexts, [None] * len(examples), [None] * len(examples), names)
        liked, changed[split] = liked_contexts(contexts, items)
        feats["two_hop"] = two_hop(fr, [context_item_ids(c) for c in contexts])
        feats["liked"] = fr.counts.scores(liked, fr.item_ids, fr.settings.normalization)
        z[split] = {name: zscore_rows(x) for name, x in feats.items()}
        data[split] = (examples, TunePairs.from_examples(examples, fr.item_ids))
    variants = {
        "run's features": names,
        "+ two_hop": [*names, "two_hop"],
        "+ liked": [*names, "liked"],
        "liked in place of comention": [n if n != "comention" else "liked" for n in names],
    }
    examples, pairs = data["dev"]
    scores = {}
    weights = {}
    for label, feats in variants.items():
        weights[label], _ = tune_weights({f: z["tune"][f] for f in feats}, data["tune"][1], fr.tie, fr.id_rank)
        scores[label] = fuse({f: z["dev"][f] for f in feats}, weights[label], fr.tie)
    table: dict[str, Any] = {}
    base = "run's features"
    for label in variants:
        table[label] = {}
        for protocol in ("all", "novel"):
            for k in CUTOFFS:
                a = hits(scores[base], pairs, examples, fr, protocol == "novel", k)
                b = hits(scores[label], pairs, examples, fr, protocol == "novel", k)
                _, mean, diff, low, high = paired_bootstrap_diff(a, b, args.bootstrap, args.seed)
                table[label][f"{protocol}/recall@{k}"] = {"mean": round(mean, 4), "diff": round(diff, 4),
                                                         "diff_ci": [round(low, 4), round(high, 4)]}
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/comention_variants.py", *sys.argv[1:]])
    m = machine_info()
    cols = [f"{p}/recall@{k}" for p in ("all", "novel") for k in CUTOFFS]
    lines = [f"# Co-mention variants as fusion features ({args.run_dir}, dev: {len(examples)} examples)", "",
             f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores). What each variant "
             "is: the script's docstring. Fusion weights re-tuned on tune for every row (no query); each cell: "
             "recall, then the paired difference to the run's own features with its 95 % interval (bootstrap over "
             f"dialogues). Contexts where the dislike rule drops a film: tune {changed['tune']}, dev "
             f"{changed['dev']}.", "",
             "| features | " + " | ".join(cols) + " | weights |", "|---|" + "---:|" * len(cols) + "---|"]
    for label in variants:
        cells = []
        for c in cols:
            v = table[label][c]
            cells.append(f"{v['mean']:.3f}" if label == base else
                         f"{v['mean']:.3f} ({v['diff']:+.3f} [{v['diff_ci'][0]:+.3f}, {v['diff_ci'][1]:+.3f}])")
        w = ", ".join(f"{f} {v:g}" for f, v in weights[label].items() if v)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {w} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"run_dir": str(args.run_dir), "table": table, "weights": weights,
                                               "changed_contexts": changed, "command": command, "machine": m})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
