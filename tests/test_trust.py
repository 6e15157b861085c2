"""Careless and hostile input to the CLI and run directories: a clear error (exit 2), never a traceback, never a
clobbered run, never a secret on disk."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from reges.cli import main
from reges.config import LLMConfig, load_config
from reges.errors import ConfigError, DataError, ModelError
from reges.io import RunDir, RunLock, read_jsonl, read_text, redact
from reges.llm.models import resolve_model
from reges.llm.openai_api import resolve_api_key
from reges.pipeline import STAGES, plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root


def _exit_and_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --- 1. non-UTF-8 bytes ------------------------------------------------------------------------------------------
def test_non_utf8_text_files_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "d.jsonl"
    bad.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: not UTF-8 text \(byte 0xe9 at line 2"):
        read_jsonl(bad)
    with pytest.raises(DataError, match="save the file as UTF-8"):
        read_text(bad)
    config = tmp_path / "c.yaml"
    config.write_bytes(b"run:\n  name: \xff\n")
    with pytest.raises(DataError, match=r"c.yaml: not UTF-8"):
        load_config(config)


def test_non_utf8_inputs_exit_2_on_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], in_repo: None
) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"run:\n  name: \xff\n")
    code, err = _exit_and_error(capsys, ["data", "--config", str(config), "--run-dir", str(tmp_path / "r1")])
    assert code == 2 and "not UTF-8" in err
    dialogues = tmp_path / "dialogues.jsonl"
    dialogues.write_bytes(b'{"dialogue_id": "x\xff"}\n')
    argv = ["data", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / "r2"),
            f"data.train_files=[{dialogues}]"]
    code, err = _exit_and_error(capsys, argv)
    assert code == 2 and "not UTF-8" in err and "dialogues.jsonl" in err
    # reges recommend --dialogue: refused before any model loads
    code, err = _exit_and_error(capsys, ["recommend", "--dialogue", str(dialogues)])
    assert code == 2 and "not UTF-8" in err


# --- 2. lone surrogates ----------------------------------------------------------------------------------------------
def test_a_lone_surrogate_in_a_message_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_and_error(capsys, ["recommend", "I loved \ud800 Alien"])
    assert code == 2 and "lone surrogate" in err
    dialogue = tmp_path / "d.jsonl"
    dialogue.write_text(json.dumps({"role": "user", "content": "x\ud800"}) + "\n")  # json escapes it as \\ud800
    code, err = _exit_and_error(capsys, ["recommend", "--dialogue", str(dialogue)])
    assert code == 2 and "lone surrogate" in err


# --- 3. malformed YAML in overrides ---------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["retrieve.top_k=[1", "run.threads=[1", "llm.model=!!python/object:os.system"])
def test_malformed_override_values(override: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, [override])
    code, err = _exit_and_error(capsys, ["data", "--run-dir", str(tmp_path / "r"), override])
    assert code == 2 and "not valid YAML" in err
    code, err = _exit_and_error(capsys, ["recommend", "--override", override, "hello, I like Alien"])
    assert code == 2 and "not valid YAML" in err


# --- 4. --run-dir that is a file or cannot be created --------------------------------------------------------------
def test_run_dir_that_is_a_file_or_cannot_be_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    code, err = _exit_and_error(capsys, ["data", "--run-dir", str(a_file)])
    assert code == 2 and "is a file" in err
    code, err = _exit_and_error(capsys, ["data", "--run-dir", str(a_file / "sub")])
    assert code == 2 and "--run-dir" in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        code, err = _exit_and_error(capsys, ["data", "--run-dir", str(locked / "run")])
        assert code == 2 and "cannot be created" in err


# --- 5. damaged outputs of a complete stage -----------------------------------------------------------------------
def test_a_truncated_output_is_reported_with_the_rebuild_command(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    out = rd.begin("train-retriever", overwrite=False)
    (out / "comention.npz").write_bytes(b"PK" + bytes(500))
    rd.finish("train-retriever", config={}, inputs={}, outputs={}, seed=0, started="now")
    assert rd.require("train-retriever") == out
    with (out / "comention.npz").open("r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"comention.npz is damaged \(100 bytes; stage train-retriever wrote 502\)"):
        rd.require("train-retriever")
    with pytest.raises(DataError, match=r"reges train-retriever --run-dir .* run.overwrite=true"):
        rd.manifest("train-retriever")


# --- 6. serve: options checked before any model loads --------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--port", "99999"], ["--port", "0"], ["--max-batch-size", "0"],
                                  ["--max-body-bytes", "0"]])
def test_serve_validates_options_before_loading(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import time

    start = time.perf_counter()
    code, err = _exit_and_error(capsys, ["serve", *argv])
    assert code == 2 and err.startswith("reges: error:")
    assert time.perf_counter() - start < 5.0  # no model was loaded (that takes several seconds)


# --- 7. a failing or read-only command never replaces config.yaml ---------------------------------------------------
def test_failing_commands_keep_the_runs_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"name": "mine", "seed": 7}}))
    before = (run / "config.yaml").read_bytes()
    code, _ = _exit_and_error(capsys, ["evaluate", "--run-dir", str(run)])
    assert code == 2
    code, _ = _exit_and_error(capsys, ["generate", "--run-dir", str(run), "generate.top_k=5"])
    assert code == 2
    assert (run / "config.yaml").read_bytes() == before
    # and a stage command without --config reads the run's own config
    code, _ = _exit_and_error(capsys, ["status", "--run-dir", str(run)])
    assert code == 0


# --- 8. one writer per run directory; stale stages are seen ---------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = RunDir(tmp_path / "run")
    rd.create()
    with RunLock(rd):
        code, err = _exit_and_error(capsys, ["data", "--config", str(REPO / "configs/tiny.yaml"), "--run-dir",
                                             str(rd.path)])
        assert code == 2 and f"pid {os.getpid()}" in err
        assert not (rd.path / "data").exists()
    with RunLock(rd):  # released on exit
        pass


def test_changed_settings_make_a_stage_and_its_downstream_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], in_repo: None
) -> None:
    run = str(tmp_path / "run")
    base = ["--config", "configs/tiny.yaml", "--run-dir", run]
    assert main(["data", *base]) == 0 and main(["catalog", *base]) == 0
    cfg = load_config("configs/tiny.yaml")
    assert [status for st, status, _ in plan(cfg, RunDir(run)) if st.name in ("data", "catalog")] == ["complete"] * 2

    changed = load_config("configs/tiny.yaml", ["data.tune_fraction=0.5"])
    status = {st.name: (s, reasons) for st, s, reasons in plan(changed, RunDir(run))}
    assert status["data"] == ("stale", ["config section data changed"])
    assert status["catalog"][0] == "stale"  # its data section changed too, and its input is stale
    assert status["index"] == ("missing", [])
    # a stage is not built on a stale input
    code, err = _exit_and_error(capsys, ["catalog", *base, "data.tune_fraction=0.5", "run.overwrite=true"])
    assert code == 2 and "no longer match the config" in err
    # settings that cannot change a result do not make anything stale
    quiet = load_config("configs/tiny.yaml", ["run.show_progress=false", "run.threads=1"])
    assert all(s != "stale" for _, s, _ in plan(quiet, RunDir(run)))
    # rebuilding the input makes its consumer stale even with its own settings unchanged
    assert main(["data", *base, "run.seed=3", "run.overwrite=true"]) == 0
    status = {st.name: (s, reasons) for st, s, reasons in plan(load_config("configs/tiny.yaml", ["run.seed=3"]),
                                                                 RunDir(run))}
    assert status["data"][0] == "complete"
    assert status["catalog"] == ("stale", ["run.seed changed (0 -> 3)", "input stage data was rebuilt"])
    capsys.readouterr()
    assert main(["status", *base, "run.seed=3"]) == 0
    assert "catalog          stale: run.seed changed" in capsys.readouterr().out


def test_every_stage_declares_existing_inputs() -> None:
    for stage in STAGES.values():
        assert all(name in STAGES for name in stage.inputs), stage.name


# --- 9. secrets ---------------------------------------------------------------------------------------------------
def test_api_keys_never_reach_the_run_directory(tmp_path: Path, in_repo: None) -> None:
    run = tmp_path / "run"
    secret = "sk-test-abcdef123456"
    assert main(["data", "--config", "configs/tiny.yaml", "--run-dir", str(run), f"llm.api_key={secret}",
                 f"distill.teacher_llm.api_key={secret}"]) == 0
    for path in run.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(encoding="utf-8", errors="replace"), path
            assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, path  # never group/other-writable
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["llm"]["api_key"] == "***" and saved["distill"]["teacher_llm"]["api_key"] == "***"


def test_api_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGES_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key(LLMConfig()) == ""
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert resolve_api_key(LLMConfig(api_key="***")) == "from-openai"  # a saved run's redacted key
    monkeypatch.setenv("REGES_API_KEY", "from-reges")
    assert resolve_api_key(LLMConfig()) == "from-reges"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    assert resolve_api_key(LLMConfig(api_key_file=str(key_file))) == "from-file"
    assert resolve_api_key(LLMConfig(api_key="given", api_key_file=str(key_file))) == "given"
    with pytest.raises(ModelError, match="cannot be read"):
        resolve_api_key(LLMConfig(api_key_file=str(tmp_path / "missing")))


def test_credentials_in_urls_are_refused_and_redacted() -> None:
    with pytest.raises(ModelError, match=r"'http://\*\*\*@host:8080/v1' carries credentials") as info:
        resolve_model("http://user:hunter2@host:8080/v1")
    assert "hunter2" not in str(info.value)
    tree = {"llm": {"model": "https://u:p@h/v1", "api_key": "k", "api_model": "m"}, "x": [{"api_key": ""}]}
    assert redact(tree) == {"llm": {"model": "https://***@h/v1", "api_key": "***", "api_model": "m"},
                            "x": [{"api_key": ""}]}


def test_a_stage_reading_one_key_of_a_section_ignores_the_rest() -> None:
    """distill reads only retrieve.max_query_chars: other retrieve settings must not make it stale."""
    from reges.pipeline import _section

    cfg = load_config(None, ["retrieve.splits=[train,dev]", "retrieve.max_query_chars=500"])
    assert _section(cfg, "retrieve.max_query_chars") == {"max_query_chars": 500}
    assert "retrieve.max_query_chars" in STAGES["distill"].sections


def test_keys_added_later_at_their_neutral_value_keep_existing_runs_current() -> None:
    """mine.exclude_named=false and train_retriever.cross_dataset=null compute what runs built before them did, so
    they are left out of the hash; turning one on counts."""
    from reges.pipeline import ADDED_KEYS, _section

    cfg = load_config(None, [])
    assert "exclude_named" not in _section(cfg, "mine") and "cross_dataset" not in _section(cfg, "train_retriever")
    on = load_config(None, ["mine.exclude_named=true"])
    assert _section(on, "mine")["exclude_named"] is True
    for section, keys in ADDED_KEYS.items():
        for key, neutral in keys.items():
            assert getattr(getattr(cfg, section), key) == neutral, "the neutral value must be the default"


def test_an_hnsw_build_setting_does_not_make_a_flat_index_stale() -> None:
    """index.ef_construction changes an HNSW graph only: a flat index's hash ignores it, an HNSW index's does not."""
    from reges.pipeline import _section

    flat, flat_wide = (load_config(None, [f"index.ef_construction={v}"]) for v in (200, 400))
    assert _section(flat, "index") == _section(flat_wide, "index") and "ef_construction" not in _section(flat, "index")
    hnsw, hnsw_wide = (load_config(None, ["index.index_type=hnsw", f"index.ef_construction={v}"]) for v in (200, 400))
    assert _section(hnsw, "index") != _section(hnsw_wide, "index")
