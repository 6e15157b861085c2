"""Stage `data`: parse dataset files into dialogues, splits and recommendation examples.

A recommendation example is every assistant turn that mentions at least one item: the context is all
earlier turns, the targets are that turn's item ids (order of first mention), and `target_mentioned[i]`
says whether target i already appeared in an earlier turn (of either speaker). Protocol "all" scores every
target, protocol "novel" only the unmentioned ones. An assistant turn that opens the dialogue with an item
gives an example with an empty context: it is real data and is kept (stats.json counts them).

Splits: train = the dialogues of `data.train_files` (a dialogue found in several files is kept once);
dev = `data.dev_files`, or when that is empty the train dialogues whose stable hash of the dialogue id
falls under `data.dev_fraction` (sha256, so the split is the same on every machine and Python version, and
a dialogue's side does not depend on which other dialogues are loaded); test = `data.test_files` (optional).
A dialogue that is also in dev or test files is removed from train.

Writes `data/{split}.jsonl` (RecExample rows sorted by example_id), `data/{split}_dialogues.jsonl`
(Dialogue rows sorted by dialogue_id), `data/mentioned_items.jsonl` (every mentioned item id with its title
as the dataset writes it and, per split, the number of turns mentioning it: INSPIRED items exist only as
titles in the dialogues), `data/stats.json`, optionally `data/lossy_dialogues.jsonl`, and the manifest last.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reges.config import DataConfig, PipelineConfig
from reges.data import DialogueFile, build_examples
from reges.data.inspired import load_inspired
from reges.data.jsonl import load_custom
from reges.data.redial import load_redial, read_movie_names
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, write_json, write_jsonl
from reges.records import Dialogue, RecExample

logger = logging.getLogger(__name__)

STAGE = "data"


def dev_score(dialogue_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for a dialogue id (sha256, not Python's salted `hash`)."""
    digest = hashlib.sha256(dialogue_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_tune(dialogues: list[Dialogue], tune_fraction: float) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out a `tune` slice of the train dialogues (a second, independent hash of the dialogue id).

    Why: fusion weights and other choices must be tuned on data no trained part has seen, and never on dev.
    Every train-time model (encoder, co-mention counts, LoRA experts) is fitted on `train` without this slice.
    """
    if not 0.0 <= tune_fraction < 1.0:
        raise ConfigError(f"data.tune_fraction must be in [0, 1), got {tune_fraction}; e.g. 0.1, or 0 for no "
                          "tune split")
    train = [d for d in dialogues if dev_score(d.dialogue_id + "#tune") >= tune_fraction]
    tune = [d for d in dialogues if dev_score(d.dialogue_id + "#tune") < tune_fraction]
    return train, tune


def split_dev(dialogues: list[Dialogue], dev_fraction: float) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out the dialogues whose `dev_score` is below `dev_fraction`.

    Returns:
        (train, dev), each in input order.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"data.dev_fraction must be in (0, 1) when data.dev_files is empty, got {dev_fraction}; "
                          "set it (e.g. 0.16) or list data.dev_files")
    train = [d for d in dialogues if dev_score(d.dialogue_id) >= dev_fraction]
    dev = [d for d in dialogues if dev_score(d.dialogue_id) < dev_fraction]
    return train, dev


def load_dialogue_file(path: str | Path, cfg: DataConfig, movie_names: Mapping[str, str]) -> DialogueFile:
    """Read one dataset file with the loader for `cfg.format` (variants are detected from the file)."""
    if cfg.format == "redial":
        return load_redial(path, movie_names)
    elif cfg.format == "inspired":
        return load_inspired(path)
    elif cfg.format == "custom":
        return load_custom(path, cfg.column_map)
    raise ConfigError(f"data.format must be redial, inspired or custom, got {cfg.format!r}")


def combine_files(files: list[DialogueFile]) -> tuple[list[Dialogue], int]:
    """Concatenate dialogues of several files, keeping the first copy of a dialogue id.

    ReDial's KGSF and iEvaLM files share 88 dialogues; both copies parse to the same turns, so one is
    dropped. Two *different* dialogues under one id mean an id collision and fail loudly.

    Returns:
        (dialogues, number of duplicates dropped).

    Raises:
        DataError: One dialogue id with different turns in two places.
    """
    kept: dict[str, tuple[Dialogue, Path]] = {}
    duplicates = 0
    for f in files:
        for d in f.dialogues:
            if d.dialogue_id not in kept:
                kept[d.dialogue_id] = (d, f.path)
                continue
            first, first_path = kept[d.dialogue_id]
            if first != d:
                raise DataError(f"dialogue id {d.dialogue_id!r} appears in {first_path} and {f.path} with different "
                                "turns; give the dialogues distinct ids or drop one file")
            duplicates += 1
    return [d for d, _ in kept.values()], duplicates


def split_stats(dialogues: list[Dialogue], examples: list[RecExample]) -> dict[str, int]:
    """Counts reported per split (also in the log): targets count (example, item) pairs."""
    return {
        "dialogues": len(dialogues),
        "turns": sum(len(d.turns) for d in dialogues),
        "examples": len(examples),
        "targets": sum(len(e.target_item_ids) for e in examples),
        "novel_targets": sum(len(e.novel_target_ids()) for e in examples),
        "empty_context_examples": sum(1 for e in examples if not e.context),
        "distinct_target_items": len({t for e in examples for t in e.target_item_ids}),
    }


def _check_config(cfg: DataConfig) -> None:
    # The other data.* checks run when the config is built (DataConfig); an empty list is valid there, since the
    # default config has no files and only this stage reads them.
    if not cfg.train_files:
        raise ConfigError("data.train_files is empty; list the dialogue files of the train split")


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Stage `data`: read the dataset files, split, build examples, write `data/`, manifest last.

    Example:
        >>> cfg = load_config("configs/redial.yaml")
        >>> run(cfg, RunDir("runs/redial"))  # writes runs/redial/data/{train,dev}.jsonl, stats.json, ...
    """
    started = now_iso()
    dcfg = cfg.data
    _check_config(dcfg)
    out = run_dir.begin(STAGE, cfg.run.overwrite)

    inputs: dict[str, Path] = {}
    movie_names: dict[str, str] = {}
    if dcfg.movie_names_file:
        movie_names = read_movie_names(dcfg.movie_names_file)
        inputs[f"movie_names:{dcfg.movie_names_file}"] = Path(dcfg.movie_names_file)

    loaded: dict[str, list[DialogueFile]] = {}
    for split, paths in (("train", dcfg.train_files), ("dev", dcfg.dev_files), ("test", dcfg.test_files)):
        loaded[split] = [load_dialogue_file(p, dcfg, movie_names) for p in paths]
        inputs.update({f"{split}:{p}": Path(p) for p in paths})
    titles: dict[str, str] = {}
    for f in (f for files in loaded.values() for f in files):
        for item_id, title in f.titles.items():
            titles.setdefault(item_id, title)

    train, duplicates = combine_files(loaded["train"])
    splits: dict[str, list[Dialogue]] = {}
    dropped_overlap = 0
    held_out_ids: set[str] = set()
    for split in ("dev", "test"):
        if loaded[split]:
            splits[split], split_duplicates = combine_files(loaded[split])
            duplicates += split_duplicates
            held_out_ids.update(d.dialogue_id for d in splits[split])
    if held_out_ids:
        before = len(train)
        train = [d for d in train if d.dialogue_id not in held_out_ids]
        dropped_overlap = before - len(train)
        if dropped_overlap:
            logger.warning("%d train dialogues are also in the dev/test files; removed from train", dropped_overlap)
    if "dev" not in splits:
        train, splits["dev"] = split_dev(train, dcfg.dev_fraction)
    if dcfg.tune_fraction > 0:
        train, splits["tune"] = split_tune(train, dcfg.tune_fraction)
    if "test" in splits:
        leaked = sorted({d.dialogue_id for d in splits["dev"]} & {d.dialogue_id for d in splits["test"]})
        if leaked:
            raise DataError(f"{len(leaked)} dialogues are in both dev and test (e.g. {leaked[:3]}); remove them from "
                            "one of data.dev_files/data.test_files")
    splits = {"train": train, **splits}
    if "tune" in splits and not splits["tune"]:
        raise DataError(f"data.tune_fraction={dcfg.tune_fraction} held out no train dialogue; raise it or set it to 0")

    outputs: dict[str, int] = {}
    stats: dict[str, Any] = {
        "format": dcfg.format,
        "files": {str(f.path): {"variant": f.variant, "dialogues": len(f.dialogues)}
                  for files in loaded.values() for f in files},
        "duplicates_dropped": duplicates,
        "train_dialogues_dropped_as_in_dev_or_test": dropped_overlap,
        "splits": {},
    }
    mentions: dict[str, Counter[str]] = {}
    for split in ("train", "tune", "dev", "test"):
        if split not in splits:
            continue
        dialogues = sorted(splits[split], key=lambda d: d.dialogue_id)
        if not dialogues:
            raise DataError(f"the {split} split is empty; check data.{split}_files and data.dev_fraction")
        examples = sorted((e for d in dialogues for e in build_examples(d, titles)), key=lambda e: e.example_id)
        outputs[f"{split}_dialogues.jsonl"] = write_jsonl(out / f"{split}_dialogues.jsonl", dialogues)
        outputs[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", examples)
        stats["splits"][split] = split_stats(dialogues, examples)
        mentions[split] = Counter(i for d in dialogues for t in d.turns for i in t.item_ids)
        logger.info("data %s: %s", split, stats["splits"][split])

    if dcfg.lossy_file:
        # Written by the lossy-file reconstruction (reges.data.lossy); held-out dialogues are excluded so
        # nothing of dev/test leaks into what train-time statistics are built from.
        from reges.data.lossy import LOSSY_DIALOGUES_FILE, lossy_dialogues

        inputs[f"lossy:{dcfg.lossy_file}"] = Path(dcfg.lossy_file)
        # tune is held out like dev: it measures (and tunes) what train-time statistics predict.
        held_out = [d for split in ("tune", "dev", "test") for d in splits.get(split, [])]
        lossy = lossy_dialogues(Path(dcfg.lossy_file), held_out, movie_names, known=splits["train"])
        lossy = sorted(lossy, key=lambda d: d.dialogue_id)
        outputs[LOSSY_DIALOGUES_FILE] = write_jsonl(out / LOSSY_DIALOGUES_FILE, lossy)
        mentions["lossy"] = Counter(i for d in lossy for t in d.turns for i in t.item_ids)
        titles.update({i: movie_names[i] for i in mentions["lossy"] if i not in titles and i in movie_names})
        stats["lossy_dialogues"] = len(lossy)
        logger.info("data lossy: %d dialogues", len(lossy))

    item_ids = sorted({i for counts in mentions.values() for i in counts})
    outputs["mentioned_items.jsonl"] = write_jsonl(out / "mentioned_items.jsonl", (
        {"item_id": i, "title": titles.get(i, ""),
         "mentions": {split: counts[i] for split, counts in mentions.items() if counts[i]}}
        for i in item_ids
    ))
    write_json(out / "stats.json", stats)
    run_dir.finish(STAGE, config=cfg.data, inputs=inputs, outputs=outputs, seed=cfg.run.seed, started=started)
