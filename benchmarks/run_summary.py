"""Split sizes and stage wall times of trained runs: the README's Data table and its end-to-end time, from the runs.

Per `--runs name=run_dir` it reads the data stage's `stats.json` (dialogues, examples, targets and novel targets per
split) and the `started`/`finished` times of every complete stage's manifest, and writes one markdown page (and the
JSON next to it). The stage times are wall time of each stage as it ran, so they include whatever else the machine
was doing; the page says how loaded it was when it was written, not while the stages ran.

Usage:
    .venv/bin/python benchmarks/run_summary.py --runs redial=runs/redial inspired=runs/inspired \\
        --out docs/results/run_summary.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from reges.io import RunDir, machine_info, now_iso
from reges.pipeline import PIPELINE

SPLITS = ("train", "tune", "dev", "test")
COUNTS = ("dialogues", "examples", "targets", "novel_targets")


def stage_minutes(run_dir: RunDir) -> dict[str, float]:
    """Stage name -> minutes from its manifest's started to finished, for every complete stage, in pipeline order."""
    out = {}
    for stage in PIPELINE:
        if not run_dir.is_complete(stage.name):
            continue
        manifest = run_dir.manifest(stage.name)
        seconds = (dt.datetime.fromisoformat(manifest["finished"]) - dt.datetime.fromisoformat(manifest["started"]))
        out[stage.name] = round(seconds.total_seconds() / 60, 2)
    return out


def summarize_run(path: Path) -> dict[str, Any]:
    run_dir = RunDir(path)
    stats = json.loads((run_dir.require("data") / "stats.json").read_text(encoding="utf-8"))
    splits = {s: {k: stats["splits"][s][k] for k in COUNTS} for s in SPLITS if s in stats["splits"]}
    minutes = stage_minutes(run_dir)
    return {"run_dir": str(path), "splits": splits, "stage_minutes": minutes,
            "total_minutes": round(sum(minutes.values()), 1)}


def render(runs: dict[str, dict[str, Any]], command: str) -> str:
    m = machine_info()
    lines = [
        "# Trained runs: split sizes and stage times",
        "",
        f"Written {now_iso()} on {m['cpu_model']} ({m['cores']} logical cores), load average {m['load_average']} "
        "when written. Stage times are each stage's wall time (manifest started -> finished) as it ran.",
        "",
        "```",
        command,
        "```",
        "",
        "| split | dialogues | examples | targets | novel targets |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        for split, c in r["splits"].items():
            lines.append(f"| {name} {split} | " + " | ".join(f"{c[k]:,}" for k in COUNTS) + " |")
    names = list(runs)
    stages = [st.name for st in PIPELINE if any(st.name in r["stage_minutes"] for r in runs.values())]
    lines += ["", "| stage (minutes) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage in stages:
        cells = [f"{runs[n]['stage_minutes'][stage]:.1f}" if stage in runs[n]["stage_minutes"] else "-" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"**{runs[n]['total_minutes']:.1f}**" for n in names)
    lines.append(f"| **total of the stages** | {totals} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="markdown page; the JSON goes next to it (.json)")
    args = parser.parse_args(argv)
    pairs = [spec.partition("=") for spec in args.runs]
    if any(not name or not sep or not path for name, sep, path in pairs):
        parser.error(f"--runs takes name=run_dir pairs, got {args.runs}")
    runs = {name: summarize_run(Path(path)) for name, _, path in pairs}
    command = shlex.join([".venv/bin/python", "benchmarks/run_summary.py", *(sys.argv[1:] if argv is None else argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(runs, command), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(render(runs, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
