"""Query Expert stages on a tiny run dir (configs/tiny.yaml's books example): distill, train-query, rewrite.

Fast tests use a tiny random sentence-transformer for the index and a tiny random Llama for the student; the slow
test runs the real SmolLM2 and MiniLM on a few examples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from retrieval_fakes import build_tiny_sentence_transformer
from tiny_models import build_tiny_llama

from reges.cli import main
from reges.config import load_config
from reges.errors import ConfigError, DataError, StageNotReadyError
from reges.io import RunDir, read_json, read_jsonl, write_json, write_jsonl
from reges.llm import lora
from reges.query_expert import distill, rewrite, train

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"example_id", "query", "prompt", "completion", "candidates", "title_leak", "ungrounded_words"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data, catalog and index of configs/tiny.yaml, the index built with a tiny random encoder (fast)."""
    tmp = tmp_path_factory.mktemp("qe")
    items = [json.loads(line)["text"] for line in (REPO / "examples/books/items.jsonl").read_text().splitlines()]
    encoder = build_tiny_sentence_transformer(tmp / "st", items + ["User Assistant"])
    run_dir = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # config paths are relative to the repository root
        for stage in ("data", "catalog", "index"):
            args = [stage, "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), f"index.encoder={encoder}",
                    "run.show_progress=false"]
            assert main(args) == 0
    return run_dir


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (REPO / "examples/books/dialogues.jsonl").read_text() + (REPO / "examples/books/items.jsonl").read_text()
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), extra_text=text)


def copy_run(base: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(base, tmp_path / "run")
    return RunDir(tmp_path / "run")


def config(run_dir: RunDir, *overrides: str):
    encoder = json.loads((run_dir.path / "index" / "index.json").read_text())["encoder"]
    return load_config(REPO / "configs/tiny.yaml", [f"index.encoder={encoder}", "run.show_progress=false",
                                                     "index.device=cpu", *overrides])


def test_distill_stage_writes_rows_stats_and_manifest(base_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(base_run, tmp_path)
    cfg = config(run_dir, "distill.splits=[train, dev]", "distill.feedback_top_k=5")
    distill.run(cfg, run_dir)
    out = run_dir.stage_dir("distill")
    rows = read_jsonl(out / "train.jsonl")
    examples = {r["example_id"]: r for r in read_jsonl(run_dir.path / "data" / "train.jsonl")}
    assert rows and [r["example_id"] for r in rows] == sorted(r["example_id"] for r in rows)
    items = {r["item_id"]: r for r in read_jsonl(run_dir.path / "catalog" / "items.jsonl")}
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["completion"] == [{"role": "assistant", "content": row["query"]}]
        assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["role"] == "user"
        ranks = {c["query"]: c["rank"] for c in row["candidates"]}
        assert row["query"] in ranks and 1 <= len(ranks) <= cfg.distill.num_queries
        best = min((r for r in ranks.values() if r is not None), default=None)
        assert ranks[row["query"]] == best  # feedback kept the best-ranked candidate
        assert not row["title_leak"] and row["ungrounded_words"] == 0  # the grounded teacher needs no filtering
        titles = [items[t]["title"] for t in examples[row["example_id"]]["target_item_ids"] if t in items]
        assert not any(t.split(" (")[0] in row["query"] for t in titles), (row["query"], titles)
    stats = json.loads((out / "stats.json").read_text())
    train_stats = stats["splits"]["train"]
    assert train_stats["written"] == len(rows) and train_stats["evaluation_only"] is False
    assert stats["splits"]["dev"]["evaluation_only"] is True
    assert train_stats["kept_with_title_leak"] == 0 and train_stats["kept_ungrounded_words"] == 0
    assert {"recall@10", "recall@50", "novel_recall@50", "mean_best_rank"} <= set(train_stats["kept"])
    assert train_stats["kept"]["recall@50"] >= train_stats["teacher_first"]["recall@50"]
    manifest = run_dir.manifest("distill")
    assert manifest["outputs"]["train.jsonl"]["rows"] == len(rows) and manifest["evaluation_only_splits"] == ["dev"]
    assert set(manifest["inputs"]) == {"data/train", "data/dev", "catalog", "index"}

    with pytest.raises(DataError, match="distill.splits has 'test'"):
        distill.run(config(run_dir, "distill.splits=[test]", "run.overwrite=true"), run_dir)


def _rewrite_stage_file(run_dir: RunDir, stage: str, name: str, rows: list[dict]) -> None:
    """Replace a complete stage's output file, and the size its manifest records for it."""
    write_jsonl(run_dir.stage_dir(stage) / name, rows)
    manifest = read_json(run_dir.stage_dir(stage) / "manifest.json")
    manifest["files"][name] = (run_dir.stage_dir(stage) / name).stat().st_size
    write_json(run_dir.stage_dir(stage) / "manifest.json", manifest)


def test_distill_reads_targets_through_the_catalogs_aliases(base_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cleaned catalog, a train target named by a folded id reaches the teacher as the item it was folded
    into (whose card the teacher must see), not as an id the catalog lacks."""
    run_dir = copy_run(base_run, tmp_path)
    train_rows = read_jsonl(run_dir.path / "data" / "train.jsonl")
    target = train_rows[0]["target_item_ids"][0]
    items = [{**r, "meta": {**r.get("meta", {}), "alias_ids": ["folded-1"]}} if r["item_id"] == target else r
             for r in read_jsonl(run_dir.path / "catalog" / "items.jsonl")]
    _rewrite_stage_file(run_dir, "catalog", "items.jsonl", items)
    train_rows[0]["target_item_ids"] = ["folded-1", *train_rows[0]["target_item_ids"][1:]]
    _rewrite_stage_file(run_dir, "data", "train.jsonl", train_rows)
    seen = []
    real = distill.distill_examples
    monkeypatch.setattr(distill, "distill_examples", lambda examples, *a: seen.extend(examples) or real(examples, *a))
    distill.run(config(run_dir, "distill.feedback_top_k=5"), run_dir)
    first = next(ex for ex in seen if ex.example_id == train_rows[0]["example_id"])
    assert first.target_item_ids[0] == target


def test_train_query_and_rewrite_stages(base_run: Path, tiny_llm: Path, tmp_path: Path) -> None:
    run_dir = copy_run(base_run, tmp_path)
    with pytest.raises(StageNotReadyError, match="distill"):
        train.run(config(run_dir), run_dir)
    llm = [f"llm.model={tiny_llm}", "llm.device=cpu", "run.threads=1"]
    cfg = config(run_dir, *llm, "train_query.max_steps=3", "train_query.batch_size=2", "train_query.lr=0.01",
                 "train_query.save_every_steps=1", "rewrite.splits=[dev, test]", "rewrite.max_new_tokens=4",
                 "rewrite.batch_size=3")
    distill.run(cfg, run_dir)
    train.run(cfg, run_dir)
    tq = run_dir.stage_dir("train-query")
    assert (tq / "adapter" / "adapter_config.json").is_file() and not (tq / "checkpoints").exists()
    assert not (tq / "adapter.gguf").exists()  # the base is an HF folder, not a GGUF file
    state = json.loads((tq / "trainer_state.json").read_text())
    assert state["steps"] == 3 and len(state["losses"]) == 3 and state["tokens_per_s"] > 0
    manifest = run_dir.manifest("train-query")
    assert manifest["steps"] == 3 and manifest["resumed_from_step"] == 0 and manifest["tokens_per_s"] > 0
    assert manifest["config"]["lora"]["dtype"] in ("float32", "bfloat16")

    rewrite.run(cfg, run_dir)  # "test" was not written by the data stage: skipped
    rows = read_jsonl(run_dir.stage_dir("rewrite") / "dev.jsonl")
    dev = read_jsonl(run_dir.path / "data" / "dev.jsonl")
    assert [r["example_id"] for r in rows] == sorted(e["example_id"] for e in dev)
    assert all(set(r) == {"example_id", "query"} and isinstance(r["query"], str) for r in rows)
    assert not (run_dir.stage_dir("rewrite") / "test.jsonl").exists()
    stats = run_dir.manifest("rewrite")["splits"]["dev"]
    assert stats["queries"] == len(rows) and stats["queries_per_s"] > 0
    assert 0 < stats["latency_p50_s"] <= stats["latency_p95_s"]

    with pytest.raises(ConfigError, match="adapter.gguf not found"):
        rewrite.run(config(run_dir, *llm, "llm.backend=llamacpp", "run.overwrite=true"), run_dir)


def test_train_query_resumes_after_a_kill(base_run: Path, tiny_llm: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = copy_run(base_run, tmp_path)
    cfg = config(run_dir, f"llm.model={tiny_llm}", "llm.device=cpu", "train_query.max_steps=4",
                 "train_query.batch_size=2", "train_query.save_every_steps=2")
    distill.run(cfg, run_dir)
    real_collate, calls = lora.collate, []

    def collate_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) > 3:  # during step 4, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(lora, "collate", collate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, run_dir)
    assert not run_dir.is_complete("train-query")
    assert (run_dir.stage_dir("train-query") / "checkpoints" / "step-2").is_dir()
    monkeypatch.setattr(lora, "collate", real_collate)
    train.run(cfg, run_dir)
    manifest = run_dir.manifest("train-query")
    assert manifest["resumed_from_step"] == 2 and manifest["steps"] == 4


def test_train_query_needs_distilled_train_rows(base_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(base_run, tmp_path)
    cfg = config(run_dir, "distill.splits=[dev]")
    distill.run(cfg, run_dir)
    with pytest.raises(DataError, match="trains on distilled train rows only"):
        train.run(cfg, run_dir)


@pytest.mark.slow
def test_real_smollm2_student_on_a_few_examples(base_run: Path, tmp_path: Path) -> None:
    """Real MiniLM index and SmolLM2: prompts fit the token budget, a GGUF adapter is written and llama.cpp uses it."""
    from reges.config import LLMConfig
    from reges.llm.models import load_hf
    from reges.retrieval import index as index_stage

    run_dir = copy_run(base_run, tmp_path)
    shutil.rmtree(run_dir.path / "index")
    cfg = load_config(REPO / "configs/tiny.yaml", [
        "run.show_progress=false", "run.threads=1", "train_query.max_steps=2",
        "train_query.batch_size=2", "rewrite.splits=[dev]", "rewrite.max_new_tokens=16", "rewrite.batch_size=4",
    ])
    index_stage.run(cfg, run_dir)
    distill.run(cfg, run_dir)
    rows = read_jsonl(run_dir.stage_dir("distill") / "train.jsonl")
    _, tokenizer = load_hf(LLMConfig())
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert 50 < len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= cfg.train_query.max_prompt_tokens
    train.run(cfg, run_dir)
    assert (run_dir.stage_dir("train-query") / "adapter.gguf").is_file()
    rewrite.run(load_config(REPO / "configs/tiny.yaml", [
        "run.show_progress=false", "run.threads=1", "llm.backend=llamacpp",
        "rewrite.splits=[dev]", "rewrite.max_new_tokens=16", "rewrite.batch_size=4",
    ]), run_dir)
    queries = read_jsonl(run_dir.stage_dir("rewrite") / "dev.jsonl")
    assert queries and any(q["query"] for q in queries)
