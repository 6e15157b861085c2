"""Stage `train-retriever`: fine-tune the encoder, count co-mentions, and tune the fusion weights on `tune`.

Steps (each switchable in `train_retriever`, so each part's contribution can be measured):
1. Co-mention counts over the train dialogues, plus `data/lossy_dialogues.jsonl` when `use_lossy` and another
   dataset's dialogues matched by title when `cross_dataset` is set (reges.data.cross) (always counted: the
   popularity feature reads them too; `comention` decides whether the prior is a feature).
2. When `finetune`: contrastive fine-tuning of the index encoder (`finetune.py`) on (dialogue, true card) pairs
   of `data/train.jsonl` (and (teacher query, card) pairs of `distill/train.jsonl` when present, and the other
   dataset's (dialogue, card) pairs when `cross_pairs`, and pairs of the lossy ReDial dialogues when
   `lossy_pairs`: order-free, or cut at each recommendation of a guessed speaking order with
   `lossy_pairs_from: interleaved`), then the catalog re-embedded with it. Without `finetune`
   the frozen index is copied, so `index/` always matches the encoder.
3. When `neighbours`: the train contexts (and the lossy file's order-free examples when `neighbours_lossy`, the
   other dataset's when `neighbours_cross`) embedded with that encoder, and the neighbour count and temperature of
   the neighbours feature (`neighbours.py`) chosen on `tune` by the feature alone.
4. Fusion weights (`fusion.py`) tuned on the `tune` split: one set without the Query Expert's query, and one
   with it when `rewrite/tune.jsonl` exists and `query_feature` is on. With `weight_examples: train+tune` the
   no-query set is searched on the train examples too (each with its own dialogue left out of the counts), and
   with `cross_fit_folds: k` their dense_dialogue feature comes from k more encoders, each fine-tuned without one
   fold of the train dialogues (`cross_fitted_dense`), so the search sees it as strong as on unseen dialogues.

Under `torchrun --nproc-per-node N` step 2's fine-tuning runs data-parallel (`finetune.py`, docs/distributed.md);
rank 0 alone mines the hard negatives (the others receive them), writes every file and does steps 1, 3 and 4, and the
other ranks return once the encoder is trained.

Files written under `run_dir/train-retriever/`:
    encoder/                     the fine-tuned sentence-transformers model (only when finetune)
    encoder_adapter/             its LoRA adapter (only when finetune and lora_rank > 0): what a bundle ships
    index/                       ItemIndex over the cards (index.faiss, item_ids.txt, index.json, embeddings.npy);
                                 index.json's `encoder` is the encoder folder (or the frozen encoder's name)
    comention.npz, comention_ids.txt, comention_dialogues.jsonl   the counts (see comention.py)
    people.json                  the catalog's directors and stars with their films (only when `people`)
    neighbours.npz               the train contexts' embeddings and targets (only when `neighbours`)
    fusion.json                  settings, weights {"no_query": {...}, "with_query": {...} | null}, tune metrics
                                 of every feature alone and of each fusion, the fine-tuning record
    manifest.json                written last
While fine-tuning, `checkpoints/` holds step checkpoints and, once training ends, `checkpoints/encoder/` (with
finetune.json; the cross-fitting folds' encoders in `checkpoints/fold-k/encoder/`). They stay after the stage is
complete: a rerun (after a crash, or to redo the weights) reuses each encoder whose fingerprint still matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reges.catalog import alias_map, canonical_dialogue, read_catalog
from reges.config import PipelineConfig, TrainRetrieverConfig
from reges.data import build_examples
from reges.data.cross import cross_examples, cross_title_sets, match_title_sets
from reges.data.examples import dev_score
from reges.data.lossy import LOSSY_DIALOGUES_FILE, interleaved_dialogues, lossy_examples
from reges.data.redial import read_movie_names
from reges.data.sampling import sample_rows
from reges.errors import ConfigError, DataError
from reges.io import RunDir, file_sha256, now_iso, read_json, write_json
from reges.llm import distributed
from reges.llm.models import resolve_device
from reges.records import Item, RecExample
from reges.retrieval.comention import CoMention
from reges.retrieval.encoder import ADAPTER_DIR, SentenceEncoder, add_lora, load_encoder, save_and_merge_lora
from reges.retrieval.finetune import Pair, build_pairs, finetune_encoder, mine_hard_negatives
from reges.retrieval.fusion import (
    EMBEDDINGS_FILE,
    ENCODER_DIR,
    FUSION_FILE,
    INDEX_DIR,
    NO_QUERY,
    WITH_QUERY,
    FusedRetriever,
    FusionSettings,
    TunePairs,
    bagged_weights,
    fuse,
    pair_ranks,
    recall_table,
    tune_weights,
    zscore_rows,
)
from reges.retrieval.index import ItemIndex
from reges.retrieval.neighbours import NEIGHBOUR_COUNTS, NEIGHBOUR_TAUS, NEIGHBOURS_FILE, DialogueNeighbours
from reges.retrieval.people import PEOPLE_FILE, PeopleIndex
from reges.retrieval.queries import read_queries
from reges.retrieval.retrieve import read_dialogues, read_examples

logger = logging.getLogger(__name__)

STAGE = "train-retriever"
FINETUNE_RECORD = "finetune.json"


def _finetune_fingerprint(tc: TrainRetrieverConfig, encoder: str, seed: int, train_path: Path,
                          distill_path: Path | None, lossy_path: Path, held_out: frozenset[str] = frozenset(),
                          raw_inputs: dict[str, Path] | None = None, items: Mapping[str, Item] | None = None) -> str:
    """What a finished encoder depends on; a checkpointed encoder is reused only when this matches."""
    spec = _finetune_spec(tc, encoder, seed, train_path, distill_path, lossy_path, held_out, raw_inputs, items)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _finetune_spec(tc: TrainRetrieverConfig, encoder: str, seed: int, train_path: Path, distill_path: Path | None,
                   lossy_path: Path, held_out: frozenset[str] = frozenset(),
                   raw_inputs: dict[str, Path] | None = None, items: Mapping[str, Item] | None = None
                   ) -> dict[str, Any]:
    """`_finetune_fingerprint`'s content. `raw_inputs`: the raw files the interleaved lossy pairs read
    (`interleaved_inputs`), hashed only under `lossy_pairs_from: interleaved`. `items`: the catalog, of which what
    training reads is hashed (each item's card, the pairs' positives, and its folded ids, which map their targets):
    the checkpoint folder outlives a rebuilt catalog, so another `catalog.card_fields` or `catalog.clean` must
    train a new encoder."""
    keys = ("epochs", "batch_size", "lr", "warmup_ratio", "hard_negatives", "max_pairs", "query", "max_query_chars",
            "max_seq_length", "dtype")
    spec = {k: getattr(tc, k) for k in keys}
    spec.update(encoder=encoder, seed=seed, train=file_sha256(train_path),
                distill=file_sha256(distill_path) if distill_path else None)
    if tc.lora_rank:  # absent at 0 (full fine-tuning), like cross_pairs: encoders trained before them stay reusable
        spec["lora_rank"] = tc.lora_rank
    if tc.cross_pairs and tc.cross_dataset is not None:
        spec["cross_pairs"] = {**dataclasses.asdict(tc.cross_dataset),
                               "sha256": [file_sha256(Path(p)) for p in tc.cross_dataset.files]}
    if tc.lossy_pairs:
        spec["lossy_pairs"] = {"max": tc.lossy_pairs, "sha256": file_sha256(lossy_path)}
        if tc.lossy_pairs_from != "seeker_side":  # absent at the default: earlier encoders stay reusable
            spec["lossy_pairs"]["from"] = tc.lossy_pairs_from
            spec["lossy_pairs"]["files"] = {key: file_sha256(path) for key, path in sorted((raw_inputs or {}).items())}
    if items is not None:
        cards = [[i, it.text, sorted(map(str, it.meta.get("alias_ids") or []))] for i, it in sorted(items.items())]
        spec["catalog"] = hashlib.sha256(json.dumps(cards).encode()).hexdigest()
    if held_out:  # a cross-fitting fold's encoder (absent for the run's own: its fingerprint is unchanged)
        spec["held_out"] = hashlib.sha256("\n".join(sorted(held_out)).encode()).hexdigest()
    return spec


def distill_pairs_file(cfg: PipelineConfig, run_dir: RunDir) -> Path | None:
    """`distill/train.jsonl` when fine-tuning also trains on the teacher's queries (`train_retriever.distill_pairs`
    and a complete distill stage), else None."""
    path = run_dir.stage_dir("distill") / "train.jsonl"
    tc = cfg.train_retriever
    return path if tc.finetune and tc.distill_pairs and run_dir.is_complete("distill") and path.is_file() else None


def training_pairs(cfg: PipelineConfig, run_dir: RunDir, items: dict[str, Item], distill_path: Path | None,
                   held_out: frozenset[str] = frozenset()) -> tuple[list[Pair], dict[str, int] | None]:
    """The encoder's fine-tuning pairs: `data/train.jsonl` (and `distill_path`, and the other dataset's examples
    when `cross_pairs`), a seeded `max_pairs` sample; with the cross-dataset match counts (None without).

    Args:
        held_out: Train dialogue ids whose examples (dialogue and distill pairs) are left out: a cross-fitting
            fold (`cross_fitted_dense`). The other datasets' and the lossy file's dialogues are never train ones.
    """
    tc = cfg.train_retriever
    distill = read_queries(distill_path) if distill_path else None
    examples = [ex for ex in read_examples(run_dir.stage_dir("data") / "train.jsonl", alias_map(items.values()))
                if ex.dialogue_id not in held_out]
    pairs = build_pairs(examples, items, tc.query, tc.max_query_chars, distill)
    cross_stats = None
    if tc.cross_pairs and tc.cross_dataset is not None:
        examples, cross_stats = cross_examples(tc.cross_dataset, items.values())
        pairs += build_pairs(examples, items, tc.query, tc.max_query_chars, source="cross")
    if tc.lossy_pairs:
        pairs += sample_rows(lossy_pairs(cfg, run_dir, items), tc.lossy_pairs, cfg.run.seed,
                             "train_retriever.lossy_pairs")
    return sample_rows(pairs, tc.max_pairs, cfg.run.seed, "train_retriever.max_pairs"), cross_stats


def lossy_pairs(cfg: PipelineConfig, run_dir: RunDir, items: dict[str, Item]) -> list[Pair]:
    """Every pair of the dialogues in `data/lossy_dialogues.jsonl`, source "lossy": order-free
    (`reges.data.lossy.lossy_examples`) or, with `lossy_pairs_from: interleaved`, cut at each recommendation of
    the dialogue in a guessed order (`reges.data.lossy.interleaved_dialogues`; the message boundaries come from
    `data.lossy_file`, which the data stage merged)."""
    tc = cfg.train_retriever
    aliases = alias_map(items.values())
    dialogues = read_dialogues(run_dir.stage_dir("data") / LOSSY_DIALOGUES_FILE, aliases)
    if tc.lossy_pairs_from == "interleaved":
        _check_data_inputs(run_dir, interleaved_inputs(cfg))
        ordered, _ = interleaved_dialogues(Path(cfg.data.lossy_file), read_movie_names(cfg.data.movie_names_file),
                                           [d.dialogue_id for d in dialogues])
        # mapped before they are cut, so that a film named under a folded id is not a fresh target
        examples = [ex for d in ordered for ex in build_examples(canonical_dialogue(d, aliases), {})]
        return build_pairs(examples, items, tc.query, tc.max_query_chars, source="lossy")
    examples, _ = lossy_examples(dialogues, tc.max_query_chars)
    return build_pairs(examples, items, "full", tc.max_query_chars, source="lossy")


def interleaved_inputs(cfg: PipelineConfig) -> dict[str, Path]:
    """The raw files `lossy_pairs_from: interleaved` reads again, under the keys the data stage's manifest gives
    them: the lossy zip (for the message boundaries) and the movie names (for the titles)."""
    return {f"lossy:{cfg.data.lossy_file}": Path(cfg.data.lossy_file),
            f"movie_names:{cfg.data.movie_names_file}": Path(cfg.data.movie_names_file)}


def _check_data_inputs(run_dir: RunDir, files: dict[str, Path]) -> None:
    """Refuse raw files that differ from those the data stage read.

    Why: the interleaved pairs find each kept lossy dialogue by its position in the zip ("lossy-<index>"). Another
    file at the same path would put other entries, possibly held-out dialogues, at those positions, and the data
    stage (fingerprinted by its config, not its files' bytes) would still count as complete.
    """
    recorded = run_dir.manifest("data")["inputs"]
    for key, path in files.items():
        if recorded.get(key) != file_sha256(path):
            raise DataError(f"{path} is not the file the data stage read (its manifest has {recorded.get(key)!r} for "
                            f"{key!r}); the lossy pairs find dialogues by their position in it, so rerun `reges data` "
                            "with this file, or restore the one it read")


def _fit_encoder(cfg: PipelineConfig, run_dir: RunDir, ckpt: Path, frozen: ItemIndex, items: dict[str, Item],
                 distill_path: Path | None, held_out: frozenset[str] = frozenset()) -> Path | None:
    """Fine-tune (or reuse a finished) encoder under `ckpt`; returns `ckpt/encoder` (with finetune.json in it).

    `held_out`: train dialogues whose pairs it must not see (a cross-fitting fold). Distributed: every rank trains;
    rank 0 alone writes, and the others return None once training is done.
    """
    tc = cfg.train_retriever
    ctx = distributed.current()
    done = ckpt / ENCODER_DIR
    fingerprint = _finetune_fingerprint(tc, cfg.index.encoder, cfg.run.seed, run_dir.stage_dir("data") / "train.jsonl",
                                        distill_path, run_dir.stage_dir("data") / LOSSY_DIALOGUES_FILE, held_out,
                                        interleaved_inputs(cfg), items)
    if (done / FINETUNE_RECORD).is_file() and read_json(done / FINETUNE_RECORD).get("fingerprint") == fingerprint:
        logger.info("reusing the fine-tuned encoder in %s", done)
        return done if ctx.is_main else None
    device = resolve_device(cfg.index.device, "index.device")
    model = load_encoder(cfg.index.encoder, device, tc.max_seq_length)
    if tc.lora_rank:
        add_lora(model, tc.lora_rank)
    pairs, cross_stats = training_pairs(cfg, run_dir, items, distill_path, held_out)
    logger.info("fine-tuning on %d pairs (%d from distill, %d from cross_dataset, %d from the lossy file)%s",
                len(pairs), sum(p.source == "distill" for p in pairs), sum(p.source == "cross" for p in pairs),
                sum(p.source == "lossy" for p in pairs),
                f", {len(held_out)} train dialogues held out" if held_out else "")
    embeddings = np.load(run_dir.stage_dir("index") / EMBEDDINGS_FILE, allow_pickle=False)  # (n, dim) frozen
    t0 = time.perf_counter()
    # rank 0 mines, the other ranks take its negatives: every rank must train on the same data
    negatives = distributed.main_first(lambda: mine_hard_negatives(
        pairs, SentenceEncoder(model), embeddings, frozen.item_ids, tc.hard_negatives, cfg.run.seed,
        cfg.index.batch_size, cfg.run.show_progress))
    mine_s = time.perf_counter() - t0
    result = finetune_encoder(model, pairs, negatives, items, tc, cfg.run.seed, ckpt / "steps",
                              cfg.run.show_progress)
    if not ctx.is_main:
        return None
    tmp = ckpt / f".tmp-{ENCODER_DIR}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if tc.lora_rank:  # the adapter (what ships) inside the merged encoder's folder (what this run uses)
        save_and_merge_lora(model, tmp / ADAPTER_DIR)
    model.save(str(tmp))
    record = {"fingerprint": fingerprint, "mine_s": round(mine_s, 2), "distill_pairs": distill_path is not None,
              "pairs_by_source": {s: sum(p.source == s for p in pairs)
                                  for s in ("dialogue", "distill", "cross", "lossy")},
              "cross_examples": cross_stats, "held_out_dialogues": len(held_out),
              **dataclasses.asdict(result)}
    write_json(tmp / FINETUNE_RECORD, record)
    if done.exists():
        shutil.rmtree(done)
    os.replace(tmp, done)
    shutil.rmtree(ckpt / "steps", ignore_errors=True)
    return done


def _train_encoder(cfg: PipelineConfig, run_dir: RunDir, out: Path, frozen: ItemIndex, items: dict[str, Item],
                   distill_path: Path | None) -> dict[str, Any] | None:
    """Fine-tune (or reuse a finished checkpointed) encoder; copy it to `out/encoder`. Returns its record.

    Distributed: every rank trains; rank 0 alone writes, and the others return None once training is done.
    """
    done = _fit_encoder(cfg, run_dir, out / "checkpoints", frozen, items, distill_path)
    if done is None:
        return None
    for folder in (ENCODER_DIR, ADAPTER_DIR):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
    shutil.copytree(done, out / ENCODER_DIR, ignore=shutil.ignore_patterns(ADAPTER_DIR))
    if (done / ADAPTER_DIR).is_dir():
        shutil.copytree(done / ADAPTER_DIR, out / ADAPTER_DIR)
    record = read_json(out / ENCODER_DIR / FINETUNE_RECORD)
    (out / ENCODER_DIR / FINETUNE_RECORD).unlink()  # the record goes into fusion.json and the manifest
    record.pop("held_out_dialogues", None)
    return record


def cross_fit_split(train: Sequence[RecExample], folds: int) -> list[frozenset[str]]:
    """The train dialogue ids cut into `folds` folds by a stable hash (`dev_score`, salted so the folds are not the
    tune split's cut again).

    Raises:
        DataError: a fold is empty (too few dialogues for `folds`): its encoder would be the run's own again.
    """
    out: list[set[str]] = [set() for _ in range(folds)]
    for ex in train:
        out[min(int(dev_score(ex.dialogue_id + "#cross-fit") * folds), folds - 1)].add(ex.dialogue_id)
    if not all(out):
        dialogues = len(set().union(*out))
        raise DataError(f"train_retriever.cross_fit_folds={folds} leaves a fold without dialogues ({dialogues} train "
                        "dialogues in all); set a smaller number of folds, e.g. 2")
    return [frozenset(f) for f in out]


def fold_encoders(cfg: PipelineConfig, run_dir: RunDir, out: Path, frozen: ItemIndex, items: dict[str, Item],
                  distill_path: Path | None, folds: Sequence[frozenset[str]]) -> list[Path] | None:
    """One encoder per cross-fitting fold, trained as the run's is but without that fold's train dialogues
    (`_fit_encoder` under `checkpoints/fold-k/`: resumable, and reused on a rerun with the same fingerprint).

    Distributed: every rank trains; rank 0 gets the folders, the others None.
    """
    done = [_fit_encoder(cfg, run_dir, out / "checkpoints" / f"fold-{k}", frozen, items, distill_path, held_out)
            for k, held_out in enumerate(folds)]
    return [d for d in done if d is not None] if distributed.current().is_main else None


def cross_fitted_dense(retriever: FusedRetriever, encoders: Sequence[Path], folds: Sequence[frozenset[str]],
                       train: Sequence[RecExample], items: dict[str, Item], cfg: PipelineConfig
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """(len(train), num_items) dense_dialogue scores, each row from the fold encoder that never saw its dialogue.

    Each fold's encoder re-embeds the catalog and scores its fold's train contexts with `retriever`'s settings
    (the text `context_to_query` makes of a context, as a dev example's is made). Only dense_dialogue is
    cross-fitted: the neighbours feature still compares contexts in the run's encoder's space (its train-against-
    tune bias was +0.039 on INSPIRED, the dense feature's +0.133). Returns (scores, report).
    """
    device = resolve_device(cfg.index.device, "index.device")
    dense = np.zeros((len(train), len(retriever.item_ids)), dtype=np.float64)
    report: dict[str, Any] = {"folds": len(folds), "finetune": []}
    for k, (folder, held_out) in enumerate(zip(encoders, folds, strict=True)):
        record = read_json(folder / FINETUNE_RECORD)
        report["finetune"].append({key: record[key] for key in ("held_out_dialogues", "pairs", "steps", "seconds",
                                                                "loss_start", "loss_end")})
        encoder = SentenceEncoder(load_encoder(str(folder), device, cfg.train_retriever.max_seq_length))
        cards = encoder.encode([items[i].text for i in retriever.item_ids], cfg.index.batch_size,
                               cfg.run.show_progress)
        fold = FusedRetriever(encoder, cards, retriever.item_ids, retriever.counts, {NO_QUERY: {}},
                              retriever.settings, str(folder))
        rows = [i for i, ex in enumerate(train) if ex.dialogue_id in held_out]
        if rows:
            dense[rows] = fold.features([train[i].context for i in rows], [None] * len(rows), [None] * len(rows),
                                        ["dense_dialogue"])["dense_dialogue"]
        logger.info("cross-fitting fold %d: %d train dialogues held out, %d train examples scored", k,
                    len(held_out), len(rows))
    return dense, report


def fit_neighbours(retriever: FusedRetriever, train: list[RecExample],
                   tune: list[RecExample]) -> tuple[DialogueNeighbours, dict[str, Any]]:
    """The neighbours feature over the train examples that have a target, with (m, tau) chosen on `tune`.

    Each (m, tau) of `NEIGHBOUR_COUNTS` x `NEIGHBOUR_TAUS` ranks the tune examples by the feature alone; the best
    objective (the weight search's: mean of R@10 and R@50 under "all" and "novel") wins, the first on a tie. Chosen
    alone, before the weights, as comention_variants picks EASE's lambda: the fusion search then sees one feature.

    Returns:
        (the neighbours, report with m, tau, the number of train examples and every pair's tune objective).
    """
    train = [ex for ex in train if ex.target_item_ids]
    if not train:
        raise DataError("train_retriever.neighbours needs train examples with a target; data/train.jsonl has none")
    column = retriever.column
    t0 = time.perf_counter()
    base = DialogueNeighbours.build(retriever.dialogue_vectors([ex.context for ex in train]),
                                    [[column[t] for t in ex.target_item_ids if t in column] for ex in train],
                                    [ex.dialogue_id for ex in train], len(retriever.item_ids))
    vectors = retriever.dialogue_vectors([ex.context for ex in tune])
    logger.info("embedded %d train and %d tune contexts for the neighbours feature in %.1f s", len(train), len(tune),
                time.perf_counter() - t0)
    pairs = TunePairs.from_examples(tune, retriever.item_ids)
    exclude = [ex.dialogue_id for ex in tune]
    alone: dict[str, float] = {}
    best: tuple[float, int, float] | None = None
    for m in NEIGHBOUR_COUNTS:
        for tau in NEIGHBOUR_TAUS:
            z = zscore_rows(base.with_settings(m, tau).scores(vectors, exclude))
            ranks = pair_ranks(fuse({"neighbours": z}, {"neighbours": 1.0}, retriever.tie), pairs, retriever.id_rank)
            alone[f"{m}/{tau:g}"] = recall_table(ranks, pairs)["objective"]
            if best is None or alone[f"{m}/{tau:g}"] > best[0]:
                best = (alone[f"{m}/{tau:g}"], m, tau)
    assert best is not None
    _, m, tau = best
    logger.info("neighbours feature: m %d, tau %g (tune objective alone %.4f)", m, tau, best[0])
    return base.with_settings(m, tau), {"m": m, "tau": tau, "train_examples": len(train), "tune_objective": alone}


def _tune(retriever: FusedRetriever, examples: list[RecExample], queries: dict[str, str] | None,
          tc: TrainRetrieverConfig, enabled: list[str], seed: int, train_examples: Sequence[RecExample] = (),
          train_dense: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune the no-query (and with-query) weight sets on the tune examples; returns (weights, report).

    With `train_examples` (`train_retriever.weight_examples="train+tune"`) the no-query set is searched on them and
    the tune examples together. Their features are computed as a tune example's are, each leaving the example's own
    dialogue out of the counts and the neighbours' votes, so no train target scores itself. `train_dense`
    (`cross_fitted_dense`) replaces their dense_dialogue feature with one from encoders that never saw them.
    """
    contexts = [ex.context for ex in examples]
    qs: list[str | None] = [queries.get(ex.example_id) for ex in examples] if queries else [None] * len(examples)
    names = enabled + (["dense_query"] if queries else [])
    raw = retriever.features(contexts, qs, [ex.dialogue_id for ex in examples], names)
    z = {name: zscore_rows(x) for name, x in raw.items()}
    del raw
    pairs = TunePairs.from_examples(examples, retriever.item_ids)
    weights: dict[str, Any] = {}
    report: dict[str, Any] = {"examples": len(examples), "pairs": len(pairs.query_index),
                              "novel_pairs": int(pairs.novel.sum()), "train_examples": len(train_examples)}
    dialogue_ids = [ex.dialogue_id for ex in examples]

    def search(zs: dict[str, np.ndarray], rows: TunePairs,
               row_dialogues: list[str | None]) -> tuple[dict[str, float], dict[str, Any]]:
        if tc.weight_resamples:
            return bagged_weights(zs, rows, row_dialogues, retriever.tie, retriever.id_rank, tc.weight_resamples,
                                  seed, tc.weight_grid, tc.tune_passes)
        return tune_weights(zs, rows, retriever.tie, retriever.id_rank, tc.weight_grid, tc.tune_passes)

    plain = {n: z[n] for n in enabled}
    plain_pairs, plain_ids = pairs, dialogue_ids
    if train_examples:
        t0 = time.perf_counter()
        train = list(train_examples)
        ids = [ex.dialogue_id for ex in train]
        computed = [n for n in enabled if train_dense is None or n != "dense_dialogue"]
        raw = retriever.features([ex.context for ex in train], [None] * len(train), ids, computed)
        if train_dense is not None:
            assert train_dense.shape == (len(train), len(retriever.item_ids)), train_dense.shape
            raw["dense_dialogue"] = train_dense
        plain = {n: np.concatenate([zscore_rows(raw.pop(n)), plain[n]]) for n in enabled}
        plain_pairs = TunePairs.from_examples(train + examples, retriever.item_ids)
        plain_ids = ids + dialogue_ids
        report["train_pairs"] = len(plain_pairs.query_index) - len(pairs.query_index)
        logger.info("features of %d train examples for the no-query weight search in %.1f s", len(train),
                    time.perf_counter() - t0)
    weights[NO_QUERY], report[NO_QUERY] = search(plain, plain_pairs, plain_ids)
    weights[WITH_QUERY] = None
    if queries:
        weights[WITH_QUERY], report[WITH_QUERY] = search(z, pairs, dialogue_ids)
    return weights, report


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Fit co-mentions, fine-tune the encoder, tune fusion weights; write the files above, then the manifest.

    Example:
        reges train-retriever --config configs/redial.yaml --run-dir runs/redial train_retriever.finetune=false
    """
    started = now_iso()
    tc = cfg.train_retriever
    data_dir = run_dir.require("data")
    catalog_path = run_dir.require("catalog") / "items.jsonl"
    index_dir = run_dir.require("index")
    paths = {name: data_dir / f"{name}.jsonl" for name in ("train", "tune", "train_dialogues")}
    for name, path in paths.items():
        if not path.is_file():
            fix = "set data.tune_fraction > 0 (e.g. 0.1), then rerun `reges data`" if name == "tune" else "run it"
            raise DataError(f"{path} not found; train-retriever needs it: {fix}")
    lossy_path = data_dir / LOSSY_DIALOGUES_FILE
    use_lossy = tc.use_lossy and lossy_path.is_file()
    if tc.neighbours_lossy and not lossy_path.is_file():
        raise ConfigError(f"train_retriever.neighbours_lossy=true needs {lossy_path}, which the data stage writes "
                          "when data.lossy_file is set; set it and rerun `reges data`, or set "
                          "train_retriever.neighbours_lossy=false")
    if tc.lossy_pairs and not lossy_path.is_file():
        raise ConfigError(f"train_retriever.lossy_pairs={tc.lossy_pairs} needs {lossy_path}, which the data stage "
                          "writes when data.lossy_file is set; set it and rerun `reges data`, or set "
                          "train_retriever.lossy_pairs=0")
    rewrite_path = run_dir.stage_dir("rewrite") / "tune.jsonl"
    use_query = tc.query_feature and run_dir.is_complete("rewrite") and rewrite_path.is_file()
    distill_path = distill_pairs_file(cfg, run_dir)
    ctx = distributed.init_distributed(resolve_device(cfg.index.device, "index.device"))
    out = distributed.main_first(lambda: run_dir.begin(STAGE, cfg.run.overwrite))  # the other ranks wait for it
    if not ctx.is_main:  # the other ranks help with the fine-tuning only
        if tc.finetune:
            items = {it.item_id: it for it in read_catalog(catalog_path)}
            frozen = ItemIndex.load(index_dir)
            _train_encoder(cfg, run_dir, out, frozen, items, distill_path)
            if tc.cross_fit_folds:
                fold_encoders(cfg, run_dir, out, frozen, items, distill_path,
                              cross_fit_split(read_examples(paths["train"]), tc.cross_fit_folds))
        return

    items = read_catalog(catalog_path)
    by_id = {it.item_id: it for it in items}
    frozen = ItemIndex.load(index_dir)
    if frozen.encoder != cfg.index.encoder:
        raise ConfigError(f"index/ was built with encoder {frozen.encoder!r} but index.encoder is "
                          f"{cfg.index.encoder!r}; rerun `reges index` with run.overwrite=true, or set it back")
    if set(frozen.item_ids) != set(by_id):
        raise DataError(f"{index_dir} does not cover catalog/items.jsonl; rerun `reges index` with run.overwrite=true")

    aliases = alias_map(items)  # the dataset ids of every file below mapped to the cleaned catalog's items
    dialogues = read_dialogues(paths["train_dialogues"], aliases) + (
        read_dialogues(lossy_path, aliases) if use_lossy else [])
    cross_stats = None
    if tc.cross_dataset is not None:
        cross, cross_stats = match_title_sets(cross_title_sets(tc.cross_dataset), items)
        dialogues += cross
    counts = CoMention.fit(dialogues)
    outputs = counts.save(out)

    finetune_record: dict[str, Any] | None = None
    device = resolve_device(cfg.index.device, "index.device")
    index_out = out / INDEX_DIR
    # the neighbours' voters, the train+tune weight search and the cross-fitting read the train examples
    train_examples = (read_examples(paths["train"], aliases) if tc.neighbours or tc.weight_examples == "train+tune"
                      else [])
    folds = cross_fit_split(train_examples, tc.cross_fit_folds) if tc.cross_fit_folds else []
    fold_dirs: list[Path] = []
    if tc.finetune:
        finetune_record = _train_encoder(cfg, run_dir, out, frozen, by_id, distill_path)
        if folds:  # now, as the other ranks do: every rank trains the same encoders in the same order
            fold_dirs = fold_encoders(cfg, run_dir, out, frozen, by_id, distill_path, folds) or []
        encoder = SentenceEncoder(load_encoder(str(out / ENCODER_DIR), device, tc.max_seq_length))
        cards = {it.item_id: it.text for it in items}
        t0 = time.perf_counter()
        embeddings = encoder.encode([cards[i] for i in frozen.item_ids], cfg.index.batch_size, cfg.run.show_progress)
        logger.info("re-embedded %d cards in %.1f s", len(items), time.perf_counter() - t0)
        index = ItemIndex.from_embeddings(embeddings, frozen.item_ids, cfg.index, cfg.run.seed,
                                          str(out / ENCODER_DIR), tc.max_seq_length)
        index.save(index_out, embeddings)
        encoder_spec = ENCODER_DIR
    else:
        shutil.copytree(index_dir, index_out, ignore=shutil.ignore_patterns("manifest.json"))
        embeddings = np.load(index_out / EMBEDDINGS_FILE, allow_pickle=False)
        encoder = SentenceEncoder(load_encoder(cfg.index.encoder, device, tc.max_seq_length))
        encoder_spec = cfg.index.encoder
    outputs[f"{INDEX_DIR}/item_ids.txt"] = len(frozen.item_ids)

    settings = FusionSettings(tc.query, tc.max_query_chars, tc.comention_normalization, cfg.index.batch_size,
                              cfg.run.seed)
    enabled = ["dense_dialogue"] + [name for name, on in (("content", tc.content), ("comention", tc.comention),
                                                          ("people", tc.people), ("popularity", tc.popularity),
                                                          ("mentioned", tc.mentioned), ("neighbours", tc.neighbours))
                                    if on]
    people = PeopleIndex.from_items(items, frozen.item_ids) if tc.people else None
    if people is not None:
        outputs[PEOPLE_FILE] = people.save(out)
    retriever = FusedRetriever(encoder, embeddings, frozen.item_ids, counts, {NO_QUERY: {}}, settings, encoder_spec,
                               people=people)
    tune_examples = read_examples(paths["tune"], aliases)
    neighbours_report = None
    if tc.neighbours:
        voters = list(train_examples)
        if tc.neighbours_lossy:
            voters += lossy_examples(read_dialogues(lossy_path, aliases), tc.max_query_chars)[0]
        if tc.neighbours_cross and tc.cross_dataset is not None:
            voters += cross_examples(tc.cross_dataset, items)[0]
        neighbours, neighbours_report = fit_neighbours(retriever, voters, tune_examples)
        outputs[NEIGHBOURS_FILE] = neighbours.save(out)
        retriever = FusedRetriever(encoder, embeddings, frozen.item_ids, counts, {NO_QUERY: {}}, settings,
                                   encoder_spec, people=people, neighbours=neighbours)
    train_dense = cross_fit_report = None
    if folds:  # the config requires finetune and train+tune with it
        train_dense, cross_fit_report = cross_fitted_dense(retriever, fold_dirs, folds, train_examples, by_id, cfg)
    t0 = time.perf_counter()
    weights, report = _tune(retriever, tune_examples, read_queries(rewrite_path) if use_query else None, tc, enabled,
                            cfg.run.seed, train_examples if tc.weight_examples == "train+tune" else (), train_dense)
    tune_s = time.perf_counter() - t0
    spec = {
        "encoder": encoder_spec,
        # with a LoRA-trained encoder, `encoder/` can be rebuilt from the base and the adapter (a shipped bundle)
        "base_encoder": cfg.index.encoder,
        "encoder_adapter": ADAPTER_DIR if (out / ADAPTER_DIR).is_dir() else None,
        "max_seq_length": tc.max_seq_length,
        "settings": dataclasses.asdict(settings),
        "features": enabled + (["dense_query"] if use_query else []),
        "weights": weights,
        "tune": report,
        "finetune": finetune_record,
        "neighbours": neighbours_report,
        "cross_fit": cross_fit_report,
        "counts": {"dialogues": counts.num_dialogues, "items": len(counts.item_ids), "lossy": use_lossy,
                   "cross_dataset": cross_stats},
    }
    write_json(out / FUSION_FILE, spec)
    outputs[FUSION_FILE] = 1

    inputs = {f"data/{name}": path for name, path in paths.items()}
    inputs.update({"catalog": catalog_path, "index": index_dir / "index.faiss"})
    if use_lossy or tc.lossy_pairs or tc.neighbours_lossy:
        inputs["data/lossy_dialogues"] = lossy_path
    if tc.lossy_pairs and tc.lossy_pairs_from == "interleaved":
        inputs.update(interleaved_inputs(cfg))
    if tc.cross_dataset is not None:
        for path in [*tc.cross_dataset.files, tc.cross_dataset.movie_names_file, tc.cross_dataset.lossy_file]:
            if path:
                inputs[f"cross:{path}"] = Path(path)
    if use_query:
        inputs["rewrite/tune"] = rewrite_path
    if distill_path is not None:
        inputs["distill/train"] = distill_path
    run_dir.finish(
        STAGE,
        config=dataclasses.asdict(tc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "tune_objective": {k: report[k]["fused"]["objective"] for k in (NO_QUERY, WITH_QUERY) if k in report},
            "tune_s": round(tune_s, 2),
            "finetune": finetune_record,
            "cross_dataset": cross_stats,
        },
    )
    # checkpoints/encoder stays: redoing this stage (e.g. to tune the with-query weights once `rewrite/` exists)
    # reuses the finished encoder when its fingerprint (config + train data) matches, instead of retraining it.
