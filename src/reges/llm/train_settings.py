"""The LoRA run that a training stage's config section describes (`train_query` or `train_item`).

Both LoRA stages (`reges.query_expert.train`, `reges.item_expert.train`) build their `LoraTrainConfig` here, so
the dtype rule and the shared fields are written once.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from reges.config import TrainItemConfig, TrainQueryConfig
from reges.errors import ConfigError
from reges.llm.lora import LoraTrainConfig
from reges.llm.models import cpu_has_bf16, resolve_device

# The Item Expert's completion is a title alone: 64 tokens cover any title with room to spare.
ITEM_MAX_COMPLETION_TOKENS = 64


def resolve_train_dtype(dtype: str, device: str, setting: str) -> Literal["float32", "bfloat16"]:
    """A stage's `dtype` setting as a `LoraTrainConfig` dtype: "auto" is bfloat16 on CUDA and on CPUs with native bf16.

    Why: on this project's AMX CPU, bf16 base weights trained 1.5-1.7x faster than fp32 (docs/results/llm_training.md);
    on CPUs without bf16 arithmetic bf16 is slow, so they get float32.

    Args:
        dtype: "auto", "float32" or "bfloat16".
        device: The training device setting ("auto", "cpu" or "cuda").
        setting: The config key of `dtype`, for the error message (e.g. "train_query.dtype").

    Raises:
        ConfigError: `dtype` is none of the three.
    """
    if dtype == "auto":
        return "bfloat16" if resolve_device(device) == "cuda" or cpu_has_bf16() else "float32"
    if dtype == "float32" or dtype == "bfloat16":
        return dtype
    raise ConfigError(f"{setting} must be auto, float32 or bfloat16, got {dtype!r}")


def lora_config(tc: TrainQueryConfig | TrainItemConfig, device: str, seed: int) -> LoraTrainConfig:
    """The LoRA training settings of the Query Expert (`train_query`) or the Item Expert (`train_item`).

    The Item Expert's section has no alpha, dropout or completion budget: it uses alpha = 2 r (the usual scale),
    the default dropout and target modules, and `ITEM_MAX_COMPLETION_TOKENS`.

    Args:
        tc: The stage's config section.
        device: The device of the LLM being trained (`llm.device`, or `item_llm.device` for the Item Expert).
        seed: The run seed.
    """
    shared = LoraTrainConfig(
        r=tc.r,
        lr=tc.lr,
        epochs=tc.epochs,
        max_steps=tc.max_steps,
        batch_size=tc.batch_size,
        grad_accum=tc.grad_accum,
        max_prompt_tokens=tc.max_prompt_tokens,
        save_every_steps=tc.save_every_steps,
        gradient_checkpointing=tc.gradient_checkpointing,
        device=device,  # type: ignore[arg-type]
        seed=seed,
    )
    if isinstance(tc, TrainQueryConfig):
        return dataclasses.replace(
            shared,
            alpha=tc.alpha,
            dropout=tc.dropout,
            max_completion_tokens=tc.max_completion_tokens,
            dtype=resolve_train_dtype(tc.dtype, device, "train_query.dtype"),
        )
    return dataclasses.replace(
        shared,
        alpha=2.0 * tc.r,
        max_completion_tokens=ITEM_MAX_COMPLETION_TOKENS,
        dtype=resolve_train_dtype(tc.dtype, device, "train_item.dtype"),
        objective=tc.objective,
    )
