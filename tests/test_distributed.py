"""Data-parallel training: 2 CPU processes on the gloo backend (torchrun) against the single-process run.

The jobs live in tests/distributed_worker.py; each test runs them once in this process (world size 1) and once
under `torchrun --standalone --nproc-per-node 2`. Tolerance: losses within a relative 1e-5 and trained weights within
1e-5 (absolute) + 1e-4 (relative) of the single-process run. With whole micro-batches per rank the two runs add the
same per-micro-batch gradients, in another order (float rounding only); with a step split by example (batch 4 x
accumulation 1 on 2 ranks) the micro-batches are padded differently, which moves the numbers by about 1e-7.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch
from item_expert_fakes import make_run_dir
from retrieval_fakes import build_tiny_sentence_transformer
from safetensors.torch import load_file
from tiny_models import build_tiny_gguf, build_tiny_llama

from reges.config import (
    EvaluateConfig,
    GenerateConfig,
    LLMConfig,
    MineConfig,
    PipelineConfig,
    RunConfig,
    TrainItemConfig,
    config_to_dict,
)
from reges.errors import ConfigError
from reges.io import RunDir, read_json
from reges.item_expert import mining
from reges.llm import distributed
from reges.llm.lora import step_share

TESTS = Path(__file__).resolve().parent
LOSS_RTOL = 1e-5
WEIGHT_ATOL, WEIGHT_RTOL = 1e-5, 1e-4


def torchrun(jobs: list[dict], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    """Run `jobs` in tests/distributed_worker.py on 2 CPU processes; the log is in the result's stdout."""
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(TESTS / "distributed_worker.py"), str(spec)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL, msg=k)


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def test_step_share_deals_whole_micro_batches_then_examples() -> None:
    assert [step_share(8, 2, 1, 0)] == [range(8)]
    assert [step_share(8, 2, 2, r) for r in (0, 1)] == [range(0, 4), range(4, 8)]  # 2 of 4 micro-batches each
    assert [step_share(7, 2, 2, r) for r in (0, 1)] == [range(0, 4), range(4, 7)]  # the short last one on rank 1
    # fewer passes than ranks: split by example
    assert [step_share(4, 4, 2, r) for r in (0, 1)] == [range(0, 2), range(2, 4)]
    assert [step_share(6, 2, 4, r) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 5), range(5, 6)]
    assert [distributed.shard(5, 2, r) for r in (0, 1)] == [range(0, 3), range(3, 5)]


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed("cpu") == distributed.DistContext(0, 0, 1)
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.main_first(lambda: 7) == 7
    rows = torch.ones(3, 4, requires_grad=True)
    assert torch.equal(distributed.all_gather_rows(rows, 3, 4, torch.device("cpu")), rows)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        distributed.init_distributed("cpu")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.mark.slow
def test_lora_on_two_processes_matches_one_and_resumes(tiny_llama: Path, tmp_path: Path) -> None:
    one, split_one, listwise_one = tmp_path / "one", tmp_path / "split-one", tmp_path / "listwise-one"
    worker.job_lora(str(tiny_llama), str(one), {})
    split = {"batch_size": 4, "grad_accum": 1}
    worker.job_lora(str(tiny_llama), str(split_one), split)
    listwise = {"objective": "listwise", "max_steps": 3}
    worker.job_lora(str(tiny_llama), str(listwise_one), listwise)

    two, split_two, listwise_two = tmp_path / "two", tmp_path / "split-two", tmp_path / "listwise-two"
    # killed during step 5 on both ranks (each rank collates one micro-batch per step): the step-4 checkpoint stays
    killed = torchrun([{"job": "lora", "model_dir": str(tiny_llama), "out_dir": str(two), "config": {},
                        "die_after_collates": 4}], tmp_path, "killed")
    assert killed.returncode != 0
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-4"]
    state = read_json(two / "checkpoints" / "step-4" / "trainer_state.json")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 1  # rank 1's RNG state, written by rank 0
    assert not (two / "adapter").exists()

    resumed = torchrun([
        {"job": "lora", "model_dir": str(tiny_llama), "out_dir": str(two), "config": {}},
        {"job": "lora", "model_dir": str(tiny_llama), "out_dir": str(split_two), "config": split},
        {"job": "lora", "model_dir": str(tiny_llama), "out_dir": str(listwise_two), "config": listwise},
    ], tmp_path, "resumed")
    assert_ok(resumed)
    for single, double, resumed_from in ((one, two, 4), (split_one, split_two, 0), (listwise_one, listwise_two, 0)):
        a, b = read_json(single / "trainer_state.json"), read_json(double / "trainer_state.json")
        assert b["world_size"] == 2 and b["resumed_from_step"] == resumed_from and b["steps"] == a["steps"]
        assert b["losses"] == pytest.approx(a["losses"], rel=LOSS_RTOL)
        assert b["tokens"] == a["tokens"] if resumed_from == 0 else True  # a resumed run counts from its checkpoint
        assert_same_tensors(adapter(single), adapter(double))
        assert sorted(p.name for p in double.iterdir()) == ["adapter", "trainer_state.json"]  # rank 0 wrote, once


@pytest.mark.slow
def test_encoder_on_two_processes_matches_one(tmp_path: Path) -> None:
    st = build_tiny_sentence_transformer(tmp_path / "st", worker.encoder_texts())
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    worker.job_encoder(str(st), str(one))
    assert_ok(torchrun([{"job": "encoder", "model_dir": str(st), "out_dir": str(two)}], tmp_path, "encoder"))
    a, b = json.loads((one / "result.json").read_text()), json.loads((two / "result.json").read_text())
    assert b == pytest.approx(a, rel=LOSS_RTOL) and a["loss_end"] < a["loss_start"]
    assert_same_tensors(load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors")))


@pytest.mark.slow
def test_train_item_and_train_retriever_stages_under_torchrun(tmp_path: Path) -> None:
    from test_train_retriever import _run_dir

    gguf = build_tiny_gguf(tmp_path / "gguf" / "tiny.gguf")
    cfg = PipelineConfig(
        run=RunConfig(show_progress=False),
        llm=LLMConfig(model=str(gguf), cache_dir=str(tmp_path / "cache"), device="cpu", dtype="float32"),
        mine=MineConfig(top_k=3),
        train_item=TrainItemConfig(max_steps=3, batch_size=1, grad_accum=2, r=2, dtype="float32",
                                   save_every_steps=1, objective="listwise"),
        generate=GenerateConfig(top_k=3),
    )
    item_one = make_run_dir(tmp_path / "item-one")
    mining.run(cfg, item_one)
    item_two = RunDir(shutil.copytree(item_one.path, tmp_path / "item-two"))
    worker.job_stage("train-item", str(item_one.path), config_to_dict(cfg))

    retriever_one, rcfg = _run_dir(tmp_path / "retriever")
    rcfg = dataclasses.replace(rcfg, train_retriever=dataclasses.replace(rcfg.train_retriever, batch_size=3),
                               evaluate=EvaluateConfig(cutoffs=[1, 2]))  # the config loader checks them against top_k
    retriever_two = RunDir(shutil.copytree(retriever_one.path, tmp_path / "retriever-two"))
    worker.job_stage("train-retriever", str(retriever_one.path), config_to_dict(rcfg))

    proc = torchrun([
        {"job": "stage", "stage": "train-item", "run_dir": str(item_two.path), "config": config_to_dict(cfg)},
        {"job": "stage", "stage": "train-retriever", "run_dir": str(retriever_two.path),
         "config": config_to_dict(rcfg)},
    ], tmp_path, "stages")
    assert_ok(proc)

    # train-item's LoRA dropout is on (0.05, not configurable): each rank draws its own masks, so the numbers differ
    # from the single process by design; what is checked is the stage's files, written once by rank 0.
    one, two = item_one.manifest("train-item"), item_two.manifest("train-item")
    assert set(two["outputs"]) == {"adapter", "trainer_state.json", "adapter.gguf"} == set(one["outputs"])
    assert two["steps"] == 3 and two["resumed_from_step"] == 0 and two["examples"] == one["examples"]
    assert read_json(item_two.stage_dir("train-item") / "trainer_state.json")["world_size"] == 2
    a, b = adapter(item_one.stage_dir("train-item")), adapter(item_two.stage_dir("train-item"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert sorted(p.name for p in item_two.stage_dir("train-item").iterdir()) == sorted(
        p.name for p in item_one.stage_dir("train-item").iterdir())

    one, two = (read_json(rd.stage_dir("train-retriever") / "fusion.json") for rd in (retriever_one, retriever_two))
    assert two["finetune"]["loss_end"] == pytest.approx(one["finetune"]["loss_end"], rel=LOSS_RTOL)
    assert two["weights"] == one["weights"]
    encoder = "encoder/model.safetensors"
    if (retriever_one.stage_dir("train-retriever") / encoder).is_file():
        assert_same_tensors(*(load_file(str(rd.stage_dir("train-retriever") / encoder))
                              for rd in (retriever_one, retriever_two)))
    assert retriever_two.is_complete("train-retriever")
