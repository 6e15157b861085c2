"""Stage `mine`: candidates from the retrieval run (or random), the best target, insertion, rows and manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from item_expert_fakes import BY_ID, ITEMS, TRAIN, TRAIN_RUN, _run, make_run_dir
from tiny_models import build_tiny_llama

from reges.config import LLMConfig, MineConfig, PipelineConfig, RunConfig
from reges.errors import ConfigError, DataError, StageNotReadyError
from reges.io import RunDir, now_iso, read_jsonl, write_jsonl
from reges.item_expert import mining
from reges.item_expert.mining import mine_examples, select_candidates
from reges.item_expert.prompts import PromptFormat
from reges.records import RecExample, Turn

CATALOG = sorted(BY_ID)


def test_hard_negatives_keep_the_ranking_and_take_the_best_ranked_target() -> None:
    mined = select_candidates(TRAIN[0], TRAIN_RUN["e1"], CATALOG, "hard", 4, seed=0)
    assert mined is not None
    assert mined.candidate_ids == ["14", "10", "13", "12"]
    assert mined.target_item_id == "10"  # rank 2 beats the other target at rank 3
    assert not mined.inserted
    # top_k cuts the list: now only "10" is left of the two targets
    assert select_candidates(TRAIN[0], TRAIN_RUN["e1"], CATALOG, "hard", 2, 0).candidate_ids == ["14", "10"]


def test_a_missed_target_replaces_a_candidate_at_a_seeded_position() -> None:
    ranking = TRAIN_RUN["e2"]  # target "11" not retrieved
    positions = set()
    for seed in range(12):
        mined = select_candidates(TRAIN[1], ranking, CATALOG, "hard", 4, seed)
        assert mined.inserted and mined.target_item_id == "11"
        assert len(mined.candidate_ids) == 4 and mined.candidate_ids.count("11") == 1
        at = mined.candidate_ids.index("11")
        others = [c for i, c in enumerate(mined.candidate_ids) if i != at]
        assert others == [c for i, c in enumerate(ranking) if i != at]
        positions.add(at)
        assert select_candidates(TRAIN[1], ranking, CATALOG, "hard", 4, seed) == mined  # deterministic
    assert len(positions) > 1  # the position is random, not always the same slot
    # a ranking shorter than top_k gets the target added, nothing dropped
    short = select_candidates(TRAIN[1], ["12", "13"], CATALOG, "hard", 4, 0)
    assert sorted(short.candidate_ids) == ["11", "12", "13"] and short.inserted


def test_random_negatives_sample_the_catalog_per_example() -> None:
    a = select_candidates(TRAIN[1], TRAIN_RUN["e2"], CATALOG, "random", 3, seed=0)
    assert len(a.candidate_ids) == 3 and set(a.candidate_ids) <= set(CATALOG) and "11" in a.candidate_ids
    assert len(set(a.candidate_ids)) == 3
    assert select_candidates(TRAIN[1], [], CATALOG, "random", 3, seed=0) == a  # ignores the ranking
    samples = {tuple(select_candidates(TRAIN[1], [], CATALOG, "random", 3, seed=s).candidate_ids) for s in range(8)}
    assert len(samples) > 1


def test_no_catalog_target_is_skipped_and_bad_inputs_raise() -> None:
    assert select_candidates(TRAIN[2], TRAIN_RUN["e3"], CATALOG, "hard", 4, 0) is None
    fmt = PromptFormat()
    rows, counts = mine_examples(TRAIN, _run(TRAIN_RUN), BY_ID, None, "hard", 4, fmt, seed=0)
    assert [r["example_id"] for r in rows] == ["e1", "e2", "e4"]
    assert counts["skipped_no_catalog_target"] == 1 and counts["inserted"] == 1
    assert counts["share_inserted"] == pytest.approx(1 / 3, abs=1e-4)
    with pytest.raises(DataError, match="no ranking"):
        mine_examples(TRAIN, {}, BY_ID, None, "hard", 4, fmt, seed=0)
    with pytest.raises(DataError, match="not in the catalog"):
        mine_examples(TRAIN[:1], _run({"e1": ["404", "10"]}), BY_ID, None, "hard", 4, fmt, seed=0)
    with pytest.raises(DataError, match="no query"):
        mine_examples(TRAIN[:1], _run(TRAIN_RUN), BY_ID, {}, "hard", 4, fmt, seed=0)
    with pytest.raises(ConfigError, match="top_k"):
        mine_examples(TRAIN, _run(TRAIN_RUN), BY_ID, None, "hard", 0, fmt, seed=0)


def test_rows_hold_prompt_and_the_target_title_as_completion() -> None:
    twins = RecExample("t", "d", [Turn("user", "cold")], ["17"], [False])
    queries = {"e1": "scary", "e2": "q", "e3": "q", "e4": "q", "t": "q"}
    ranking = _run({**TRAIN_RUN, "t": ["16", "17", "10"]})
    rows, _ = mine_examples([*TRAIN, twins], ranking, BY_ID, queries, "hard", 3, PromptFormat(), seed=0)
    by_id = {r["example_id"]: r for r in rows}
    e1 = by_id["e1"]
    assert set(e1) == {"example_id", "candidate_ids", "target_item_id", "inserted", "prompt", "completion"}
    assert e1["completion"] == [{"role": "assistant", "content": "Alien (1979)"}]
    assert "Request: scary" in e1["prompt"][1]["content"]
    # twin titles: the completion names exactly one of them
    assert by_id["t"]["completion"][0]["content"] == "Frozen (2010) [17]"
    assert "1. Frozen (2010) [16]" in by_id["t"]["prompt"][1]["content"]


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), byte_level=True)


def _cfg(model: Path, **mine: object) -> PipelineConfig:
    return PipelineConfig(
        run=RunConfig(show_progress=False),
        llm=LLMConfig(model=str(model)),
        mine=dataclasses.replace(MineConfig(top_k=3), **mine),
    )


def test_mine_stage_writes_rows_and_manifest(tmp_path: Path, tiny_llm_dir: Path) -> None:
    rd = make_run_dir(tmp_path / "run")
    cfg = _cfg(tiny_llm_dir, splits=["train", "dev"])
    mining.run(cfg, rd)
    rows = read_jsonl(rd.path / "mine" / "train.jsonl")
    assert [r["example_id"] for r in rows] == ["e1", "e2", "e4"]
    assert all(len(r["candidate_ids"]) == 3 for r in rows)
    manifest = rd.manifest("mine")
    train = manifest["splits"]["train"]
    assert train["examples"] == 3 and train["skipped_no_catalog_target"] == 1 and train["inserted"] == 1
    assert train["skipped_not_retrieved"] == 0
    assert train["query_used"] is False
    assert 50 < train["prompt_tokens"]["p50"] <= train["prompt_tokens"]["p95"] <= train["prompt_tokens"]["max"]
    assert manifest["outputs"] == {"train.jsonl": {"rows": 3}, "dev.jsonl": {"rows": 3}}
    assert manifest["prompt_format"]["card_fields"] == ["genre"]
    assert set(manifest["inputs"]) == {"catalog", "data/train", "data/dev", "retrieve/train", "retrieve/dev"}


def test_mine_stage_uses_rewrite_queries_and_random_negatives(tmp_path: Path, tiny_llm_dir: Path) -> None:
    rd = make_run_dir(tmp_path / "run")
    with pytest.raises(StageNotReadyError, match="rewrite"):
        mining.run(_cfg(tiny_llm_dir, query="rewrite"), rd)
    out = rd.begin("rewrite", overwrite=False)
    write_jsonl(out / "train.jsonl", [{"example_id": e.example_id, "query": f"query {e.example_id}"} for e in TRAIN])
    rd.finish("rewrite", config={}, inputs={}, outputs={}, seed=0, started=now_iso())
    mining.run(_cfg(tiny_llm_dir, negatives="random"), rd)
    rows = read_jsonl(rd.path / "mine" / "train.jsonl")
    assert "Request: query e1" in rows[0]["prompt"][1]["content"]
    assert rd.manifest("mine")["splits"]["train"]["query_used"] is True
    assert all(set(r["candidate_ids"]) <= {it.item_id for it in ITEMS} for r in rows)
    # without retrieve/ random negatives still work; hard ones need it
    bare = RunDir(tmp_path / "bare")
    with pytest.raises(StageNotReadyError):
        mining.run(_cfg(tiny_llm_dir), bare)
    with pytest.raises(DataError, match="'tune'"):
        mining.run(_cfg(tiny_llm_dir, splits=["tune"]), make_run_dir(tmp_path / "run2"))



def test_a_target_named_by_a_folded_id_is_mined_as_its_item(tmp_path: Path, tiny_llm_dir: Path) -> None:
    """catalog.clean=true folds dataset ids into one item (`meta.alias_ids`): e3's target 999, absent from the
    catalog and skipped above, is mined once 13 carries it as an alias, with 13 as its target."""
    folded = [dataclasses.replace(it, meta={**it.meta, "alias_ids": ["999"]}) if it.item_id == "13" else it
              for it in ITEMS]
    rd = make_run_dir(tmp_path / "run", items=folded)
    mining.run(_cfg(tiny_llm_dir), rd)
    rows = {r["example_id"]: r for r in read_jsonl(rd.path / "mine" / "train.jsonl")}
    assert sorted(rows) == ["e1", "e2", "e3", "e4"] and rows["e3"]["target_item_id"] == "13"
    assert rd.manifest("mine")["splits"]["train"]["skipped_no_catalog_target"] == 0


def test_insert_missing_false_trains_only_on_retrieved_targets(tmp_path: Path, tiny_llm_dir: Path) -> None:
    """mine.insert_missing=false: the example whose target the retriever missed is skipped, not given an inserted
    target; the others are mined as before."""
    rd = make_run_dir(tmp_path / "run")
    mining.run(_cfg(tiny_llm_dir, insert_missing=False), rd)
    rows = read_jsonl(rd.path / "mine" / "train.jsonl")
    train = rd.manifest("mine")["splits"]["train"]
    assert train["skipped_not_retrieved"] == 1 and train["inserted"] == 0 and train["examples"] == 2
    assert not any(r["inserted"] for r in rows) and len(rows) == 2


def test_exclude_named_leaves_named_items_and_targets_out() -> None:
    """The served setting: items the dialogue named are never candidates, nor training targets."""
    e4 = TRAIN[3]  # names "15", which is also its best-ranked target; "12" is the fresh target
    kept = select_candidates(e4, TRAIN_RUN["e4"], CATALOG, "hard", 3, seed=0)
    assert kept is not None and kept.candidate_ids == ["15", "12", "16"] and kept.target_item_id == "15"
    fresh = select_candidates(e4, TRAIN_RUN["e4"], CATALOG, "hard", 3, seed=0, exclude_named=True)
    assert fresh is not None
    assert fresh.candidate_ids == ["12", "16", "17"] and fresh.target_item_id == "12" and not fresh.inserted
    rnd = select_candidates(e4, TRAIN_RUN["e4"], CATALOG, "random", len(CATALOG) - 1, seed=0, exclude_named=True)
    assert rnd is not None and "15" not in rnd.candidate_ids and len(rnd.candidate_ids) == len(CATALOG) - 1
    only_named = RecExample("n1", "d9", [Turn("user", "I loved The Matrix (1999)", ["15"])], ["15"], [True])
    assert select_candidates(only_named, ["15", "12"], CATALOG, "hard", 2, 0, exclude_named=True) is None
    assert select_candidates(only_named, ["15", "12"], CATALOG, "hard", 2, 0) is not None
