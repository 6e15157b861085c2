"""Benchmark the Item Generation Expert on one split of a run dir: success, hallucination, re-ranking, latency.

Given a run dir with `retrieve/` (and, for the tuned rows, a complete `train-item/`), it measures on a seeded slice
of a split, for each candidate-list size k and each decoding mode (free, constrained, rank), untuned (base model)
and tuned (the trained adapter):
- success rate of the pick, protocols all and novel, and success given a target is among the k candidates;
- the retriever's own top-1 on the same examples (its success rate);
- hallucination (free mode: the answer matches no candidate) and catalog misses (matches no catalog item);
- rank mode: the pick and list of `reges generate`, i.e. the expert's log-likelihood fused with the retriever's
  score, alpha tuned on a seeded slice of the tune split for the same variant and k (`--tune-examples`), and the
  expert alone (alpha 1);
- Recall@{1,5,10} of the rank-mode list next to the retriever's order over the same k candidates;
- prompt tokens (p50/p95/max) and model latency per turn (p50/p95; `--batch-size 1` makes it a true per-turn
  latency).
Prompts are built exactly as `reges generate` builds them (the `mine.*` prompt settings and rewrite queries of the
run's config.yaml). It writes a markdown table and the JSON of every number.

Command (1 thread, 50 ReDial dev examples, untuned only, k = 20):
    .venv/bin/python benchmarks/item_expert.py --run-dir runs/redial --split dev --max-examples 50 --top-k 20 \\
        --variants untuned --threads 1 --out docs/results/item_expert_redial.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reges.catalog import read_catalog
from reges.config import PipelineConfig, load_config
from reges.eval.metrics import PROTOCOLS, PickOutcome, recall_key, summarize, summarize_picks, target_ranks
from reges.io import RunDir
from reges.item_expert.generate import (
    MODES,
    adapter_path,
    build_prompts,
    expert_choice,
    load_split_inputs,
    match_candidate,
    pick_items,
    pick_rows,
    resolve_query_file,
    tune_alpha,
)
from reges.item_expert.mining import load_tokenizer, prompt_token_counts, token_stats
from reges.item_expert.prompts import PromptFormat, candidate_titles
from reges.llm import load_llm
from reges.titles import TitleMatcher

logger = logging.getLogger("item_expert_benchmark")

RECALL_CUTOFFS = (1, 5, 10)


def outcomes(si: Any, rows: list[dict[str, Any]], retriever: bool, alone: bool = False) -> list[PickOutcome]:
    """PickOutcomes of the expert's rows, of the retriever's first candidate (retriever=True), or of the expert's
    own first choice before fusion (alone=True, rank rows)."""
    by_id = {ex.example_id: ex for ex in si.examples}
    out = []
    for r in rows:
        ex = by_id[r["example_id"]]
        if retriever:
            item_id = r["candidate_ids"][0]
        elif alone:
            item_id = expert_choice(r)
        else:
            item_id = r["item_id"]
        exact = retriever or alone
        out.append(
            PickOutcome(
                ex.example_id, ex.dialogue_id, item_id, True if exact else r["in_candidates"],
                True if exact else r["in_catalog"], tuple(ex.target_item_ids), tuple(ex.target_mentioned),
                tuple(r["candidate_ids"]),
            )
        )
    return out


def rank_recall(si: Any, rows: list[dict[str, Any]], catalog_ids: frozenset[str], top_k: int) -> dict[str, Any]:
    """Recall@{1,5,10} (<= top_k) of the rank list and of the retriever's order over the same candidates."""
    by_id = {ex.example_id: ex for ex in si.examples}
    cutoffs = [k for k in RECALL_CUTOFFS if k <= top_k]
    result: dict[str, Any] = {}
    for name, key in (("retriever", "candidate_ids"), ("rank", "ranking")):
        pairs = []
        for r in rows:
            ex = by_id[r["example_id"]]
            ids = r[key] if key == "candidate_ids" else [i for i, _ in r[key]]
            pairs += target_ranks(ex.example_id, ex.dialogue_id, ex.target_item_ids, ex.target_mentioned, ids,
                                  catalog_ids)
        result[name] = {}
        for p in PROTOCOLS:
            summary = summarize(pairs, p, cutoffs, 0, 0)
            result[name][p] = {recall_key(k): summary[recall_key(k)]["mean"] for k in cutoffs}
            result[name][p]["n_targets"] = summary["n_targets"]
    return result


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """Means only (the CIs stay in the JSON of the `evaluate` stage; slices are too small for them)."""
    return {
        k: (v["mean"] if isinstance(v, dict) else v)
        for k, v in summary.items()
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = RunDir(args.run_dir)
    cfg: PipelineConfig = load_config(run_dir.path / "config.yaml", args.override)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=args.threads))
    torch.set_num_threads(args.threads)  # this script is the process's entry point, as the CLI is for `reges`
    fmt = PromptFormat.from_config(cfg.mine)
    items_list = read_catalog(run_dir.require("catalog") / "items.jsonl")
    items = {it.item_id: it for it in items_list}
    catalog_ids = frozenset(items)
    matcher = TitleMatcher([(it.item_id, it.title) for it in items_list], cfg.catalog.fuzzy_threshold)
    variants = args.variants

    def query_file(variant: str, split: str) -> Path | None:
        """The queries the prompts show: the tuned expert sees them only if it was trained on them (as generate)."""
        use = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, use_adapter=variant == "tuned"))
        return resolve_query_file(use, run_dir, split)

    qfiles = {v: query_file(v, args.split) for v in variants}
    if "tuned" in variants and not run_dir.is_complete("train-item"):
        raise SystemExit(f"{run_dir.path}/train-item is not complete; run train-item or pass --variants untuned")
    results: dict[str, Any] = {"runs": [], "retriever_top1": {}, "prompt_tokens": {}}
    tokenizer = load_tokenizer(cfg)
    for variant in variants:
        adapter = adapter_path(cfg, run_dir) if variant == "tuned" else None
        t0 = time.perf_counter()
        llm = load_llm(cfg.llm, adapter=adapter, seed=cfg.run.seed)
        logger.info("%s model loaded in %.1f s", variant, time.perf_counter() - t0)
        for top_k in args.top_k:
            si = load_split_inputs(run_dir, args.split, items, top_k, qfiles[variant], args.max_examples,
                                   cfg.run.seed)
            prompts, titles = build_prompts(si, fmt)
            if str(top_k) not in results["prompt_tokens"]:
                rows_for_tokens = [{"prompt": p} for p in prompts]
                results["prompt_tokens"][str(top_k)] = token_stats(prompt_token_counts(rows_for_tokens, tokenizer))
            for mode in args.modes:
                alpha, alpha_table = 1.0, None
                if mode == "rank":  # tune the fusion alpha on the tune slice, as `reges generate` does
                    tune_si = load_split_inputs(run_dir, args.tune_split, items, top_k,
                                                query_file(variant, args.tune_split),
                                                args.tune_examples, cfg.run.seed)
                    tune_prompts, tune_titles = build_prompts(tune_si, fmt)
                    tune_picks = pick_items(llm, tune_prompts, tune_titles, "rank",
                                            length_normalized=cfg.generate.length_normalized)
                    alpha, alpha_table = tune_alpha(tune_si, tune_picks)
                    logger.info("%s k=%d: fusion alpha %.2f tuned on %d %s examples", variant, top_k, alpha,
                                len(tune_picks), args.tune_split)
                t0 = time.perf_counter()
                picks = pick_items(llm, prompts, titles, mode, cfg.generate.max_new_tokens, args.batch_size,
                                   cfg.generate.length_normalized, False)
                wall = time.perf_counter() - t0
                rows = pick_rows(si, picks, mode, matcher if mode == "free" else None, alpha)
                if str(top_k) not in results["retriever_top1"]:
                    results["retriever_top1"][str(top_k)] = {
                        p: brief(summarize_picks(outcomes(si, rows, True), p, 0, 0)) for p in PROTOCOLS
                    }
                lat = np.asarray([r["latency_s"] for r in rows])
                first = sum(r["item_id"] == r["candidate_ids"][0] for r in rows) / max(len(rows), 1)
                entry = {
                    "variant": variant,
                    "top_k": top_k,
                    "mode": mode,
                    "examples": len(rows),
                    "metrics": {p: brief(summarize_picks(outcomes(si, rows, False), p, 0, 0)) for p in PROTOCOLS},
                    "latency_s": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
                    "wall_s": round(wall, 1),
                    "share_first_candidate": round(first, 3),
                    "free_answers": [r["text"] for r in rows[:5]] if mode == "free" else [],
                }
                if mode == "free":  # the same answers matched with the year required to agree
                    entry["strict_year_hallucinations"] = sum(
                        match_candidate(r["text"], candidate_titles(si.candidates[r["example_id"]]),
                                        ignore_year=False) is None
                        for r in rows
                    )
                if mode == "rank":
                    entry["recall"] = rank_recall(si, rows, catalog_ids, top_k)
                    entry["fusion_alpha"] = alpha
                    entry["fusion_tuning"] = alpha_table
                    entry["alone"] = {p: brief(summarize_picks(outcomes(si, rows, False, True), p, 0, 0))
                                      for p in PROTOCOLS}
                results["runs"].append(entry)
                m = entry["metrics"]["all"]
                logger.info(
                    "%s k=%d %s: success %.3f (novel %.3f), hallucination %.3f, latency p50 %.2f s",
                    variant, top_k, mode, m["success_rate"], entry["metrics"]["novel"]["success_rate"],
                    m["hallucination_rate"], entry["latency_s"]["p50"],
                )
    results["setup"] = {
        "run_dir": str(run_dir.path),
        "split": args.split,
        "max_examples": args.max_examples,
        "tune_split": args.tune_split,
        "tune_examples": args.tune_examples,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "model": cfg.llm.model,
        "backend": cfg.llm.backend,
        "dtype": cfg.llm.dtype,
        "query_file": ", ".join(f"{v}: {q or 'none'}" for v, q in qfiles.items()),
        "prompt_format": fmt.to_dict(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "date": dt.date.today().isoformat(),
    }
    return results


def _f(x: float) -> str:
    return f"{x:.3f}"


def render(results: dict[str, Any], command: str) -> str:
    s = results["setup"]
    lines = [
        f"# Item Expert benchmark: {s['run_dir']} / {s['split']}",
        "",
        f"{s['date']}, {s['machine']}, {s['threads']} thread(s), batch {s['batch_size']}, model {s['model']} "
        f"(backend {s['backend']}, dtype {s['dtype']}); {s['max_examples'] or 'all'} examples (seeded slice); "
        f"query: {s['query_file'] or 'none'}; prompt format {s['prompt_format']}.",
        "",
        f"Command: `{command}`",
        "",
        "## Prompt tokens (chat template included)",
        "",
        "| k | p50 | p95 | max |",
        "|---:|---:|---:|---:|",
    ]
    for k, t in results["prompt_tokens"].items():
        lines.append(f"| {k} | {t['p50']} | {t['p95']} | {t['max']} |")
    lines += [
        "",
        "## Picks",
        "",
        "Success: the pick is a target (novel: a not-yet-mentioned target). *|shown*: over examples with a target "
        "among the k candidates. Hallucination: the answer matches no candidate; catalog miss: no catalog item.",
        "",
        "| variant | k | mode | success all | success novel | all \\|shown (n) | novel \\|shown (n) | hallucination | "
        "catalog miss | picks 1st candidate | latency p50 s | p95 s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, top1 in results["retriever_top1"].items():
        a, n = top1["all"], top1["novel"]
        lines.append(
            f"| retriever top-1 | {k} | - | {_f(a['success_rate'])} | {_f(n['success_rate'])} | "
            f"{_f(a['success_given_candidates'])} ({a['n_target_in_candidates']}) | "
            f"{_f(n['success_given_candidates'])} ({n['n_target_in_candidates']}) | 0 | 0 | 1.000 | - | - |"
        )
    for r in results["runs"]:
        a, n = r["metrics"]["all"], r["metrics"]["novel"]
        if r["mode"] == "rank":
            aa, an = r["alone"]["all"], r["alone"]["novel"]
            lines.append(
                f"| {r['variant']} | {r['top_k']} | rank, expert alone | {_f(aa['success_rate'])} | "
                f"{_f(an['success_rate'])} | {_f(aa['success_given_candidates'])} ({aa['n_target_in_candidates']}) | "
                f"{_f(an['success_given_candidates'])} ({an['n_target_in_candidates']}) | 0.000 | 0.000 | - | - | - |"
            )
        mode = f"rank, fused (alpha {r['fusion_alpha']:.2f})" if r["mode"] == "rank" else r["mode"]
        lines.append(
            f"| {r['variant']} | {r['top_k']} | {mode} | {_f(a['success_rate'])} | {_f(n['success_rate'])} | "
            f"{_f(a['success_given_candidates'])} ({a['n_target_in_candidates']}) | "
            f"{_f(n['success_given_candidates'])} ({n['n_target_in_candidates']}) | "
            f"{_f(a['hallucination_rate'])} | {_f(a['catalog_miss_rate'])} | {r['share_first_candidate']:.3f} | "
            f"{r['latency_s']['p50']:.2f} | {r['latency_s']['p95']:.2f} |"
        )
    ranked = [r for r in results["runs"] if r["mode"] == "rank"]
    if ranked:
        lines += [
            "",
            "## Recall@k of the rank list vs the retriever's order (same k candidates)",
            "",
            "| variant | k | list | protocol | targets | R@1 | R@5 | R@10 |",
            "|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in ranked:
            for name in ("retriever", "rank"):
                for p in PROTOCOLS:
                    rec = r["recall"][name][p]
                    cells = [_f(rec[recall_key(k)]) if recall_key(k) in rec else "-" for k in RECALL_CUTOFFS]
                    head = f"| {r['variant']} | {r['top_k']} | {name} | {p} | {rec['n_targets']} | "
                    lines.append(head + " | ".join(cells) + " |")
    free = [r for r in results["runs"] if r["mode"] == "free"]
    if free:
        lines += ["", "Free answers matching no candidate when the year must agree too (the table allows a listed "
                  "title with a wrong year when it is unambiguous; see `match_candidate`):", ""]
        lines += [f"- {r['variant']} k={r['top_k']}: {r.get('strict_year_hallucinations', '?')} of {r['examples']}"
                  for r in free]
        lines += ["", "## First free answers", ""]
        lines += [f"- {r['variant']} k={r['top_k']}: {r['free_answers']}" for r in free]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run dir with data, catalog, retrieve (and train-item)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--max-examples", type=int, default=50, help="seeded slice of the split (0: all)")
    parser.add_argument("--top-k", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--variants", nargs="+", default=["untuned", "tuned"], choices=["untuned", "tuned"])
    parser.add_argument("--tune-split", default="tune", help="rank mode: the split the fusion alpha is tuned on")
    parser.add_argument("--tune-examples", type=int, default=200, help="rank mode: seeded tune slice (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per model call (1: per-turn latency)")
    parser.add_argument("--override", nargs="*", default=[], help="section.key=value config overrides")
    parser.add_argument("--out", required=True, help="markdown file to write; the JSON goes next to it (.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    results = run_benchmark(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", *sys.argv])
    out.write_text(render(results, command), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    logger.info("wrote %s and %s", out, out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
