"""Contrastive fine-tuning of the sentence encoder on (dialogue context, true item card) pairs.

The frozen encoder ranks items by how much a card *reads like* the chit-chat, which is weak (ReDial R@50 0.14 on
the raw dialogue, below popularity). Training on the train split's own recommendations teaches it what a
dialogue that ends in a given kind of recommendation looks like.

Data: one pair per (example, target) of `data/train.jsonl`: anchor = the dialogue context as text
(`queries.context_to_query`), positive = the target's card. Optionally (`train_retriever.distill_pairs`) one more
pair per target of each `distill/train.jsonl` row: anchor = the teacher's pseudo-query, so the same encoder also
serves the Query Expert's queries.

Loss: in-batch-negatives InfoNCE, the loss of sentence-transformers' `MultipleNegativesRankingLoss` (cosine x
scale 20, cross-entropy over every card in the batch), plus `hard_negatives` cards per pair sampled from the
frozen encoder's top-50 for that anchor. Written out here (`contrastive_loss`, equal to MNRL without a mask, see
the tests) because it needs a mask MNRL does not take: on ReDial a popular film is the positive of several
anchors of one batch, and a card mentioned earlier in an anchor's dialogue is no negative for it. Masked out,
for each anchor: every target of its example, every item its dialogue mentions, and every item whose
`title_key` equals a target's (the same film under two ids). Hard negatives are sampled among the top-50 minus
the same set.

Why a lean loop rather than `SentenceTransformerTrainer`: that trainer needs `datasets` (not installed here) and
the mask above; the loop is ~60 lines, seeded, and checkpoints (safetensors + JSON, no pickles) every
`save_every_steps` so a killed run resumes at the same step with the same data order.

Data parallelism: under `torchrun --nproc-per-node N` (`reges.llm.distributed`) each rank embeds a contiguous
share of every batch's anchors and cards, the embeddings are all-gathered, every rank computes the loss over the
whole batch (so the in-batch negatives are those of the global `batch_size`, as on one process) and backpropagates
through its own rows only, and the ranks' gradients are summed: the single-process gradient up to float rounding.
Rank 0 alone writes checkpoints (with every rank's RNG state); per-rank seeds are `seed + rank` (dropout).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm import tqdm

from reges.config import TrainRetrieverConfig
from reges.errors import ConfigError, DataError
from reges.io import read_json, write_json
from reges.llm import distributed
from reges.llm.models import resolve_dtype
from reges.llm.rng import fork_seeded
from reges.records import Item, RecExample
from reges.retrieval.comention import context_item_ids
from reges.retrieval.encoder import Encoder
from reges.retrieval.queries import context_to_query
from reges.titles import title_key

logger = logging.getLogger(__name__)

SCALE = 20.0  # MultipleNegativesRankingLoss's default: cosine similarities times 20 (temperature 0.05)
MINE_TOP_K = 50  # hard negatives are sampled from the frozen encoder's top-50 per anchor
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class Pair:
    """One training pair.

    Attributes:
        anchor: The dialogue context (or pseudo-query) text.
        positive_id: The true item.
        excluded_ids: Items that must not serve as negatives for this anchor (false negatives).
        source: "dialogue", "distill", "cross" (another dataset's dialogue) or "lossy" (an order-free pair from
            ReDial's lossy file: `reges.data.lossy.lossy_examples`).
    """

    anchor: str
    positive_id: str
    excluded_ids: frozenset[str]
    source: str


@dataclass
class FinetuneResult:
    """What a fine-tuning run did (goes into the manifest).

    `loss_start` / `loss_end` are the mean loss of the first and last tenth of the steps (at least one step each).
    """

    steps: int
    pairs: int
    epochs: int
    seconds: float
    pairs_per_s: float
    first_loss: float
    last_loss: float
    loss_start: float
    loss_end: float
    resumed_from_step: int
    dtype: str


def false_negative_ids(example: RecExample, title_keys: dict[str, str]) -> frozenset[str]:
    """Items that may not be a negative for `example`: its targets, what its context mentions, same-title items."""
    out = set(example.target_item_ids) | set(context_item_ids(example.context))
    keys = {title_keys[t] for t in example.target_item_ids if t in title_keys}
    if keys:
        out |= {item_id for item_id, key in title_keys.items() if key in keys}
    return frozenset(out)


def build_pairs(
    examples: Sequence[RecExample],
    items: dict[str, Item],
    query_mode: str,
    max_query_chars: int,
    distill_queries: dict[str, str] | None = None,
    source: str = "dialogue",
) -> list[Pair]:
    """Training pairs: one per (example, in-catalog target) with a non-empty context, plus distill pairs.

    Args:
        examples: Train examples.
        items: The catalog by id (targets outside it are skipped).
        query_mode: "full" or "last2" (`context_to_query`).
        max_query_chars: Anchor length cap (the end of the dialogue is kept).
        distill_queries: example_id -> teacher pseudo-query; each adds one pair per target of that example.
        source: The dialogue pairs' `Pair.source` ("cross" for another dataset's examples).

    Returns:
        Pairs in example order (dialogue pairs, then distill pairs).
    """
    title_keys = {item_id: title_key(item.title) for item_id, item in items.items()}
    dialogue_pairs: list[Pair] = []
    distill_pairs: list[Pair] = []
    for ex in examples:
        targets = [t for t in dict.fromkeys(ex.target_item_ids) if t in items]
        if not targets:
            continue
        excluded = false_negative_ids(ex, title_keys)
        anchor = context_to_query(ex.context, query_mode, max_query_chars)  # type: ignore[arg-type]
        if anchor.strip():
            dialogue_pairs.extend(Pair(anchor, t, excluded, source) for t in targets)
        query = (distill_queries or {}).get(ex.example_id, "")
        if query.strip():
            distill_pairs.extend(Pair(query, t, excluded, "distill") for t in targets)
    return dialogue_pairs + distill_pairs


def mine_hard_negatives(
    pairs: Sequence[Pair],
    encoder: Encoder,
    item_embeddings: np.ndarray,
    item_ids: Sequence[str],
    num_negatives: int,
    seed: int,
    batch_size: int = 64,
    show_progress: bool = False,
) -> list[list[str]]:
    """For each pair, `num_negatives` items sampled among the frozen encoder's top-50 for its anchor.

    False negatives (`Pair.excluded_ids`) never qualify. When fewer than `num_negatives` remain in the top-50
    (tiny catalogs), the rest is drawn at random from the whole catalog, so every pair has the same count.

    Args:
        pairs: The training pairs.
        encoder: The frozen encoder (the one the card embeddings come from).
        item_embeddings: (num_items, dim) L2-normalised card embeddings, rows aligned with `item_ids`.
        item_ids: The catalog ids.
        num_negatives: Negatives per pair (0: none).
        seed: Seed of the sampling.
        batch_size: Anchors encoded per batch.
        show_progress: tqdm bar while encoding.

    Returns:
        One list of item ids per pair.
    """
    if num_negatives <= 0:
        return [[] for _ in pairs]
    rng = np.random.default_rng(seed)
    anchors = sorted({p.anchor for p in pairs})
    position = {a: i for i, a in enumerate(anchors)}
    emb = encoder.encode(anchors, batch_size, show_progress)  # (num_anchors, dim)
    scores = emb @ item_embeddings.T  # (num_anchors, num_items)
    top_k = min(MINE_TOP_K, len(item_ids))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]  # (num_anchors, top_k)
    out: list[list[str]] = []
    for p in pairs:
        candidates = [item_ids[j] for j in top[position[p.anchor]] if item_ids[j] not in p.excluded_ids]
        chosen = [candidates[j] for j in sorted(rng.permutation(len(candidates))[:num_negatives])]
        if len(chosen) < num_negatives:
            rest = [i for i in item_ids if i not in p.excluded_ids and i not in chosen]
            chosen += [rest[j] for j in rng.permutation(len(rest))[: num_negatives - len(chosen)]]
        out.append(chosen)
    return out


def contrastive_loss(
    anchors: torch.Tensor, docs: torch.Tensor, mask: torch.Tensor, scale: float = SCALE
) -> torch.Tensor:
    """In-batch-negatives InfoNCE with masked false negatives.

    Args:
        anchors: (B, dim) anchor embeddings.
        docs: (M, dim) candidate embeddings; row i < B is anchor i's positive, the rest are negatives
            (in-batch positives of other anchors and the hard negatives).
        mask: (B, M) bool, True where a candidate must not count as a negative for an anchor. The positive
            itself (column i for row i) is never masked, whatever `mask` says.
        scale: Similarity scale (1 / temperature).

    Returns:
        The mean cross-entropy of picking each anchor's positive: with an all-False mask, exactly
        `MultipleNegativesRankingLoss(scale=scale)` on (anchor, positive, negatives...) columns.
    """
    a = torch.nn.functional.normalize(anchors, dim=-1)
    d = torch.nn.functional.normalize(docs, dim=-1)
    logits = scale * (a @ d.T)  # (B, M)
    batch = anchors.shape[0]
    labels = torch.arange(batch, device=anchors.device)
    mask = mask.clone()
    mask[labels, labels] = False
    logits = logits.masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, labels)


def plan_epoch(num_pairs: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """Pair indices of each step of one epoch; depends only on (seed, epoch) so a resumed run replays it."""
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs).tolist()
    return [order[i : i + batch_size] for i in range(0, num_pairs, batch_size)]


def _batch_mask(pairs: Sequence[Pair], doc_ids: Sequence[str]) -> torch.Tensor:
    """(B, M) True where doc j is a false negative for anchor i (or the same item as i's positive)."""
    mask = torch.zeros((len(pairs), len(doc_ids)), dtype=torch.bool)
    for i, p in enumerate(pairs):
        for j, doc_id in enumerate(doc_ids):
            if doc_id == p.positive_id or doc_id in p.excluded_ids:
                mask[i, j] = True
    return mask


def _embed(model: SentenceTransformer, texts: list[str], device: torch.device, chunk_size: int) -> torch.Tensor:
    """(len(texts), dim) embeddings with gradients, computed in chunks of similar length.

    A batch padded to its longest text wastes most of its compute: ReDial anchors average 93 tokens but a batch of
    32 reaches ~240. Sorting by length and embedding `chunk_size` texts at a time measured 2-2.4x faster per
    pair on one CPU thread (chunks of 8); the loss is unchanged (the chunks are stitched back in order).
    """
    if chunk_size <= 0:
        chunks = [list(range(len(texts)))]
    else:
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        chunks = [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]
    rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for chunk in chunks:
        features = model.preprocess([texts[i] for i in chunk])
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        emb = model(features)["sentence_embedding"]  # (len(chunk), dim)
        for k, i in enumerate(chunk):
            rows[i] = emb[k]
    return torch.stack(rows)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 then linear decay; no step gets a learning rate of 0 (that step would be wasted)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def _fingerprint(pairs: Sequence[Pair], negatives: Sequence[Sequence[str]], cfg: TrainRetrieverConfig) -> str:
    import hashlib

    h = hashlib.sha256()
    for p, negs in zip(pairs, negatives, strict=True):
        h.update(f"{p.anchor}\t{p.positive_id}\t{','.join(negs)}\n".encode())
    h.update(f"{cfg.epochs} {cfg.batch_size} {cfg.lr} {cfg.warmup_ratio} {cfg.dtype}".encode())
    return h.hexdigest()


# Checkpoints: the model's weights as safetensors, AdamW's state as safetensors, the rest JSON (no pickles).


def _save_checkpoint(root: Path, step: int, model: SentenceTransformer, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any]) -> None:
    """Distributed: every rank calls this (their RNG states are gathered), rank 0 alone writes."""
    from safetensors.torch import save_file

    ctx = distributed.current()
    rng_ranks = distributed.all_gather_objects(torch.get_rng_state().tolist()) if ctx.enabled else []
    if not ctx.is_main:
        return
    if rng_ranks:
        state = {**state, "world_size": ctx.world_size, "torch_rng_ranks": rng_ranks[1:]}
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    sd = optimizer.state_dict()
    save_file(
        {f"{pid}.{key}": v.detach().cpu().contiguous() for pid, st in sd["state"].items() for key, v in st.items()},
        str(tmp / "optimizer.safetensors"),
    )
    write_json(tmp / TRAINER_STATE, {**state, "param_groups": sd["param_groups"],
                                     "torch_rng": torch.get_rng_state().tolist()})
    final = root / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(root)[:-1]:
        shutil.rmtree(old)


def _checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def _load_checkpoint(path: Path, model: SentenceTransformer, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = read_json(path / TRAINER_STATE)
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    opt: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in load_file(str(path / "optimizer.safetensors"), device=str(device)).items():
        pid, key = name.split(".", 1)
        opt.setdefault(int(pid), {})[key] = value
    groups = state["param_groups"]
    for group in groups:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt, "param_groups": groups})
    rank = distributed.current().rank
    if rank == 0:
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    elif len(state.get("torch_rng_ranks", [])) >= rank:
        torch.set_rng_state(torch.tensor(state["torch_rng_ranks"][rank - 1], dtype=torch.uint8))
    else:  # written by fewer ranks: this one keeps its fresh seed (seed + rank)
        logger.warning("rank %d: %s holds no RNG state for this rank; its dropout masks will differ from an "
                       "uninterrupted run", rank, path)
    return state


def finetune_encoder(
    model: SentenceTransformer,
    pairs: Sequence[Pair],
    negatives: Sequence[Sequence[str]],
    items: dict[str, Item],
    cfg: TrainRetrieverConfig,
    seed: int,
    checkpoint_dir: Path | None = None,
    show_progress: bool = False,
) -> FinetuneResult:
    """Train `model` in place with the masked in-batch + hard-negatives loss; resume from `checkpoint_dir`.

    Args:
        model: The sentence-transformers model (its device is used).
        pairs: Training pairs (`build_pairs`).
        negatives: Hard negatives per pair (`mine_hard_negatives`), same length as `pairs`.
        items: Catalog by id (card texts).
        cfg: epochs, batch_size, lr, warmup_ratio, save_every_steps, chunk_size, dtype.
        seed: Seeds the data order (a local generator) and the dropout masks (torch's global generator, seeded for
            the call and given back after it: `reges.llm.rng.fork_seeded`).
        checkpoint_dir: Where step checkpoints go (None: no checkpoints, no resume).
        show_progress: tqdm bar over steps.

    Returns:
        Step count, speed and losses.

    Raises:
        DataError: no pairs, or negatives not aligned with pairs; or a checkpoint of other data.
    """
    with fork_seeded(seed):
        return _finetune_encoder(model, pairs, negatives, items, cfg, seed, checkpoint_dir, show_progress)


def _finetune_encoder(
    model: SentenceTransformer,
    pairs: Sequence[Pair],
    negatives: Sequence[Sequence[str]],
    items: dict[str, Item],
    cfg: TrainRetrieverConfig,
    seed: int,
    checkpoint_dir: Path | None,
    show_progress: bool,
) -> FinetuneResult:
    """`finetune_encoder` inside its seeded generators."""
    if not pairs:
        raise DataError("no training pairs for the encoder: train examples need a context and an in-catalog target")
    if len(negatives) != len(pairs):
        raise DataError(f"{len(negatives)} hard-negative lists for {len(pairs)} pairs")
    device = next(model.parameters()).device
    compute_dtype = resolve_dtype(cfg.dtype, device.type)
    ctx = distributed.init_distributed(device.type)
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, warmup_steps, total_steps)
    )
    fingerprint = _fingerprint(pairs, negatives, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    dim = model.get_embedding_dimension() or 0
    if ctx.enabled:
        distributed.check_same(fingerprint, "the encoder's training pairs and negatives")
        distributed.broadcast_parameters(params)
        torch.manual_seed(seed + ctx.rank)  # per-rank seeds: each rank draws its own dropout masks
        if dim <= 0:
            raise ConfigError("distributed encoder fine-tuning needs the model's embedding dimension, and "
                              "get_embedding_dimension() gave none; fine-tune on one process")
    start_step = 0
    losses: list[float] = []
    found = _checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
    if found:
        saved = read_json(found[-1] / TRAINER_STATE)
        if saved["fingerprint"] != fingerprint:
            raise DataError(f"cannot resume from {found[-1]}: it was trained on other pairs or settings; delete "
                            f"{checkpoint_dir} or use run.overwrite=true")
        state = _load_checkpoint(found[-1], model, optimizer, device)
        start_step = int(state["step"])
        losses = [float(x) for x in state["losses"]]
        scheduler.last_epoch = start_step  # the schedule continues where it stopped
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * _lr_factor(start_step, warmup_steps, total_steps)
        logger.info("encoder fine-tuning resumes from %s (step %d of %d)", found[-1], start_step, total_steps)
    model.train()
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=total_steps, initial=start_step, desc="fine-tune encoder",
               disable=not (show_progress and ctx.is_main))
    for epoch in range(cfg.epochs):
        for batch in plan_epoch(len(pairs), cfg.batch_size, epoch, seed):
            if step < start_step:
                step += 1
                continue
            batch_pairs = [pairs[i] for i in batch]
            doc_ids = [p.positive_id for p in batch_pairs] + [n for i in batch for n in negatives[i]]
            mask = _batch_mask(batch_pairs, doc_ids).to(device)
            if not ctx.enabled:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16):
                    anchors = _embed(model, [p.anchor for p in batch_pairs], device, cfg.chunk_size)  # (B, dim)
                    docs = _embed(model, [items[d].text for d in doc_ids], device, cfg.chunk_size)  # (M, dim)
                # the loss in float32: bf16 cosines times 20 would round the logits to about 0.1
                loss = contrastive_loss(anchors.float(), docs.float(), mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            else:
                loss = _distributed_loss(model, batch_pairs, doc_ids, items, mask, cfg.chunk_size, compute_dtype,
                                         dim, optimizer)
                distributed.all_reduce_gradients(params)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if checkpoint_dir is not None and cfg.save_every_steps and step % cfg.save_every_steps == 0:
                _save_checkpoint(checkpoint_dir, step, model, optimizer,
                                 {"step": step, "fingerprint": fingerprint, "losses": losses})
    bar.close()
    model.eval()
    seconds = time.perf_counter() - t0
    trained_pairs = sum(len(b) for e in range(cfg.epochs) for b in plan_epoch(len(pairs), cfg.batch_size, e, seed))
    trained_pairs -= sum(len(b) for b in _first_steps(len(pairs), cfg, seed, start_step))
    tenth = max(1, len(losses) // 10)
    result = FinetuneResult(
        steps=total_steps,
        pairs=len(pairs),
        epochs=cfg.epochs,
        seconds=round(seconds, 2),
        pairs_per_s=round(trained_pairs / seconds, 2) if seconds > 0 else 0.0,
        first_loss=losses[0],
        last_loss=losses[-1],
        loss_start=float(np.mean(losses[:tenth])),
        loss_end=float(np.mean(losses[-tenth:])),
        resumed_from_step=start_step,
        dtype=str(compute_dtype).removeprefix("torch."),
    )
    logger.info("encoder fine-tuned (%s): %d steps, %.1f pairs/s, loss %.3f -> %.3f", compute_dtype, total_steps,
                result.pairs_per_s, result.loss_start, result.loss_end)
    return result


def _distributed_loss(model: SentenceTransformer, batch_pairs: list[Pair], doc_ids: list[str], items: dict[str, Item],
                      mask: torch.Tensor, chunk_size: int, compute_dtype: torch.dtype, dim: int,
                      optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One batch's loss on this rank, gradients of its own rows computed (not yet summed over the ranks).

    This rank embeds its shares of the anchors and cards; the gathered (B, dim) and (M, dim) matrices give every rank
    the whole batch's loss (`distributed.all_gather_rows`).
    """
    ctx = distributed.current()
    device = mask.device
    mine_a = distributed.shard(len(batch_pairs), ctx.world_size, ctx.rank)
    mine_d = distributed.shard(len(doc_ids), ctx.world_size, ctx.rank)
    local_a = local_d = None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16):
        if len(mine_a):
            local_a = _embed(model, [batch_pairs[i].anchor for i in mine_a], device, chunk_size)
        if len(mine_d):
            local_d = _embed(model, [items[doc_ids[i]].text for i in mine_d], device, chunk_size)
    anchors = distributed.all_gather_rows(local_a, len(batch_pairs), dim, device)  # (B, dim) float32
    docs = distributed.all_gather_rows(local_d, len(doc_ids), dim, device)  # (M, dim) float32
    loss = contrastive_loss(anchors, docs, mask)
    optimizer.zero_grad(set_to_none=True)
    if local_a is not None or local_d is not None:  # else no row of this rank: nothing to differentiate
        loss.backward()
    return loss


def _first_steps(num_pairs: int, cfg: TrainRetrieverConfig, seed: int, num_steps: int) -> list[list[int]]:
    """The batches of the first `num_steps` steps (those a resumed run skips)."""
    steps = [b for e in range(cfg.epochs) for b in plan_epoch(num_pairs, cfg.batch_size, e, seed)]
    return steps[:num_steps]
