from __future__ import annotations

from pathlib import Path

import pytest

from reges.config import PipelineConfig, load_config
from reges.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)


def test_shipped_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"redial.yaml", "inspired.yaml", "tiny.yaml"}


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["retrieve.top_k=20", "evaluate.cutoffs=[1, 3]", "run.overwrite=true"])
    assert cfg.retrieve.top_k == 20
    assert cfg.evaluate.cutoffs == [1, 3]
    assert cfg.run.overwrite is True


def test_float_field_accepts_int() -> None:
    assert load_config(None, ["data.dev_fraction=1"]).data.dev_fraction == 1.0


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
    ],
)
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("index:\n  encodr: x\n")
    with pytest.raises(ConfigError, match="did you mean index.encoder"):
        load_config(p)
