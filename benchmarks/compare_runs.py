"""Side by side: the retrieval of several runs on one split, with the paired difference to the first run.

Why paired: two variants of one pipeline rank the same examples, so most of the sampling noise is shared; the
95 % interval of the *difference* (clustered bootstrap over dialogues, the same resampled dialogues for both
runs) says whether a change beats the baseline, where two overlapping per-run intervals cannot.

Reads `evaluate/per_example.jsonl` of each run (method `retrieve` by default: the run's own retrieval) and scores
recall@k under protocols "all" and "novel" (`reges.eval.metrics`: a target counts at each of its examples; novel
leaves out targets already mentioned in the dialogue). With the default method it also scores the retriever's
top-1 **as served**: the first film of `retrieve/<split>.trec` that the dialogue has not named (nor another film of
a named title), as `reges recommend` picks without the Item Expert and as `reges evaluate` reports it
(`retriever_top1_unmentioned`); a hit when it is a target (all) or a target not named before (novel, on the
examples that have one).

Usage:
    .venv/bin/python benchmarks/compare_runs.py --split dev --runs "no cross=runs/inspired-nocross" \\
        "cross=runs/inspired-cross" --out docs/results/cross_dataset_inspired.md
Writes the markdown table to --out and the numbers to the same path with .json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reges.catalog import alias_map, canonical_example, read_catalog
from reges.eval.metrics import paired_bootstrap_diff, paired_cells
from reges.io import machine_info, now_iso, read_jsonl, read_trec, write_json
from reges.linking import TitleSpotter
from reges.records import Item, RecExample, mentioned_item_ids
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("compare_runs")

PROTOCOLS = ("all", "novel")
CUTOFFS = (1, 10, 50)


def read_ranks(run_dir: Path, split: str, method: str, aliases: Mapping[str, str] | None = None
               ) -> dict[str, tuple[str, list[tuple[int | None, bool]]]]:
    """example id -> (dialogue id, [(rank or None, mentioned) per target]) of one method on one split.

    With `aliases` (a cleaned catalog's folded id -> kept id, `reges.catalog.alias_map`) the targets are those of
    `canonical_example` on the run's data, one per film (mentioned when the mapped context names it), each at the
    best rank per_example.jsonl holds for the film's target ids (it holds a rank only for the dataset's own target
    ids, not for another id of the same film the run may have ranked higher): a run over the uncleaned catalog is
    then scored on the same targets as a run over the cleaned one, which `reges evaluate` canonicalizes this way.
    """
    path = run_dir / "evaluate" / "per_example.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found; run `reges evaluate` in {run_dir} first")
    rows = {row["example_id"]: row for row in read_jsonl(path) if row["split"] == split and row["method"] == method}
    if not rows:
        raise SystemExit(f"{path} has no rows for split {split!r} and method {method!r}")
    if not aliases:
        return {ex: (row["dialogue_id"], [(t["rank"], bool(t["mentioned"])) for t in row["targets"]])
                for ex, row in rows.items()}
    examples = {ex.example_id: canonical_example(ex, aliases)
                for ex in read_examples(run_dir / "data" / f"{split}.jsonl")}
    out = {}
    for example_id, row in rows.items():
        best: dict[str, int | None] = {}
        for t in row["targets"]:
            film, rank = aliases.get(t["item_id"], t["item_id"]), t["rank"]
            known = best.get(film)
            best[film] = rank if known is None else known if rank is None else min(known, rank)
        ex = examples[example_id]
        out[example_id] = (row["dialogue_id"], [(best.get(t), m) for t, m in
                                                zip(ex.target_item_ids, ex.target_mentioned, strict=True)])
    return out


def compose(own: Mapping[str, str], shared: Mapping[str, str]) -> dict[str, str]:
    """A run's own folded id -> kept id map followed by the shared one (`--aliases-from`), so that every id ends
    at the shared catalog's film even where the run's own cleaning kept another id of it."""
    out = {i: shared.get(k, k) for i, k in own.items()}
    out.update({i: k for i, k in shared.items() if i not in out})
    return {i: k for i, k in out.items() if i != k}


def run_aliases(run_dir: Path) -> dict[str, str]:
    """The folded id -> kept id map of a run's catalog (empty when it was not cleaned or the run has none)."""
    path = run_dir / "catalog" / "items.jsonl"
    return alias_map(read_catalog(path)) if path.is_file() else {}


def hits_by_dialogue(ranks: dict[str, tuple[str, list[tuple[int | None, bool]]]], example_ids: list[str],
                     protocol: str, k: int) -> dict[str, list[float]]:
    """dialogue id -> hit flags (1.0/0.0) of the protocol's targets, examples in `example_ids` order."""
    out: dict[str, list[float]] = defaultdict(list)
    for ex in example_ids:
        dialogue, targets = ranks[ex]
        for rank, mentioned in targets:
            if protocol == "novel" and mentioned:
                continue
            out[dialogue].append(float(rank is not None and rank <= k))
    return out


def served_hits(run_dir: Path, split: str, example_ids: list[str], protocol: str,
                aliases: Mapping[str, str] | None = None) -> dict[str, list[float]]:
    """dialogue id -> hit flags of the as-served top-1 (module docstring), examples in `example_ids` order; with
    `aliases`, targets, named films and the pick are compared as films (`read_ranks`)."""
    aliases = aliases or {}
    examples = {ex["example_id"]: canonical_example(RecExample.from_dict(ex), aliases)
                for ex in read_jsonl(run_dir / "data" / f"{split}.jsonl")}
    spotter = TitleSpotter([Item.from_dict(it) for it in read_jsonl(run_dir / "catalog" / "items.jsonl")])
    trec = read_trec(run_dir / "retrieve" / f"{split}.trec")
    out: dict[str, list[float]] = defaultdict(list)
    for example_id in example_ids:
        ex = examples[example_id]
        targets = set(ex.novel_target_ids() if protocol == "novel" else ex.target_item_ids)
        if not targets:
            continue
        named = {aliases.get(i, i) for i in spotter.same_title_ids(mentioned_item_ids(ex.context))}
        films = (aliases.get(h.item_id, h.item_id) for h in trec.get(example_id, []))
        pick = next((film for film in films if film not in named), None)
        out[ex.dialogue_id].append(float(pick in targets))
    return out


def compare(runs: list[tuple[str, Path]], split: str, method: str, samples: int, seed: int,
            aliases_from: Path | None = None) -> dict[str, Any]:
    """Per run, protocol and cutoff: recall and the paired difference to the first run (and, for the run's own
    retrieval, the as-served top-1). `aliases_from`: a run whose cleaned catalog's aliases map every run's ids to
    films (`read_ranks`), for runs over catalogs cleaned differently."""
    shared_aliases = run_aliases(aliases_from) if aliases_from is not None else {}
    aliases = {name: compose(run_aliases(path), shared_aliases) for name, path in runs}
    ranks = {name: read_ranks(path, split, method, aliases[name]) for name, path in runs}
    base_name = runs[0][0]
    shared = sorted(set.intersection(*(set(r) for r in ranks.values())))
    if len(shared) < len(ranks[base_name]):
        logger.warning("only %d of %d examples are in every run; comparing those", len(shared), len(ranks[base_name]))
    table: dict[str, Any] = {}
    served = method == "retrieve" and all(
        (p / "retrieve" / f"{split}.trec").is_file() and (p / "data" / f"{split}.jsonl").is_file() for _, p in runs)
    # each run's files are read once per protocol, not again for every run compared with the base
    served_by_run = {(name, protocol): served_hits(path, split, shared, protocol, aliases[name])
                     for name, path in runs for protocol in PROTOCOLS} if served else {}
    for name, _ in runs:
        table[name] = {}
        for protocol in PROTOCOLS:
            for k in CUTOFFS:
                a = hits_by_dialogue(ranks[base_name], shared, protocol, k)
                b = hits_by_dialogue(ranks[name], shared, protocol, k)
                _, mean_b, diff, low, high = paired_bootstrap_diff(a, b, samples, seed)
                table[name][f"{protocol}/recall@{k}"] = {"mean": round(mean_b, 4), "diff": round(diff, 4),
                                                          "diff_ci": [round(low, 4), round(high, 4)]}
            if served:
                a, b = served_by_run[(base_name, protocol)], served_by_run[(name, protocol)]
                _, mean_b, diff, low, high = paired_bootstrap_diff(a, b, samples, seed)
                table[name][f"{protocol}/served@1"] = {"mean": round(mean_b, 4), "diff": round(diff, 4),
                                                       "diff_ci": [round(low, 4), round(high, 4)]}
    return {"split": split, "method": method, "examples": len(shared), "baseline": base_name, "table": table,
            "aliases_from": str(aliases_from) if aliases_from is not None else None}


def to_markdown(result: dict[str, Any], runs: list[tuple[str, Path]], command: str) -> str:
    m = machine_info()
    machine = f"{m['cpu_model']}, {m['cores']} cores, load {m['load_average'][0]}"
    cols = [f"{p}/recall@{k}" for p in PROTOCOLS for k in CUTOFFS]
    cols += [c for c in (f"{p}/served@1" for p in PROTOCOLS) if c in result["table"][result["baseline"]]]
    lines = [
        f"# Retrieval side by side ({result['split']}, {result['examples']} examples)",
        "",
        f"Generated by `{command}` on {now_iso()} ({machine}).",
        "",
        f"Each cell: recall, then the paired difference to **{result['baseline']}** with its 95 % interval "
        "(clustered bootstrap over dialogues); served@1: the as-served top-1's success (the first film the dialogue "
        "has not named). Runs: " + ", ".join(f"{n} = `{p}`" for n, p in runs) + ".",
        "",
        "| run | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, _ in runs:
        cells = paired_cells(result["table"], name, result["baseline"], cols)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_runs(specs: list[str]) -> list[tuple[str, Path]]:
    runs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--runs takes name=run_dir, got {spec!r}")
        runs.append((name, Path(path)))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="name=run_dir; the first is the baseline")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--method", default="retrieve", help="method of evaluate/per_example.jsonl")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aliases-from", type=Path, default=None,
                        help="a run over a cleaned catalog (catalog.clean=true): score every run on its films")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs = parse_runs(args.runs)
    if len(runs) < 2:
        raise SystemExit("--runs needs a baseline and at least one other run")
    result = compare(runs, args.split, args.method, args.bootstrap, args.seed, args.aliases_from)
    command = "python benchmarks/compare_runs.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(result, runs, command), encoding="utf-8")
    write_json(args.out.with_suffix(".json"), result)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
