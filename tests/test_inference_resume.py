"""Batch inference that resumes: rewrite and generate killed half-way restart where they stopped (reges.llm.partial).

A fake LLM stands in for any backend (the stages only see the `LLM` protocol); tests/test_llm_openai.py runs the
same against a real llama.cpp server.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from item_expert_fakes import make_run_dir

import reges.llm
from reges.config import GenerateConfig, LLMConfig, PipelineConfig, RewriteConfig, RunConfig
from reges.io import RunDir, now_iso, read_jsonl
from reges.item_expert import generate as generate_stage
from reges.llm.base import Messages
from reges.llm.partial import PartialRows, llm_settings, sha
from reges.query_expert import rewrite as rewrite_stage


class Killed(Exception):
    """Stands in for SIGKILL (or a server that went away for good)."""


class FakeLLM:
    """Answers from the prompt alone (so a resumed run must equal an uninterrupted one); dies after `lives` calls."""

    def __init__(self, lives: int = 1_000) -> None:
        self.lives = lives
        self.prompts: list[Messages] = []

    def _call(self, prompts: list[Messages]) -> None:
        if self.lives == 0:
            raise Killed
        self.lives -= 1
        self.prompts.extend(prompts)

    def generate(self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None) -> list[str]:
        self._call(prompts)
        return [" ".join(p[-1]["content"].split()[-3:]) for p in prompts]

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        self._call(prompts)
        return [c[len(p[-1]["content"]) % len(c)] for p, c in zip(prompts, candidates, strict=True)]

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        self._call([prompt])
        return [-float(len(c)) for c in candidates]


def use(monkeypatch: pytest.MonkeyPatch, llm: FakeLLM) -> FakeLLM:
    monkeypatch.setattr(reges.llm, "load_llm", lambda *args, **kwargs: llm)
    return llm


def run_dir_with_query_expert(path: Path) -> RunDir:
    """data, catalog and retrieve of the item-expert fakes, plus a finished train-query stage (its adapter unused)."""
    rd = make_run_dir(path)
    out = rd.begin("train-query", overwrite=False)
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    rd.finish("train-query", config={}, inputs={}, outputs={"adapter": 1}, seed=0, started=now_iso())
    return rd


CFG = PipelineConfig(
    run=RunConfig(show_progress=False),
    llm=LLMConfig(model="smollm2-135m-instruct", backend="hf", device="cpu"),
    rewrite=RewriteConfig(splits=["dev"], batch_size=1, max_new_tokens=8),
    generate=GenerateConfig(splits=["dev"], mode="constrained", top_k=3, use_adapter=False, batch_size=1),
)


def test_partial_rows_round_trip_drop_a_torn_line_and_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "dev.partial.jsonl"
    partial = PartialRows(path, {"model": "a", "max_new_tokens": 8})
    assert partial.load() == {}
    partial.append([{"example_id": "v1", "input_sha": "x", "query": "ça"}])
    partial.append([{"example_id": "v2", "input_sha": "y", "query": "b"}])
    with path.open("a", encoding="utf-8") as f:
        f.write('{"example_id": "v3", "inp')  # the write a kill interrupted
    assert set(PartialRows(path, {"model": "a", "max_new_tokens": 8}).load()) == {"v1", "v2"}
    assert path.read_text(encoding="utf-8").endswith('"b"}\n')  # cut back to the last whole line
    partial.append([{"example_id": "v3", "input_sha": "z", "query": "c"}])
    assert PartialRows(path, {"model": "a", "max_new_tokens": 8}).load()["v1"]["query"] == "ça"
    assert PartialRows(path, {"model": "a", "max_new_tokens": 16}).load() == {}  # other settings: discarded
    assert not path.exists()


def test_fingerprint_ignores_what_changes_no_answer() -> None:
    base = LLMConfig(model="http://127.0.0.1:8080", batch_size=8)
    runtime = dataclasses.replace(base, timeout_s=600.0, max_retries=9, api_key="secret", batch_size=2)
    assert sha(llm_settings(base, "openai")) == sha(llm_settings(runtime, "openai"))
    assert "secret" not in str(llm_settings(runtime, "openai"))
    local = LLMConfig(model="smollm2-135m-instruct")
    assert sha(llm_settings(local, "hf")) != sha(llm_settings(dataclasses.replace(local, batch_size=2), "hf"))
    assert sha(llm_settings(local, "hf")) != sha(llm_settings(dataclasses.replace(local, dtype="float32"), "hf"))


def test_rewrite_killed_half_way_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run_dir_with_query_expert(tmp_path / "whole")
    use(monkeypatch, FakeLLM())
    rewrite_stage.run(CFG, whole)
    expected = read_jsonl(whole.stage_dir("rewrite") / "dev.jsonl")

    rd = run_dir_with_query_expert(tmp_path / "killed")
    use(monkeypatch, FakeLLM(lives=1))  # one batch of one example, then the process dies
    with pytest.raises(Killed):
        rewrite_stage.run(CFG, rd)
    assert not rd.is_complete("rewrite")
    partial = rd.stage_dir("rewrite") / "checkpoints" / "dev.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 1  # header + the finished example

    llm = use(monkeypatch, FakeLLM())
    rewrite_stage.run(CFG, rd)
    assert len(llm.prompts) == 2  # only the two examples left
    assert read_jsonl(rd.stage_dir("rewrite") / "dev.jsonl") == expected
    manifest = rd.manifest("rewrite")
    assert manifest["splits"]["dev"]["resumed_queries"] == 1 and manifest["splits"]["dev"]["queries"] == 3
    assert not (rd.stage_dir("rewrite") / "checkpoints").exists()
    assert "checkpoints/dev.partial.jsonl" not in manifest["files"]


def test_rewrite_restarts_a_split_whose_settings_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rd = run_dir_with_query_expert(tmp_path / "run")
    use(monkeypatch, FakeLLM(lives=2))
    with pytest.raises(Killed):
        rewrite_stage.run(CFG, rd)
    llm = use(monkeypatch, FakeLLM())
    rewrite_stage.run(dataclasses.replace(CFG, rewrite=dataclasses.replace(CFG.rewrite, max_new_tokens=4)), rd)
    assert len(llm.prompts) == 3  # written with max_new_tokens=8: not reused


@pytest.mark.parametrize("mode", ["constrained", "free", "rank"])
def test_generate_killed_half_way_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    cfg = dataclasses.replace(CFG, generate=dataclasses.replace(CFG.generate, mode=mode, fusion_alpha=0.5))
    whole = make_run_dir(tmp_path / "whole")
    use(monkeypatch, FakeLLM())
    generate_stage.run(cfg, whole)
    expected = read_jsonl(whole.stage_dir("generate") / "dev.jsonl")

    rd = make_run_dir(tmp_path / "killed")
    use(monkeypatch, FakeLLM(lives=2))
    with pytest.raises(Killed):
        generate_stage.run(cfg, rd)
    llm = use(monkeypatch, FakeLLM())
    generate_stage.run(cfg, rd)
    assert len(llm.prompts) == 1  # examples v1 and v2 were saved before the kill
    rows = read_jsonl(rd.stage_dir("generate") / "dev.jsonl")
    assert [{k: v for k, v in r.items() if k != "latency_s"} for r in rows] == [
        {k: v for k, v in r.items() if k != "latency_s"} for r in expected]
    assert rd.manifest("generate")["splits"]["dev"]["resumed_examples"] == 2
    assert not (rd.stage_dir("generate") / "checkpoints").exists()


def test_generate_recomputes_an_example_whose_candidates_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = make_run_dir(tmp_path / "run")
    use(monkeypatch, FakeLLM(lives=2))
    with pytest.raises(Killed):
        generate_stage.run(CFG, rd)
    llm = use(monkeypatch, FakeLLM())
    generate_stage.run(dataclasses.replace(CFG, generate=dataclasses.replace(CFG.generate, top_k=2)), rd)
    assert len(llm.prompts) == 3  # other candidates, other prompts: nothing reused
