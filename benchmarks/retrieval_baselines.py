"""Baseline table: run the pipeline up to `evaluate` for each dataset, then print recall tables.

Each `--run CONFIG RUN_DIR` pair runs `reges data|catalog|index|retrieve|evaluate` (complete stages are
skipped, as `reges all` does) and reads `RUN_DIR/evaluate/metrics.json`.

Usage:
    .venv/bin/python benchmarks/retrieval_baselines.py \
        --run configs/redial.yaml runs/redial --run configs/inspired.yaml runs/inspired --split dev

Prints one markdown table per dataset and protocol, plus the stage timings from the manifests; `--out FILE` also
writes them to FILE (a generated page, quoted by docs/results/retrieval.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reges.cli import main as reges_main
from reges.io import RunDir

STAGES = ("data", "catalog", "index", "retrieve", "evaluate")


def run_pipeline(config: Path, run_dir: Path) -> None:
    """Run every stage up to evaluate, skipping complete ones; stop on the first failure."""
    rd = RunDir(run_dir)
    for stage in STAGES:
        if rd.is_complete(stage):
            continue
        status = reges_main([stage, "--config", str(config), "--run-dir", str(run_dir), "run.show_progress=false"])
        if status != 0:
            raise SystemExit(f"reges {stage} failed with status {status}")


def render(run_dir: Path, split: str) -> str:
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    cutoffs = metrics["cutoffs"]
    primary = metrics["primary_metric"]
    methods = metrics["splits"][split]
    lines = []
    for protocol in metrics["protocols"]:
        first = next(iter(methods.values()))[protocol]
        lines += [
            f"**{run_dir.name}, {split}, protocol {protocol}**: {first['n_examples']} examples, "
            f"{first['n_targets']} targets, {first['n_dialogues']} dialogues, {first['missing_targets']} targets "
            f"missing from the {metrics['catalog_size']}-item catalog",
            "",
            "| method | " + " | ".join(f"R@{k}" for k in cutoffs) + f" | {primary} 95% CI |",
            "|---|" + "---:|" * len(cutoffs) + "---|",
        ]
        for method, by_protocol in methods.items():
            m = by_protocol[protocol]
            cells = " | ".join(f"{m[f'recall@{k}']['mean']:.3f}" for k in cutoffs)
            ci = m[primary]
            lines.append(f"| {method} | {cells} | [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] |")
        lines.append("")
    timings = []
    for stage in STAGES:
        manifest = RunDir(run_dir).manifest(stage)
        timings.append(f"{stage} {manifest['started'][11:19]}-{manifest['finished'][11:19]}")
    seconds = {m: d["seconds"] for m, d in metrics["details"][split].items()}
    lines += [
        "Stage wall clock (UTC): " + ", ".join(timings),
        "",
        "Evaluation seconds per method: " + ", ".join(f"{m} {s:.1f}" for m, s in seconds.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, action="append", metavar=("CONFIG", "RUN_DIR"), required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--no-run", action="store_true", help="only print tables from existing run dirs")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    tables = []
    for config, run_dir in args.run:
        if not args.no_run:
            run_pipeline(Path(config), Path(run_dir))
        tables.append(render(Path(run_dir), args.split))
        sys.stdout.write(tables[-1] + "\n")
    if args.out is not None:
        command = " ".join([".venv/bin/python", "benchmarks/retrieval_baselines.py", *sys.argv[1:]])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Retrieval baselines ({args.split})\n\n```\n{command}\n```\n\n" + "\n".join(tables),
                            encoding="utf-8")


if __name__ == "__main__":
    main()
