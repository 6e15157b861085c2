"""The trained recommender that ships inside the package, and how a trained run becomes one.

`reges recommend`, `chat` and `serve` use it when no `--run-dir` is given, so a fresh install recommends offline
right away. It is a minimal run directory (`src/reges/shipped/<name>/`) holding only what serving reads:

    config.yaml                         the trained run's config (models by bundled name)
    catalog/items.jsonl                 the catalog without plot texts (+ manifest)
    train-retriever/                    fusion.json, co-mention counts, index/ (item ids + float16 embeddings),
                                        people.json (when the people feature is on), encoder_adapter/ (the
                                        tuned encoder's LoRA adapter, when the run trained one: lora_rank > 0)
    train-query/adapter/                the Query Expert's LoRA adapter (+ manifest)
    train-item/adapter/                 the Item Expert's LoRA adapter (+ manifest), when the run ships one
    SOURCES.md                          where the data came from and its licence

Why a tuned retriever ships as an adapter: a fully fine-tuned encoder is a whole 90 MB model, a LoRA adapter of the
bundled MiniLM 2.7 MB at rank 16 (`train_retriever.lora_rank`); serving rebuilds the tuned encoder from the two
(`FusedRetriever.load`). `export_run` refuses a fully fine-tuned retriever and says how to train one that ships.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import yaml

from reges.catalog import build_card, read_items
from reges.config import PipelineConfig, config_to_dict, load_config
from reges.errors import ConfigError, StageNotReadyError
from reges.io import RunDir, atomic_open, read_json, redact, stage_file_sizes, write_json, write_jsonl
from reges.records import Item

logger = logging.getLogger(__name__)

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
DEFAULT_NAME = "redial"

# What serving reads, per stage (paths relative to the stage folder); manifests are always copied. The experts are
# optional: a run without train-item picks the retriever's top-1, one without train-query retrieves from the dialogue.
SERVING_FILES: dict[str, tuple[str, ...]] = {
    "catalog": ("items.jsonl",),
    "train-retriever": ("fusion.json", "comention.npz", "comention_ids.txt", "comention_dialogues.jsonl",
                        "index/item_ids.txt", "index/embeddings.npy", "people.json", "neighbours.npz",
                        "encoder_adapter"),
    "train-query": ("adapter",),
    "train-item": ("adapter",),
    "generate": (),  # its manifest only: the fusion alpha rank mode tuned (the picks are not needed)
}

# written only when their feature is on (people.json: train_retriever.people; neighbours.npz:
# train_retriever.neighbours; encoder_adapter: lora_rank > 0)
OPTIONAL_FILES: frozenset[str] = frozenset({"people.json", "neighbours.npz", "encoder_adapter"})

REQUIRED_STAGES: tuple[str, ...] = ("catalog", "train-retriever")


def default_run_dir(name: str = DEFAULT_NAME) -> Path:
    """The shipped run directory `name`.

    Raises:
        StageNotReadyError: this installation has no shipped recommender of that name.
    """
    path = SHIPPED_ROOT / name
    if not (path / "config.yaml").is_file():
        known = sorted(p.name for p in SHIPPED_ROOT.glob("*") if (p / "config.yaml").is_file())
        raise StageNotReadyError(
            f"no shipped recommender {name!r} in {SHIPPED_ROOT} (shipped: {known or 'none'}); pass --run-dir with a "
            "run trained by `reges all`"
        )
    return path


def _without_plot(item: Item) -> Item:
    """The item without its plot text: plots in the source metadata look IMDb-derived (non-commercial terms), so
    the shipped catalog keeps title, year and the short attributes only. Serving needs titles and ids."""
    meta = {k: v for k, v in item.meta.items() if k != "plot"}
    fields = [k for k in ("genre", "director", "star") if k in meta]
    return Item(item.item_id, item.title, build_card(item.title, meta, fields, 600), item.year, meta)


def serving_config(cfg: PipelineConfig) -> PipelineConfig:
    """The trained run's config with the build machine's runtime settings reset for the user's machine.

    Why: a run is often built with `run.threads=1` (several jobs sharing a CPU) and progress bars on; the shipped
    recommender should use every core of the machine it runs on and print no bars.
    """
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, show_progress=False, overwrite=False, threads=0))


def export_run(run_dir: RunDir, out: Path, sources_note: str) -> Path:
    """Copy what serving needs from a trained run into `out` (a new minimal run directory).

    Args:
        run_dir: A run with catalog and train-retriever complete; train-query and train-item are copied when
            complete (leave one out of the run to ship without it).
        out: The bundle folder; replaced if it exists.
        sources_note: Markdown for SOURCES.md: the data and its licence (credit it).

    Raises:
        StageNotReadyError: a needed stage is not complete.
        ConfigError: the retriever uses a fine-tuned encoder (too big to ship).
    """
    for stage in REQUIRED_STAGES:
        run_dir.require(stage)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    if spec.get("encoder") == "encoder" and not spec.get("encoder_adapter"):
        raise ConfigError(
            f"{run_dir.path}/train-retriever uses a fully fine-tuned encoder (about 90 MB), too big to ship; redo "
            "that stage with train_retriever.lora_rank=16 (a 2.7 MB adapter ships instead; lr about 5e-4) or with "
            "train_retriever.finetune=false"
        )
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for stage, names in SERVING_FILES.items():
        if stage not in REQUIRED_STAGES and not run_dir.is_complete(stage):
            logger.info("%s is not complete in %s: shipped without it", stage, run_dir.path)
            continue
        src, dst = run_dir.stage_dir(stage), tmp / stage
        dst.mkdir(parents=True)
        for name in (*names, "manifest.json"):
            if name in OPTIONAL_FILES and not (src / name).exists():
                continue
            if (src / name).is_dir():
                # README.md: the model card PEFT wrote into adapters trained before `save_adapter` dropped it
                shutil.copytree(src / name, dst / name,
                                ignore=shutil.ignore_patterns("*.gguf", "checkpoints", "README.md"))
            elif stage == "catalog" and name == "items.jsonl":
                write_jsonl(dst / name, [_without_plot(it) for it in read_items(src / name)])
            elif name.endswith(".npy"):
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                # float16 halves the size; scores are computed in float32 after loading (FusedRetriever.load).
                np.save(dst / name, np.load(src / name, allow_pickle=False).astype(np.float16), allow_pickle=False)
            else:
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / name, dst / name)
        # the bundle's files differ from the run's (no plots, float16, fewer files): its manifest lists its own
        manifest = read_json(dst / "manifest.json")
        write_json(dst / "manifest.json", {**manifest, "files": stage_file_sizes(dst)})
    with atomic_open(tmp / "config.yaml") as f:
        tree = redact(config_to_dict(serving_config(load_config(run_dir.path / "config.yaml"))))
        yaml.safe_dump(tree, f, sort_keys=False)
    with atomic_open(tmp / "SOURCES.md") as f:
        f.write(sources_note)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("exported %s -> %s (%.1f MB)", run_dir.path, out, size / 1e6)
    return out
