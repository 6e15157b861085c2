"""What the Item Expert's own choice (rank mode, before fusion) follows: the retriever's order, short titles, or items
the dialogue already named.

Reads `generate/<split>.jsonl` (rank mode rows carry every candidate's log-likelihood) and `data/<split>.jsonl` of
each run directory. Per run:
- agree with top-1: the expert's first choice is the retriever's first candidate;
- mean retriever position (1-based) of the expert's first choice (10.5 for a choice blind to the retriever at k=20);
- Spearman correlation, per example then averaged, between a candidate's log-likelihood and its title length in
  characters (strongly negative: the total log-likelihood mostly counts tokens);
- shortest title: how often the first choice is the shortest title in the list (1/k by chance);
- named: how often the first choice was already named in the dialogue;
- Spearman correlation, per example then averaged, between a candidate's log-likelihood and its popularity
  (log(1 + train dialogues mentioning it)), and how often the first choice is the most popular candidate: does the
  expert fall back on well-known titles?
- target rank: for examples whose target is among the candidates, the target's mean rank (1 = first) in the
  expert's order and in the retriever's: does the expert order the list better than the retriever, even where its
  first choice misses?

- could fusion help at all: the success of the fused pick (`generate.fuse_scores`, the retriever's scores from
  `retrieve/<split>.trec`) at every alpha of `generate.ALPHA_GRID`, and the best of them. The best alpha is chosen
  on the same split, so it is an upper bound for diagnosis, never a result: if even it does not beat alpha 0 (the
  retriever's top-1), no alpha tuned elsewhere will.

With `--pair A,B` (labels of two --run), for the examples both runs scored on the same candidate list: the mean
per-example Spearman correlation of their log-likelihoods and how often their first choices agree. Against a run
whose prompt lost the dialogue (scripts/scaling_study_fresh.sh DIALOGUE=none), a correlation near 1 says the
expert's order comes from the titles, not from what the seeker said; the pair then also reports B calibrated by A:
the success of argmax(B - A), each title's log-likelihood minus the one it gets without the dialogue (the
"surface form competition" correction of Holtzman et al. 2021), which keeps only what the dialogue adds.

Usage:
    .venv/bin/python benchmarks/expert_diagnostics.py --split dev --out docs/results/expert_diagnostics_inspired.md \
        --run "135M untuned=runs/inspired-item135m-untuned" --run "1.5B untuned=runs/inspired-item1.5b-untuned"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from reges.catalog import alias_map, read_catalog, run_aliases
from reges.io import atomic_open, machine_info, now_iso, read_jsonl, read_trec
from reges.item_expert.generate import ALPHA_GRID, fuse_scores
from reges.records import mentioned_item_ids
from reges.retrieval.retrieve import read_dialogues, read_examples


def diagnose(run_dir: Path, split: str) -> dict[str, Any]:
    """The figures above for one run's rank-mode picks."""
    catalog = read_catalog(run_dir / "catalog" / "items.jsonl")
    titles = {it.item_id: it.title for it in catalog}
    aliases = alias_map(catalog)  # the ids as the stages read them
    examples = {ex.example_id: ex for ex in read_examples(run_dir / "data" / f"{split}.jsonl", aliases)}
    mentions: dict[str, int] = {}
    for d in read_dialogues(run_dir / "data" / "train_dialogues.jsonl", aliases):
        for item_id in {i for t in d.turns for i in t.item_ids}:
            mentions[item_id] = mentions.get(item_id, 0) + 1
    agree, position, rho, shortest, named = [], [], [], [], []
    rho_pop, most_popular, expert_rank, retriever_rank = [], [], [], []
    trec = read_trec(run_dir / "retrieve" / f"{split}.trec")
    fused_hits = {alpha: [] for alpha in ALPHA_GRID}
    for row in read_jsonl(run_dir / "generate" / f"{split}.jsonl"):
        scores, candidates = row.get("llm_scores"), row["candidate_ids"]
        if not scores:
            raise SystemExit(f"{run_dir}: generate rows have no llm_scores; these diagnostics need generate.mode=rank")
        best = int(np.argmax(scores))
        lengths = [len(titles[c]) for c in candidates]
        agree.append(best == 0)
        position.append(best + 1)
        if len(set(lengths)) > 1:
            rho.append(spearmanr(scores, lengths).statistic)
        shortest.append(lengths[best] == min(lengths))
        example = examples[row["example_id"]]
        named.append(candidates[best] in mentioned_item_ids(example.context))
        popularity = [np.log1p(mentions.get(c, 0)) for c in candidates]
        if len(set(popularity)) > 1:
            rho_pop.append(spearmanr(scores, popularity).statistic)
        most_popular.append(popularity[best] == max(popularity))
        retrieved = {h.item_id: h.score for h in trec[row["example_id"]]}
        for alpha in ALPHA_GRID:
            fused = fuse_scores([retrieved[c] for c in candidates], scores, alpha)
            fused_hits[alpha].append(candidates[int(np.argmax(fused))] in example.target_item_ids)
        order = list(np.argsort(-np.asarray(scores), kind="stable"))
        for target in example.target_item_ids:
            if target in candidates:
                expert_rank.append(order.index(candidates.index(target)) + 1)
                retriever_rank.append(candidates.index(target) + 1)
    curve = {alpha: float(np.mean(hits)) for alpha, hits in fused_hits.items()}
    best = max(curve, key=lambda a: (curve[a], -a))
    return {
        "run_dir": str(run_dir),
        "examples": len(agree),
        "fused_success_by_alpha": curve,
        "best_alpha_on_split": best,
        "k": len(candidates),
        "agree_with_top1": float(np.mean(agree)),
        "mean_position": float(np.mean(position)),
        "spearman_loglik_vs_title_length": float(np.mean(rho)),
        "picks_shortest_title": float(np.mean(shortest)),
        "picks_named_item": float(np.mean(named)),
        "spearman_loglik_vs_popularity": float(np.mean(rho_pop)),
        "picks_most_popular": float(np.mean(most_popular)),
        "targets_in_candidates": len(expert_rank),
        "target_rank_expert": float(np.mean(expert_rank)) if expert_rank else None,
        "target_rank_retriever": float(np.mean(retriever_rank)) if retriever_rank else None,
    }


def agreement(run_a: Path, run_b: Path, split: str) -> dict[str, Any]:
    """How alike two runs' expert scores are on the examples they both scored with the same candidates, and the
    success of B's scores calibrated by A's (argmax of B - A)."""
    rows_a = {r["example_id"]: r for r in read_jsonl(run_a / "generate" / f"{split}.jsonl")}
    targets = {ex.example_id: set(ex.target_item_ids)
               for ex in read_examples(run_b / "data" / f"{split}.jsonl", run_aliases(run_b))}
    rho, same, calibrated = [], [], []
    for row in read_jsonl(run_b / "generate" / f"{split}.jsonl"):
        other = rows_a.get(row["example_id"])
        if other is None or other["candidate_ids"] != row["candidate_ids"]:
            continue
        a, b = other["llm_scores"], row["llm_scores"]
        if len(set(a)) > 1 and len(set(b)) > 1:
            rho.append(spearmanr(a, b).statistic)
        same.append(int(np.argmax(a)) == int(np.argmax(b)))
        pick = row["candidate_ids"][int(np.argmax(np.asarray(b) - np.asarray(a)))]
        calibrated.append(pick in targets[row["example_id"]])
    return {"examples": len(same), "spearman": float(np.mean(rho)) if rho else None,
            "same_first_choice": float(np.mean(same)) if same else None,
            "calibrated_success": float(np.mean(calibrated)) if calibrated else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    parser.add_argument("--pair", action="append", default=[], metavar="LABEL_A,LABEL_B",
                        help="compare two runs' scores example by example (labels of --run)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = []
    runs: dict[str, Path] = {}
    for spec in args.run:
        label, run_dir = spec.split("=", 1)
        runs[label] = Path(run_dir)
        rows.append({"label": label, **diagnose(Path(run_dir), args.split)})
    pairs = []
    for spec in args.pair:
        a, b = spec.split(",", 1)
        if a not in runs or b not in runs:
            parser.error(f"--pair {spec!r}: both labels must name a --run ({sorted(runs)})")
        pairs.append({"a": a, "b": b, **agreement(runs[a], runs[b], args.split)})
    command = "python benchmarks/expert_diagnostics.py " + " ".join(
        [f"--split {args.split}", f"--out {args.out}", *(f'--run "{s}"' for s in args.run),
         *(f'--pair "{s}"' for s in args.pair)]
    )
    lines = [
        "# What the Item Expert's own choice follows",
        "",
        f"Generated by `{command}` on {now_iso()} ({machine_info()['cpu_model']}).",
        "",
        "| variant | n | k | agrees with top-1 | mean retriever position | Spearman(loglik, title length) | picks the "
        "shortest title | picks a named item | Spearman(loglik, popularity) | picks the most popular | targets in "
        "the list | target's mean rank: expert / retriever | fused success: alpha 0 (top-1) / alpha 1 (expert) / "
        "best alpha on this split (an upper bound) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['examples']} | {r['k']} | {r['agree_with_top1']:.3f} | {r['mean_position']:.1f} | "
            f"{r['spearman_loglik_vs_title_length']:.2f} | {r['picks_shortest_title']:.3f} | "
            f"{r['picks_named_item']:.3f} | {r['spearman_loglik_vs_popularity']:.2f} | "
            f"{r['picks_most_popular']:.3f} | {r['targets_in_candidates']} | "
            + (f"{r['target_rank_expert']:.1f} / {r['target_rank_retriever']:.1f} |"
               if r["targets_in_candidates"] else "- |")
            + f" {r['fused_success_by_alpha'][0.0]:.3f} / {r['fused_success_by_alpha'][1.0]:.3f} / "
              f"{r['fused_success_by_alpha'][r['best_alpha_on_split']]:.3f} (alpha {r['best_alpha_on_split']}) |"
        )
    if pairs:
        lines += ["", "| run A | run B | examples with the same candidates | Spearman of their log-likelihoods | same "
                  "first choice | success of B calibrated by A (argmax B - A) |", "|---|---|---:|---:|---:|---:|"]
        for p in pairs:
            rho = "-" if p["spearman"] is None else f"{p['spearman']:.2f}"
            same = "-" if p["same_first_choice"] is None else f"{p['same_first_choice']:.3f}"
            cal = "-" if p["calibrated_success"] is None else f"{p['calibrated_success']:.3f}"
            lines.append(f"| {p['a']} | {p['b']} | {p['examples']} | {rho} | {same} | {cal} |")
    with atomic_open(args.out) as f:
        f.write("\n".join(lines) + "\n")
    with atomic_open(args.out.with_suffix(".json")) as f:
        json.dump({"command": command, "rows": rows, "pairs": pairs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
