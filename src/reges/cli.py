"""The `reges` command line: one subcommand per stage, plus `all`.

Usage:
    reges <stage> --config configs/redial.yaml --run-dir runs/redial [section.key=value ...]
    reges all --config configs/inspired.yaml --run-dir runs/inspired
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

import yaml

from reges.config import PipelineConfig, config_to_dict, load_config
from reges.errors import RegesError
from reges.io import RunDir, atomic_open

logger = logging.getLogger("reges")

# The pipeline, in order: (stage name = CLI subcommand = run-dir folder, module whose `run(cfg, run_dir)` does it).
# Modules are imported only when their stage runs, so `reges --help` stays fast.
PIPELINE: list[tuple[str, str, str]] = [
    ("data", "reges.data.examples", "parse dataset files into dialogues and recommendation examples"),
    ("catalog", "reges.catalog", "build the item catalog with text cards"),
    ("index", "reges.retrieval.index", "embed item cards and build the FAISS index"),
    ("retrieve", "reges.retrieval.retrieve", "retrieve top-k candidates per example (TREC run)"),
    ("evaluate", "reges.eval.evaluate", "recall@k with CIs for the run and the baselines; report.md"),
]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (see configs/)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (one folder per stage)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. retrieve.top_k=20")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reges", description="ReGeS conversational recommendation, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, _, help_text in PIPELINE:
        _add_common(sub.add_parser(name, help=help_text))
    _add_common(sub.add_parser("all", help="run every stage in order, skipping complete ones"))
    return parser


def _write_config(cfg: PipelineConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / "config.yaml") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, allow_unicode=True)


def _run_stage(name: str, module: str, cfg: PipelineConfig, run_dir: RunDir) -> None:
    t0 = time.perf_counter()
    logger.info("stage %s: starting", name)
    importlib.import_module(module).run(cfg, run_dir)
    logger.info("stage %s: done in %.1f s", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reges` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = RunDir(args.run_dir)
        _write_config(cfg, run_dir.path)
        if args.command == "all":
            for name, module, _ in PIPELINE:
                if run_dir.is_complete(name) and not cfg.run.overwrite:
                    logger.info("stage %s: complete, skipped", name)
                    continue
                _run_stage(name, module, cfg, run_dir)
        else:
            module = dict((n, m) for n, m, _ in PIPELINE)[args.command]
            _run_stage(args.command, module, cfg, run_dir)
    except RegesError as e:
        print(f"reges: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reges: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
