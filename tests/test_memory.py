"""The memory estimate of LoRA training (reges.llm.memory) and the GPU config it is printed for; nothing downloads."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from tiny_models import build_tiny_llama

from reges.config import load_config
from reges.io import RunDir
from reges.llm.lora import LoraTrainConfig
from reges.llm.memory import ModelShape, estimate_lora_memory, log_training_estimate, model_shape, training_estimate
from reges.llm.train_settings import lora_config
from reges.pipeline import PIPELINE, plan

REPO = Path(__file__).resolve().parents[1]
# Qwen/Qwen2.5-7B-Instruct's config.json, the fields the estimate reads (copied from the model card's file).
QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}


def test_shape_counts_the_published_parameters() -> None:
    shape = ModelShape.from_hf_config(QWEN_7B, "Qwen/Qwen2.5-7B-Instruct")
    assert shape.num_params == 7_615_616_512  # "7.61B" on the model card
    assert (shape.head_dim, shape.module_dims()["k_proj"]) == (128, (3584, 512))


def test_shape_of_a_folder_and_of_a_gguf_file_matches_the_real_model(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = build_tiny_llama(tmp_path / "tiny")
    shape = model_shape(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    targets = ("q_proj", "v_proj", "o_proj", "lm_head")
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=list(targets)))
    estimate = estimate_lora_memory(shape, "float32", 4, targets, 1, 64, 8)
    assert estimate.lora_params == sum(p.numel() for p in peft.parameters() if p.requires_grad)

    smollm2 = model_shape("smollm2-135m-instruct")  # the bundled GGUF's metadata, no weight read
    assert (smollm2.num_params, smollm2.hidden_size, smollm2.num_layers, smollm2.num_kv_heads) == (
        134_515_008, 576, 30, 3)


def test_estimate_of_the_gpu_config() -> None:
    cfg = load_config(REPO / "configs" / "redial-gpu.yaml")
    assert cfg.llm.model == "Qwen/Qwen2.5-7B-Instruct" and cfg.item_expert_llm.model == cfg.llm.model
    assert cfg.train_query.r == cfg.train_item.r == 16 and cfg.mine.top_k == cfg.generate.top_k == 20
    shape = ModelShape.from_hf_config(QWEN_7B, "Qwen/Qwen2.5-7B-Instruct")
    item = training_estimate(shape, lora_config(cfg.train_item, "cpu", 0))
    query = training_estimate(shape, lora_config(cfg.train_query, "cpu", 0))
    for estimate in (item, query):
        assert estimate.weights_gib == pytest.approx(14.18, abs=0.01)  # 2 bytes per bf16 weight
        assert estimate.lora_params == 28 * 16 * (2 * (3584 + 3584) + 2 * (3584 + 512))  # q, k, v, o at r=16
        assert 20 < estimate.total_gib < 36  # fits a 40 GB GPU, as the config's header says
    assert item.tokens_per_pass == 2 * (1024 + 64) and query.tokens_per_pass == 4 * (448 + 64)
    checkpointed = training_estimate(shape, dataclasses.replace(lora_config(cfg.train_item, "cpu", 0),
                                                                gradient_checkpointing=True))
    assert checkpointed.activations_gib < item.activations_gib / 10
    assert "Qwen/Qwen2.5-7B-Instruct (7.62 B params, bfloat16)" in item.summary()


def test_gpu_config_plans_every_stage(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "redial-gpu.yaml")
    assert [(stage.name, status) for stage, status, _ in plan(cfg, RunDir(tmp_path / "run"))] == [
        (stage.name, "missing") for stage in PIPELINE]
    header = (REPO / "configs" / "redial-gpu.yaml").read_text().splitlines()[:5]
    assert any("torchrun --nproc-per-node" in line and "train-item" in line for line in header)


def test_the_estimate_is_logged_and_a_missing_shape_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_tiny_llama(tmp_path / "tiny")
    with caplog.at_level(logging.INFO, logger="reges.llm.memory"):
        estimate = log_training_estimate(str(folder), "", LoraTrainConfig(r=2, batch_size=2))
        assert estimate is not None and estimate.summary() in caplog.text
        # a hub id that is not cached, offline (HF_HUB_OFFLINE=1 in conftest): logged, nothing downloaded
        assert log_training_estimate("example-org/not-a-cached-model", "", LoraTrainConfig()) is None
    assert "no memory estimate" in caplog.text
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 16
