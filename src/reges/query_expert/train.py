"""Stage `train-query`: LoRA-train the Query Expert (student) on the distilled train rows: dialogue -> query.

Reads `distill/train.jsonl` only (the teacher saw the true items; distilled tune/dev rows are evaluation-only) and
fine-tunes `llm.model` with `reges.llm.lora.train_lora` (loss on the completion, i.e. the query, only).

Files under `train-query/`:
    adapter/              the PEFT LoRA adapter (for the hf backend)
    adapter.gguf          the same adapter for llama.cpp, when `llm.model` is a GGUF file or a bundled name
    trainer_state.json    loss of every step, tokens/s, wall time, peak RSS, the LoRA config (written by train_lora)
    checkpoints/          only while training: a killed run resumes from here when the command is run again
    manifest.json         written last
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from reges.config import LLMConfig, PipelineConfig, TrainQueryConfig
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_jsonl
from reges.llm.lora import LoraTrainConfig

logger = logging.getLogger(__name__)

# The attention projections: the setting whose training speed was measured (docs/results/llm_training.md).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def resolve_train_dtype(dtype: str, device: str) -> str:
    """`train_query.dtype` as a LoraTrainConfig dtype: "auto" is bfloat16 on CUDA and on CPUs with native bf16.

    Why: on this project's AMX CPU, bf16 base weights trained 1.67x faster than fp32 (docs/results/llm_training.md);
    on CPUs without bf16 arithmetic bf16 is slow, so they get float32.
    """
    from reges.llm.models import cpu_has_bf16, resolve_device

    if dtype == "auto":
        return "bfloat16" if resolve_device(device) == "cuda" or cpu_has_bf16() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train_query.dtype must be auto, float32 or bfloat16, got {dtype!r}")
    return dtype


def lora_config(tc: TrainQueryConfig, llm: LLMConfig, seed: int) -> LoraTrainConfig:
    """The LoRA training settings of the Query Expert."""
    return LoraTrainConfig(
        r=tc.r,
        alpha=tc.alpha,
        dropout=tc.dropout,
        target_modules=TARGET_MODULES,
        lr=tc.lr,
        epochs=tc.epochs,
        max_steps=tc.max_steps,
        batch_size=tc.batch_size,
        grad_accum=tc.grad_accum,
        max_prompt_tokens=tc.max_prompt_tokens,
        max_completion_tokens=tc.max_completion_tokens,
        save_every_steps=tc.save_every_steps,
        dtype=resolve_train_dtype(tc.dtype, llm.device),  # type: ignore[arg-type]
        device=llm.device,
        seed=seed,
    )


def select_examples(rows: list[dict[str, Any]], max_examples: int, seed: int) -> list[dict[str, Any]]:
    """The SFT examples: `{"prompt", "completion"}` of a seeded sample of `max_examples` rows (0: all), id order."""
    if max_examples < 0:
        raise ConfigError(f"train_query.max_examples must be >= 0 (0 = all), got {max_examples}")
    if 0 < max_examples < len(rows):
        rows = random.Random(seed).sample(rows, max_examples)
    rows = sorted(rows, key=lambda r: str(r.get("example_id", "")))
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Train the Query Expert's LoRA adapter on `distill/train.jsonl`; write `train-query/`, then the manifest.

    A run killed mid-training resumes from `train-query/checkpoints/` when started again with the same settings.

    Example:
        reges train-query --config configs/redial.yaml --run-dir runs/redial train_query.epochs=2
    """
    from reges.llm.gguf_lora import convert_lora_to_gguf
    from reges.llm.lora import train_lora
    from reges.llm.models import load_hf, resolve_model

    started = now_iso()
    tc = cfg.train_query
    distill_dir = run_dir.require("distill")
    path = distill_dir / "train.jsonl"
    if not path.is_file():
        raise DataError(
            f"{path} not found; the Query Expert trains on distilled train rows only: add train to distill.splits "
            "and rerun `reges distill` with run.overwrite=true"
        )
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        if "prompt" not in row or "completion" not in row:
            raise DataError(f"{path}: row {i + 1} has no prompt/completion; rerun `reges distill`")
    examples = select_examples(rows, tc.max_examples, cfg.run.seed)
    if not examples:
        raise DataError(f"{path} holds no rows; check distill/stats.json for why every example was skipped")
    lcfg = lora_config(tc, cfg.llm, cfg.run.seed)
    source = resolve_model(cfg.llm.model)
    if source.kind == "url":
        raise ConfigError(
            f"llm.model={cfg.llm.model!r} is an endpoint; train-query needs local weights (a bundled name, an HF "
            "folder or a .gguf file)"
        )
    out = run_dir.begin("train-query", cfg.run.overwrite)  # keeps checkpoints/ of a killed run

    # Load the base in the training dtype directly (no fp32 copy first), on the training device.
    model, tokenizer = load_hf(dataclasses.replace(cfg.llm, dtype=lcfg.dtype))
    result = train_lora(model, tokenizer, examples, lcfg, out, cfg.run.show_progress)
    outputs = {"adapter": 1, "trainer_state.json": 1}
    if source.kind == "gguf":
        convert_lora_to_gguf(result.adapter_dir, source.location, out / "adapter.gguf")
        outputs["adapter.gguf"] = 1

    run_dir.finish(
        "train-query",
        config={"train_query": dataclasses.asdict(tc), "lora": dataclasses.asdict(lcfg), "llm": cfg.llm.model},
        inputs={"distill/train": path},
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "base_model": cfg.llm.model,
            "examples": len(examples),
            "steps": result.steps,
            "final_loss": round(result.final_loss, 4),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "wall_time_s": round(result.wall_time_s, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            "resumed_from_step": result.resumed_from_step,
        },
    )
