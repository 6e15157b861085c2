"""Stages train-item and generate on a tiny run dir, resume after a kill, and the end-to-end part of evaluate."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from item_expert_fakes import DEV, ITEMS, make_run_dir
from tiny_models import build_tiny_gguf

from reges.config import (
    EvaluateConfig,
    GenerateConfig,
    LLMConfig,
    MineConfig,
    PipelineConfig,
    RunConfig,
    TrainItemConfig,
)
from reges.errors import ConfigError, StageNotReadyError
from reges.eval import evaluate as evaluate_stage
from reges.io import RunDir, read_jsonl, write_jsonl
from reges.item_expert import generate as generate_stage
from reges.item_expert import mining
from reges.item_expert import train as train_stage
from reges.item_expert.generate import ALPHA_GRID
from reges.llm import lora

REPO = Path(__file__).resolve().parents[1]

ROW_KEYS = {"example_id", "mode", "text", "item_id", "in_candidates", "in_catalog", "candidate_ids", "ranking",
            "llm_scores", "latency_s"}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _cfg(model: Path, cache: Path, **generate: object) -> PipelineConfig:
    return PipelineConfig(
        run=RunConfig(show_progress=False),
        llm=LLMConfig(model=str(model), cache_dir=str(cache), device="cpu", dtype="float32"),
        mine=MineConfig(top_k=3),
        train_item=TrainItemConfig(max_steps=3, batch_size=2, grad_accum=1, r=2, dtype="float32", save_every_steps=1),
        generate=dataclasses.replace(GenerateConfig(top_k=3, batch_size=2, max_new_tokens=4), **generate),
        evaluate=EvaluateConfig(splits=["dev"], cutoffs=[1, 2], baselines=[], bootstrap=50),
    )


def _overwrite(cfg: PipelineConfig, **generate: object) -> PipelineConfig:
    return dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, overwrite=True), generate=dataclasses.replace(cfg.generate, **generate)
    )


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> tuple[RunDir, PipelineConfig]:
    """A tiny run dir after mine and train-item (killed once after 2 steps, then resumed)."""
    tmp = tmp_path_factory.mktemp("run")
    rd = make_run_dir(tmp / "run")
    cfg = _cfg(tiny_gguf, tmp / "cache")
    with pytest.raises(StageNotReadyError, match="mine"):
        train_stage.run(cfg, rd)
    mining.run(cfg, rd)
    calls = {"n": 0}
    real_collate = lora.collate

    def collate_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise Killed
        return real_collate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lora, "collate", collate_then_die)
        with pytest.raises(Killed):
            train_stage.run(cfg, rd)
    assert not rd.is_complete("train-item")
    assert (rd.path / "train-item" / "checkpoints" / "step-2").is_dir()
    train_stage.run(cfg, rd)
    return rd, cfg


def test_train_item_writes_adapters_and_resumes_after_a_kill(trained: tuple[RunDir, PipelineConfig]) -> None:
    rd, _ = trained
    out = rd.path / "train-item"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter" / "README.md").exists()  # no PEFT model card (it holds a local path)
    assert (out / "adapter.gguf").is_file()  # the base model is a GGUF file
    assert not (out / "checkpoints").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["steps"] == 3 and state["examples"] == 3
    manifest = rd.manifest("train-item")
    assert manifest["resumed_from_step"] == 2 and manifest["steps"] == 3
    assert manifest["examples"] == 3 and manifest["prompts_truncated"] == 0
    assert manifest["query_used"] is False and manifest["prompt_format"]["card_fields"] == ["genre"]
    assert manifest["config"]["lora"]["dtype"] == "float32" and manifest["config"]["lora"]["alpha"] == 4.0
    assert set(manifest["outputs"]) == {"adapter", "trainer_state.json", "adapter.gguf"}


def test_generate_with_exclude_named_never_shows_a_named_item(trained: tuple[RunDir, PipelineConfig]) -> None:
    """mine.exclude_named: v3 named "11", so its candidates skip it and take the next retrieved item instead."""
    rd, cfg = trained
    cfg = dataclasses.replace(_overwrite(cfg, mode="rank", fusion_alpha=1.0),
                              mine=dataclasses.replace(cfg.mine, exclude_named=True))
    generate_stage.run(cfg, rd)
    rows = {r["example_id"]: r for r in read_jsonl(rd.path / "generate" / "dev.jsonl")}
    assert rows["v3"]["candidate_ids"] == ["14", "15", "10"]
    assert rows["v1"]["candidate_ids"] == ["13", "10", "16"]  # names nothing: unchanged


@pytest.mark.parametrize("mode", ["constrained", "rank", "free"])
def test_generate_writes_one_row_per_example(trained: tuple[RunDir, PipelineConfig], mode: str) -> None:
    rd, cfg = trained
    generate_stage.run(_overwrite(cfg, mode=mode, fusion_alpha=1.0), rd)
    rows = read_jsonl(rd.path / "generate" / "dev.jsonl")
    assert [r["example_id"] for r in rows] == ["v1", "v2", "v3"]
    expected_candidates = {"v1": ["13", "10", "16"], "v2": ["11", "12", "13"], "v3": ["14", "11", "15"]}
    for row in rows:
        assert set(row) == ROW_KEYS and row["mode"] == mode
        assert row["candidate_ids"] == expected_candidates[row["example_id"]]
        if mode != "free":
            assert row["in_candidates"] and row["in_catalog"] and row["item_id"] in row["candidate_ids"]
        elif row["in_candidates"]:
            assert row["item_id"] in row["candidate_ids"]
        else:  # a hallucination: item_id only when the text names some catalog item
            assert row["in_catalog"] == (row["item_id"] is not None)
        if mode == "rank":
            assert sorted(i for i, _ in row["ranking"]) == sorted(row["candidate_ids"])
            assert row["ranking"][0][0] == row["item_id"] and len(row["llm_scores"]) == 3
        else:
            assert row["ranking"] == [] and row["llm_scores"] == []
    manifest = rd.manifest("generate")
    assert manifest["mode"] == mode and manifest["use_adapter"] is True and manifest["top_k"] == 3
    assert manifest["splits"]["dev"]["examples"] == 3
    assert "adapter" in manifest["inputs"]
    if mode != "free":
        assert manifest["splits"]["dev"]["hallucinations"] == 0


def test_rank_mode_tunes_the_fusion_alpha_on_the_tune_split(trained: tuple[RunDir, PipelineConfig]) -> None:
    rd, cfg = trained
    with pytest.raises(ConfigError, match="fusion_alpha"):  # no tune split yet: say how to get one
        generate_stage.run(_overwrite(cfg, mode="rank"), rd)
    write_jsonl(rd.stage_dir("data") / "tune.jsonl", DEV)
    shutil.copy(rd.stage_dir("retrieve") / "dev.trec", rd.stage_dir("retrieve") / "tune.trec")
    try:
        generate_stage.run(_overwrite(cfg, mode="rank"), rd)
    finally:
        (rd.stage_dir("data") / "tune.jsonl").unlink()
        (rd.stage_dir("retrieve") / "tune.trec").unlink()
    manifest = rd.manifest("generate")
    tuning = manifest["fusion_tuning"]
    assert tuning["split"] == "tune" and len(tuning["alphas"]) == 21
    best = max(r["success_all"] for r in tuning["alphas"])
    assert manifest["fusion_alpha"] == min(r["alpha"] for r in tuning["alphas"] if r["success_all"] == best)
    assert set(manifest["splits"]) == {"tune", "dev"} and set(manifest["outputs"]) == {"tune.jsonl", "dev.jsonl"}
    rows = read_jsonl(rd.path / "generate" / "tune.jsonl")
    hits = sum(r["item_id"] in t for r, t in zip(rows, [ex.target_item_ids for ex in DEV], strict=True))
    assert hits / len(rows) == pytest.approx(best, abs=1e-3)  # the rows are the tuned alpha's picks


def test_generate_follows_the_training_prompts(trained: tuple[RunDir, PipelineConfig]) -> None:
    rd, cfg = trained
    changed = dataclasses.replace(_overwrite(cfg), mine=dataclasses.replace(cfg.mine, card_fields=["plot"]))
    with pytest.raises(ConfigError, match="prompt"):
        generate_stage.run(changed, rd)
    # the untuned base model needs no train-item stage and accepts any prompt settings
    generate_stage.run(dataclasses.replace(changed, generate=dataclasses.replace(cfg.generate, use_adapter=False,
                                                                                   max_examples=2)), rd)
    assert len(read_jsonl(rd.path / "generate" / "dev.jsonl")) == 2
    assert rd.manifest("generate")["use_adapter"] is False


def test_generate_with_llamacpp_and_the_gguf_adapter(trained: tuple[RunDir, PipelineConfig]) -> None:
    rd, cfg = trained
    cfg = _overwrite(cfg, mode="constrained")
    generate_stage.run(dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, backend="llamacpp")), rd)
    rows = read_jsonl(rd.path / "generate" / "dev.jsonl")
    assert all(r["in_candidates"] and r["item_id"] in r["candidate_ids"] for r in rows)
    assert rd.manifest("generate")["inputs"]["adapter"]


def test_evaluate_adds_the_end_to_end_section(trained: tuple[RunDir, PipelineConfig]) -> None:
    rd, cfg = trained
    generate_stage.run(_overwrite(cfg, mode="rank", fusion_alpha=1.0), rd)
    evaluate_stage.run(_overwrite(cfg), rd)
    metrics = json.loads((rd.path / "evaluate" / "metrics.json").read_text())
    e2e = metrics["end_to_end"]["dev"]
    assert e2e["mode"] == "rank" and e2e["top_k"] == 3 and e2e["use_adapter"] is True
    top1 = e2e["methods"]["retriever_top1"]
    # v1: 13 first, a target; v2: 11 first, target 10; v3: 14 first, a novel target
    assert top1["all"]["success_rate"]["mean"] == pytest.approx(2 / 3)
    assert top1["novel"]["success_rate"]["mean"] == pytest.approx(2 / 3)
    assert top1["all"]["n_target_in_candidates"] == 2  # v2's target 10 is not among its 3 candidates
    assert top1["all"]["hallucination_rate"]["mean"] == 0.0
    expert = e2e["methods"]["item_expert"]["all"]
    assert expert["n_examples"] == 3 and expert["hallucination_rate"]["mean"] == 0.0
    recall = e2e["rank_recall"]
    assert recall["cutoffs"] == [1]
    # pairs: v1/13 rank 1, v2/10 absent, v3/14 rank 1, v3/11 rank 2 -> R@1 = 2/4
    assert recall["retriever"]["all"]["recall@1"]["mean"] == pytest.approx(0.5)
    assert recall["item_expert"]["all"]["n_targets"] == 4
    report = (rd.path / "evaluate" / "report.md").read_text()
    assert "## End to end: dev (mode rank, trained adapter, fusion alpha 1.00, k = 3" in report
    # alpha 1: the fused pick is the expert's own first choice
    alone = e2e["methods"]["item_expert_alone"]["all"]["success_rate"]["mean"]
    assert alone == e2e["methods"]["item_expert"]["all"]["success_rate"]["mean"] and "| item_expert_alone |" in report
    assert "| retriever_top1 | 0.667 |" in report
    assert "generate/dev" in rd.manifest("evaluate")["inputs"]


@pytest.mark.slow
def test_smollm2_item_expert_end_to_end(tmp_path: Path) -> None:
    """The real SmolLM2: mine, a few listwise LoRA steps (GGUF adapter too), then each mode tuned and untuned
    (rank mode tunes its fusion alpha on a tune split)."""
    rd = make_run_dir(tmp_path / "run")
    write_jsonl(rd.stage_dir("data") / "tune.jsonl", DEV)
    shutil.copy(rd.stage_dir("retrieve") / "dev.trec", rd.stage_dir("retrieve") / "tune.trec")
    cfg = PipelineConfig(
        run=RunConfig(show_progress=False),
        llm=LLMConfig(model="smollm2-135m-instruct"),
        mine=MineConfig(top_k=3),
        train_item=TrainItemConfig(max_steps=2, batch_size=1, grad_accum=1, r=4, save_every_steps=0,
                                   objective="listwise"),
        generate=GenerateConfig(top_k=3, batch_size=3),
    )
    mining.run(cfg, rd)
    train_stage.run(cfg, rd)
    assert (rd.path / "train-item" / "adapter.gguf").stat().st_size > 0
    for mode in ("constrained", "rank", "free"):
        for use_adapter in (True, False):
            generate_stage.run(_overwrite(cfg, mode=mode, use_adapter=use_adapter), rd)
            rows = read_jsonl(rd.path / "generate" / "dev.jsonl")
            assert len(rows) == 3
            if mode != "free":
                assert all(r["in_candidates"] and r["item_id"] in r["candidate_ids"] for r in rows)
            else:
                assert all(r["text"].strip() for r in rows)
            if mode == "rank":
                assert rd.manifest("generate")["fusion_alpha"] in ALPHA_GRID


def test_item_expert_benchmark_runs_every_mode_and_tunes_alpha(
    trained: tuple[RunDir, PipelineConfig], tmp_path: Path
) -> None:
    """benchmarks/item_expert.py on the tiny run: every (variant, k, mode) row, rank with its tuned alpha."""
    import importlib.util

    import yaml

    from reges.config import config_to_dict

    rd, cfg = trained
    spec = importlib.util.spec_from_file_location("item_expert_bench", REPO / "benchmarks" / "item_expert.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (rd.path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    write_jsonl(rd.stage_dir("data") / "tune.jsonl", DEV)
    shutil.copy(rd.stage_dir("retrieve") / "dev.trec", rd.stage_dir("retrieve") / "tune.trec")
    out = tmp_path / "bench.md"
    argv = ["item_expert.py", "--run-dir", str(rd.path), "--max-examples", "0", "--tune-examples", "0",
            "--top-k", "2", "3", "--out", str(out)]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.argv", argv)
            assert bench.main() == 0
    finally:
        (rd.stage_dir("data") / "tune.jsonl").unlink()
        (rd.stage_dir("retrieve") / "tune.trec").unlink()
    results = json.loads(out.with_suffix(".json").read_text())
    runs = results["runs"]
    assert [(r["variant"], r["top_k"], r["mode"]) for r in runs] == [
        (v, k, m) for v in ("untuned", "tuned") for k in (2, 3) for m in ("free", "constrained", "rank")
    ]
    for r in runs:
        assert r["examples"] == 3
        if r["mode"] == "free":
            assert 0 <= r["strict_year_hallucinations"] <= 3
        if r["mode"] == "rank":
            assert r["fusion_alpha"] in ALPHA_GRID and len(r["fusion_tuning"]) == len(ALPHA_GRID)
            assert set(r["alone"]) == {"all", "novel"}
        if r["mode"] != "free":
            assert r["metrics"]["all"]["hallucination_rate"] == 0.0
    assert set(results["retriever_top1"]) == {"2", "3"}
    assert "rank, expert alone" in out.read_text()


def test_generate_reads_targets_through_the_catalogs_aliases(tmp_path: Path) -> None:
    """With a cleaned catalog (13 carries the folded id 13x), a dev target named 13x is Jaws when the generate stage
    loads its split, so the pick is scored against the item the list can hold."""
    folded = [dataclasses.replace(it, meta={**it.meta, "alias_ids": ["13x"]}) if it.item_id == "13" else it
              for it in ITEMS]
    rd = make_run_dir(tmp_path / "run", items=folded, dev=[dataclasses.replace(DEV[0], target_item_ids=["13x"])])
    inputs = generate_stage.load_split_inputs(rd, "dev", {it.item_id: it for it in folded}, 4, None, 0, 0)
    assert inputs.examples[0].target_item_ids == ["13"]
