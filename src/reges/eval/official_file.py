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

What is evaluated is what `reges recommend` serves from the same run directory (`PipelineRecommender.from_run_dir`):
- rank mode with `generate.fusion_alpha: null` uses the alpha the trained run's `generate` stage tuned (its
  manifest), or 1 (the Item Expert alone) when that stage is not complete; it is never re-tuned on the file's run,
  which has no `tune` split. The child's generate manifest says where the alpha came from (`fusion_alpha_from`);
- retrieval is the fused retriever of train-retriever (required): `retrieve.fusion` is forced on, since serving
  fuses whatever it says;
- a run without `index/` (a shipped bundle, `reges.shipped`, keeps only the retriever's item embeddings) gets an
  `index/` stage in the child built from `train-retriever/index/`: serving does not need one, the retrieve stage
  requires it and the dense baselines of `evaluate` search it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from pathlib import Path

import numpy as np

from reges.config import PipelineConfig
from reges.errors import ConfigError, StageNotReadyError
from reges.io import RunDir, now_iso, read_json
from reges.pipeline import STAGES, stage_config
from reges.retrieval.index import EMBEDDINGS_FILE, IDS_FILE, ItemIndex
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
# Without these the run is not a trained ReGeS run: the evaluation would silently measure something else. `index` is
# not among them: serving does not read it once train-retriever is complete (see `build_child_index`).
REQUIRED_STAGES: tuple[str, ...] = ("catalog", "train-retriever", "train-item")


def served_fusion_alpha(cfg: PipelineConfig, run_dir: RunDir) -> tuple[float | None, str]:
    """The rank-mode fusion alpha `reges recommend` uses for `run_dir`, and where it comes from.

    As `PipelineRecommender.from_run_dir`: a given `generate.fusion_alpha`; else the alpha the run's generate stage
    tuned (its manifest); else 1, the Item Expert alone. (None, "") outside rank mode.
    """
    gc = cfg.generate
    if gc.mode != "rank":
        return None, ""
    if gc.fusion_alpha is not None:
        return gc.fusion_alpha, "generate.fusion_alpha"
    manifest_path = run_dir.stage_dir("generate") / "manifest.json"
    manifest = run_dir.manifest("generate") if run_dir.is_complete("generate") else {}
    if manifest.get("fusion_alpha") is None:
        return 1.0, f"1 (the Item Expert alone, as served): {manifest_path} is missing or records no fusion alpha"
    tuning = manifest.get("fusion_tuning") or {}
    where = f", tuned on split {tuning['split']!r}" if "split" in tuning else ""
    return float(manifest["fusion_alpha"]), f"the trained run's {manifest_path}{where}"


def evaluation_config(cfg: PipelineConfig, dataset_file: Path, fusion_alpha: float | None) -> PipelineConfig:
    """The trained run's config with `dataset_file` as the test split and every inference stage on `test` only.

    The lossy ReDial file only feeds train-time statistics (already in train-retriever), so it is not re-read.
    Retrieval is fused whenever train-retriever is there (as served), and rank mode gets `fusion_alpha` as
    `generate.fusion_alpha` (see `served_fusion_alpha`), since the file's run has no split to tune it on.
    """
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, test_files=[str(dataset_file)], lossy_file=""),
        rewrite=dataclasses.replace(cfg.rewrite, splits=["test"]),
        retrieve=dataclasses.replace(cfg.retrieve, splits=["test"], fusion=True),
        generate=dataclasses.replace(cfg.generate, splits=["test"], fusion_alpha=fusion_alpha),
        evaluate=dataclasses.replace(cfg.evaluate, splits=["test"]),
    )


def child_run_dir(run_dir: RunDir, dataset_file: Path) -> RunDir:
    """`<run-dir>/eval-<slug of the file name>`: one evaluation folder per dataset file."""
    return RunDir(run_dir.path / f"eval-{title_slug(dataset_file.stem) or 'file'}")


def link_trained_stages(run_dir: RunDir, child: RunDir) -> list[str]:
    """Symlink every complete trained stage of `run_dir` into `child`; return the linked stage names.

    Raises:
        StageNotReadyError: a required trained stage (catalog, train-retriever, train-item) is incomplete.
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


def build_child_index(cfg: PipelineConfig, run_dir: RunDir, child: RunDir) -> None:
    """Write `child/index/` for a run without index/ (a shipped bundle).

    Why: a shipped bundle keeps the retriever's item embeddings but no FAISS index, since serving reads none. The
    retrieve stage requires `index/` and the dense baselines of `evaluate` search it. With a frozen encoder, those
    embeddings are the index stage's own (train-retriever copies them; a bundle stores them as float16, here made
    float32 again), so the index is the one `reges index` builds, up to that rounding. With a tuned encoder (a
    LoRA adapter in the bundle) they are not, so the index stage itself embeds the catalog with `index.encoder`
    (about a minute for ReDial's 6,924 cards on this CPU).
    """
    source = run_dir.stage_dir("train-retriever") / "index"
    encoder = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["encoder"]
    if encoder != cfg.index.encoder:
        logger.info("%s has no index/ and %s holds the tuned encoder's embeddings: embedding the catalog with %s",
                    run_dir.path, source, cfg.index.encoder)
        importlib.import_module(STAGES["index"].module).run(stage_config(STAGES["index"], cfg), child)
        return
    started = now_iso()
    out = child.begin("index", cfg.run.overwrite)
    item_ids = (source / IDS_FILE).read_text(encoding="utf-8").splitlines()
    embeddings = np.load(source / EMBEDDINGS_FILE, allow_pickle=False).astype(np.float32)  # (num_items, dim)
    index = ItemIndex.from_embeddings(embeddings, item_ids, cfg.index, cfg.run.seed, cfg.index.encoder,
                                      cfg.index.max_seq_length)
    index.save(out, embeddings)
    rows = len(item_ids)
    child.finish(
        "index",
        config=dataclasses.asdict(cfg.index),
        inputs={
            f"train-retriever/index/{EMBEDDINGS_FILE}": source / EMBEDDINGS_FILE,
            f"train-retriever/index/{IDS_FILE}": source / IDS_FILE,
        },
        outputs={"index.faiss": rows, IDS_FILE: rows, EMBEDDINGS_FILE: rows},
        seed=cfg.run.seed,
        started=started,
        extra={"encoder": cfg.index.encoder, "dim": index.dim, "rows": rows, "index_type": cfg.index.index_type,
               "built_from": str(source)},
    )
    logger.info("%s has no index/: built %s from %s (%d items)", run_dir.path, out, source, rows)


def evaluate_file(cfg: PipelineConfig, run_dir: RunDir, dataset_file: Path) -> Path:
    """Run the trained pipeline of `run_dir` on `dataset_file` and evaluate it; return the child run directory.

    Raises:
        ConfigError: `dataset_file` is missing, or the child folder holds a stage that is not a link to the run's.
        StageNotReadyError: catalog, train-retriever or train-item is incomplete.

    Example:
        >>> evaluate_file(load_config("configs/redial.yaml"), RunDir("runs/redial"), Path(".../test_data.jsonl"))
        PosixPath('runs/redial/eval-test-data')  # evaluate/report.md inside
    """
    if not dataset_file.is_file():
        raise ConfigError(f"--dataset-file {dataset_file} not found; pass a {cfg.data.format} file in its published "
                          "format (ReDial test_data.jsonl, INSPIRED test.tsv)")
    child = child_run_dir(run_dir, dataset_file)
    linked = link_trained_stages(run_dir, child)
    alpha, alpha_from = served_fusion_alpha(cfg, run_dir)
    tcfg = evaluation_config(cfg, dataset_file, alpha)
    logger.info("evaluating %s with the trained stages of %s (%s) in %s", dataset_file, run_dir.path,
                ", ".join(linked), child.path)
    if alpha is not None:
        logger.info("fusion alpha %.2f: %s", alpha, alpha_from)
    if "index" not in linked and not child.is_complete("index"):
        build_child_index(tcfg, run_dir, child)
    for stage, module in INFERENCE_STAGES:
        if stage == "rewrite" and "train-query" not in linked:
            continue  # a run without a Query Expert retrieves from the dialogue alone
        if child.is_complete(stage) and not cfg.run.overwrite:
            logger.info("stage %s: complete, skipped", stage)
            continue
        t0 = time.perf_counter()
        view = stage_config(STAGES[stage], tcfg)  # as `reges all` runs it: its declared sections only
        if stage == "generate":
            importlib.import_module(module).run(view, child, fusion_alpha_from=alpha_from)
        else:
            importlib.import_module(module).run(view, child)
        logger.info("stage %s: done in %.1f s", stage, time.perf_counter() - t0)
    return child.path
