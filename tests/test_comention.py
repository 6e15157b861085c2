"""Co-mention prior: counts by hand, every normalisation, exact leave-one-dialogue-out, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from reges.errors import ConfigError, DataError
from reges.records import Dialogue, Turn
from reges.retrieval.comention import NORMALIZATIONS, CoMention, context_item_ids


def _dialogue(dialogue_id: str, *turn_items: list[str]) -> Dialogue:
    return Dialogue(dialogue_id, [Turn("user" if i % 2 == 0 else "assistant", "x", items)
                                  for i, items in enumerate(turn_items)])


DIALOGUES = [
    _dialogue("d1", ["a", "b"], ["c", "a"]),  # {a, b, c}; "a" twice counts once
    _dialogue("d2", ["a"], ["b"]),  # {a, b}
    _dialogue("d3", ["a", "d"]),  # {a, d}
    _dialogue("d4", []),  # no item: counts as a dialogue, adds no pair
]
CATALOG = ["a", "b", "c", "d", "e"]  # "e" is never mentioned


def test_counts_by_hand() -> None:
    cm = CoMention.fit(DIALOGUES)
    assert cm.item_ids == ["a", "b", "c", "d"] and cm.num_dialogues == 4
    dense = cm.counts.toarray()
    assert dense.tolist() == [
        [3, 2, 1, 1],  # a: in 3 dialogues; with b twice, with c and d once
        [2, 2, 1, 0],
        [1, 1, 1, 0],
        [1, 0, 0, 1],
    ]
    assert cm.item_counts.tolist() == [3, 2, 1, 1]


def test_scores_by_hand_for_each_normalization() -> None:
    cm = CoMention.fit(DIALOGUES)
    ctx = [["b", "zzz"]]  # an unknown id is ignored
    # candidate order a, b, c, d, e; C(b, .) = [2, -, 1, 0, 0]; n = a3 b2 c1 d1; D = 4
    expected = {
        "count": [2, 0, 1, 0, 0],
        "log": [math.log(3), 0, math.log(2), 0, 0],
        "conditional": [2 / 2, 0, 1 / 2, 0, 0],
        "cosine": [2 / math.sqrt(2 * 3), 0, 1 / math.sqrt(2 * 1), 0, 0],
        "pmi": [max(0.0, math.log(2 * 4 / (2 * 3))), 0, math.log(1 * 4 / (2 * 1)), 0, 0],
    }
    assert set(expected) == set(NORMALIZATIONS)
    for norm, want in expected.items():
        got = cm.scores(ctx, CATALOG, norm)  # type: ignore[arg-type]
        assert got.shape == (1, 5)
        assert got[0].tolist() == pytest.approx(want), norm
    # two context items add up; an item never scores with itself
    two = cm.scores([["b", "c"]], CATALOG, "count")[0]
    assert two.tolist() == [2 + 1, 1, 1, 0, 0]


def test_no_known_item_gives_zeros_and_any_catalog_works() -> None:
    cm = CoMention.fit(DIALOGUES)
    assert not cm.scores([[], ["x"]], CATALOG, "conditional").any()
    empty = CoMention.fit([])
    assert empty.scores([["a"]], ["a", "b"], "pmi").tolist() == [[0.0, 0.0]]
    with pytest.raises(ConfigError, match="must be one of"):
        cm.scores([["a"]], CATALOG, "damped")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="appears twice"):
        CoMention.fit([DIALOGUES[0], DIALOGUES[0]])


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_leave_one_dialogue_out_equals_refitting_without_it(norm: str) -> None:
    rng = np.random.default_rng(0)
    pool = [f"i{k}" for k in range(12)]
    dialogues = [
        _dialogue(f"d{k}", list(rng.choice(pool, size=rng.integers(0, 5), replace=False)), ["i0"] if k % 3 else [])
        for k in range(30)
    ]
    full = CoMention.fit(dialogues)
    catalog = [*pool, "unseen"]
    for left_out in dialogues[:10]:
        without = CoMention.fit([d for d in dialogues if d is not left_out])
        contexts = [context_item_ids(left_out.turns), ["i1", "i2"], ["i0"]]
        want = without.scores(contexts, catalog, norm)  # type: ignore[arg-type]
        got = full.scores(contexts, catalog, norm, exclude_dialogue_ids=[left_out.dialogue_id] * 3)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, want, atol=1e-12)
    # an id that was never counted subtracts nothing
    np.testing.assert_array_equal(
        full.scores([["i1"]], catalog, norm, exclude_dialogue_ids=["dev-1"]),  # type: ignore[arg-type]
        full.scores([["i1"]], catalog, norm),  # type: ignore[arg-type]
    )


def test_save_load_roundtrip_without_pickles(tmp_path: Path) -> None:
    cm = CoMention.fit(DIALOGUES)
    rows = cm.save(tmp_path)
    assert rows == {"comention.npz": 4, "comention_ids.txt": 4, "comention_dialogues.jsonl": 4}
    with np.load(tmp_path / "comention.npz", allow_pickle=False) as npz:  # plain arrays only
        assert "data" in npz.files
    back = CoMention.load(tmp_path)
    assert back.item_ids == cm.item_ids and back.dialogues == cm.dialogues
    np.testing.assert_array_equal(back.counts.toarray(), cm.counts.toarray())
    (tmp_path / "comention_ids.txt").unlink()
    with pytest.raises(DataError, match="comention_ids.txt not found"):
        CoMention.load(tmp_path)
