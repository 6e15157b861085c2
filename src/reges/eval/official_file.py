"""Evaluate a trained run on a dataset file in its published format (ReDial `test_data.jsonl`, INSPIRED `test.tsv`).

    reges evaluate --config configs/redial.yaml --run-dir runs/redial --dataset-file .../test_data.jsonl

Why a child run directory and not new rows in the trained run: complete stages are never edited in place. The
evaluation gets its own run directory, `<run-dir>/eval-<file stem>/`, whose `data/` stage is rebuilt from the same
config plus the file as `data.test_files` (same train/tune/dev split, plus `test`), whose trained stages (catalog,
index, distill, train-query, train-retriever, mine, train-item) are symbolic links to the trained run's, and
whose inference stages (rewrite, retrieve, generate, evaluate) run on the `test` split only. The result is the
same `evaluate/metrics.json` and `report.md` as for dev, and the whole thing resumes like `reges all`.

Nothing here fits anything on the file: no stage it runs trains, and the links make the trained artifacts read-only
inputs (a stage that finds its folder complete skips it; these links always are).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from pathlib import Path

from reges.config import PipelineConfig
from reges.errors import ConfigError, StageNotReadyError
from reges.io import RunDir
from reges.titles import title_slug

logger = logging.getLogger(__name__)

# Stages whose outputs are trained (or built) once on train-side data and reused as they are.
TRAINED_STAGES: tuple[str, ...] = (
    "catalog", "index", "distill", "train-query", "train-retriever", "mine", "train-item",
)
# Stages run on the file's examples, in order.
INFERENCE_STAGES: tuple[tuple[str, str], ...] = (
    ("data", "reges.data.examples"),
    ("rewrite", "reges.query_expert.rewrite"),
    ("retrieve", "reges.retrieval.retrieve"),
    ("generate", "reges.item_expert.generate"),
    ("evaluate", "reges.eval.evaluate"),
)
# Without these the run is not a trained ReGeS run: the evaluation would silently measure something else.
REQUIRED_STAGES: tuple[str, ...] = ("catalog", "index", "train-retriever", "train-item")


def test_config(cfg: PipelineConfig, dataset_file: Path) -> PipelineConfig:
    """The trained run's config with `dataset_file` as the test split and every inference stage on `test` only.

    The lossy ReDial file only feeds train-time statistics (already in train-retriever), so it is not re-read.
    """
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, test_files=[str(dataset_file)], lossy_file=""),
        rewrite=dataclasses.replace(cfg.rewrite, splits=["test"]),
        retrieve=dataclasses.replace(cfg.retrieve, splits=["test"]),
        generate=dataclasses.replace(cfg.generate, splits=["test"]),
        evaluate=dataclasses.replace(cfg.evaluate, splits=["test"]),
    )


def child_run_dir(run_dir: RunDir, dataset_file: Path) -> RunDir:
    """`<run-dir>/eval-<slug of the file name>`: one evaluation folder per dataset file."""
    return RunDir(run_dir.path / f"eval-{title_slug(dataset_file.stem) or 'file'}")


def link_trained_stages(run_dir: RunDir, child: RunDir) -> list[str]:
    """Symlink every complete trained stage of `run_dir` into `child`; return the linked stage names.

    Raises:
        StageNotReadyError: a required trained stage (catalog, index, train-retriever, train-item) is incomplete.
    """
    for stage in REQUIRED_STAGES:
        if not run_dir.is_complete(stage):
            raise StageNotReadyError(
                f"{run_dir.stage_dir(stage)}/ has no manifest.json: {run_dir.path} is not a trained run; train it "
                f"first with `reges all --config <config> --run-dir {run_dir.path}`"
            )
    linked = []
    for stage in TRAINED_STAGES:
        if not run_dir.is_complete(stage):
            continue
        link = child.stage_dir(stage)
        target = run_dir.stage_dir(stage).resolve()
        if link.is_symlink() and link.resolve() == target:
            linked.append(stage)
            continue
        if link.exists() or link.is_symlink():
            raise ConfigError(f"{link} exists and is not a link to {target}; remove {child.path} and rerun")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        linked.append(stage)
    return linked


def evaluate_file(cfg: PipelineConfig, run_dir: RunDir, dataset_file: Path) -> Path:
    """Run the trained pipeline of `run_dir` on `dataset_file` and evaluate it; return the child run directory.

    Example:
        >>> evaluate_file(load_config("configs/redial.yaml"), RunDir("runs/redial"), Path(".../test_data.jsonl"))
        PosixPath('runs/redial/eval-test-data')  # evaluate/report.md inside
    """
    if not dataset_file.is_file():
        raise ConfigError(f"--dataset-file {dataset_file} not found; pass a {cfg.data.format} file in its published "
                          "format (ReDial test_data.jsonl, INSPIRED test.tsv)")
    child = child_run_dir(run_dir, dataset_file)
    tcfg = test_config(cfg, dataset_file)
    linked = link_trained_stages(run_dir, child)
    logger.info("evaluating %s with the trained stages of %s (%s) in %s", dataset_file, run_dir.path,
                ", ".join(linked), child.path)
    for stage, module in INFERENCE_STAGES:
        if stage == "rewrite" and "train-query" not in linked:
            continue  # a run without a Query Expert retrieves from the dialogue alone
        if child.is_complete(stage) and not cfg.run.overwrite:
            logger.info("stage %s: complete, skipped", stage)
            continue
        t0 = time.perf_counter()
        importlib.import_module(module).run(tcfg, child)
        logger.info("stage %s: done in %.1f s", stage, time.perf_counter() - t0)
    return child.path
