"""LoRA fine-tuning of a causal LM on prompt-completion chats: one lean, resumable training loop.

Used by the `train-query` and `train-item` stages. The data is TRL's conversational prompt-completion format,
`{"prompt": [messages], "completion": [messages]}`; both are rendered with the model's chat template, and the loss
is on the completion tokens only (`objective="sft"`).

`objective="listwise"` trains a chooser: each example also lists `"candidates"` (answer strings, the completion
among them), every candidate is scored by its log-likelihood as the answer exactly as `HFLLM.rank` scores it (all
candidates packed after one prompt, a block mask keeping them apart), and the loss is the cross-entropy of the
softmax over candidates towards the completion, plus the completion's mean token loss (so the model still writes
the answer in free and constrained decoding). The hard negatives are then pushed down explicitly, not only present
in the prompt.

Why a loop of our own and not TRL's `SFTTrainer`: for this one recipe (PEFT LoRA, completion-only loss,
gradient accumulation, AdamW with linear warmup/decay) the loop below is one function read top to bottom, it
adds no dependency (TRL pulls in `datasets` and `accelerate`'s Trainer stack), and it checkpoints without pickles
(safetensors + JSON) and resumes exactly (same data order, same final weights), which the stages rely on after a
kill. Its steps cost what a bare forward/backward/AdamW step costs (measured in docs/results/llm_training.md), so
no trainer can be faster here. What TRL would add (packing, padding-free batches, Liger kernels, W&B logging) is
not needed at this scale; data parallelism over GPUs is below, on torch.distributed directly.

Data parallelism: started under `torchrun --nproc-per-node N` (or `accelerate launch`), the same call trains on N
processes (`reges.llm.distributed`). Every rank builds the same plan of optimizer steps; each takes a disjoint,
contiguous share of every step's examples (whole micro-batches of `batch_size` when the step has at least N of them,
so with `grad_accum` a multiple of N each rank runs `grad_accum / N` passes over exactly the micro-batches a single
process would; otherwise the examples are split evenly), and the ranks' gradients are summed before clipping and
AdamW. `batch_size * grad_accum` therefore stays the *global* batch of an optimizer step, whatever N is, and N
processes compute the single-process run's losses and weights up to float rounding (dropout aside: each rank draws
its own masks, seeded with `seed + rank` after the LoRA initialisation, which is the same on every rank). Rank 0
alone writes checkpoints (with every rank's RNG state), the adapter and `trainer_state.json`; every rank reads the
checkpoint it resumes from.

Layout of `out_dir` after `train_lora`:

    adapter/                 PEFT adapter (adapter_config.json, adapter_model.safetensors)
    trainer_state.json       loss curve, tokens/s, wall time, peak RSS, config
    checkpoints/step-N/      while training only: the last `keep_checkpoints` checkpoints
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

import reges.llm.distributed as distributed
from reges.errors import ConfigError, DataError, ModelError
from reges.io import read_json, write_json
from reges.llm.models import resolve_device
from reges.llm.rng import fork_seeded
from reges.llm.scoring import answer_token_ids, packed_answers

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
TRAINER_STATE = "trainer_state.json"
# Steps whose examples are sorted by length together: big enough that each batch holds similar lengths (little
# padding), small enough that the order stays random at the scale of an epoch.
LENGTH_GROUP_STEPS = 50
# Config fields that do not change the numbers a run computes: a resumed run may change them.
RESUMABLE_FIELDS = ("save_every_steps", "keep_checkpoints", "log_every", "device", "gradient_checkpointing")


@dataclass(frozen=True)
class LoraTrainConfig:
    """Settings of one LoRA fine-tuning run.

    Attributes:
        r: LoRA rank.
        alpha: LoRA alpha; the adapter's output is scaled by alpha / r.
        dropout: Dropout on the LoRA input (0 disables it).
        target_modules: Names of the linear layers that get an adapter (Llama: q_proj, k_proj, v_proj, o_proj,
            gate_proj, up_proj, down_proj).
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay on the LoRA weights.
        warmup_ratio: Share of the optimizer steps with a linear warmup; the rest decays linearly towards 0.
        max_grad_norm: Gradients are clipped to this global norm (0 disables clipping).
        epochs: Passes over the examples (used when max_steps is 0).
        max_steps: Optimizer steps to run; > 0 overrides epochs (the data cycles through as many epochs as needed).
        batch_size: Examples per forward/backward pass.
        grad_accum: Passes accumulated per optimizer step; an optimizer step sees batch_size * grad_accum examples.
        max_prompt_tokens: Prompt budget; longer prompts lose their beginning (the end of a dialogue matters most).
        max_completion_tokens: Completion budget; longer completions lose their end.
        save_every_steps: Write a checkpoint every N optimizer steps (0: never; the run cannot resume then).
        keep_checkpoints: How many of the latest checkpoints to keep.
        dtype: "float32", or "bfloat16": base weights in bf16, LoRA weights and optimizer state in fp32. On an
            AMX/AVX512-BF16 CPU bf16 measured 1.5-1.6x faster than fp32, as fast as autocast and 1.1 GiB lighter
            (docs/results/llm_training.md); on CPUs without bf16 support it is slow.
        device: "auto" (cuda when available), "cpu" or "cuda".
        seed: Seeds torch, random and numpy, the LoRA initialisation and the data order of each epoch.
        log_every: Log the mean loss every N optimizer steps.
        objective: "sft" (completion tokens) or "listwise" (a softmax over the candidates' log-likelihoods plus
            the completion's mean token loss; examples need "candidates").
        gradient_checkpointing: Recompute each layer's activations in the backward pass instead of keeping them
            (transformers' gradient checkpointing, non-reentrant): activation memory drops from every layer's to
            about one layer's, for about a third more compute per step. The numbers are the same (dropout masks are
            replayed), so a run may switch it on or off when it resumes. For long prompts on a GPU.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    max_prompt_tokens: int = 768
    max_completion_tokens: int = 128
    save_every_steps: int = 100
    keep_checkpoints: int = 2
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = 10
    objective: Literal["sft", "listwise"] = "sft"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class TokenizedExample:
    """One training example as token ids.

    Attributes:
        input_ids: Prompt then completion tokens (listwise: the prompt only).
        labels: -100 on the prompt tokens, the token ids on the completion tokens (listwise: all -100).
        candidates: Listwise: each candidate's answer ids followed by EOS, as `HFLLM.rank` scores them.
        target: Listwise: the position of the completion among `candidates`.
    """

    input_ids: list[int]
    labels: list[int]
    candidates: tuple[tuple[int, ...], ...] = ()
    target: int = -1


@dataclass(frozen=True)
class TrainResult:
    """What `train_lora` produced.

    Attributes:
        model: The trained model with its adapter attached (a `PeftModel`, in eval mode).
        adapter_dir: The saved PEFT adapter.
        steps: Optimizer steps taken in total (including those before a resume).
        final_loss: Mean completion-token loss of the last step.
        losses: Loss of every optimizer step, in order.
        tokens_per_s: Non-padding tokens (prompt and completion) processed per second of training.
        wall_time_s: Training time in seconds, summed over resumed sessions.
        peak_rss_mb: Peak resident memory of this process in MiB.
        resumed_from_step: The checkpoint step this session started from (0 for a fresh run).
    """

    model: PeftModel
    adapter_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = field(repr=False)
    tokens_per_s: float
    wall_time_s: float
    peak_rss_mb: float
    resumed_from_step: int


# ---------------------------------------------------------------------------------------------------------------
# Data


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} must be a non-empty list of messages, got {type(messages).__name__}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: each message needs string 'role' and 'content', got {m!r:.200}")
    return messages


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: dict[str, Any],
    max_prompt_tokens: int,
    max_completion_tokens: int,
) -> TokenizedExample:
    """Render one prompt-completion chat with the chat template and mask the prompt out of the labels.

    The prompt is rendered with the generation prompt (as at inference) and tokenized on its own; the completion
    is the rest of the rendered full chat. Tokenizing the two apart gives the prompt exactly the ids it gets at
    inference, so the model learns to continue what it will really see.

    Args:
        tokenizer: A tokenizer with a chat template.
        example: `{"prompt": [messages], "completion": [messages]}`.
        max_prompt_tokens: Keep the last this many prompt tokens.
        max_completion_tokens: Keep the first this many completion tokens.

    Returns:
        The token ids and labels (-100 on the prompt).

    Raises:
        DataError: The example is malformed, or the template renders the prompt differently when a completion
            follows (then the prompt-completion split is ambiguous).
    """
    if not isinstance(example, dict) or "prompt" not in example or "completion" not in example:
        raise DataError(f"a training example needs 'prompt' and 'completion' message lists, got {example!r:.200}")
    prompt = _check_messages(example["prompt"], "example 'prompt'")
    completion = _check_messages(example["completion"], "example 'completion'")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise DataError(
            "the chat template renders the prompt differently when the completion follows, so the completion "
            f"cannot be split off; prompt renders as {prompt_text[-80:]!r}, the full chat as "
            f"{full_text[len(prompt_text) - 80 : len(prompt_text) + 20]!r}; use a template whose generation "
            "prompt is a prefix of the assistant turn"
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if not completion_ids:
        raise DataError(f"example completion renders to no tokens: {completion!r:.200}")
    prompt_ids = prompt_ids[-max_prompt_tokens:]
    completion_ids = completion_ids[:max_completion_tokens]
    return TokenizedExample(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )


def tokenize_listwise_example(
    tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], max_prompt_tokens: int, max_completion_tokens: int
) -> TokenizedExample:
    """The prompt and every candidate answer (+ EOS) as `HFLLM.rank` tokenizes them; the completion's position.

    Raises:
        DataError: The example is malformed, its candidates are not distinct strings, or the completion is not one
            of them.
    """
    if not isinstance(example, dict) or "candidates" not in example:
        raise DataError(f"a listwise example needs 'prompt', 'completion' and 'candidates', got {example!r:.200}")
    prompt = _check_messages(example["prompt"], "example 'prompt'")
    completion = _check_messages(example["completion"], "example 'completion'")
    candidates = example["candidates"]
    if (not isinstance(candidates, list) or not candidates or len(set(candidates)) != len(candidates)
            or not all(isinstance(c, str) and c for c in candidates)):
        raise DataError(f"example 'candidates' must be distinct non-empty strings, got {candidates!r:.200}")
    answer = completion[-1]["content"]
    if answer not in candidates:
        raise DataError(f"the completion {answer!r} is not one of the example's candidates")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the tokenizer has no eos token; listwise scoring ends each candidate with it")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    answers = tuple(tuple(ids[:max_completion_tokens]) + (eos,)
                    for ids in answer_token_ids(tokenizer, prompt_text, candidates))
    return TokenizedExample(prompt_ids, [IGNORE_INDEX] * len(prompt_ids), answers, candidates.index(answer))


def listwise_token_logprobs(
    model: torch.nn.Module, example: TokenizedExample, device: torch.device
) -> list[torch.Tensor]:
    """Each candidate's token log-probabilities as the answer to the example's prompt (with gradients).

    The candidates go through in one forward pass, packed after the prompt: a block mask lets each candidate's
    tokens see the prompt and the tokens before them in the same candidate, and position ids restart at the
    prompt's end for each (what `HFLLM.rank` does with a cache), so their sums equal what `rank` computes.
    """
    prompt, cands = example.input_ids, example.candidates
    n_prompt, width = len(prompt), sum(len(a) for a in cands)
    length = n_prompt + width
    answer_rows, answer_positions = packed_answers(n_prompt, cands)
    allowed = torch.zeros((length, length), dtype=torch.bool)
    allowed[:n_prompt, :n_prompt] = torch.ones((n_prompt, n_prompt), dtype=torch.bool).tril()
    allowed[n_prompt:] = answer_rows
    positions = list(range(n_prompt)) + answer_positions
    keep = torch.zeros(length, dtype=torch.bool)
    keep[n_prompt - 1] = True  # the last prompt position predicts every candidate's first token
    offset = n_prompt
    for a in cands:
        keep[offset : offset + len(a) - 1] = True  # these predict the candidate's later tokens
        offset += len(a)
    dtype = model.get_input_embeddings().weight.dtype  # the base weights' dtype (LoRA weights stay fp32)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    logits = model(
        input_ids=torch.tensor([prompt + [t for a in cands for t in a]], device=device),
        position_ids=torch.tensor([positions], device=device),
        attention_mask=mask[None, None].to(device),
        use_cache=False,
        logits_to_keep=keep[None].to(device),
    ).logits  # (kept positions, vocab), in sequence order
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    # One gather for every candidate token: indexing once per candidate made backward write a zeroed
    # (kept positions x vocab) gradient per candidate (11 % of a step's time on INSPIRED examples, end_to_end.md).
    rows, targets = [], []
    row = 1
    for a in cands:
        rows += [0, *range(row, row + len(a) - 1)]  # row 0 (the prompt's last position) predicts every first token
        targets += list(a)
        row += len(a) - 1
    picked = logprobs[torch.tensor(rows, device=logprobs.device), torch.tensor(targets, device=logprobs.device)]
    return list(torch.split(picked, [len(a) for a in cands]))


def listwise_loss(model: torch.nn.Module, example: TokenizedExample, device: torch.device) -> torch.Tensor:
    """Cross-entropy of the softmax over the candidates' summed log-probabilities towards the target, plus the
    target's mean token loss, for one example."""
    rows = listwise_token_logprobs(model, example, device)
    scores = torch.stack([r.sum() for r in rows])
    choice = torch.nn.functional.cross_entropy(scores[None], torch.tensor([example.target], device=scores.device))
    return choice - rows[example.target].mean()


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets attention 0 and label -100.

    Returns:
        `input_ids`, `attention_mask` and `labels`, each (batch, longest example).
    """
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def plan_epoch(lengths: Sequence[int], step_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch, in order.

    The order depends only on (seed, epoch), so a resumed run replays it exactly. Examples are shuffled, then
    sorted by length (longest first) inside windows of `LENGTH_GROUP_STEPS` steps, cut into steps, and the steps
    shuffled again: each step holds similar lengths (little padding) while the epoch stays random. Steps are
    formed before micro-batching, so batch 4 x accumulation 1 and batch 2 x accumulation 2 see the same examples.

    Args:
        lengths: Token count of every example.
        step_size: Examples per optimizer step (batch_size * grad_accum).
        epoch: Epoch number (0-based).
        seed: The run's seed.

    Returns:
        One list of example indices per optimizer step; only the last may be shorter than `step_size`.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    window = step_size * LENGTH_GROUP_STEPS
    steps: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        steps.extend(chunk[j : j + step_size] for j in range(0, len(chunk), step_size))
    return [steps[i] for i in rng.permutation(len(steps)).tolist()]


def step_share(num_examples: int, pass_size: int, world_size: int, rank: int) -> range:
    """The positions of one optimizer step's examples that `rank` of `world_size` processes.

    Whole passes (micro-batches of `pass_size` consecutive examples, as a single process cuts them) are dealt out
    in contiguous runs when the step has at least `world_size` of them, so each rank runs a subset of exactly the
    single-process micro-batches; a step with fewer passes than ranks is split by example instead (smaller
    micro-batches, the same global batch). A single process gets everything.

    Example:
        >>> [step_share(8, 2, 2, r) for r in (0, 1)]  # batch 2 x accumulation 4 on 2 ranks: 2 passes each
        [range(0, 4), range(4, 8)]
        >>> [step_share(4, 4, 2, r) for r in (0, 1)]  # batch 4 x accumulation 1 on 2 ranks: 2 examples each
        [range(0, 2), range(2, 4)]
    """
    if world_size == 1:
        return range(num_examples)
    passes = math.ceil(num_examples / pass_size)
    if passes >= world_size:
        mine = distributed.shard(passes, world_size, rank)
        return range(mine.start * pass_size, min(mine.stop * pass_size, num_examples))
    return distributed.shard(num_examples, world_size, rank)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1 then linear decay; no step gets a learning rate of 0 (that step would be wasted)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for the rest (no pickles).


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, np_keys.tolist(), np_pos, np_has_gauss, np_gauss],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    version, mt_state, gauss = meta["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = optimizer.state_dict()
    tensors = {
        f"{param_id}.{key}": value.detach().cpu().contiguous()
        for param_id, state in sd["state"].items()
        for key, value in state.items()
    }
    return tensors, sd["param_groups"]


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for group in groups:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


def _list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A `step-N` folder is complete by construction: it is renamed into place
    only after everything in it was written."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=_checkpoint_step)


def _save_checkpoint(
    root: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write `root/step-<step>/` atomically (a temporary folder renamed into place), then prune old ones.

    Distributed: every rank calls this (their RNG states are gathered); rank 0 alone writes, storing rank r's RNG
    tensors under "rank<r>." and its Python/numpy states in `rng_ranks[r - 1]`.
    """
    from safetensors.torch import save_file

    final = root / f"step-{step}"
    rng_tensors, rng_meta = _rng_state()
    ctx = distributed.current()
    rank_states = distributed.all_gather_objects((rng_tensors, rng_meta)) if ctx.enabled else []
    if not ctx.is_main:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_adapter(model, tmp / ADAPTER)
    opt_tensors, opt_groups = _optimizer_state(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    extra: dict[str, Any] = {}
    for r, (tensors, _) in enumerate(rank_states[1:], start=1):
        rng_tensors.update({f"rank{r}.{k}": v for k, v in tensors.items()})
    if rank_states:
        extra = {"world_size": ctx.world_size, "rng_ranks": [meta for _, meta in rank_states[1:]]}
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    write_json(
        tmp / TRAINER_STATE,
        {**state, "optimizer_param_groups": opt_groups, "scheduler": sched, "rng": rng_meta, **extra},
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def _load_checkpoint(
    path: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG states; return the saved trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_json(path / TRAINER_STATE)
    device = next(p.device for p in model.parameters() if p.requires_grad)
    adapter = load_file(str(path / ADAPTER / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, adapter)
    if result.unexpected_keys:
        raise ModelError(f"checkpoint {path} holds LoRA weights the model lacks: {result.unexpected_keys[:3]}")
    _load_optimizer_state(
        optimizer, load_file(str(path / "optimizer.safetensors"), device=str(device)), state["optimizer_param_groups"]
    )
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    rng = load_file(str(path / "rng.safetensors"))
    rank = distributed.current().rank
    if rank == 0:
        _set_rng_state({k: v for k, v in rng.items() if not k.startswith("rank")}, state["rng"])
    else:
        prefix = f"rank{rank}."
        mine = {k.removeprefix(prefix): v for k, v in rng.items() if k.startswith(prefix)}
        metas = state.get("rng_ranks", [])
        if mine and len(metas) >= rank:
            _set_rng_state(mine, metas[rank - 1])
        else:  # the checkpoint was written by fewer ranks: this one keeps its fresh seed (seed + rank)
            logger.warning(
                "rank %d: %s holds no RNG state for this rank (written by %d process(es)); its dropout masks will "
                "differ from an uninterrupted run", rank, path, state.get("world_size", 1),
            )
    return state


# ---------------------------------------------------------------------------------------------------------------
# Training


def _validate(cfg: LoraTrainConfig) -> None:
    positive = ("r", "batch_size", "grad_accum", "max_prompt_tokens", "max_completion_tokens")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"LoraTrainConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps < 0 or cfg.epochs < 0 or (cfg.max_steps == 0 and cfg.epochs == 0):
        raise ConfigError(
            f"set LoraTrainConfig.epochs >= 1 or max_steps >= 1, got epochs={cfg.epochs} max_steps={cfg.max_steps}"
        )
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"LoraTrainConfig.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"LoraTrainConfig.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"LoraTrainConfig.dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    if cfg.objective not in ("sft", "listwise"):
        raise ConfigError(f"LoraTrainConfig.objective must be sft or listwise, got {cfg.objective!r}")
    if not cfg.target_modules:
        raise ConfigError("LoraTrainConfig.target_modules is empty; name the linear layers to adapt, e.g. q_proj")


def _data_fingerprint(tokenized: Sequence[TokenizedExample]) -> str:
    h = hashlib.sha256()
    for e in tokenized:
        h.update(json.dumps([e.input_ids, e.labels, e.candidates, e.target] if e.candidates else
                            [e.input_ids, e.labels]).encode())
    return "sha256:" + h.hexdigest()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _check_resumable(saved: dict[str, Any], cfg: LoraTrainConfig, fingerprint: str, path: Path) -> None:
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as saved
    changed = [k for k in now if k not in RESUMABLE_FIELDS and saved["config"].get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved['config'].get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume from {path}: the training config changed ({diffs}); restore those settings, or delete "
            f"{path.parent} to start over"
        )
    if saved["data"] != fingerprint:
        raise DataError(
            f"cannot resume from {path}: the training examples differ from the checkpoint's; train on the same "
            f"examples, or delete {path.parent} to start over"
        )


def train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict[str, Any]],
    cfg: LoraTrainConfig,
    out_dir: Path,
    show_progress: bool,
) -> TrainResult:
    """Fine-tune a LoRA adapter on prompt-completion chats; resume from `out_dir/checkpoints/` when present.

    The model is changed in place: moved to `cfg.device`, cast to `cfg.dtype`, and given LoRA layers (so pass a
    freshly loaded base model). A run killed at any point continues from its latest checkpoint when called again
    with the same model, examples and config, and ends with the same weights as an uninterrupted run.

    Under a launcher (torchrun, accelerate launch) every rank calls this with the same arguments; see the module
    docstring for how the work is shared. Rank 0 alone writes to `out_dir`; every rank returns the trained model.

    The LoRA init and the dropout masks draw from torch's global generator, seeded with `cfg.seed` for the call
    (`reges.llm.rng.fork_seeded`): the caller's generator states are the same afterwards.

    Args:
        model: The base causal LM (no adapter yet).
        tokenizer: Its tokenizer, with a chat template and a pad token.
        examples: `{"prompt": [messages], "completion": [messages]}` dicts.
        cfg: Training settings.
        out_dir: Receives `adapter/`, `trainer_state.json` and, while training, `checkpoints/`.
        show_progress: Show a progress bar over the optimizer steps.

    Returns:
        The trained model and the run's figures.

    Raises:
        ConfigError: A setting is invalid, or differs from the checkpoint being resumed.
        DataError: No examples, a malformed example, or examples that differ from the checkpoint's.
        ModelError: The model already has an adapter, or the tokenizer has no pad token.

    Example:
        >>> model, tokenizer = load_hf(LLMConfig())
        >>> result = train_lora(model, tokenizer, rows, LoraTrainConfig(epochs=2), Path("runs/x/query_expert"), True)
        >>> result.adapter_dir
        PosixPath('runs/x/query_expert/adapter')
    """
    with fork_seeded(cfg.seed):
        return _train_lora(model, tokenizer, examples, cfg, out_dir, show_progress)


def _train_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict[str, Any]],
    cfg: LoraTrainConfig,
    out_dir: Path,
    show_progress: bool,
) -> TrainResult:
    """`train_lora` inside its seeded generators."""
    from peft import LoraConfig, PeftModel, get_peft_model

    _validate(cfg)
    if isinstance(model, PeftModel):
        raise ModelError("train_lora got a model that already has a LoRA adapter; pass the base model")
    if tokenizer.pad_token_id is None:
        raise ModelError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    if not examples:
        raise DataError("train_lora got no training examples")
    out_dir = Path(out_dir)
    ckpt_root = out_dir / CHECKPOINTS

    tokenized = []
    for i, ex in enumerate(examples):
        try:
            tokenize = tokenize_listwise_example if cfg.objective == "listwise" else tokenize_example
            tokenized.append(tokenize(tokenizer, ex, cfg.max_prompt_tokens, cfg.max_completion_tokens))
        except DataError as e:
            raise DataError(f"training example {i}: {e}") from e
    lengths = [len(e.input_ids) + sum(len(a) for a in e.candidates) for e in tokenized]
    fingerprint = _data_fingerprint(tokenized)
    step_size = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(tokenized) / step_size)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    warmup_steps = math.floor(cfg.warmup_ratio * total_steps)
    checkpoints = _list_checkpoints(ckpt_root)
    if checkpoints:  # refuse a mismatched resume before touching the model
        saved = read_json(checkpoints[-1] / TRAINER_STATE)
        _check_resumable(saved, cfg, fingerprint, checkpoints[-1])

    device = torch.device(resolve_device(cfg.device))
    ctx = distributed.init_distributed(device.type)
    if ctx.enabled:
        distributed.check_same(fingerprint, "the tokenized training examples")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    model.to(device=device, dtype=dtype)
    lora_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # PEFT keeps the LoRA weights in fp32 over a bf16 base (autocast_adapter_dtype), so updates are not rounded away.
    try:
        peft_model = get_peft_model(model, lora_config)
    except ValueError as e:  # PEFT's NoMatchingPeftModuleError and unsupported layer types
        raise ConfigError(
            f"LoraTrainConfig.target_modules={list(cfg.target_modules)} does not fit the model ({e}); name linear "
            "layers of the model, e.g. q_proj, v_proj"
        ) from e
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (no enable_input_require_grads) and replays dropout masks
        peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if ctx.enabled:
        distributed.broadcast_parameters(params)  # the same LoRA init everywhere, whatever the ranks' RNG did
        torch.manual_seed(cfg.seed + ctx.rank)  # per-rank seeds: each rank draws its own dropout masks
        random.seed(cfg.seed + ctx.rank)
        np.random.seed(cfg.seed + ctx.rank)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, total_steps))

    start_step, losses, step_times, prior_tokens, prior_time = 0, [], [], 0, 0.0
    if checkpoints:
        _load_checkpoint(checkpoints[-1], peft_model, optimizer, scheduler)
        start_step, losses, step_times = saved["step"], saved["losses"], saved["step_times_s"]
        prior_tokens, prior_time = saved["tokens"], saved["train_time_s"]
        logger.info("resuming from %s (step %d of %d)", checkpoints[-1], start_step, total_steps)
    logger.info(
        "LoRA training: %d examples, %d steps of %d examples (%d x %d), r=%d on %s, %s on %s",
        len(tokenized),
        total_steps,
        step_size,
        cfg.batch_size,
        cfg.grad_accum,
        cfg.r,
        ",".join(cfg.target_modules),
        cfg.dtype,
        device,
    )
    pass_size = 1 if cfg.objective == "listwise" else cfg.batch_size
    if ctx.enabled:
        passes = math.ceil(step_size / pass_size)
        logger.info("data parallel on %d processes: each runs about %.2g of the %d passes of a step (global batch %d)",
                    ctx.world_size, passes / ctx.world_size, passes, step_size)
        if passes % ctx.world_size:
            logger.warning(
                "a step's %d passes do not split evenly over %d processes: some wait for others; set grad_accum "
                "to a multiple of %d (and batch_size so that batch_size * grad_accum stays the global batch)",
                passes, ctx.world_size, ctx.world_size,
            )

    peft_model.train()
    pad_id = int(tokenizer.pad_token_id)
    tokens, started = prior_tokens, time.perf_counter()
    plan: list[list[int]] = []
    plan_for = -1
    bar = tqdm(total=total_steps, initial=start_step, desc="LoRA steps", disable=not (show_progress and ctx.is_main))
    for step in range(start_step, total_steps):
        step_started = time.perf_counter()
        epoch, position = divmod(step, steps_per_epoch)
        if plan_for != epoch:
            plan, plan_for = plan_epoch(lengths, step_size, epoch, cfg.seed), epoch
        step_examples = [tokenized[i] for i in plan[position]]
        # Normalise by the completion tokens of the whole step, so accumulated micro-batches give the gradient of
        # one big batch (a per-micro-batch mean would weight short completions more).
        step_targets = sum(sum(t != IGNORE_INDEX for t in e.labels) for e in step_examples)
        # This process's share of the step (all of it when not distributed); the normaliser stays the global one.
        share = step_share(len(step_examples), pass_size, ctx.world_size, ctx.rank)
        local_examples = step_examples[share.start : share.stop]
        step_loss = 0.0
        tokens_before = tokens
        if cfg.objective == "listwise":  # one example per pass (its candidates already make it a batch)
            step_targets = len(step_examples)
            for example in local_examples:
                loss = listwise_loss(peft_model, example, device)
                (loss / step_targets).backward()
                step_loss += loss.item()
                tokens += len(example.input_ids) + sum(len(a) for a in example.candidates)
        else:
            for start in range(0, len(local_examples), cfg.batch_size):
                batch = {
                    k: v.to(device)
                    for k, v in collate(local_examples[start : start + cfg.batch_size], pad_id).items()
                }
                # Project onto the vocabulary only where a completion token is predicted: prompts are long and
                # completions short, so full-sequence logits cost most of the memory and about a fifth of the compute.
                targets = batch["labels"][:, 1:]  # (batch, width - 1)
                keep = torch.zeros_like(batch["labels"], dtype=torch.bool)  # (batch, width)
                keep[:, :-1] = targets != IGNORE_INDEX
                logits = peft_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                    logits_to_keep=keep,
                ).logits  # (completion tokens in the batch, vocab)
                loss_sum = torch.nn.functional.cross_entropy(
                    logits.float(), targets[keep[:, :-1]], ignore_index=IGNORE_INDEX, reduction="sum"
                )
                (loss_sum / step_targets).backward()
                step_loss += loss_sum.item()
                tokens += int(batch["attention_mask"].sum())
        if ctx.enabled:  # sum the ranks' gradients (each already divided by the global normaliser), loss and tokens
            distributed.all_reduce_gradients(params)
            step_loss, step_tokens = distributed.all_reduce_sum([step_loss, tokens - tokens_before])
            tokens = tokens_before + int(step_tokens)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        step_lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss / step_targets)
        step_times.append(time.perf_counter() - step_started)
        bar.update(1)
        done = step + 1
        if cfg.log_every > 0 and done % cfg.log_every == 0 and ctx.is_main:
            elapsed = prior_time + time.perf_counter() - started
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f tokens/s",
                done,
                total_steps,
                float(np.mean(losses[-cfg.log_every :])),
                step_lr,
                tokens / max(elapsed, 1e-9),
            )
        if cfg.save_every_steps > 0 and done % cfg.save_every_steps == 0 and done < total_steps:
            state = {
                "step": done,
                "epoch": done // steps_per_epoch,
                "position": done % steps_per_epoch,
                "losses": losses,
                "step_times_s": step_times,
                "tokens": tokens,
                "train_time_s": prior_time + time.perf_counter() - started,
                "config": dataclasses.asdict(cfg),
                "data": fingerprint,
            }
            _save_checkpoint(ckpt_root, done, peft_model, optimizer, scheduler, state, cfg.keep_checkpoints)
    bar.close()
    wall = prior_time + time.perf_counter() - started
    if cfg.gradient_checkpointing:
        peft_model.activation_checkpointing_disable()
    peft_model.eval()

    adapter_dir = out_dir / ADAPTER
    result = TrainResult(
        model=peft_model,
        adapter_dir=adapter_dir,
        steps=total_steps,
        final_loss=losses[-1],
        losses=losses,
        tokens_per_s=tokens / max(wall, 1e-9),
        wall_time_s=wall,
        peak_rss_mb=_peak_rss_mb(),
        resumed_from_step=start_step,
    )
    if not ctx.is_main:
        distributed.barrier()  # returns once rank 0 has written the adapter
        return result
    tmp = out_dir / f".tmp-{ADAPTER}"
    for path in (tmp, adapter_dir):
        if path.exists():
            shutil.rmtree(path)
    save_adapter(peft_model, tmp)
    os.replace(tmp, adapter_dir)
    figures: dict[str, Any] = {}
    if ctx.enabled:
        figures["world_size"] = ctx.world_size
    if device.type == "cuda":
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    write_json(
        out_dir / TRAINER_STATE,
        {
            "steps": total_steps,
            "examples": len(tokenized),
            "epochs": total_steps / steps_per_epoch,
            "final_loss": result.final_loss,
            "losses": losses,
            "step_times_s": step_times,
            "tokens": tokens,
            "tokens_per_s": result.tokens_per_s,
            "wall_time_s": wall,
            "peak_rss_mb": result.peak_rss_mb,
            "resumed_from_step": start_step,
            "device": str(device),
            "config": dataclasses.asdict(cfg),
            "data": fingerprint,
            **figures,
        },
    )
    # The final adapter supersedes the checkpoints; they hold optimizer state twice the adapter's size.
    if ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    distributed.barrier()
    logger.info(
        "LoRA training done: %d steps, final loss %.4f, %.0f tokens/s", total_steps, losses[-1], result.tokens_per_s
    )
    return result


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """Silence the FutureWarning peft 0.21 raises by reading transformers' deprecated `is_gradient_checkpointing`
    (theirs, not ours) while a model is wrapped in or loaded with LoRA layers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def save_adapter(model: Any, folder: Path) -> None:
    """`model.save_pretrained(folder)` of a PEFT model: the adapter weights and config, without a model card.

    PEFT writes a README.md template next to the weights whose front matter holds the base model's local path (a
    cache folder on the training machine). Nothing reads it, and a shipped adapter would carry it, so it goes.
    save_embedding_layers=False: PEFT would otherwise store a full copy of lm_head/embeddings whenever they are
    LoRA targets; that copy is only needed after resizing the vocabulary, which we never do.
    """
    model.save_pretrained(str(folder), save_embedding_layers=False)
    (Path(folder) / "README.md").unlink(missing_ok=True)


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """Attach a saved PEFT LoRA adapter to a base model, for inference.

    Args:
        model: The base model the adapter was trained on (changed in place: it gets the LoRA layers).
        adapter_dir: A folder written by `train_lora` (or any PEFT `save_pretrained`).

    Returns:
        The model with the adapter, in eval mode.

    Raises:
        ModelError: The folder is not an adapter, or does not fit the model.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"{adapter_dir} has no adapter_config.json, so it is not a PEFT adapter; point at the adapter/ folder "
            "written by training"
        )
    try:
        with peft_quiet():  # would otherwise print twice on every `reges recommend` (one per expert)
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(
            f"the adapter in {adapter_dir} does not fit this model ({type(e).__name__}: {e}); load the base model "
            "it was trained on"
        ) from e
    peft_model.eval()
    return peft_model


def merge_adapter(model_with_adapter: PeftModel) -> PreTrainedModel:
    """Fold the LoRA weights into the base weights and return the plain model.

    Why: a merged model runs at the base model's speed (no extra adapter matmuls) and can be saved as an ordinary
    HF folder. The adapter's layers are removed from the model.

    Raises:
        ModelError: The model has no adapter.
    """
    from peft import PeftModel

    if not isinstance(model_with_adapter, PeftModel):
        raise ModelError(
            f"merge_adapter needs a model with a LoRA adapter (a PeftModel), got {type(model_with_adapter).__name__}"
        )
    return model_with_adapter.merge_and_unload()
