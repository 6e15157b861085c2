"""Training jobs that tests/test_distributed.py runs twice: in-process (one process) and under torchrun (2 ranks).

Usage (what the test runs):
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py jobs.json

`jobs.json` is a list of {"job": name, ...arguments}; the jobs run in order in the same process group. A job that
is told to die (`die_after_collates`) raises `Killed` on every rank, and the worker exits with status 3, which
stands in for a SIGKILL of the whole job: only what is on disk stays.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from reges.config import PipelineConfig, TrainRetrieverConfig, config_from_dict
from reges.io import RunDir
from reges.llm import distributed, lora
from reges.llm.lora import LoraTrainConfig, train_lora
from reges.records import Item, RecExample, Turn
from reges.retrieval.finetune import build_pairs, finetune_encoder

KILLED_STATUS = 3

ANSWERS = ["Jaws", "The Matrix (1999)", "Up", "Heat (1995) or Her"]
QUESTIONS = [
    "Hello !", "Can you recommend a movie ?", "I like scary movies", "What is good ?", "I loved Alien (1979)",
    "Which one do you recommend ?", "thanks", "I like comedy and romance", "Have you seen Heat (1995) ?",
    "a funny family movie", "I like drama", "Toy Story (1995) or Up (2009) ?",
]
# Completions of different lengths, so that the per-step normalisation over the ranks is exercised.
LORA_EXAMPLES = [
    {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": ANSWERS[i % 4]}]}
    for i, q in enumerate(QUESTIONS)
]
# 2 passes of 2 per step: each of 2 ranks runs exactly one of the single process's micro-batches. dropout 0: the
# ranks' own dropout masks would otherwise make the runs differ by design.
LORA_CFG = LoraTrainConfig(
    r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj", "o_proj", "lm_head"), lr=3e-2,
    warmup_ratio=0.1, max_steps=6, batch_size=2, grad_accum=2, save_every_steps=2, device="cpu", log_every=0,
)

ITEMS = {
    "10": Item("10", "Alien (1979)", "Alien (1979). horror space monster"),
    "11": Item("11", "Up (2009)", "Up (2009). family animation balloons"),
    "12": Item("12", "Heat (1995)", "Heat (1995). crime heist city"),
    "13": Item("13", "Jaws (1975)", "Jaws (1975). horror shark beach"),
    "15": Item("15", "Notting Hill (1999)", "Notting Hill (1999). romance comedy london"),
    "16": Item("16", "Toy Story (1995)", "Toy Story (1995). family animation toys"),
    "17": Item("17", "Ronin (1998)", "Ronin (1998). crime heist cars"),
}
ENCODER_EXAMPLES = [
    RecExample("d1_1", "d1", [Turn("user", "I want something scary like Jaws", ["13"])], ["10", "12"], [False] * 2),
    RecExample("d2_1", "d2", [Turn("user", "a film for my kids")], ["11"], [False]),
    RecExample("d3_1", "d3", [Turn("user", "a clever heist")], ["17"], [False]),
    RecExample("d4_1", "d4", [Turn("user", "a funny love story")], ["15"], [False]),
    RecExample("d5_1", "d5", [Turn("user", "animated toys for children")], ["16"], [False]),
]
# batch 3 over 6 pairs with one hard negative each: 3 anchors and 6 cards per step, split 2/1 and 3/3 over 2 ranks.
ENCODER_CFG = TrainRetrieverConfig(epochs=3, batch_size=3, lr=0.05, warmup_ratio=0.2, save_every_steps=2,
                                   chunk_size=2)


# The listwise objective: the completion among the candidates (one example per pass, so a step of 4 is 2 per rank).
LISTWISE_EXAMPLES = [{**e, "candidates": ANSWERS} for e in LORA_EXAMPLES]


def encoder_texts() -> list[str]:
    return [it.text for it in ITEMS.values()] + [t.content for ex in ENCODER_EXAMPLES for t in ex.context] + ["User:"]


class Killed(Exception):
    """Stands in for SIGKILL."""


def job_lora(model_dir: str, out_dir: str, config: dict[str, Any], die_after_collates: int = 0) -> None:
    """`train_lora` of the tiny Llama in `model_dir` on LORA_EXAMPLES; `config` overrides LORA_CFG fields."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = replace(LORA_CFG, **config)
    examples = LISTWISE_EXAMPLES if cfg.objective == "listwise" else LORA_EXAMPLES
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    real_collate, calls = lora.collate, [0]

    def collate_then_die(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls[0] += 1
        if calls[0] > die_after_collates:
            raise Killed
        return real_collate(*args, **kwargs)

    if die_after_collates:
        lora.collate = collate_then_die
    try:
        train_lora(model, tokenizer, examples, cfg, Path(out_dir), show_progress=False)
    finally:
        lora.collate = real_collate


def job_encoder(model_dir: str, out_dir: str) -> None:
    """`finetune_encoder` of the tiny sentence-transformer in `model_dir`; rank 0 saves weights and losses."""
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    pairs = build_pairs(ENCODER_EXAMPLES, ITEMS, "full", 1000)
    negatives = [["12"] if p.positive_id != "12" and "12" not in p.excluded_ids else ["15"] for p in pairs]
    out = Path(out_dir)
    result = finetune_encoder(model, pairs, negatives, ITEMS, ENCODER_CFG, seed=1, checkpoint_dir=out / "ckpt")
    if distributed.current().is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "result.json").write_text(json.dumps({"first_loss": result.first_loss, "last_loss": result.last_loss,
                                                      "loss_start": result.loss_start, "loss_end": result.loss_end}))


def job_stage(stage: str, run_dir: str, config: dict[str, Any]) -> None:
    """Run one stage's `run()` on `run_dir` (what `reges <stage>` does, minus the CLI's lock and config.yaml)."""
    import importlib

    from reges.pipeline import STAGES

    cfg: PipelineConfig = config_from_dict(config)
    importlib.import_module(STAGES[stage].module).run(cfg, RunDir(run_dir))


JOBS = {"lora": job_lora, "encoder": job_encoder, "stage": job_stage}


def main(spec_path: str) -> int:
    jobs = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    for job in jobs:
        name = job.pop("job")
        try:
            JOBS[name](**job)
        except Killed:
            return KILLED_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
