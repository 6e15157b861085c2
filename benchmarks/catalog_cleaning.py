"""Catalog cleaning, measured: what it folds and drops, and what it changes for the evaluation examples.

For each `--run CONFIG RUN_DIR` pair: runs `reges data` when it is not complete, assembles the catalog twice in
memory (`reges.catalog.build_catalog` with clean=False and clean=True; nothing is written to the run), and counts
- the cleaning itself: items folded, groups, contested cards, cards dropped and the rule that decided each owner;
- per split: examples and (example, target) pairs under the four evaluate protocols (all, novel, full, fresh), with
  the dataset's ids and with ids mapped through the cleaned catalog's aliases, and the pairs whose target id was
  folded;
- on `--split`: the two model-free baselines (copy, popularity) on both catalogs, R@1/10/50 per protocol.

Usage:
    .venv/bin/python benchmarks/catalog_cleaning.py --run configs/redial.yaml runs/cc-redial \
        --run configs/inspired.yaml runs/cc-inspired --split dev --out docs/results/catalog_cleaning

Writes OUT.json (every number) and OUT.md (the tables of docs/results/catalog_cleaning.md's measured part).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any

from reges.catalog import alias_map, build_catalog, canonical_dialogue, canonical_example
from reges.cli import main as reges_main
from reges.config import load_config
from reges.eval.baselines import copy_ranking
from reges.eval.evaluate import rankings_to_pairs
from reges.eval.metrics import EVAL_PROTOCOLS, summarize
from reges.io import RunDir
from reges.records import Item, RecExample
from reges.retrieval.retrieve import item_popularity, popularity_ranking, read_dialogues, read_examples

CUTOFFS = (1, 10, 50)
SPLITS = ("train", "tune", "dev")


def protocol_counts(examples: list[RecExample], catalog_ids: frozenset[str]) -> dict[str, dict[str, object]]:
    """Examples and pairs per protocol (the ranking does not matter for counts)."""
    pairs = rankings_to_pairs(examples, {}, catalog_ids)
    out = {}
    for protocol in EVAL_PROTOCOLS:
        m = summarize(pairs, protocol, [1], 0, 0)
        out[protocol] = {k: m[f"n_{k}"] for k in ("examples", "targets")} | {"missing": m["missing_targets"]}
    return out


def baselines(items: list[Item], examples: list[RecExample], train_dialogues: list, seed: int) -> dict[str, Any]:
    """copy and popularity recall per protocol on one catalog (examples already mapped to its ids)."""
    catalog_ids = frozenset(it.item_id for it in items)
    popular = popularity_ranking(item_popularity(train_dialogues), sorted(catalog_ids), seed)[: max(CUTOFFS)]
    rankings = {
        "copy": {ex.example_id: copy_ranking(ex.context, catalog_ids) for ex in examples},
        "popularity": {ex.example_id: popular for ex in examples},
    }
    out: dict[str, Any] = {}
    for method, ranking in rankings.items():
        pairs = rankings_to_pairs(examples, ranking, catalog_ids)
        out[method] = {}
        for protocol in EVAL_PROTOCOLS:
            m = summarize(pairs, protocol, CUTOFFS, 0, 0)
            out[method][protocol] = {f"recall@{k}": m[f"recall@{k}"]["mean"] for k in CUTOFFS}
    return out


def measure(config: Path, run_path: Path, split: str) -> dict[str, Any]:
    rd = RunDir(run_path)
    if not rd.is_complete("data"):
        status = reges_main(["data", "--config", str(config), "--run-dir", str(run_path), "run.show_progress=false"])
        if status != 0:
            raise SystemExit(f"reges data failed with status {status}")
    cfg = load_config(config, ["run.show_progress=false"])
    raw_items, raw_stats, _, _ = build_catalog(cfg, rd, clean=False)
    items, stats, _, audit = build_catalog(cfg, rd, clean=True)
    aliases = alias_map(items)
    data_dir = rd.stage_dir("data")
    # No "cleaning" stats where nothing was cleaned: custom catalogs never are (configs/tiny.yaml, the smoke run).
    cleaning = stats.get("cleaning")
    result: dict[str, Any] = {
        "config": str(config),
        "catalog": {"items_raw": raw_stats["items"], "items_clean": stats["items"], "cleaned": cleaning is not None,
                    **(cleaning or {}),
                    "shared_titles_raw": raw_stats["shared_titles"], "shared_titles_clean": stats["shared_titles"]},
        "splits": {},
    }
    raw_ids = frozenset(it.item_id for it in raw_items)
    clean_ids = frozenset(it.item_id for it in items)
    for name in SPLITS:
        path = data_dir / f"{name}.jsonl"
        if not path.is_file():
            continue
        examples = read_examples(path)
        mapped = [canonical_example(ex, aliases) for ex in examples]
        dialogues = read_dialogues(data_dir / f"{name}_dialogues.jsonl")
        result["splits"][name] = {
            "dialogues": len(dialogues),
            "raw": protocol_counts(examples, raw_ids),
            "clean": protocol_counts(mapped, clean_ids),
            "aliased_targets": sum(t in aliases for ex in examples for t in ex.target_item_ids),
            "aliased_mentions": sum(i in aliases for d in dialogues for t in d.turns for i in t.item_ids),
        }
    train = read_dialogues(data_dir / "train_dialogues.jsonl")
    examples = read_examples(data_dir / f"{split}.jsonl")
    result["baselines"] = {
        "raw": baselines(raw_items, examples, train, cfg.run.seed),
        "clean": baselines(items, [canonical_example(ex, aliases) for ex in examples],
                           [canonical_dialogue(d, aliases) for d in train], cfg.run.seed),
    }
    result["cards"] = [r for r in audit if r["kind"] == "card"]
    return result


def render(results: dict[str, Any], split: str, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}, {date.today().isoformat()}.", ""]
    lines += ["| catalog | items before | items after | folded items | groups | contested cards | cards dropped | "
              "owner decided by careers / distinct title / mentions / undecided |", "|---|" + "---:|" * 7]
    for name, r in results.items():
        c = r["catalog"]
        if not c["cleaned"]:
            lines.append(f"| {name} | {c['items_raw']:,} | {c['items_clean']:,} | not cleaned | - | - | - | - |")
            continue
        rules = c["card_owner_rules"]
        lines.append(
            f"| {name} | {c['items_before']:,} | {c['items_after']:,} | {c['folded_items']} | {c['fold_groups']} | "
            f"{c['contested_cards']} | {c['cards_dropped']} | {rules.get('careers', 0)} / "
            f"{rules.get('distinct_title', 0)} / {rules.get('mentions', 0)} / {rules.get('undecided', 0)} |"
        )
    lines += ["", "Examples (pairs) per protocol, dataset ids -> ids mapped through the cleaned catalog:", "",
              "| split | dialogues | all | novel | full | fresh | targets on folded ids | mentions of folded ids |",
              "|---|" + "---:|" * 7]
    for name, r in results.items():
        for split_name, s in r["splits"].items():
            cells = []
            for p in EVAL_PROTOCOLS:
                a, b = s["raw"][p], s["clean"][p]
                cell = f"{a['examples']:,} ({a['targets']:,})"
                if (a["examples"], a["targets"]) != (b["examples"], b["targets"]):
                    cell += f" -> {b['examples']:,} ({b['targets']:,})"
                cells.append(cell)
            lines.append(f"| {name} {split_name} | {s['dialogues']:,} | " + " | ".join(cells)
                         + f" | {s['aliased_targets']} | {s['aliased_mentions']} |")
    lines += ["", f"Model-free baselines on {split}, full catalog, uncleaned -> cleaned:", "",
              "| dataset | method | " + " | ".join(f"{p} R@1 / R@10 / R@50" for p in EVAL_PROTOCOLS) + " |",
              "|---|---|" + "---|" * len(EVAL_PROTOCOLS)]
    for name, r in results.items():
        for method in ("copy", "popularity"):
            cells = []
            for p in EVAL_PROTOCOLS:
                raw = r["baselines"]["raw"][method][p]
                clean = r["baselines"]["clean"][method][p]
                cells.append(" / ".join(
                    f"{raw[f'recall@{k}']:.3f}" + (f"->{clean[f'recall@{k}']:.3f}"
                                                   if abs(clean[f"recall@{k}"] - raw[f"recall@{k}"]) >= 5e-4 else "")
                    for k in CUTOFFS))
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, action="append", metavar=("CONFIG", "RUN_DIR"), required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    results = {Path(run_dir).name: measure(Path(config), Path(run_dir), args.split) for config, run_dir in args.run}
    command = "python benchmarks/catalog_cleaning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, ensure_ascii=False) + "\n"
    args.out.with_suffix(".json").write_text(text, encoding="utf-8")
    args.out.with_suffix(".md").write_text(render(results, args.split, command), encoding="utf-8")
    sys.stdout.write(render(results, args.split, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
