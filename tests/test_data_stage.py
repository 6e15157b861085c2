"""The `data` stage: splits, files, stats and manifest on fixtures; bad input; the real files (slow)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reges.config import config_from_dict
from reges.data.examples import dev_score, run, split_dev, split_tune
from reges.errors import ConfigError, DataError, StageCompleteError, UndeclaredSectionError
from reges.io import MANIFEST, RunDir, read_json, read_jsonl
from reges.pipeline import STAGES, stage_config
from reges.records import Dialogue, RecExample

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO / "examples" / "books"


def _redial_cfg(fixtures_dir: Path, **data):
    return config_from_dict({"run": {"show_progress": False}, "data": {
        "format": "redial",
        "train_files": [str(fixtures_dir / "redial" / "kgsf_valid_data.jsonl"),
                        str(fixtures_dir / "redial" / "ievalm_valid_data.jsonl")],
        "movie_names_file": str(fixtures_dir / "redial" / "movies_with_mentions.csv"),
        "dev_fraction": 0.3,
        **data,
    }})


def test_dev_score_is_stable_and_split_deterministic():
    # Frozen values: the split must not change across machines, Python versions or releases.
    assert dev_score("books-10") == pytest.approx(0.15978174263469205, abs=1e-15)
    # The definition, computed another way: the first 8 bytes of the id's sha256 as a fraction of 2**64.
    assert dev_score("16108") == int(hashlib.sha256(b"16108").hexdigest()[:16], 16) / 2**64
    assert dev_score("16108") < 0.3  # the ReDial fixture test below puts 16108 in dev at dev_fraction 0.3
    dialogues = [Dialogue(str(i), []) for i in range(20000)]
    train, dev = split_dev(dialogues, 0.16)
    assert 0.15 < len(dev) / len(dialogues) < 0.17
    assert split_dev(list(reversed(dialogues)), 0.16)[1] == list(reversed(dev))
    assert {d.dialogue_id for d in train}.isdisjoint(d.dialogue_id for d in dev)
    # A dialogue's side does not depend on which others are loaded.
    assert split_dev(dialogues[:100], 0.16)[1] == [d for d in dev if int(d.dialogue_id) < 100]


def test_redial_stage_outputs(fixtures_dir, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run(_redial_cfg(fixtures_dir), run_dir)
    out = run_dir.path / "data"
    manifest = read_json(out / MANIFEST)
    stats = read_json(out / "stats.json")
    assert stats["duplicates_dropped"] == 1  # 16108 is in both files
    assert stats["files"][str(fixtures_dir / "redial" / "kgsf_valid_data.jsonl")]["variant"] == "redial-original"
    dev = [Dialogue.from_dict(r) for r in read_jsonl(out / "dev_dialogues.jsonl")]
    train = [Dialogue.from_dict(r) for r in read_jsonl(out / "train_dialogues.jsonl")]
    assert [d.dialogue_id for d in dev] == ["1382", "16108", "1698"]  # dev_score < 0.3, sorted
    assert [d.dialogue_id for d in train] == ["12153", "12327", "16162", "16494", "19020", "6712"]
    examples = [RecExample.from_dict(r) for r in read_jsonl(out / "dev.jsonl")]
    ids = [e.example_id for e in examples]
    assert ids == sorted(ids)
    assert ids == ["1382_2", "1382_4", "1382_6", "1382_8", "16108_2", "16108_4", "1698_4"]
    assert stats["splits"]["dev"] == {"dialogues": 3, "turns": 27, "examples": 7, "targets": 11, "novel_targets": 11,
                                      "empty_context_examples": 0, "distinct_target_items": 11}
    assert stats["splits"]["train"]["novel_targets"] == stats["splits"]["train"]["targets"] - 2  # 12153
    assert "test" not in stats["splits"] and not (out / "test.jsonl").exists()
    for name in ("train.jsonl", "dev.jsonl", "train_dialogues.jsonl", "dev_dialogues.jsonl",
                 "mentioned_items.jsonl"):
        assert manifest["outputs"][name]["rows"] == len(read_jsonl(out / name))
    assert all(v.startswith("sha256:") for v in manifest["inputs"].values()) and len(manifest["inputs"]) == 3
    items = {r["item_id"]: r for r in read_jsonl(out / "mentioned_items.jsonl")}
    assert items["142710"]["title"] == "Cosmos (2015)"
    assert items["196336"]["mentions"] == {"train": 2}  # Scarface: a user turn and an assistant turn of 12153
    with pytest.raises(StageCompleteError):
        run(_redial_cfg(fixtures_dir), run_dir)


def test_stage_runs_on_its_config_view_which_refuses_undeclared_sections(fixtures_dir, tmp_path):
    cfg = _redial_cfg(fixtures_dir)
    # The view the CLI hands the data stage gives the same files as the whole config.
    run(stage_config(STAGES["data"], cfg), RunDir(tmp_path / "view"))
    run(cfg, RunDir(tmp_path / "whole"))
    for name in ("train.jsonl", "dev.jsonl", "stats.json", "mentioned_items.jsonl"):
        assert (tmp_path / "view" / "data" / name).read_bytes() == (tmp_path / "whole" / "data" / name).read_bytes()
    # A stage that read a section it does not declare fails loudly, naming stage, section and fix.
    with pytest.raises(UndeclaredSectionError, match=r"stage 'index' reads config section 'data' \(data\.\w+\).*"
                       r"add 'data' to its sections in reges\.pipeline\.PIPELINE"):
        run(stage_config(STAGES["index"], cfg), RunDir(tmp_path / "index-view"))
    view = stage_config(STAGES["generate"], cfg)
    assert view.run == cfg.run and view.generate == cfg.generate and view.mine == cfg.mine  # run: always visible
    assert view.item_expert_llm == cfg.llm  # item_llm is null: the Item Expert's LLM is `llm`...
    with pytest.raises(UndeclaredSectionError, match="'llm'"):
        _ = view.llm.model  # ...but `llm` itself is not generate's to read
    with pytest.raises(UndeclaredSectionError, match="'index'"):
        bool(view.index)
    assert cfg.index.encoder  # the config itself is untouched


def test_inspired_stage(fixtures_dir, tmp_path):
    cfg = config_from_dict({"data": {
        "format": "inspired",
        "train_files": [str(fixtures_dir / "inspired" / "train_data_dbpedia.jsonl")],
        "dev_files": [str(fixtures_dir / "inspired" / "dev.tsv")],
    }})
    run_dir = RunDir(tmp_path)
    run(cfg, run_dir)
    stats = read_json(tmp_path / "data" / "stats.json")["splits"]
    assert (stats["train"]["dialogues"], stats["dev"]["dialogues"]) == (5, 5)
    assert stats["dev"]["examples"] == 11 and stats["dev"]["empty_context_examples"] == 1
    items = {r["item_id"]: r for r in read_jsonl(tmp_path / "data" / "mentioned_items.jsonl")}
    assert items["knivesout-2019"]["title"] == "Knives Out (2019)"  # title_id: one id per film
    assert items["joker-2019"]["mentions"] == {"train": 1, "dev": 5}  # turns, not rows


def test_custom_stage_with_dev_and_test_files(tmp_path):
    lines = (BOOKS / "dialogues.jsonl").read_text("utf-8").splitlines()
    (tmp_path / "dev.jsonl").write_text(lines[0] + "\n", encoding="utf-8")  # books-01, also in train
    (tmp_path / "test.jsonl").write_text(lines[1] + "\n", encoding="utf-8")  # books-02
    cfg = config_from_dict({"data": {
        "format": "custom", "train_files": [str(BOOKS / "dialogues.jsonl")],
        "dev_files": [str(tmp_path / "dev.jsonl")], "test_files": [str(tmp_path / "test.jsonl")],
    }})
    run(cfg, RunDir(tmp_path / "run"))
    stats = read_json(tmp_path / "run" / "data" / "stats.json")
    assert stats["train_dialogues_dropped_as_in_dev_or_test"] == 2
    assert {s: v["dialogues"] for s, v in stats["splits"].items()} == {"train": 10, "dev": 1, "test": 1}
    assert [r["example_id"] for r in read_jsonl(tmp_path / "run" / "data" / "test.jsonl")] == ["books-02_1"]


def test_tiny_split_of_books():
    train, dev = split_dev([Dialogue(f"books-{i:02d}", []) for i in range(1, 13)], 0.3)
    assert [d.dialogue_id for d in dev] == ["books-10", "books-12"]  # configs/tiny.yaml relies on a non-empty dev


@pytest.mark.parametrize(("data", "message"), [
    ({"train_files": []}, "data.train_files is empty"),
    ({"dev_fraction": 0.0}, r"data.dev_fraction must be in \(0, 1\)"),
    ({"column_map": {"turns": "messages"}}, "data.column_map applies to data.format=custom only"),
    ({"movie_names_file": "", "lossy_file": "x.zip"}, "data.lossy_file needs data.movie_names_file"),
])
def test_config_errors(fixtures_dir, tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        run(_redial_cfg(fixtures_dir, **data), RunDir(tmp_path))
    assert not (tmp_path / "data").exists()


def test_bad_input_leaves_no_manifest(fixtures_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text((fixtures_dir / "redial" / "kgsf_valid_data.jsonl").read_text("utf-8") + "{oops\n", "utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:6: malformed JSON"):
        run(_redial_cfg(fixtures_dir, train_files=[str(bad)]), RunDir(tmp_path / "run"))
    assert not (tmp_path / "run" / "data" / MANIFEST).exists()
    with pytest.raises(DataError, match="not found"):
        run(_redial_cfg(fixtures_dir, train_files=[str(tmp_path / "missing.jsonl")]), RunDir(tmp_path / "run"))


def test_conflicting_duplicate_ids_fail(tmp_path):
    for name, content in (("a.jsonl", "Hi"), ("b.jsonl", "Hello")):
        (tmp_path / name).write_text(json.dumps({"dialogue_id": "1", "turns": [
            {"role": "user", "content": content}]}) + "\n", "utf-8")
    cfg = config_from_dict({"data": {"format": "custom",
                                     "train_files": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]}})
    with pytest.raises(DataError, match="dialogue id '1' appears in .*a.jsonl and .*b.jsonl with different turns"):
        run(cfg, RunDir(tmp_path / "run"))


def test_dialogue_in_dev_and_test_fails(tmp_path):
    cfg = config_from_dict({"data": {"format": "custom", "train_files": [str(BOOKS / "dialogues.jsonl")],
                                     "dev_files": [str(BOOKS / "dialogues.jsonl")],
                                     "test_files": [str(BOOKS / "dialogues.jsonl")]}})
    with pytest.raises(DataError, match="12 dialogues are in both dev and test"):
        run(cfg, RunDir(tmp_path))


@pytest.mark.slow
def test_real_files_counts(shared_data, tmp_path):
    """Counts on the full public files (SOURCES.md): 1,813 ReDial train-file dialogs; INSPIRED 801 / 99."""
    redial = shared_data / "redial"
    cfg = config_from_dict({"run": {"show_progress": False}, "data": {
        "format": "redial",
        "train_files": [str(redial / "Lancelot39__KGSF/data/valid_data.jsonl"),
                        str(redial / "txy77__iEvaLM-CRS/data/redial/valid_data.jsonl")],
        "movie_names_file": str(redial / "Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset"
                                / "movies_with_mentions.csv"),
        "dev_fraction": 0.16,
    }})
    run(cfg, RunDir(tmp_path / "redial"))
    stats = read_json(tmp_path / "redial" / "data" / "stats.json")
    s = stats["splits"]
    assert stats["duplicates_dropped"] == 88
    assert s["train"]["dialogues"] + s["dev"]["dialogues"] == 1813
    assert (s["train"]["dialogues"], s["dev"]["dialogues"]) == (1522, 291)
    assert (s["train"]["examples"], s["dev"]["examples"]) == (4464, 844)
    assert (s["train"]["targets"], s["train"]["novel_targets"]) == (5943, 5464)
    assert (s["dev"]["targets"], s["dev"]["novel_targets"]) == (1119, 1031)
    # Every ready-made iEvaLM valid sample (dialog_id, turn_id) is one of our examples, with the same targets
    # except where iEvaLM's entity linker dropped one.
    ours = {r["example_id"]: r for split in ("train", "dev")
            for r in read_jsonl(tmp_path / "redial" / "data" / f"{split}.jsonl")}
    theirs = read_jsonl(redial / "txy77__iEvaLM-CRS/data/redial_eval/valid_data_processed.jsonl")
    assert len(theirs) == 2716
    assert all(f"{t['dialog_id']}_{t['turn_id']}" in ours for t in theirs)
    assert all(set(t["rec"]) <= set(ours[f"{t['dialog_id']}_{t['turn_id']}"]["target_titles"]) for t in theirs)

    inspired = shared_data / "inspired"
    cfg = config_from_dict({"data": {
        "format": "inspired",
        "train_files": [str(inspired / "BitbanChou__LLMKB/data/inspired/train_data_dbpedia.jsonl")],
        "dev_files": [str(inspired / "sweetpeach__Inspired/data/dialog_data/dev.tsv")],
    }})
    run(cfg, RunDir(tmp_path / "inspired"))
    s = read_json(tmp_path / "inspired" / "data" / "stats.json")["splits"]
    assert (s["train"]["dialogues"], s["dev"]["dialogues"]) == (801, 99)
    assert (s["train"]["turns"], s["dev"]["turns"]) == (16982, 2053)  # dev.tsv's 3,538 rows merge to UniCRS's 2,053
    assert (s["train"]["examples"], s["dev"]["examples"]) == (2070, 283)
    # One id per film (title_id): 12 films written two ways ("Frozen 2"/"Frozen II", "The Godfather"/"Godfather",
    # ...) had two ids each as title slugs (1174/221 distinct targets, 2065 novel train targets).
    assert (s["train"]["distinct_target_items"], s["dev"]["distinct_target_items"]) == (1168, 220)
    assert (s["train"]["novel_targets"], s["dev"]["novel_targets"]) == (2057, 253)
    items = {r["item_id"]: r["title"] for r in read_jsonl(tmp_path / "inspired" / "data" / "mentioned_items.jsonl")}
    assert len(items) == 1693
    assert items["frozen2-2019"] == "Frozen II (2019)" and items["spiderman-2002"] == "Spider-Man (2002)"


@pytest.mark.slow
def test_lossy_file_excludes_dev(shared_data, tmp_path):
    """With data.lossy_file set, the reconstructed file is written without the dev dialogues.

    The known train dialogues are used to learn the turn order and are not returned again, so the output is
    the 10,006 lossy dialogs minus dev (291) minus the 1,522 known train dialogs: 8,193.
    """
    redial = shared_data / "redial"
    cfg = config_from_dict({"run": {"show_progress": False}, "data": {
        "format": "redial",
        "train_files": [str(redial / "Lancelot39__KGSF/data/valid_data.jsonl"),
                        str(redial / "txy77__iEvaLM-CRS/data/redial/valid_data.jsonl")],
        "movie_names_file": str(redial / "Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset"
                                / "movies_with_mentions.csv"),
        "lossy_file": str(redial / "MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip"),
    }})
    run(cfg, RunDir(tmp_path))
    out = tmp_path / "data"
    stats = read_json(out / "stats.json")
    lossy = read_jsonl(out / "lossy_dialogues.jsonl")
    manifest = read_json(out / MANIFEST)
    assert len(lossy) == stats["lossy_dialogues"] == manifest["outputs"]["lossy_dialogues.jsonl"]["rows"]
    assert len(lossy) == 10006 - stats["splits"]["dev"]["dialogues"] - stats["splits"]["train"]["dialogues"]
    # That no dev dialogue leaks in (matched by text and mentions) is checked in tests/test_data_lossy.py.


def test_split_tune_is_stable_disjoint_and_independent_of_dev() -> None:
    dialogues = [Dialogue(str(i), []) for i in range(2000)]
    train, tune = split_tune(dialogues, 0.1)
    assert len(train) + len(tune) == 2000 and not {d.dialogue_id for d in train} & {d.dialogue_id for d in tune}
    assert 150 < len(tune) < 250
    assert split_tune(list(reversed(dialogues)), 0.1)[1] == list(reversed(tune))
    # A second hash: the tune slice is not the dev slice of a lower dev_fraction.
    dev = {d.dialogue_id for d in split_dev(dialogues, 0.1)[1]}
    assert len(dev & {d.dialogue_id for d in tune}) < 0.3 * len(tune)
    assert split_tune(dialogues, 0.0) == (dialogues, [])
    with pytest.raises(ConfigError, match="tune_fraction"):
        split_tune(dialogues, 1.0)
