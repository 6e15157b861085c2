"""Stage `train-item`: LoRA fine-tuning of the Item Generation Expert on the mined examples.

Reads `mine/train.jsonl` (prompt: dialogue + retrieved candidates; completion: the target's title), takes a seeded
sample of `train_item.max_examples` rows (all when 0) and trains a LoRA adapter on `llm.model` with
`reges.llm.lora.train_lora`: `train_item.objective=sft` puts the loss on the title tokens only; `listwise` also
scores every candidate's display title (from the catalog) and pushes the target above them. A killed run resumes
from its last checkpoint in `train-item/checkpoints/` (kept by `RunDir.begin`) and ends with the same weights.

Files written under `run_dir/train-item/`:
    adapter/             the PEFT adapter (hf backend)
    adapter.gguf         the same adapter for llama.cpp, when `llm.model` is a GGUF file (the bundled SmolLM2 is)
    trainer_state.json   loss curve, tokens/s, wall time, peak memory (written by train_lora)
    manifest.json        written last; records the prompt format and whether prompts showed a query, which
                         `generate` checks so that test prompts are built like the training prompts

Under `torchrun --nproc-per-node N` the stage trains data-parallel (`reges.llm.lora`, docs/distributed.md): every
rank reads the same rows; rank 0 alone clears the stage folder, writes the adapter, its GGUF copy and the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from reges.catalog import read_catalog
from reges.config import PipelineConfig
from reges.data.sampling import sample_rows
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_jsonl
from reges.item_expert.mining import prompt_token_counts
from reges.item_expert.prompts import candidate_titles
from reges.llm.lora import ADAPTER, TRAINER_STATE, train_lora
from reges.llm.train_settings import lora_config

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


def count_truncated(rows: list[dict[str, Any]], tokenizer: Any, max_prompt_tokens: int) -> int:
    """How many prompts exceed the token budget (train_lora cuts them from the left, system message included)."""
    return sum(n > max_prompt_tokens for n in prompt_token_counts(rows, tokenizer))


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Train the Item Expert's LoRA adapter on `mine/train.jsonl`; write adapter(s), trainer state, manifest.

    Example:
        reges train-item --config configs/redial.yaml --run-dir runs/redial train_item.max_examples=2000
    """
    from reges.llm import distributed
    from reges.llm.gguf_lora import try_convert_lora_to_gguf
    from reges.llm.memory import log_training_estimate
    from reges.llm.models import hf_folder, load_hf, resolve_device, resolve_model

    started = now_iso()
    tc = cfg.train_item
    mine_dir = run_dir.require("mine")
    mine_manifest = run_dir.manifest("mine")
    path = mine_dir / f"{TRAIN_SPLIT}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found; add {TRAIN_SPLIT!r} to mine.splits and rerun mine (run.overwrite=true)")
    llm_cfg = cfg.item_expert_llm
    ctx = distributed.init_distributed(resolve_device(llm_cfg.device))
    # rank 0 resolves first: a Hugging Face id is downloaded once, and the other ranks find it in the cache
    source = distributed.main_first(lambda: resolve_model(llm_cfg.model, llm_cfg.cache_dir))
    if source.kind == "url":
        raise ConfigError(
            "train-item needs a local item_llm/llm model (a name, HF folder or .gguf), got "
            f"{cfg.item_expert_llm.model!r}"
        )
    if ctx.enabled and not ctx.is_main:
        source = resolve_model(llm_cfg.model, llm_cfg.cache_dir)  # its own path: another node has its own cache
    lcfg = lora_config(tc, cfg.item_expert_llm.device, cfg.run.seed)
    rows = sample_rows(read_jsonl(path), tc.max_examples, cfg.run.seed, "train_item.max_examples")
    if not rows:
        raise DataError(f"{path} has no rows; check mine's manifest (were all targets missing from the catalog?)")
    examples = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    if tc.objective == "listwise":
        items = {it.item_id: it for it in read_catalog(run_dir.require("catalog") / "items.jsonl")}
        for example, row in zip(examples, rows, strict=True):
            unknown = [i for i in row["candidate_ids"] if i not in items]
            if unknown:
                raise DataError(f"{path}: candidate {unknown[0]!r} is not in the catalog; rerun mine (run.overwrite)")
            example["candidates"] = candidate_titles([items[i] for i in row["candidate_ids"]])
    # rank 0 clears the folder (keeping checkpoints/ of a killed run) while the other ranks wait
    out = distributed.main_first(lambda: run_dir.begin("train-item", cfg.run.overwrite))
    if ctx.is_main:
        # packed candidates of the longest list, at about 3 characters per token (+ EOS each)
        candidate_tokens = max((sum(len(c) // 3 + 2 for c in e.get("candidates", [])) for e in examples), default=0)
        log_training_estimate(llm_cfg.model, llm_cfg.cache_dir, lcfg, candidate_tokens)
    if ctx.enabled:
        distributed.main_first(lambda: hf_folder(llm_cfg))  # a GGUF base is dequantized into the cache once

    model, tokenizer = load_hf(cfg.item_expert_llm)
    truncated = count_truncated(rows, tokenizer, tc.max_prompt_tokens)
    if truncated:
        logger.warning(
            "%d of %d prompts exceed train_item.max_prompt_tokens=%d and lose their beginning; raise it or lower "
            "mine.top_k / mine.max_context_chars",
            truncated, len(rows), tc.max_prompt_tokens,
        )
    result = train_lora(model, tokenizer, examples, lcfg, out, cfg.run.show_progress)
    if not ctx.is_main:
        return
    outputs: dict[str, int] = {ADAPTER: 1, TRAINER_STATE: 1}
    inputs: dict[str, Path] = {f"mine/{TRAIN_SPLIT}": path}
    if source.kind == "gguf" and try_convert_lora_to_gguf(result.adapter_dir, source.location, out / "adapter.gguf"):
        outputs["adapter.gguf"] = 1
        inputs["base_gguf"] = Path(source.location)
    split_info = mine_manifest.get("splits", {}).get(TRAIN_SPLIT, {})
    run_dir.finish(
        "train-item",
        config={**dataclasses.asdict(tc), "lora": dataclasses.asdict(lcfg)},
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "model": cfg.item_expert_llm.model,
            "examples": len(rows),
            "prompts_truncated": truncated,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "wall_time_s": round(result.wall_time_s, 1),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            "resumed_from_step": result.resumed_from_step,
            "negatives": mine_manifest["config"]["negatives"],
            "mine_top_k": mine_manifest["config"]["top_k"],
            "query_used": bool(split_info.get("query_used", False)),
            "prompt_format": mine_manifest.get("prompt_format"),
        },
    )
