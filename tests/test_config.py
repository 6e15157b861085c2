from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from reges.config import (
    DistillConfig,
    GenerateConfig,
    LLMConfig,
    PipelineConfig,
    check_pipeline,
    data_splits,
    load_config,
)
from reges.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SHIPPED = REPO / "src" / "reges" / "shipped" / "redial" / "config.yaml"


@pytest.mark.parametrize("path", [*CONFIGS, SHIPPED], ids=[p.name for p in CONFIGS] + ["shipped/redial"])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)


def test_shipped_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"redial.yaml", "inspired.yaml", "tiny.yaml"}


def test_defaults_are_valid() -> None:
    assert load_config(None) == PipelineConfig()
    check_pipeline(PipelineConfig())


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["retrieve.top_k=20", "evaluate.cutoffs=[1, 3]", "run.overwrite=true"])
    assert cfg.retrieve.top_k == 20
    assert cfg.evaluate.cutoffs == [1, 3]
    assert cfg.run.overwrite is True


def test_float_field_accepts_int() -> None:
    assert load_config(None, ["llm.timeout_s=30"]).llm.timeout_s == 30.0


def test_float_field_accepts_an_exponent_without_a_dot() -> None:
    """YAML 1.1 reads 5e-4 as a string; a learning rate written that way is still a float."""
    assert load_config(None, ["train_retriever.lr=5e-4"]).train_retriever.lr == 0.0005
    with pytest.raises(ConfigError, match="train_retriever.lr must be float, got 'e-4'"):
        load_config(None, ["train_retriever.lr=e-4"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("retrieve.topk=5", "did you mean retrieve.top_k"),
        ("retreive.top_k=5", "did you mean retrieve"),
        ("retrieve.top_k=five", "retrieve.top_k must be int"),
        ("retrieve.top_k=true", "retrieve.top_k must be int"),
        ("index.index_type=annoy", "must be one of ['flat', 'ivf', 'hnsw']"),
        ("evaluate.cutoffs=5", "must be a list"),
        ("no_equals_sign", "must look like section.key=value"),
        ("item_llm.modle=x", "did you mean item_llm.model"),
    ],
)
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [override])
    assert message in str(e.value)


# One bad value per checked key (and per cross-section rule): (overrides, fragments the error must contain). The
# fragments name the key and the value; every message also says how to fix it (checked below).
BAD_VALUES: list[tuple[list[str], list[str]]] = [
    (["run.seed=-1"], ["run.seed must be >= 0", "got -1"]),
    (["data.tune_fraction=1"], ["data.tune_fraction must be in [0, 1)", "got 1.0"]),
    (["data.tune_fraction=-0.1"], ["data.tune_fraction", "got -0.1"]),
    (["data.dev_fraction=0"], ["data.dev_fraction must be in (0, 1)", "got 0.0"]),
    (["data.dev_fraction=.nan"], ["data.dev_fraction", "got nan"]),
    (["data.column_map={turns: messages}"], ["data.column_map applies to data.format=custom only", "'redial'"]),
    (["data.format=custom", "data.column_map={turn: messages}"], ["data.column_map has unknown key 'turn'",
                                                                   "did you mean turns"]),
    (["data.format=inspired", "data.movie_names_file=m.csv"], ["data.movie_names_file", "'inspired'"]),
    (["data.lossy_file=x.zip"], ["data.lossy_file needs data.movie_names_file"]),
    (["catalog.max_card_chars=0"], ["catalog.max_card_chars must be >= 1", "got 0"]),
    (["index.nlist=0"], ["index.nlist must be >= 1", "got 0"]),
    (["index.nprobe=0"], ["index.nprobe must be >= 1", "got 0"]),
    (["index.hnsw_m=1"], ["index.hnsw_m must be >= 2", "got 1"]),
    (["index.ef_search=0"], ["index.ef_search must be >= 1", "got 0"]),
    (["index.batch_size=0"], ["index.batch_size must be >= 1", "got 0"]),
    (["index.max_seq_length=0"], ["index.max_seq_length must be >= 1", "got 0"]),
    (["retrieve.top_k=0"], ["retrieve.top_k must be >= 1", "got 0"]),
    (["retrieve.batch_size=0"], ["retrieve.batch_size must be >= 1", "got 0"]),
    (["retrieve.max_query_chars=0"], ["retrieve.max_query_chars must be >= 1", "got 0"]),
    (["evaluate.cutoffs=[]"], ["evaluate.cutoffs is empty"]),
    (["evaluate.cutoffs=[0, 5]"], ["evaluate.cutoffs must all be >= 1", "got [0]"]),
    (["evaluate.bootstrap=-1"], ["evaluate.bootstrap must be >= 0", "got -1"]),
    (["evaluate.oracle_fields=[genre, title]"], ["evaluate.oracle_fields must not contain 'title'"]),
    (["run.threads=-1"], ["run.threads must be >= 0", "got -1"]),
    (["llm.threads=-1"], ["run.threads must be >= 0", "got -1"]),
    (["llm.n_ctx=0"], ["llm.n_ctx must be >= 1", "got 0"]),
    (["llm.batch_size=0"], ["llm.batch_size must be >= 1", "got 0"]),
    (["llm.max_retries=-1"], ["llm.max_retries must be >= 0", "got -1"]),
    (["llm.prompt_lookup_tokens=-1"], ["llm.prompt_lookup_tokens must be >= 0", "got -1"]),
    (["llm.timeout_s=0"], ["llm.timeout_s must be > 0", "got 0.0"]),
    (["item_llm.n_ctx=0"], ["item_llm.n_ctx must be >= 1", "got 0"]),
    (["item_llm.timeout_s=-5"], ["item_llm.timeout_s must be > 0", "got -5.0"]),
    (["distill.teacher_llm.batch_size=0"], ["distill.teacher_llm.batch_size must be >= 1", "got 0"]),
    (["distill.splits=[]"], ["distill.splits is empty"]),
    (["distill.num_queries=0"], ["distill.num_queries must be >= 1", "got 0"]),
    (["distill.max_query_words=2"], ["distill.max_query_words must be >= 3", "got 2"]),
    (["distill.max_examples=-1"], ["distill.max_examples must be >= 0", "got -1"]),
    (["distill.feedback_top_k=0"], ["distill.feedback_top_k must be >= 1", "got 0"]),
    (["distill.batch_size=0"], ["distill.batch_size must be >= 1", "got 0"]),
    (["distill.teacher_max_new_tokens=0"], ["distill.teacher_max_new_tokens must be >= 1", "got 0"]),
    (["distill.teacher=llm", "distill.teacher_temperature=0"], ["distill.teacher_temperature must be > 0", "got 0.0"]),
    (["train_query.max_examples=-1"], ["train_query.max_examples must be >= 0", "got -1"]),
    (["train_query.max_prompt_tokens=0"], ["train_query.max_prompt_tokens must be >= 1", "got 0"]),
    (["train_query.max_completion_tokens=0"], ["train_query.max_completion_tokens must be >= 1", "got 0"]),
    (["train_query.epochs=-1"], ["train_query.epochs must be >= 0", "got -1"]),
    (["train_query.max_steps=-1"], ["train_query.max_steps must be >= 0", "got -1"]),
    (["train_query.epochs=0"], ["train_query.epochs and train_query.max_steps are both 0"]),
    (["train_query.lr=0"], ["train_query.lr must be > 0", "got 0.0"]),
    (["train_query.r=0"], ["train_query.r must be >= 1", "got 0"]),
    (["train_query.dropout=1"], ["train_query.dropout must be in [0, 1)", "got 1.0"]),
    (["train_query.batch_size=0"], ["train_query.batch_size must be >= 1", "got 0"]),
    (["train_query.grad_accum=0"], ["train_query.grad_accum must be >= 1", "got 0"]),
    (["train_query.save_every_steps=-1"], ["train_query.save_every_steps must be >= 0", "got -1"]),
    (["rewrite.splits=[]"], ["rewrite.splits is empty"]),
    (["rewrite.batch_size=0"], ["rewrite.batch_size must be >= 1", "got 0"]),
    (["rewrite.max_new_tokens=0"], ["rewrite.max_new_tokens must be >= 1", "got 0"]),
    (["train_retriever.epochs=0"], ["train_retriever.epochs must be >= 1", "got 0"]),
    (["train_retriever.batch_size=1"], ["train_retriever.batch_size must be >= 2", "got 1"]),
    (["train_retriever.lr=0"], ["train_retriever.lr must be > 0", "got 0.0"]),
    (["train_retriever.warmup_ratio=1"], ["train_retriever.warmup_ratio must be in [0, 1)", "got 1.0"]),
    (["train_retriever.hard_negatives=-1"], ["train_retriever.hard_negatives must be >= 0", "got -1"]),
    (["train_retriever.max_pairs=-1"], ["train_retriever.max_pairs must be >= 0", "got -1"]),
    (["train_retriever.lossy_pairs=-1"], ["train_retriever.lossy_pairs must be >= 0", "got -1"]),
    (["train_retriever.lossy_pairs=10", "train_retriever.finetune=false"],
     ["train_retriever.lossy_pairs=10 trains the encoder", "finetune is false"]),
    (["train_retriever.lossy_pairs=10"], ["train_retriever.lossy_pairs=10", "data.lossy_file is empty"]),
    (["train_retriever.lossy_pairs_from=interleaved"],
     ["train_retriever.lossy_pairs_from='interleaved' says how the lossy pairs are cut", "lossy_pairs is 0"]),
    (["train_retriever.save_every_steps=-1"], ["train_retriever.save_every_steps must be >= 0", "got -1"]),
    (["train_retriever.chunk_size=-1"], ["train_retriever.chunk_size must be >= 0", "got -1"]),
    (["train_retriever.max_query_chars=0"], ["train_retriever.max_query_chars must be >= 1", "got 0"]),
    (["train_retriever.max_seq_length=0"], ["train_retriever.max_seq_length must be >= 1", "got 0"]),
    (["train_retriever.weight_grid=[]"], ["train_retriever.weight_grid is empty"]),
    (["train_retriever.tune_passes=0"], ["train_retriever.tune_passes must be >= 1", "got 0"]),
    (["train_retriever.weight_resamples=1"], ["train_retriever.weight_resamples must be 0 (one search) or at least 2",
                                               "got 1"]),
    (["mine.splits=[]"], ["mine.splits is empty"]),
    (["mine.top_k=0"], ["mine.top_k must be >= 1", "got 0"]),
    (["mine.max_card_chars=0"], ["mine.max_card_chars must be >= 1", "got 0"]),
    (["mine.max_context_chars=0"], ["mine.max_context_chars must be >= 1", "got 0"]),
    (["mine.max_query_chars=0"], ["mine.max_query_chars must be >= 1", "got 0"]),
    (["train_item.max_examples=-1"], ["train_item.max_examples must be >= 0", "got -1"]),
    (["train_item.max_prompt_tokens=0"], ["train_item.max_prompt_tokens must be >= 1", "got 0"]),
    (["train_item.epochs=0"], ["train_item.epochs and train_item.max_steps are both 0"]),
    (["train_item.max_steps=-1"], ["train_item.max_steps must be >= 0", "got -1"]),
    (["train_item.lr=0"], ["train_item.lr must be > 0", "got 0.0"]),
    (["train_item.r=0"], ["train_item.r must be >= 1", "got 0"]),
    (["train_item.batch_size=0"], ["train_item.batch_size must be >= 1", "got 0"]),
    (["train_item.grad_accum=0"], ["train_item.grad_accum must be >= 1", "got 0"]),
    (["train_item.save_every_steps=-1"], ["train_item.save_every_steps must be >= 0", "got -1"]),
    (["generate.splits=[]"], ["generate.splits is empty"]),
    (["generate.top_k=0"], ["generate.top_k must be >= 1", "got 0"]),
    (["generate.batch_size=0"], ["generate.batch_size must be >= 1", "got 0"]),
    (["generate.max_new_tokens=0"], ["generate.max_new_tokens must be >= 1", "got 0"]),
    (["generate.max_examples=-1"], ["generate.max_examples must be >= 0", "got -1"]),
    (["generate.fusion_alpha=1.5"], ["generate.fusion_alpha must be in [0, 1] or null", "got 1.5"]),
    (["generate.fusion_alpha=-0.1"], ["generate.fusion_alpha", "got -0.1"]),
    # cross-section rules (check_pipeline)
    (["retrieve.splits=[tune, dev]"], ["retrieve.splits has 'tune'", "set data.tune_fraction > 0"]),
    (["retrieve.splits=[dev, test]"], ["retrieve.splits has 'test'", "data.test_files"]),
    (["mine.splits=[valid]"], ["mine.splits has 'valid'", "['train', 'dev']"]),
    (["mine.splits=[dev]"], ["mine.splits=['dev'] has no 'train'", "add train to mine.splits"]),
    (["rewrite.splits=[tune, test]"], ["none of rewrite.splits=['tune', 'test']"]),
    (["generate.splits=[train]"], ["generate.splits has 'train' but retrieve.splits=['dev']"]),
    (["evaluate.splits=[dev, train]"], ["evaluate.splits has 'train' but retrieve.splits=['dev']"]),
    (["evaluate.cutoffs=[1, 100]"], ["evaluate.cutoffs go up to 100 but retrieve.top_k=50"]),
    (["generate.mode=rank"], ["generate.fusion_alpha=null", "set data.tune_fraction > 0",
                              "add 'tune' to retrieve.splits"]),
    (["generate.mode=rank", "data.tune_fraction=0.1"], ["generate.tune_split='tune'",
                                                        "add 'tune' to retrieve.splits"]),
    (["generate.mode=rank", "generate.tune_split=valid", "retrieve.splits=[dev]"], ["generate.tune_split='valid'"]),
    (["mine.query=rewrite"], ["mine.query=rewrite", "mine.splits has 'train'", "add 'train' to rewrite.splits"]),
    (["mine.query=rewrite", "rewrite.splits=[train]"], ["generate reads 'dev'", "add 'dev' to rewrite.splits"]),
    (["rewrite.splits=[train, tune]", "data.tune_fraction=0.1"], ["mine.query=auto", "lacks 'dev'"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_every_checked_key_fails_at_load_time(overrides: list[str], fragments: list[str]) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert time.perf_counter() - t0 < 1.0
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "; " in message, f"no fix in: {message}"


def test_sections_check_themselves_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match="generate.top_k must be >= 1, got 0"):
        GenerateConfig(top_k=0)
    with pytest.raises(ConfigError, match="generate.fusion_alpha"):
        dataclasses.replace(GenerateConfig(), fusion_alpha=2.0)
    with pytest.raises(ConfigError, match="distill.teacher_llm.n_ctx must be >= 1"):
        DistillConfig(teacher_llm=LLMConfig(n_ctx=0))
    with pytest.raises(ConfigError, match="item_llm.batch_size must be >= 1"):
        PipelineConfig(item_llm=LLMConfig(batch_size=0))
    # cross-section rules are for whole pipelines (load_config); one stage's sections built in code skip them
    partial = PipelineConfig(generate=GenerateConfig(splits=["train"]))
    with pytest.raises(ConfigError, match="generate.splits has 'train'"):
        check_pipeline(partial)


def test_data_splits() -> None:
    assert data_splits(load_config(None).data) == ["train", "dev"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["data.test_files=[t.jsonl]"])
    assert data_splits(cfg.data) == ["train", "dev", "tune", "test"]


@pytest.mark.parametrize("command", ["all", "data", "train-query", "generate", "evaluate"])
def test_bad_value_stops_the_cli_before_any_stage(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reges.cli import main

    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    tiny = str(REPO / "configs" / "tiny.yaml")
    code = main([command, "--config", tiny, "--run-dir", str(run_dir), "generate.top_k=0"])
    seconds = time.perf_counter() - t0
    assert code == 2
    assert seconds < 1.0
    assert "generate.top_k must be >= 1, got 0" in capsys.readouterr().err
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_old_thread_keys_are_deprecated_aliases_of_run_threads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # run.threads is one count for the whole process; the per-section keys of older configs and scripts set it
    assert load_config(None, ["llm.threads=1", "index.threads=1"]).run.threads == 1
    assert "llm.threads and index.threads are deprecated" in caplog.text and "run.threads=1" in caplog.text
    assert load_config(None, ["distill.teacher_llm.threads=2"]).run.threads == 2
    assert load_config(None, ["item_llm.threads=3"]).run.threads == 3
    with pytest.raises(ConfigError, match=r"llm.threads=1, index.threads=2, but the process has one thread count"):
        load_config(None, ["llm.threads=1", "index.threads=2"])
    with pytest.raises(ConfigError, match="set only run.threads"):
        load_config(None, ["run.threads=2", "llm.threads=1"])
    # an older run's config.yaml holds threads: 0 in each section (no warning: 0 means what run.threads=0 means)
    old = tmp_path / "config.yaml"
    old.write_text("llm:\n  threads: 0\nindex:\n  threads: 0\ndistill:\n  teacher_llm:\n    threads: 0\n")
    caplog.clear()
    assert load_config(old) == PipelineConfig()
    assert "deprecated" not in caplog.text
    # an override beats the file, whichever key either uses
    old.write_text("llm:\n  threads: 1\n")
    assert load_config(old, ["run.threads=2"]).run.threads == 2
    assert load_config(old, ["index.threads=2"]).run.threads == 2


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("index:\n  encodr: x\n")
    with pytest.raises(ConfigError, match="did you mean index.encoder"):
        load_config(p)
