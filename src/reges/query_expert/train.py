"""Stage `train-query`: LoRA-train the Query Expert (student) on the distilled train rows: dialogue -> query.

Reads `distill/train.jsonl` only (the teacher saw the true items; distilled tune/dev rows are evaluation-only) and
fine-tunes `llm.model` with `reges.llm.lora.train_lora` (loss on the completion, i.e. the query, only).

Files under `train-query/`:
    adapter/              the PEFT LoRA adapter (for the hf backend)
    adapter.gguf          the same adapter for llama.cpp, when `llm.model` is a GGUF file or a bundled name
    trainer_state.json    loss of every step, tokens/s, wall time, peak RSS, the LoRA config (written by train_lora)
    checkpoints/          only while training: a killed run resumes from here when the command is run again
    manifest.json         written last

Under `torchrun --nproc-per-node N` the stage trains data-parallel (`reges.llm.lora`, docs/distributed.md): every
rank reads the same rows; rank 0 alone clears the stage folder, writes the adapter, its GGUF copy and the manifest.
"""

from __future__ import annotations

import dataclasses
import logging

from reges.config import PipelineConfig
from reges.data.sampling import sample_by_id
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_jsonl
from reges.llm.train_settings import lora_config

logger = logging.getLogger(__name__)

def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Train the Query Expert's LoRA adapter on `distill/train.jsonl`; write `train-query/`, then the manifest.

    A run killed mid-training resumes from `train-query/checkpoints/` when started again with the same settings.

    Example:
        reges train-query --config configs/redial.yaml --run-dir runs/redial train_query.epochs=2
    """
    from reges.llm import distributed
    from reges.llm.gguf_lora import try_convert_lora_to_gguf
    from reges.llm.lora import train_lora
    from reges.llm.memory import log_training_estimate
    from reges.llm.models import hf_folder, load_hf, resolve_device, resolve_model

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
    rows = sample_by_id(rows, tc.max_examples, cfg.run.seed, lambda r: str(r.get("example_id", "")),
                        "train_query.max_examples")
    examples = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    if not examples:
        raise DataError(f"{path} holds no rows; check distill/stats.json for why every example was skipped")
    lcfg = lora_config(tc, cfg.llm.device, cfg.run.seed)
    ctx = distributed.init_distributed(resolve_device(lcfg.device))
    # rank 0 resolves first: a Hugging Face id is downloaded once, and the other ranks find it in the cache
    source = distributed.main_first(lambda: resolve_model(cfg.llm.model, cfg.llm.cache_dir))
    if source.kind == "url":
        raise ConfigError(
            f"llm.model={cfg.llm.model!r} is an endpoint; train-query needs local weights (a bundled name, an HF "
            "folder or a .gguf file)"
        )
    if ctx.enabled and not ctx.is_main:
        source = resolve_model(cfg.llm.model, cfg.llm.cache_dir)  # its own path: another node has its own cache
    # keeps checkpoints/ of a killed run; rank 0 clears the folder while the other ranks wait
    out = distributed.main_first(lambda: run_dir.begin("train-query", cfg.run.overwrite))
    if ctx.is_main:
        log_training_estimate(cfg.llm.model, cfg.llm.cache_dir, lcfg)
    llm_cfg = dataclasses.replace(cfg.llm, dtype=lcfg.dtype)
    if ctx.enabled:
        distributed.main_first(lambda: hf_folder(llm_cfg))  # a GGUF base is dequantized into the cache once

    # Load the base in the training dtype directly (no fp32 copy first), on the training device.
    model, tokenizer = load_hf(llm_cfg)
    result = train_lora(model, tokenizer, examples, lcfg, out, cfg.run.show_progress)
    if not ctx.is_main:
        return
    outputs = {"adapter": 1, "trainer_state.json": 1}
    if source.kind == "gguf" and try_convert_lora_to_gguf(result.adapter_dir, source.location, out / "adapter.gguf"):
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
