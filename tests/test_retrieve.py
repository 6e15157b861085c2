"""Dialogue -> query text, the in-memory `retrieve` core, popularity fallback and the `retrieve` stage."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

import pytest
from retrieval_fakes import KeywordEncoder, build_tiny_sentence_transformer

from reges.config import IndexConfig, PipelineConfig, RetrieveConfig, RunConfig
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_trec, write_jsonl
from reges.records import Dialogue, Hit, Item, RecExample, Turn
from reges.retrieval import index as index_stage
from reges.retrieval import retrieve as retrieve_stage
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import (
    item_popularity,
    load_index_encoder,
    popularity_ranking,
    read_dialogues,
    read_examples,
    retrieve,
    trec_tag,
)

ITEMS = [
    Item("10", "Alien (1979)", "Alien (1979). Genre: horror, sci-fi. Plot: a space crew meets an alien.", 1979),
    Item("11", "Up (2009)", "Up (2009). Genre: animation, family. Plot: an old man flies his house.", 2009),
    Item("12", "Heat (1995)", "Heat (1995). Genre: crime, drama. Plot: a detective hunts a thief.", 1995),
    Item("13", "Jaws (1975)", "Jaws (1975). Genre: horror, thriller. Plot: a shark attacks a beach town.", 1975),
]
CONTEXT = [
    Turn("user", "Hi there!"),
    Turn("assistant", "Hello, what do you like?"),
    Turn("user", "I loved  Alien (1979), any   horror?", ["10"]),
]




def _keyword_index() -> tuple[ItemIndex, KeywordEncoder]:
    encoder = KeywordEncoder(["horror", "family", "crime", "shark", "space"])
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    return ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], IndexConfig(), seed=0), encoder


def test_full_and_last2_queries() -> None:
    assert context_to_query(CONTEXT, "full", 2000) == (
        "User: Hi there!\nAssistant: Hello, what do you like?\nUser: I loved Alien (1979), any horror?"
    )
    assert context_to_query(CONTEXT, "last2", 2000) == (
        "Assistant: Hello, what do you like?\nUser: I loved Alien (1979), any horror?"
    )
    assert context_to_query([], "full", 2000) == ""
    assert context_to_query([Turn("user", "   ")], "last2", 2000) == ""


def test_long_context_keeps_the_latest_whole_turns() -> None:
    last = "User: I loved Alien (1979), any horror?"  # 39 characters
    middle = "Assistant: Hello, what do you like?"  # 35 characters
    assert context_to_query(CONTEXT, "full", len(last) + 1 + len(middle)) == f"{middle}\n{last}"
    assert context_to_query(CONTEXT, "full", len(last) + len(middle)) == last
    # the last turn alone is too long: keep its end, starting at a whole word
    assert context_to_query(CONTEXT, "full", 14) == "any horror?"
    with pytest.raises(ConfigError, match="max_query_chars must be >= 1"):
        context_to_query(CONTEXT, "full", 0)
    with pytest.raises(ConfigError, match="must be 'full' or 'last2', got 'last3'"):
        context_to_query(CONTEXT, "last3", 100)  # type: ignore[arg-type]


def test_retrieve_core_is_exact_and_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    index, encoder = _keyword_index()
    queries = {"b": "something with a shark, horror please", "a": "a family film", "c": "  ", "d": ""}
    fallback = [Hit("12", 9.0), Hit("11", 8.0), Hit("10", 7.0)]
    with caplog.at_level(logging.WARNING, logger="reges.retrieval.retrieve"):
        out = retrieve(queries, index, encoder, top_k=2, batch_size=1, fallback=fallback)
    assert "2 of 4 queries are empty" in caplog.text
    assert [h.item_id for h in out["b"]] == ["13", "10"]
    assert out["b"][0].score == pytest.approx(1.0)
    assert [h.item_id for h in out["a"]][0] == "11"
    assert out["c"] == out["d"] == fallback[:2]
    assert retrieve({"c": ""}, index, encoder, top_k=2) == {"c": []}
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        retrieve(queries, index, encoder, top_k=0)


def test_popularity_counts_and_seeded_ties() -> None:
    dialogues = [
        Dialogue("d1", [Turn("user", "x", ["a", "a", "b"]), Turn("assistant", "y", ["a"])]),
        Dialogue("d2", [Turn("assistant", "z", ["c"])]),
    ]
    counts = item_popularity(dialogues)
    assert counts == Counter({"a": 2, "b": 1, "c": 1})  # once per turn
    ids = ["a", "b", "c", *[f"z{i:02d}" for i in range(30)]]
    ranking = popularity_ranking(counts, ids, seed=0)
    assert [h.item_id for h in ranking[:1]] == ["a"]
    assert {h.item_id for h in ranking[1:3]} == {"b", "c"}
    assert sorted(h.item_id for h in ranking) == sorted(ids)
    assert popularity_ranking(counts, ids[::-1], seed=0) == ranking  # independent of catalog order
    # the 30 unmentioned items are ordered at random, differently per seed, but reproducibly
    tails = {tuple(h.item_id for h in popularity_ranking(counts, ids, seed=s)[3:]) for s in range(3)}
    assert len(tails) == 3
    assert [h.item_id for h in ranking[3:]] != sorted(h.item_id for h in ranking[3:])
    # the order survives a (-score, item_id) re-sort, as in TREC files
    assert sorted(ranking, key=lambda h: (-h.score, h.item_id)) == ranking


def test_read_examples_rejects_duplicate_or_spaced_ids(tmp_path: Path) -> None:
    ex = RecExample("d1_2", "d1", CONTEXT, ["13"], [False])
    write_jsonl(tmp_path / "dup.jsonl", [ex, ex])
    with pytest.raises(DataError, match="'d1_2' appears twice"):
        read_examples(tmp_path / "dup.jsonl")
    write_jsonl(tmp_path / "sp.jsonl", [dataclasses.replace(ex, example_id="d1 2")])
    with pytest.raises(DataError, match="contains whitespace"):
        read_examples(tmp_path / "sp.jsonl")
    assert trec_tag("my run") == "my_run" and trec_tag("  ") == "reges"


def test_examples_and_dialogues_read_through_the_catalogs_aliases(tmp_path: Path) -> None:
    """With a cleaned catalog's aliases (folded id -> item), every mention and target is the item's id: a target
    the context named under its other id is not novel, and two ids of one film are one target."""
    ex = RecExample("d1_2", "d1", [Turn("user", "I loved Alien", ["10b"])], ["10", "13b", "13"],
                    [False, False, False], ["Alien (1979)", "Jaws", "Jaws (1975)"])
    write_jsonl(tmp_path / "dev.jsonl", [ex])
    write_jsonl(tmp_path / "dev_dialogues.jsonl", [Dialogue("d1", [Turn("user", "Alien or Jaws", ["10b", "13"])])])
    aliases = {"10b": "10", "13b": "13"}
    (mapped,) = read_examples(tmp_path / "dev.jsonl", aliases)
    assert mapped.context[0].item_ids == ["10"]
    assert mapped.target_item_ids == ["10", "13"] and mapped.target_mentioned == [True, False]
    assert mapped.target_titles == ["Alien (1979)", "Jaws"]
    assert read_examples(tmp_path / "dev.jsonl") == [ex]  # without aliases: as written
    assert read_dialogues(tmp_path / "dev_dialogues.jsonl", aliases)[0].turns[0].item_ids == ["10", "13"]


def test_load_index_encoder_refuses_a_different_encoder() -> None:
    index, _ = _keyword_index()
    index.meta["encoder"] = "all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="built with encoder 'all-MiniLM-L6-v2' but index.encoder is '/x'"):
        load_index_encoder(index, IndexConfig(encoder="/x"))


def _write_stage(run_dir: RunDir, stage: str, files: dict[str, list]) -> None:
    out = run_dir.begin(stage, overwrite=False)
    counts = {name: write_jsonl(out / name, rows) for name, rows in files.items()}
    run_dir.finish(stage, config={}, inputs={}, outputs=counts, seed=0, started=now_iso())


def test_retrieve_stage_writes_trec_and_manifest(tmp_path: Path) -> None:
    st_dir = build_tiny_sentence_transformer(tmp_path / "st", [it.text for it in ITEMS] + ["User Assistant horror"])
    run_dir = RunDir(tmp_path / "run")
    examples = [
        RecExample("d2_1", "d2", CONTEXT, ["13"], [False]),
        RecExample("d2_0", "d2", [], ["10"], [False]),  # no context: gets the popularity fallback
    ]
    train = [Dialogue("t1", [Turn("assistant", "Up!", ["11"]), Turn("user", "and Up again", ["11", "12"])])]
    _write_stage(run_dir, "data", {"dev.jsonl": examples, "train_dialogues.jsonl": train})
    _write_stage(run_dir, "catalog", {"items.jsonl": ITEMS})
    cfg = PipelineConfig(
        run=RunConfig(name="tiny run", show_progress=False),
        index=IndexConfig(encoder=str(st_dir), device="cpu"),
        retrieve=RetrieveConfig(splits=["dev"], top_k=3, batch_size=2),
    )
    index_stage.run(cfg, run_dir)
    retrieve_stage.run(cfg, run_dir)

    lines = (run_dir.stage_dir("retrieve") / "dev.trec").read_text().splitlines()
    assert len(lines) == 6 and all(line.endswith(" tiny_run") for line in lines)
    run = read_trec(run_dir.stage_dir("retrieve") / "dev.trec")
    assert sorted(run) == ["d2_0", "d2_1"]
    assert [h.item_id for h in run["d2_0"]][:2] == ["11", "12"]  # popularity: Up (2 turns), then Heat (1)
    assert {h.item_id for h in run["d2_1"]} <= {it.item_id for it in ITEMS}
    manifest = run_dir.manifest("retrieve")
    assert manifest["outputs"] == {"dev.trec": {"rows": 6}}
    assert manifest["splits"]["dev"]["queries"] == 2 and manifest["splits"]["dev"]["empty_queries"] == 1
    assert manifest["splits"]["dev"]["queries_per_s"] > 0
    assert manifest["query"] == "full" and manifest["encoder"] == str(st_dir)
    assert set(manifest["inputs"]) == {"data/dev", "data/train_dialogues", "catalog", "index"}

    missing = dataclasses.replace(cfg, retrieve=RetrieveConfig(splits=["test"]), run=RunConfig(overwrite=True))
    with pytest.raises(DataError, match="retrieve.splits has 'test'"):
        retrieve_stage.run(missing, run_dir)
