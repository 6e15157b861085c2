"""The seeded samples that stages take when a `max_examples`/`max_pairs` setting caps their input.

`sample_rows` is the sample: numpy's `default_rng(seed)`, rows kept in their given order, so a sample depends only
on the seed and the input list. `train-item`, `generate` and `train-retriever` (and the encoder_finetune
benchmark) use it.

`sample_by_id` is the older sample that the Query Expert's two stages (`distill`, `train-query`) still take: Python's
`random.Random(seed)`, then sorted by example id. It stays because moving those stages to `sample_rows` would change
which examples they keep: the committed INSPIRED config trains the Query Expert on 240 sampled rows, and
docs/results/query_expert.md reports a 300-example distill sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from reges.errors import ConfigError

T = TypeVar("T")


def _check_max_rows(max_rows: int, setting: str) -> None:
    if max_rows < 0:
        raise ConfigError(f"{setting} must be >= 0 (0 = all), got {max_rows}; set {setting} in the YAML")


def sample_rows(rows: Sequence[T], max_rows: int, seed: int, setting: str) -> list[T]:
    """A seeded sample of `max_rows` rows, kept in their given order (all rows when 0 or more than there are).

    Args:
        rows: The rows to sample from; callers sort them first when their order is not already fixed.
        max_rows: How many to keep (0: all).
        seed: The run seed.
        setting: The config key that set `max_rows`, for the error message (e.g. "train_item.max_examples").

    Returns:
        The kept rows, in the order of `rows`.

    Raises:
        ConfigError: `max_rows` is negative.
    """
    _check_max_rows(max_rows, setting)
    if max_rows == 0 or max_rows >= len(rows):
        return list(rows)
    keep = np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False)
    return [rows[i] for i in sorted(keep.tolist())]


def sample_by_id(rows: Sequence[T], max_rows: int, seed: int, example_id: Callable[[T], str], setting: str) -> list[T]:
    """The Query Expert stages' seeded sample of `max_rows` rows (all when 0 or more than there are), sorted by id.

    Args:
        rows: The rows to sample from (the sample depends on their order; the result does not).
        max_rows: How many to keep (0: all).
        seed: The run seed.
        example_id: A row's example id, the sort key of the result.
        setting: The config key that set `max_rows`, for the error message (e.g. "train_query.max_examples").

    Raises:
        ConfigError: `max_rows` is negative.
    """
    _check_max_rows(max_rows, setting)
    if 0 < max_rows < len(rows):
        rows = random.Random(seed).sample(list(rows), max_rows)
    return sorted(rows, key=example_id)
