"""The seeded samples stages take under `max_examples`/`max_pairs`: size, order, seed, and the draws they stand for."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reges.data.sampling import sample_by_id, sample_rows
from reges.errors import ConfigError


def test_sample_rows_keeps_the_given_order_and_draws_positions_with_numpy() -> None:
    rows = [f"r{i:02d}" for i in range(30)]
    kept = sample_rows(rows, 7, seed=3, setting="x.max_examples")
    assert len(kept) == 7 and len(set(kept)) == 7
    assert kept == [r for r in rows if r in kept]  # input order, not draw order
    # The draw the stages made before they shared this function: positions from default_rng(seed), sorted.
    positions = np.random.default_rng(3).choice(30, size=7, replace=False)
    assert kept == [rows[i] for i in sorted(positions.tolist())]
    assert sample_rows(rows, 7, seed=3, setting="x") == kept
    assert sample_rows(rows, 7, seed=4, setting="x") != kept


def test_sample_rows_takes_everything_at_zero_or_above_the_size() -> None:
    rows = [3, 1, 2]
    assert sample_rows(rows, 0, seed=0, setting="x") == rows
    assert sample_rows(rows, 3, seed=0, setting="x") == rows
    assert sample_rows(rows, 10, seed=0, setting="x") == rows
    assert sample_rows([], 5, seed=0, setting="x") == []
    with pytest.raises(ConfigError, match="train_item.max_examples must be >= 0"):
        sample_rows(rows, -1, seed=0, setting="train_item.max_examples")


def test_sample_by_id_is_random_random_then_sorted_by_id() -> None:
    rows = [{"example_id": f"d{i}_1"} for i in range(10)]
    kept = sample_by_id(rows, 4, seed=1, example_id=lambda r: r["example_id"], setting="x")
    ids = [r["example_id"] for r in kept]
    assert len(ids) == 4 and ids == sorted(ids)
    # The Query Expert's draw (kept so that its committed samples do not change): random.Random(seed).sample.
    assert ids == sorted(r["example_id"] for r in random.Random(1).sample(rows, 4))
    everything = sample_by_id(list(reversed(rows)), 0, seed=1, example_id=lambda r: r["example_id"], setting="x")
    assert [r["example_id"] for r in everything] == sorted(r["example_id"] for r in rows)
    with pytest.raises(ConfigError, match="distill.max_examples must be >= 0"):
        sample_by_id(rows, -1, seed=0, example_id=lambda r: r["example_id"], setting="distill.max_examples")
