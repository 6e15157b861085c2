"""Custom JSONL loader, column_map, and the shipped books example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.data.examples import build_examples
from reges.data.jsonl import load_custom, resolve_column_map
from reges.errors import ConfigError, DataError
from reges.records import Item

BOOKS = Path(__file__).resolve().parents[1] / "examples" / "books"
COLUMN_MAP = {"dialogue_id": "conv_id", "turns": "messages", "role": "speaker", "content": "text", "item_ids": "items"}


def _write(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return p


def _dialogue(**turn_overrides) -> dict:
    turn = {"role": "assistant", "content": "Try Dune.", "item_ids": ["dune"], **turn_overrides}
    return {"dialogue_id": "d1", "turns": [{"role": "user", "content": "Hi", "item_ids": []}, turn]}


def test_books_example_loads_and_matches_items():
    f = load_custom(BOOKS / "dialogues.jsonl")
    assert f.variant == "custom" and f.titles == {}
    assert len(f.dialogues) == 12
    items = [Item.from_dict(json.loads(line)) for line in (BOOKS / "items.jsonl").read_text("utf-8").splitlines()]
    ids = [i.item_id for i in items]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert all(i.text and i.title and isinstance(i.year, int) for i in items)
    mentioned = {i for d in f.dialogues for t in d.turns for i in t.item_ids}
    assert mentioned <= set(ids)
    ex = build_examples(f.dialogues[0], {})
    assert [(e.example_id, e.target_item_ids, e.target_mentioned) for e in ex] == [
        ("books-01_1", ["the-hobbit", "the-fellowship-of-the-ring"], [True, False]),
        ("books-01_3", ["dune"], [False]),
    ]
    assert ex[0].target_titles == []  # titles live in the items file


def test_column_map_reads_renamed_keys(tmp_path):
    original = load_custom(BOOKS / "dialogues.jsonl")
    renamed = []
    for line in (BOOKS / "dialogues.jsonl").read_text("utf-8").splitlines():
        d = json.loads(line)
        renamed.append({"conv_id": d["dialogue_id"], "messages": [
            {"speaker": t["role"], "text": t["content"], "items": t["item_ids"]} for t in d["turns"]
        ]})
    f = load_custom(_write(tmp_path, renamed), COLUMN_MAP)
    assert f.dialogues == original.dialogues


def test_partial_column_map_and_unknown_key():
    assert resolve_column_map({"turns": "messages"})["turns"] == "messages"
    assert resolve_column_map({"turns": "messages"})["role"] == "role"
    with pytest.raises(ConfigError, match="unknown key 'turn'.*did you mean turns"):
        resolve_column_map({"turn": "messages"})


def test_turns_kept_as_given_and_ids_as_strings(tmp_path):
    rows = [{"dialogue_id": 7, "turns": [
        {"role": "assistant", "content": "a", "item_ids": [1]},
        {"role": "assistant", "content": "b"},
    ]}]
    d = load_custom(_write(tmp_path, rows)).dialogues[0]
    assert d.dialogue_id == "7"
    assert [(t.content, t.item_ids) for t in d.turns] == [("a", ["1"]), ("b", [])]
    ex = build_examples(d, {})
    assert ex[0].example_id == "7_0" and ex[0].context == []


@pytest.mark.parametrize(("row", "message"), [
    ("{not json", r"d\.jsonl:1: malformed JSON"),
    ({"dialogue_id": "d1", "turns": []}, r"d\.jsonl:1: dialogue 'd1' has no turns"),
    ({"turns": [{"role": "user", "content": "x"}]}, r"missing key 'dialogue_id'"),
    (_dialogue(role="seeker"), r"turn 1: role must be one of \['user', 'assistant'\], got 'seeker'"),
    (_dialogue(item_ids="dune"), r"turn 1: item_ids must be a list of item id strings"),
    (_dialogue(item_ids=[None]), r"item_ids must be a list"),
    (_dialogue(content=None), r"content must be a string"),
    ({"dialogue_id": "d1", "turns": [{"role": "user"}]}, r"turn 0: missing key 'content'"),
    (["not", "an", "object"], r"expected a JSON object per line"),
])
def test_bad_input(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_custom(_write(tmp_path, [row]))


def test_missing_key_names_the_mapping(tmp_path):
    with pytest.raises(DataError, match=r"missing key 'messages' \(our 'turns'\).*data\.column_map\.turns"):
        load_custom(_write(tmp_path, [_dialogue()]), {"turns": "messages"})


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="dialogues file not found"):
        load_custom(tmp_path / "nope.jsonl")
