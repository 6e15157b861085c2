from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.errors import DataError, StageCompleteError, StageNotReadyError
from reges.io import RunDir, atomic_open, read_jsonl, read_trec, write_jsonl, write_trec
from reges.records import Hit, RecExample, Turn


def test_jsonl_roundtrip_keeps_unicode(tmp_path: Path) -> None:
    ex = RecExample("d1_2", "d1", [Turn("user", "Amélie  please", [])], ["7"], [False], ["Amélie (2001)"])
    write_jsonl(tmp_path / "x.jsonl", [ex])
    assert "Amélie" in (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert RecExample.from_dict(read_jsonl(tmp_path / "x.jsonl")[0]) == ex


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(p)


def test_atomic_open_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_trec_roundtrip_sorted_with_ties(tmp_path: Path) -> None:
    run = {"q2": [Hit("b", 1.0), Hit("a", 1.0), Hit("c", 2.0)], "q1": [Hit("z", 0.5)]}
    write_trec(tmp_path / "r.trec", run, tag="t")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0].startswith("q1 Q0 z 1 ")
    assert [ln.split()[2] for ln in lines[1:]] == ["c", "a", "b"]
    back = read_trec(tmp_path / "r.trec")
    assert [h.item_id for h in back["q2"]] == ["c", "a", "b"]


def test_malformed_trec(tmp_path: Path) -> None:
    p = tmp_path / "r.trec"
    p.write_text("q1 Q0 a 1 0.5\n")
    with pytest.raises(DataError, match="r.trec:1: expected 6 columns"):
        read_trec(p)


def test_run_dir_stage_lifecycle(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    with pytest.raises(StageNotReadyError, match="run `reges index"):
        rd.require("index")
    out = rd.begin("index", overwrite=False)
    (out / "item_ids.txt").write_text("a\nb\n")
    assert not rd.is_complete("index")
    rd.finish("index", config={"k": 1}, inputs={"ids": out / "item_ids.txt"}, outputs={"item_ids.txt": 2},
              seed=0, started="t0")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "index"
    assert manifest["inputs"]["ids"].startswith("sha256:")
    assert manifest["outputs"] == {"item_ids.txt": {"rows": 2}}
    assert {"started", "finished", "versions", "seed", "config"} <= set(manifest)
    assert rd.require("index") == out
    with pytest.raises(StageCompleteError, match="overwrite=true"):
        rd.begin("index", overwrite=False)
    rd.begin("index", overwrite=True)
    assert not rd.is_complete("index")


def test_begin_clears_interrupted_stage_but_keeps_checkpoints(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    out = rd.begin("train", overwrite=False)
    (out / "partial.jsonl").write_text("x")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step-2").mkdir()
    out = rd.begin("train", overwrite=False)
    assert not (out / "partial.jsonl").exists()
    assert (out / "checkpoints" / "step-2").is_dir()
