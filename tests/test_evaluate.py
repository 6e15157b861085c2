"""Baselines and the `evaluate` stage: exact recall on hand-built runs, files, manifest and bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from retrieval_fakes import KeywordEncoder, build_tiny_sentence_transformer

from reges.config import EvaluateConfig, IndexConfig, PipelineConfig, RetrieveConfig, RunConfig
from reges.errors import ConfigError, DataError
from reges.eval import evaluate as evaluate_stage
from reges.eval.baselines import BM25Ranker, oracle_query
from reges.eval.evaluate import oracle_pairs, rankings_to_pairs
from reges.io import RunDir, now_iso, read_jsonl, write_jsonl
from reges.records import Dialogue, Hit, Item, RecExample, Turn
from reges.retrieval import index as index_stage
from reges.retrieval.index import ItemIndex
from reges.retrieval.retrieve import retrieve


def _item(item_id: str, title: str, genre: list[str], director: str, stars: list[str], plot: str) -> Item:
    meta = {"genre": genre, "director": [director], "star": stars, "plot": plot}
    text = f"{title}. Genre: {', '.join(genre)}. Director: {director}. Stars: {', '.join(stars)}. Plot: {plot}"
    return Item(item_id, title, text, None, meta)


ITEMS = [
    _item("10", "Alien (1979)", ["horror", "sci-fi"], "Ridley Scott", ["Sigourney Weaver"], "A crew meets an alien."),
    _item("11", "Up (2009)", ["animation", "family"], "Pete Docter", ["Ed Asner"], "An old man flies his house."),
    _item("12", "Heat (1995)", ["crime", "drama"], "Michael Mann", ["Al Pacino"], "A detective hunts a thief."),
    _item("13", "Jaws (1975)", ["horror", "thriller"], "Steven Spielberg", ["Roy Scheider"], "A shark at a beach."),
]
EXAMPLES = [
    RecExample(
        "e1",
        "d1",
        [Turn("user", "I want a shark movie at the beach. I saw Alien.", ["10"])],
        ["13", "10"],
        [False, True],
    ),
    RecExample("e2", "d1", [Turn("user", "Something about an old man and his house?")], ["11"], [False]),
    RecExample("e3", "d2", [], ["999"], [False]),  # no context, and a target missing from the catalog
]
# Mentions per train turn: Up 3, Heat 2, Alien 1, Jaws 0 -> popularity order 11, 12, 10, 13.
TRAIN = [
    Dialogue("t1", [Turn("user", "a", ["11", "12"]), Turn("assistant", "b", ["11", "10"])]),
    Dialogue("t2", [Turn("assistant", "c", ["11", "12"])]),
]
TREC = """\
e1 Q0 13 1 0.9 run
e1 Q0 12 2 0.8 run
e1 Q0 11 3 0.7 run
e1 Q0 10 4 0.6 run
e2 Q0 12 1 0.9 run
e2 Q0 11 2 0.8 run
e3 Q0 10 1 0.9 run
e3 Q0 11 2 0.8 run
"""




def test_oracle_query_uses_attributes_not_the_title() -> None:
    q = oracle_query(ITEMS[3])
    assert q == "Genre: horror, thriller. Director: Steven Spielberg. Stars: Roy Scheider. Plot: A shark at a beach."
    assert "Jaws" not in q
    assert oracle_query(Item("1", "Title Only (2000)", "Title Only (2000)")) == ""
    assert oracle_query(ITEMS[3], ["star", "genre"]) == "Stars: Roy Scheider. Genre: horror, thriller."
    with pytest.raises(ConfigError, match="must not contain 'title'"):
        oracle_query(ITEMS[3], ["genre", "title"])


def test_oracle_pairs_rank_each_target_with_its_own_query() -> None:
    encoder = KeywordEncoder(["horror", "sci", "animation", "crime", "shark", "space"])
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    index = ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], IndexConfig(), seed=0)
    by_id = {it.item_id: it for it in ITEMS}
    queries = {t: oracle_query(by_id[t]) for ex in EXAMPLES for t in ex.target_item_ids if t in by_id}
    pairs = oracle_pairs(EXAMPLES, retrieve(queries, index, encoder, top_k=4), frozenset(by_id))
    assert [(p.example_id, p.item_id, p.rank) for p in pairs] == [
        ("e1", "13", 1),
        ("e1", "10", 1),
        ("e2", "11", 1),
        ("e3", "999", None),
    ]


def test_bm25_ranks_the_whole_catalog_with_id_tie_breaks() -> None:
    ranker = BM25Ranker(ITEMS)
    fallback = [Hit("12", 2.0), Hit("11", 1.0)]
    out = ranker.search({"q": "a shark at the beach", "none": "zzz qqq", "empty": "the"}, top_k=4, fallback=fallback)
    assert out["q"][0].item_id == "13" and out["q"][0].score > 0
    assert [h.item_id for h in out["q"][1:]] == ["10", "11", "12"]  # zero scores, ordered by id
    assert [h.item_id for h in out["none"]] == ["10", "11", "12", "13"]
    assert out["empty"] == fallback  # only a stopword: no tokens -> fallback
    assert ranker.count_empty({"a": "the", "b": "shark"}) == 1


def test_rankings_to_pairs_counts_missing_rankings_as_misses() -> None:
    pairs = rankings_to_pairs(EXAMPLES, {"e1": [Hit("10", 1.0)]}, frozenset({"10", "11", "12", "13"}))
    assert [p.rank for p in pairs] == [None, 1, None, None]


def _write_stage(run_dir: RunDir, stage: str, files: dict[str, list], config: dict | None = None) -> None:
    out = run_dir.begin(stage, overwrite=False)
    counts = {name: write_jsonl(out / name, rows) for name, rows in files.items()}
    run_dir.finish(stage, config=config or {}, inputs={}, outputs=counts, seed=0, started=now_iso())


def _write_retrieve(run_dir: RunDir, trec: str, top_k: int = 4) -> None:
    out = run_dir.begin("retrieve", overwrite=True)
    (out / "dev.trec").write_text(trec)
    run_dir.finish("retrieve", config={"top_k": top_k}, inputs={}, outputs={"dev.trec": 8}, seed=0, started=now_iso())


@pytest.fixture()
def run_setup(tmp_path: Path) -> tuple[PipelineConfig, RunDir]:
    st_dir = build_tiny_sentence_transformer(tmp_path / "st", [it.text for it in ITEMS] + ["User Assistant"])
    run_dir = RunDir(tmp_path / "run")
    _write_stage(run_dir, "data", {"dev.jsonl": EXAMPLES, "train_dialogues.jsonl": TRAIN})
    _write_stage(run_dir, "catalog", {"items.jsonl": ITEMS})
    cfg = PipelineConfig(
        run=RunConfig(name="t", show_progress=False),
        index=IndexConfig(encoder=str(st_dir), device="cpu"),
        retrieve=RetrieveConfig(top_k=4),
        evaluate=EvaluateConfig(splits=["dev"], cutoffs=[2, 1], bootstrap=50),
    )
    index_stage.run(cfg, run_dir)
    return cfg, run_dir


def test_evaluate_stage_exact_recall_files_and_manifest(run_setup: tuple[PipelineConfig, RunDir]) -> None:
    cfg, run_dir = run_setup
    _write_retrieve(run_dir, TREC)
    evaluate_stage.run(cfg, run_dir)

    out = run_dir.stage_dir("evaluate")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["primary_metric"] == "recall@2" and metrics["cutoffs"] == [1, 2]
    dev = metrics["splits"]["dev"]
    assert list(dev) == ["retrieve", "popularity", "bm25", "dense_full", "dense_last2", "oracle", "copy"]
    assert metrics["protocols"] == ["all", "novel", "full", "fresh"]

    def means(method: str, protocol: str) -> tuple[float, float]:
        m = dev[method][protocol]
        return m["recall@1"]["mean"], m["recall@2"]["mean"]

    # retrieve: pairs (e1,13)@1 (e1,10)@4 (e2,11)@2 (e3,999) missing
    assert means("retrieve", "all") == (0.25, 0.5)
    assert means("retrieve", "novel") == pytest.approx((1 / 3, 2 / 3))
    # popularity 11, 12, 10, 13: only (e2,11) at rank 1
    assert means("popularity", "all") == (0.25, 0.25)
    # bm25: "shark ... beach ... Alien" -> Jaws, then Alien; "old man ... house" -> Up; e3 has no context (fallback)
    assert means("bm25", "all") == (0.5, 0.75)
    assert means("bm25", "novel") == pytest.approx((2 / 3, 2 / 3))
    # full / fresh drop e3 (no context): retrieve (e1,13)@1 (e1,10)@4 (e2,11)@2; fresh also drops (e1,10)
    assert means("retrieve", "full") == pytest.approx((1 / 3, 2 / 3))
    assert means("retrieve", "fresh") == (0.5, 1.0)
    # copy: e1's context names Alien only, a mentioned target; nothing fresh is ever hit
    assert means("copy", "all") == (0.25, 0.25)
    assert means("copy", "full") == pytest.approx((1 / 3, 1 / 3))
    assert means("copy", "novel") == means("copy", "fresh") == (0.0, 0.0)
    counts = {"all": (3, 4, 2, 1), "novel": (3, 3, 2, 1), "full": (2, 3, 1, 0), "fresh": (2, 2, 1, 0)}
    for method in dev:
        for protocol, expected in counts.items():
            m = dev[method][protocol]
            assert (m["n_examples"], m["n_targets"], m["n_dialogues"], m["missing_targets"]) == expected
            for k in ("recall@1", "recall@2"):
                assert 0.0 <= m[k]["ci_low"] <= m[k]["mean"] <= m[k]["ci_high"] <= 1.0
    details = metrics["details"]["dev"]
    assert details["bm25"]["empty_queries"] == 1 and details["dense_full"]["empty_queries"] == 1
    assert details["oracle"]["empty_queries"] == 0 and details["retrieve"]["unranked_examples"] == 0

    rows = read_jsonl(out / "per_example.jsonl")
    assert len(rows) == 7 * 3
    row = next(r for r in rows if r["method"] == "retrieve" and r["example_id"] == "e1")
    assert row["targets"] == [
        {"item_id": "13", "mentioned": False, "in_catalog": True, "rank": 1},
        {"item_id": "10", "mentioned": True, "in_catalog": True, "rank": 4},
    ]
    report = (out / "report.md").read_text()
    assert "## dev, protocol all (3 examples, 4 targets" in report
    assert "## dev, protocol novel (3 examples, 3 targets" in report
    assert "## dev, protocol fresh (2 examples, 2 targets" in report
    assert "| retrieve | 0.250 | 0.500 |" in report
    assert "dev / bm25: 1 empty queries" in report

    manifest = run_dir.manifest("evaluate")
    assert manifest["outputs"]["per_example.jsonl"] == {"rows": 21}
    assert manifest["primary_metric"] == "recall@2"
    assert {"data/dev", "data/train_dialogues", "catalog", "index", "retrieve/dev"} == set(manifest["inputs"])


def test_evaluate_without_retrieve_or_index(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    _write_stage(run_dir, "data", {"dev.jsonl": EXAMPLES, "train_dialogues.jsonl": TRAIN})
    _write_stage(run_dir, "catalog", {"items.jsonl": ITEMS})
    cfg = PipelineConfig(
        run=RunConfig(show_progress=False),
        evaluate=EvaluateConfig(cutoffs=[1, 50], baselines=["popularity", "copy"], bootstrap=10),
    )
    evaluate_stage.run(cfg, run_dir)
    metrics = json.loads((run_dir.stage_dir("evaluate") / "metrics.json").read_text())
    assert metrics["primary_metric"] == "recall@50"
    assert list(metrics["splits"]["dev"]) == ["popularity", "copy"]  # copy: always
    assert metrics["splits"]["dev"]["popularity"]["all"]["recall@50"]["mean"] == 0.75  # all but the missing one


def test_evaluate_rejects_bad_runs(run_setup: tuple[PipelineConfig, RunDir]) -> None:
    cfg, run_dir = run_setup
    _write_retrieve(run_dir, TREC.replace("e2 Q0 12 1", "e2 Q0 12 one"))
    with pytest.raises(DataError, match=r"dev.trec:\d+: rank must be an integer"):
        evaluate_stage.run(cfg, run_dir)
    _write_retrieve(run_dir, TREC + "e9 Q0 10 1 0.5 run\n")
    with pytest.raises(DataError, match="1 query ids not in"):
        evaluate_stage.run(dataclasses.replace(cfg, run=RunConfig(overwrite=True, show_progress=False)), run_dir)
    _write_retrieve(run_dir, TREC, top_k=1)
    with pytest.raises(ConfigError, match="kept top_k=1 candidates but evaluate.cutoffs go up to 2"):
        evaluate_stage.run(cfg, run_dir)
    with pytest.raises(ConfigError, match="cutoffs must all be >= 1"):
        evaluate_stage.run(dataclasses.replace(cfg, evaluate=EvaluateConfig(cutoffs=[0, 5])), run_dir)
    with pytest.raises(ConfigError, match="unknown evaluate.baselines"):
        evaluate_stage.run(dataclasses.replace(cfg, evaluate=EvaluateConfig(baselines=["random"])), run_dir)  # type: ignore[list-item]
    _write_retrieve(run_dir, TREC)
    two_splits = dataclasses.replace(cfg, evaluate=EvaluateConfig(splits=["dev", "test"], cutoffs=[1, 2]))
    with pytest.raises(DataError, match="evaluate.splits has 'test' but the data stage did not write it"):
        evaluate_stage.run(two_splits, run_dir)
    write_jsonl(run_dir.stage_dir("data") / "test.jsonl", EXAMPLES)
    with pytest.raises(ConfigError, match="retrieve/test.trec does not exist"):
        evaluate_stage.run(two_splits, run_dir)


def test_unmentioned_picks_skip_what_the_dialogue_named(tmp_path: Path) -> None:
    """The "as served" methods never pick an item the dialogue already named (the recommender never does)."""
    from reges.eval.evaluate import pick_outcomes

    examples = [
        RecExample("x1", "d1", [Turn("user", "I loved Up (2009)", ["11"])], ["11", "14"], [True, False]),
        RecExample("x2", "d2", [Turn("user", "Any horror?")], ["10"], [False]),
    ]
    rows = [
        {"example_id": "x1", "item_id": "11", "in_candidates": True, "in_catalog": True,
         "candidate_ids": ["11", "14", "15"], "ranking": [["11", 2.0], ["15", 1.0], ["14", 0.5]],
         "llm_scores": [-1.0, -3.0, -2.0]},
        {"example_id": "x2", "item_id": "12", "in_candidates": True, "in_catalog": True,
         "candidate_ids": ["10", "12"], "ranking": [["12", 1.0], ["10", 0.0]], "llm_scores": [-2.0, -1.0]},
    ]
    picked = {m: [o.item_id for o in outs] for m, outs in pick_outcomes(examples, rows, tmp_path).items()}
    assert picked["retriever_top1"] == ["11", "10"]  # x1: a repeat, a hit under protocol "all" only
    assert picked["retriever_top1_unmentioned"] == ["14", "10"]
    assert picked["item_expert"] == ["11", "12"]
    assert picked["item_expert_unmentioned"] == ["15", "12"]

    # without a rank list (constrained or free mode) only the retriever's served pick can be rebuilt
    plain = [{**r, "ranking": [], "llm_scores": []} for r in rows]
    assert set(pick_outcomes(examples, plain, tmp_path)) == {"retriever_top1", "item_expert",
                                                            "retriever_top1_unmentioned"}


def test_unmentioned_picks_skip_every_film_of_a_named_title(tmp_path: Path) -> None:
    """A user who rejected Titanic (1997) is not served Titanic (2012): as served skips the whole title."""
    from reges.eval.evaluate import pick_outcomes
    from reges.linking import TitleSpotter

    items = [Item("t97", "Titanic (1997)", "x", 1997), Item("t12", "Titanic (2012)", "x", 2012),
             Item("nb", "The Notebook (2004)", "x", 2004)]
    examples = [RecExample("x1", "d1", [Turn("user", "Titanic (1997)? too long", ["t97"])], ["nb"], [False])]
    rows = [{"example_id": "x1", "item_id": "t12", "in_candidates": True, "in_catalog": True,
             "candidate_ids": ["t97", "t12", "nb"]}]
    spotter = TitleSpotter(items)
    picked = pick_outcomes(examples, rows, tmp_path, spotter.same_title_ids)["retriever_top1_unmentioned"]
    assert [o.item_id for o in picked] == ["nb"]
    assert [o.item_id for o in pick_outcomes(examples, rows, tmp_path)["retriever_top1_unmentioned"]] == ["t12"]


def test_copy_ranking_reverses_the_mentions() -> None:
    from reges.eval.baselines import copy_ranking

    context = [Turn("user", "A or B", ["a", "b"]), Turn("assistant", "C? or A", ["c", "a"]), Turn("user", "no")]
    hits = copy_ranking(context, frozenset({"a", "b", "c"}))
    assert [h.item_id for h in hits] == ["a", "c", "b"]  # a was named last
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert copy_ranking(context, frozenset({"b"})) == [Hit("b", 1.0)]  # only catalog items
    assert copy_ranking([], frozenset({"a"})) == []


def test_evaluate_resolves_folded_ids_through_the_catalog(tmp_path: Path) -> None:
    """A cleaned catalog folds "13b" into "13": targets and mentions named by "13b" count as item 13."""
    items = [dataclasses.replace(it, meta={**it.meta, "alias_ids": ["13b"]}) if it.item_id == "13" else it
             for it in ITEMS]
    examples = [
        # Jaws named under its folded id, then recommended under the kept one: a repeat, not a novel target
        RecExample("f1", "d1", [Turn("user", "I saw Jaws", ["13b"])], ["13"], [False]),
        # two ids of one film in one turn: one target
        RecExample("f2", "d2", [Turn("user", "a shark please")], ["13b", "13"], [False, False]),
    ]
    run_dir = RunDir(tmp_path / "run")
    _write_stage(run_dir, "data", {"dev.jsonl": examples, "train_dialogues.jsonl": TRAIN})
    _write_stage(run_dir, "catalog", {"items.jsonl": items})
    cfg = PipelineConfig(run=RunConfig(show_progress=False),
                         evaluate=EvaluateConfig(cutoffs=[1], baselines=["popularity", "copy"], bootstrap=0))
    evaluate_stage.run(cfg, run_dir)
    metrics = json.loads((run_dir.stage_dir("evaluate") / "metrics.json").read_text())
    copy = metrics["splits"]["dev"]["copy"]
    assert (copy["all"]["n_targets"], copy["all"]["missing_targets"], copy["novel"]["n_targets"]) == (2, 0, 1)
    assert copy["all"]["recall@1"]["mean"] == 0.5  # f1: copying "I saw Jaws" hits item 13
    assert metrics["catalog_aliases"] == 1 and metrics["aliased_targets"] == {"dev": 1}
