"""Stage train-retriever on a tiny run (tiny encoder), and stage retrieve using its fused scores."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from retrieval_fakes import build_tiny_bert_sentence_transformer, build_tiny_sentence_transformer

from reges.config import (
    CrossDatasetConfig,
    EvaluateConfig,
    IndexConfig,
    PipelineConfig,
    RetrieveConfig,
    RunConfig,
    TrainRetrieverConfig,
    config_to_dict,
)
from reges.errors import ConfigError, DataError, StageNotReadyError
from reges.io import RunDir, file_sha256, now_iso, read_json, read_trec, write_json, write_jsonl
from reges.records import CROSS_DIALOGUE_PREFIX, Dialogue, Item, RecExample, Turn
from reges.retrieval import index as index_stage
from reges.retrieval import retrieve as retrieve_stage
from reges.retrieval import train as train_stage
from reges.retrieval.comention import CoMention
from reges.retrieval.fusion import FusedRetriever, TunePairs, top_hits, tune_weights, zscore_rows
from reges.retrieval.index import ItemIndex
from reges.retrieval.neighbours import DialogueNeighbours
from reges.shipped import export_run

ITEMS = [
    Item("10", "Alien (1979)", "Alien (1979). horror space monster"),
    Item("11", "Up (2009)", "Up (2009). family animation balloons"),
    Item("12", "Heat (1995)", "Heat (1995). crime heist city"),
    Item("13", "Jaws (1975)", "Jaws (1975). horror shark beach"),
    Item("15", "Notting Hill (1999)", "Notting Hill (1999). romance comedy london"),
    Item("16", "Toy Story (1995)", "Toy Story (1995). family animation toys"),
    Item("17", "Ronin (1998)", "Ronin (1998). crime heist cars"),
]


def _dialogue(dialogue_id: str, user: str, liked: list[str], recommended: list[str]) -> Dialogue:
    return Dialogue(dialogue_id, [Turn("user", user, liked), Turn("assistant", "try this", recommended)])


TRAIN_DIALOGUES = [
    _dialogue("t1", "scary like Jaws", ["13"], ["10"]),
    _dialogue("t2", "kids movie like Up", ["11"], ["16"]),
    _dialogue("t3", "a heist like Heat", ["12"], ["17"]),
    _dialogue("t4", "love story", [], ["15"]),
    _dialogue("t5", "scary shark", ["13"], ["10"]),
]
TUNE_DIALOGUES = [
    _dialogue("u1", "scary like Jaws", ["13"], ["10"]),
    _dialogue("u2", "heist like Heat", ["12"], ["17"]),
]


def _examples(dialogues: list[Dialogue]) -> list[RecExample]:
    return [
        RecExample(f"{d.dialogue_id}_1", d.dialogue_id, d.turns[:1], d.turns[1].item_ids,
                   [i in d.turns[0].item_ids for i in d.turns[1].item_ids])
        for d in dialogues
    ]


def _write_stage(run_dir: RunDir, stage: str, files: dict[str, list]) -> None:
    out = run_dir.begin(stage, overwrite=False)
    counts = {name: write_jsonl(out / name, rows) for name, rows in files.items()}
    run_dir.finish(stage, config={}, inputs={}, outputs=counts, seed=0, started=now_iso())


def _run_dir(tmp_path: Path, bert: bool = False, items: list[Item] = ITEMS,
             train: list[Dialogue] = TRAIN_DIALOGUES, tune: list[Dialogue] = TUNE_DIALOGUES,
             lossy: list[Dialogue] | None = None) -> tuple[RunDir, PipelineConfig]:
    texts = [it.text for it in items] + [t.content for d in train for t in d.turns] + ["User: Assistant:"]
    build = build_tiny_bert_sentence_transformer if bert else build_tiny_sentence_transformer
    st_dir = build(tmp_path / "st", texts)
    run_dir = RunDir(tmp_path / "run")
    _write_stage(run_dir, "data", {
        "train.jsonl": _examples(train),
        "train_dialogues.jsonl": train,
        "tune.jsonl": _examples(tune),
        "dev.jsonl": _examples(tune),
        "lossy_dialogues.jsonl": lossy or [_dialogue("lossy-1", "x", ["11", "16"], [])],
    })
    _write_stage(run_dir, "catalog", {"items.jsonl": items})
    cfg = PipelineConfig(
        run=RunConfig(show_progress=False),
        index=IndexConfig(encoder=str(st_dir), device="cpu"),
        retrieve=RetrieveConfig(splits=["train", "dev"], top_k=4),
        evaluate=EvaluateConfig(cutoffs=[1, 4]),
        train_retriever=TrainRetrieverConfig(epochs=2, batch_size=2, lr=0.05, save_every_steps=1,
                                             weight_grid=[0.0, 0.5, 1.0], tune_passes=1),
    )
    index_stage.run(cfg, run_dir)
    return run_dir, cfg


def test_stage_writes_files_manifest_and_retrieve_uses_them(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    with pytest.raises(StageNotReadyError, match="train-retriever"):
        FusedRetriever.load(run_dir.path)
    train_stage.run(cfg, run_dir)
    out = run_dir.stage_dir("train-retriever")
    for name in ("comention.npz", "comention_ids.txt", "comention_dialogues.jsonl", "fusion.json",
                 "encoder/modules.json", "index/index.faiss", "index/item_ids.txt", "index/embeddings.npy"):
        assert (out / name).is_file(), name
    # Only the finished encoder stays in checkpoints/ (no step checkpoints), for reuse when the stage is redone.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["encoder"]
    index = ItemIndex.load(out / "index")
    assert index.encoder == str(out / "encoder")
    frozen = np.load(run_dir.stage_dir("index") / "embeddings.npy")
    assert not np.allclose(np.load(out / "index" / "embeddings.npy"), frozen)  # re-embedded by the tuned encoder

    spec = read_json(out / "fusion.json")
    assert spec["encoder"] == "encoder" and spec["features"] == ["dense_dialogue", "comention", "popularity",
                                                                 "mentioned"]
    assert set(spec["weights"]["no_query"]) == set(spec["features"]) and spec["weights"]["with_query"] is None
    assert set(spec["tune"]["no_query"]["alone"]) == set(spec["features"])
    assert spec["tune"]["no_query"]["fused"]["objective"] >= max(
        v["objective"] for v in spec["tune"]["no_query"]["alone"].values()
    )
    assert spec["counts"] == {"dialogues": 6, "items": 7, "lossy": True, "cross_dataset": None}
    assert spec["finetune"]["steps"] == 2 * 3 and spec["finetune"]["pairs"] == 5
    manifest = run_dir.manifest("train-retriever")
    assert {"data/train", "data/tune", "data/lossy_dialogues", "catalog", "index"} <= set(manifest["inputs"])
    assert manifest["outputs"]["fusion.json"] == {"rows": 1}
    assert manifest["tune_objective"]["no_query"] == spec["tune"]["no_query"]["fused"]["objective"]

    retrieve_stage.run(cfg, run_dir)
    assert run_dir.manifest("retrieve")["mode"] == "fused"
    trec = read_trec(run_dir.stage_dir("retrieve") / "train.trec")
    retriever = FusedRetriever.load(run_dir.path, device="cpu")
    examples = _examples(TRAIN_DIALOGUES)
    want = retriever.search([ex.context for ex in examples], [None] * len(examples), 4,
                            exclude_dialogue_ids=[ex.dialogue_id for ex in examples])
    for ex, hits in zip(examples, want, strict=True):
        assert [h.item_id for h in trec[ex.example_id]] == [h.item_id for h in hits]
    # leave-one-dialogue-out: without it, t1's own co-mention of 13 and 10 and its mentions would count
    leaky = retriever.features([examples[0].context], [None], [None], ["popularity"])["popularity"]
    fair = retriever.features([examples[0].context], [None], ["t1"], ["popularity"])["popularity"]
    assert fair[0, retriever.column["10"]] < leaky[0, retriever.column["10"]]
    counts = [retriever.counts.scores([["13"]], ["10"], "count", exclude_dialogue_ids=[d]) for d in (None, "t1")]
    assert counts[0][0, 0] == 2 and counts[1][0, 0] == 1

    # fusion off: the plain dense path, as before
    plain = dataclasses.replace(cfg, run=RunConfig(overwrite=True, show_progress=False),
                                retrieve=RetrieveConfig(splits=["dev"], top_k=4, fusion=False))
    retrieve_stage.run(plain, run_dir)
    assert run_dir.manifest("retrieve")["mode"] == "dense"


def test_a_cleaned_catalogs_folded_ids_count_for_their_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """catalog.clean=true folds duplicate ids into one item (`meta.alias_ids`): the encoder's pairs, the co-mention
    prior, the lossy pairs, the tune split and retrieve all read the dialogues' ids through the aliases, so a film
    named by a folded id counts for its item instead of dropping out (10b and 13b are folded into 10 and 13)."""
    folded = {"10": ["10b"], "13": ["13b"]}
    items = [dataclasses.replace(it, meta={"alias_ids": folded[it.item_id]}) if it.item_id in folded else it
             for it in ITEMS]
    train = [*TRAIN_DIALOGUES[:4], _dialogue("t5", "scary shark", ["13b"], ["10b"])]
    tune = [_dialogue("u1", "scary like Jaws", ["13b"], ["10"]), TUNE_DIALOGUES[1]]
    run_dir, cfg = _run_dir(tmp_path, items=items, train=train, tune=tune,
                            lossy=[_dialogue("lossy-1", "x", ["13b", "10b"], [])])
    by_id = {it.item_id: it for it in items}
    pairs, _ = train_stage.training_pairs(cfg, run_dir, by_id, None)
    assert len(pairs) == 5 and pairs[4].positive_id == "10"  # t5's pair, dropped before (10b has no card)
    lossy = train_stage.lossy_pairs(cfg, run_dir, by_id)
    assert sorted(p.positive_id for p in lossy) == ["10", "13"]

    seen: list[RecExample] = []
    real = retrieve_stage.retrieve_fused
    monkeypatch.setattr(retrieve_stage, "retrieve_fused", lambda examples, *a, **k: seen.extend(examples) or real(
        examples, *a, **k))
    train_stage.run(cfg, run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    assert spec["finetune"]["pairs"] == 5
    retriever = FusedRetriever.load(run_dir.path, device="cpu")
    # t1, t5 and the lossy dialogue each name Jaws with Alien: 3 co-mentions, as if every id were the film's own
    assert retriever.counts.scores([["13"]], ["10"], "count")[0, 0] == 3
    assert "10b" not in retriever.column and "13b" not in retriever.column
    retrieve_stage.run(dataclasses.replace(cfg, retrieve=dataclasses.replace(cfg.retrieve, splits=["dev"])), run_dir)
    assert seen[0].context[0].item_ids == ["13"]  # "mentioned" and the co-mentions see Jaws
    assert "catalog" in run_dir.manifest("retrieve")["inputs"]


def test_query_feature_without_finetune(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    _write_stage(run_dir, "rewrite", {
        "tune.jsonl": [{"example_id": "u1_1", "query": "horror space"}, {"example_id": "u2_1", "query": "crime"}],
        "dev.jsonl": [{"example_id": "u1_1", "query": "horror space"}],
    })
    cfg = dataclasses.replace(cfg, train_retriever=dataclasses.replace(cfg.train_retriever, finetune=False,
                                                                       use_lossy=False, mentioned=False))
    train_stage.run(cfg, run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    assert spec["encoder"] == cfg.index.encoder and spec["finetune"] is None
    assert spec["features"] == ["dense_dialogue", "comention", "popularity", "dense_query"]
    assert set(spec["weights"]["with_query"]) == set(spec["features"])
    assert spec["counts"]["lossy"] is False
    assert not (run_dir.stage_dir("train-retriever") / "encoder").exists()
    retrieve_stage.run(dataclasses.replace(cfg, retrieve=RetrieveConfig(splits=["dev"], top_k=3)), run_dir)
    manifest = run_dir.manifest("retrieve")
    assert manifest["splits"]["dev"]["with_query"] == 1 and "rewrite/dev" in manifest["inputs"]


def test_bagged_weights_are_what_the_stage_tunes_and_serves(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    _write_stage(run_dir, "rewrite", {
        "tune.jsonl": [{"example_id": "u1_1", "query": "horror space"}, {"example_id": "u2_1", "query": "crime"}],
    })
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, weight_resamples=4)
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    for which in ("no_query", "with_query"):
        runs = spec["tune"][which]["resamples"]
        assert len(runs) == 4 and spec["tune"][which]["seed"] == cfg.run.seed
        # the served weights are the resamples' average (unit L1 each, then the largest scaled to 1)
        mean = {n: sum(r["weights"][n] / sum(abs(v) for v in r["weights"].values()) for r in runs) / 4
                for n in spec["features"] if n in runs[0]["weights"]}
        top = max(abs(v) for v in mean.values())
        assert spec["weights"][which] == {n: round(v / top, 4) for n, v in mean.items()}
    retriever = FusedRetriever.load(run_dir.path, device="cpu")
    assert retriever.weights["with_query"] == spec["weights"]["with_query"]


def test_weights_searched_on_train_and_tune_leave_each_train_dialogue_out(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    searched: list[tuple[dict[str, np.ndarray], TunePairs]] = []

    def spy(zs: dict[str, np.ndarray], pairs: TunePairs, *args: object) -> tuple[dict[str, float], dict]:
        searched.append((zs, pairs))
        return tune_weights(zs, pairs, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_stage, "tune_weights", spy)
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, weight_examples="train+tune")
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    assert spec["tune"]["train_examples"] == len(TRAIN_DIALOGUES) and spec["tune"]["train_pairs"] == 5
    # one search (no query), on the train examples then the tune ones, each scored without its own dialogue
    (zs, pairs), = searched
    examples = _examples(TRAIN_DIALOGUES) + _examples(TUNE_DIALOGUES)
    retriever = FusedRetriever.load(run_dir.path, device="cpu")
    assert list(pairs.item_index) == [retriever.column[t] for ex in examples for t in ex.target_item_ids]
    raw = retriever.features([ex.context for ex in examples], [None] * len(examples),
                             [ex.dialogue_id for ex in examples], list(zs))
    for name, x in raw.items():
        np.testing.assert_allclose(zs[name], zscore_rows(x), err_msg=name)
    # only t3 links Heat to Ronin: its own row has no co-mention for Ronin; t1's Jaws -> Alien still has t5's
    with_own = retriever.features([examples[2].context], [None], [None], ["comention"])["comention"][0]
    assert with_own[retriever.column["17"]] > 0 and raw["comention"][2][retriever.column["17"]] == 0
    assert raw["comention"][0][retriever.column["10"]] > 0
    assert spec["weights"]["no_query"] == spy(zs, pairs, retriever.tie, retriever.id_rank, tc.weight_grid,
                                              tc.tune_passes)[0]


def test_cross_fitted_dense_rows_come_from_the_encoder_that_never_saw_their_dialogue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    searched: list[dict[str, np.ndarray]] = []
    trained_on: list[tuple[frozenset[str], set[str]]] = []  # (held out, the anchors trained on)
    pairs_of = train_stage.training_pairs

    def search_spy(zs: dict[str, np.ndarray], *args: object) -> tuple[dict[str, float], dict]:
        searched.append(zs)
        return tune_weights(zs, *args)  # type: ignore[arg-type]

    def pairs_spy(*args: object, **kwargs: object) -> tuple[list, dict | None]:
        pairs, stats = pairs_of(*args, **kwargs)  # type: ignore[arg-type]
        trained_on.append((args[4] if len(args) > 4 else frozenset(), {p.anchor for p in pairs}))  # type: ignore
        return pairs, stats

    monkeypatch.setattr(train_stage, "tune_weights", search_spy)
    monkeypatch.setattr(train_stage, "training_pairs", pairs_spy)
    tc = dataclasses.replace(cfg.train_retriever, weight_examples="train+tune", cross_fit_folds=2)
    cfg = dataclasses.replace(cfg, train_retriever=tc)
    train_stage.run(cfg, run_dir)
    out = run_dir.stage_dir("train-retriever")
    spec = read_json(out / "fusion.json")
    train = _examples(TRAIN_DIALOGUES)
    folds = train_stage.cross_fit_split(train, 2)
    assert sorted(d for f in folds for d in f) == sorted(d.dialogue_id for d in TRAIN_DIALOGUES) and all(folds)
    assert spec["cross_fit"]["folds"] == 2 and "held_out_dialogues" not in spec["finetune"]
    assert [r["held_out_dialogues"] for r in spec["cross_fit"]["finetune"]] == [len(f) for f in folds]
    # the run's encoder saw every train dialogue; each fold's encoder none of its own fold's
    assert [held for held, _ in trained_on] == [frozenset(), *folds]
    for held, anchors in trained_on[1:]:
        own = {ex.context[0].content for ex in train if ex.dialogue_id in held}
        assert not any(text in anchor for anchor in anchors for text in own)
        assert any(ex.context[0].content in anchor for anchor in anchors for ex in train
                   if ex.dialogue_id not in held)
    (zs,) = searched
    retriever = FusedRetriever.load(run_dir.path, device="cpu")
    contexts = [ex.context for ex in train + _examples(TUNE_DIALOGUES)]
    served = zscore_rows(retriever.features(contexts, [None] * len(contexts), [None] * len(contexts),
                                            ["dense_dialogue"])["dense_dialogue"])
    np.testing.assert_allclose(zs["dense_dialogue"][len(train):], served[len(train):])  # tune rows: the run's
    items = {it.item_id: it for it in ITEMS}
    for k, held in enumerate(folds):
        folder = out / "checkpoints" / f"fold-{k}" / "encoder"
        dense, _ = train_stage.cross_fitted_dense(retriever, [folder], [held], train, items, cfg)
        rows = [i for i, ex in enumerate(train) if ex.dialogue_id in held]
        np.testing.assert_allclose(zs["dense_dialogue"][rows], zscore_rows(dense[rows]))
        assert not np.allclose(zs["dense_dialogue"][rows], served[rows])  # not the encoder that was trained on them

    # a rerun reuses every finished encoder (their fingerprints match)
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished encoder was trained again")

    monkeypatch.setattr(train_stage, "finetune_encoder", no_training)
    train_stage.run(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=True)), run_dir)
    assert read_json(out / "fusion.json")["weights"] == spec["weights"]


def test_a_fold_encoder_is_fingerprinted_by_its_held_out_dialogues(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    data = run_dir.stage_dir("data")

    def fingerprint(held_out: frozenset[str]) -> str:
        return train_stage._finetune_fingerprint(cfg.train_retriever, cfg.index.encoder, 0, data / "train.jsonl",
                                                 None, data / "lossy_dialogues.jsonl", held_out)

    # the run's own encoder keeps the fingerprint it had before cross-fitting existed; each fold has its own
    assert fingerprint(frozenset()) == train_stage._finetune_fingerprint(
        cfg.train_retriever, cfg.index.encoder, 0, data / "train.jsonl", None, data / "lossy_dialogues.jsonl")
    assert len({fingerprint(frozenset()), fingerprint(frozenset({"t1"})), fingerprint(frozenset({"t2"}))}) == 3
    with pytest.raises(DataError, match="cross_fit_folds=9 leaves a fold without dialogues"):
        train_stage.cross_fit_split(_examples(TRAIN_DIALOGUES), 9)


def test_a_rebuilt_catalog_trains_a_new_encoder(tmp_path: Path) -> None:
    """The checkpoint folder outlives a rebuilt catalog (`RunDir.begin`), and the pairs' positives are its cards
    and their targets its aliases: another catalog (cards, `catalog.clean`) gives another fingerprint."""
    run_dir, cfg = _run_dir(tmp_path)
    data = run_dir.stage_dir("data")

    def fingerprint(items: list[Item]) -> str:
        return train_stage._finetune_fingerprint(cfg.train_retriever, cfg.index.encoder, 0, data / "train.jsonl",
                                                 None, data / "lossy_dialogues.jsonl", items={
                                                     it.item_id: it for it in items})

    before = fingerprint(ITEMS)
    assert fingerprint([dataclasses.replace(ITEMS[0], meta={"year_source": "x"}), *ITEMS[1:]]) == before
    assert fingerprint([dataclasses.replace(ITEMS[0], meta={"alias_ids": ["10b"]}), *ITEMS[1:]]) != before
    assert fingerprint([dataclasses.replace(ITEMS[0], text="Alien (1979). horror"), *ITEMS[1:]]) != before


@pytest.mark.parametrize(("overrides", "match"), [
    ({"cross_fit_folds": 1}, "0 \\(off\\) or at least 2"),
    ({"cross_fit_folds": 2}, "weight_examples is 'tune'"),
    ({"cross_fit_folds": 2, "weight_examples": "train+tune", "finetune": False}, "finetune is false"),
])
def test_cross_fitting_needs_folds_the_train_split_search_and_a_fine_tuned_encoder(overrides: dict,
                                                                                  match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainRetrieverConfig(**overrides)


def test_finished_encoder_is_not_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = _run_dir(tmp_path)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while tuning")

    monkeypatch.setattr(train_stage, "tune_weights", crash)
    with pytest.raises(RuntimeError, match="killed while tuning"):
        train_stage.run(cfg, run_dir)
    assert (run_dir.stage_dir("train-retriever") / "checkpoints" / "encoder" / "finetune.json").is_file()
    monkeypatch.undo()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished encoder was trained again")

    monkeypatch.setattr(train_stage, "finetune_encoder", no_training)
    train_stage.run(cfg, run_dir)
    assert run_dir.is_complete("train-retriever")
    assert read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["finetune"]["steps"] == 6


def test_missing_tune_split_is_a_clear_error(tmp_path: Path) -> None:
    run_dir, cfg = _run_dir(tmp_path)
    (run_dir.stage_dir("data") / "tune.jsonl").unlink()
    with pytest.raises(DataError, match="tune_fraction"):
        train_stage.run(cfg, run_dir)


@pytest.mark.slow
def test_real_minilm_on_the_books_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled MiniLM fine-tuned for a few steps on the books example, fused, retrieved and evaluated."""
    from reges.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # config paths are relative to the repository root
    run = str(tmp_path / "books")
    overrides = ["data.tune_fraction=0.3", "train_retriever.batch_size=4", "train_retriever.epochs=2",
                 "train_retriever.save_every_steps=0", "run.threads=1", "index.device=cpu",
                 "retrieve.splits=[train,tune,dev]", "evaluate.baselines=[popularity,dense_full]",
                 "evaluate.splits=[tune]"]
    for stage in ("data", "catalog", "index", "train-retriever", "retrieve", "evaluate"):
        assert main([stage, "--config", "configs/tiny.yaml", "--run-dir", run, *overrides]) == 0, stage
    rd = RunDir(run)
    spec = read_json(rd.stage_dir("train-retriever") / "fusion.json")
    assert spec["finetune"]["steps"] >= 2 and np.isfinite(spec["finetune"]["loss_end"])
    tuned = np.load(rd.stage_dir("train-retriever") / "index" / "embeddings.npy")
    frozen = np.load(rd.stage_dir("index") / "embeddings.npy")
    assert tuned.shape == frozen.shape == (20, 384) and not np.allclose(tuned, frozen)
    assert rd.manifest("retrieve")["mode"] == "fused"
    tune = read_json(rd.stage_dir("evaluate") / "metrics.json")["splits"]["tune"]
    # the stage's own tune numbers are what the evaluate stage measures on the written TREC run
    for protocol in ("all", "novel"):
        want = spec["tune"]["no_query"]["fused"][protocol]["recall@10"]
        assert tune["retrieve"][protocol]["recall@10"]["mean"] == pytest.approx(want, abs=1e-4)


def test_redoing_a_complete_stage_reuses_the_finished_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The with-query fusion weights need rewrite/tune.jsonl, which may come after a first train-retriever run:
    # redoing the stage (run.overwrite=true) re-tunes the fusion without fine-tuning the encoder again.
    run_dir, cfg = _run_dir(tmp_path)
    train_stage.run(cfg, run_dir)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished encoder was trained again")

    monkeypatch.setattr(train_stage, "finetune_encoder", no_training)
    train_stage.run(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=True)), run_dir)
    assert run_dir.is_complete("train-retriever")


def test_encoder_finetune_benchmark_reports_each_dtype(tmp_path: Path) -> None:
    """benchmarks/encoder_finetune.py on the tiny run: one row per dtype, on the same sampled pairs."""
    import importlib.util
    import json

    import yaml

    from reges.config import config_to_dict

    run_dir, cfg = _run_dir(tmp_path)
    (run_dir.path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_finetune.py"
    spec = importlib.util.spec_from_file_location("encoder_finetune_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.md"
    assert bench.main(["--run-dir", str(run_dir.path), "--steps", "2", "--rounds", "1", "--threads", "1",
                       "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["settings"]["pairs"] == 4  # 2 steps of batch 2
    assert list(result["summary"]) == ["float32", "bfloat16"]
    for dtype, row in result["summary"].items():
        assert row["resolved_dtype"] == dtype and row["pairs_per_s_median"] > 0
        assert [r["steps"] for r in result["runs"][dtype]] == [2]
    assert "bfloat16 vs float32" in out.read_text()


def test_another_datasets_dialogues_join_the_counts_by_title(tmp_path: Path) -> None:
    """train_retriever.cross_dataset: a custom file keyed by titles ("Up (2009)") adds co-mentions here."""
    run_dir, cfg = _run_dir(tmp_path)
    other = tmp_path / "other.jsonl"
    rows = [{"dialogue_id": f"o{i}", "turns": [{"role": "user", "content": "x", "item_ids": ["Up (2009)"]},
                                              {"role": "assistant", "content": "y",
                                               "item_ids": ["Ronin (1998)", "Unknown (2001)"]}]}
            for i in range(3)]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tc = dataclasses.replace(cfg.train_retriever, finetune=False,
                             cross_dataset=CrossDatasetConfig(format="custom", files=[str(other)]))
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    assert spec["counts"]["dialogues"] == 6 + 3
    assert spec["counts"]["cross_dataset"] == {"dialogues": 3, "dialogues_kept": 3, "titles": 9, "matched_exact": 6,
                                               "matched_year_less": 0, "unmatched": 3}
    counts = CoMention.load(run_dir.stage_dir("train-retriever"))
    assert counts.scores([["11"]], ["17"], "count")[0, 0] >= 3  # Up and Ronin, together in 3 more dialogues
    assert "cross:" + str(other) in run_dir.manifest("train-retriever")["inputs"]


def _other_dataset_asking_for_up(tmp_path: Path) -> Path:
    """A custom-format file of 3 dialogues whose recommender names "Up (2009)" by title (an item of ITEMS)."""
    other = tmp_path / "other.jsonl"
    rows = [{"dialogue_id": f"o{i}", "turns": [{"role": "user", "content": "balloons please", "item_ids": []},
                                              {"role": "assistant", "content": "Up!", "item_ids": ["Up (2009)"]}]}
            for i in range(3)]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return other


def test_cross_pairs_train_the_encoder_on_another_datasets_dialogues(tmp_path: Path) -> None:
    """train_retriever.cross_pairs: the other dataset's recommending turns become encoder pairs (counted by source
    in the record); a finished encoder trained without them is not reused."""
    run_dir, cfg = _run_dir(tmp_path)
    other = _other_dataset_asking_for_up(tmp_path)
    cross = CrossDatasetConfig(format="custom", files=[str(other)])
    train_stage.run(dataclasses.replace(cfg, train_retriever=dataclasses.replace(cfg.train_retriever,
                                                                                 cross_dataset=cross)), run_dir)
    record = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["finetune"]
    assert record["pairs_by_source"]["cross"] == 0 and record["cross_examples"] is None
    tc = dataclasses.replace(cfg.train_retriever, cross_dataset=cross, cross_pairs=True)
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc, run=dataclasses.replace(cfg.run, overwrite=True)),
                    run_dir)
    record = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["finetune"]
    assert record["pairs_by_source"] == {"dialogue": 5, "distill": 0, "cross": 3, "lossy": 0}  # retrained, not reused
    assert record["cross_examples"]["examples_kept"] == 3 and record["cross_examples"]["targets_matched"] == 3
    assert record["steps"] == 2 * 4  # 8 pairs in batches of 2, two epochs


def test_lossy_pairs_train_the_encoder_on_order_free_pairs(tmp_path: Path) -> None:
    """train_retriever.lossy_pairs: a seeded sample of the lossy dialogues' (seeker, recommended film) pairs joins the
    encoder's pairs; without data/lossy_dialogues.jsonl the stage says how to get it."""
    run_dir, cfg = _run_dir(tmp_path)
    tc = dataclasses.replace(cfg.train_retriever, lossy_pairs=1)  # the fixture's lossy dialogue gives 2 pairs
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    record = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["finetune"]
    assert record["pairs_by_source"] == {"dialogue": 5, "distill": 0, "cross": 0, "lossy": 1}
    assert "data/lossy_dialogues" in run_dir.manifest("train-retriever")["inputs"]
    (run_dir.stage_dir("data") / "lossy_dialogues.jsonl").unlink()
    again = dataclasses.replace(cfg, train_retriever=dataclasses.replace(tc, lossy_pairs=5),
                                run=dataclasses.replace(cfg.run, overwrite=True))
    with pytest.raises(ConfigError, match="lossy_pairs=5 needs .*lossy_dialogues.jsonl.*data.lossy_file"):
        train_stage.run(again, run_dir)


def test_interleaved_lossy_pairs_stop_before_the_recommendation(tmp_path: Path) -> None:
    """train_retriever.lossy_pairs_from=interleaved: the fixture's lossy dialogue (entry 1 of data.lossy_file) is put
    in a guessed order and cut at each recommendation, so the anchor holds what the seeker said before the film was
    recommended and not their reaction; the raw files are inputs, a file other than the data stage's is refused, and
    the encoder is not reused across the modes (the default mode's fingerprint is what it was before the switch)."""
    run_dir, cfg = _run_dir(tmp_path)
    entry = {"context": "", "questions": ["I love kids films like @11", "I haven't seen @16, thanks"],
             "answers": ["hi! you might like @16", "enjoy"]}
    lossy_zip = tmp_path / "precessed.json.zip"
    with zipfile.ZipFile(lossy_zip, "w") as z:
        z.writestr("precessed.json", json.dumps([{"context": "", "questions": ["x"], "answers": []}, entry]))
    names = tmp_path / "movies_with_mentions.csv"
    names.write_text("movieId,movieName,nbMentions\n11,Up (2009),3\n16,Toy Story (1995),2\n", encoding="utf-8")
    data = dataclasses.replace(cfg.data, format="redial", lossy_file=str(lossy_zip), movie_names_file=str(names))
    cfg = dataclasses.replace(cfg, data=data, train_retriever=dataclasses.replace(
        cfg.train_retriever, lossy_pairs=5, lossy_pairs_from="interleaved"))
    # the data stage's manifest records the raw files it read, as `reges data` does
    manifest_path = run_dir.stage_dir("data") / "manifest.json"
    manifest = read_json(manifest_path)
    manifest["inputs"] = {key: file_sha256(path) for key, path in train_stage.interleaved_inputs(cfg).items()}
    write_json(manifest_path, manifest)
    items = {it.item_id: it for it in ITEMS}
    (guessed,) = train_stage.lossy_pairs(cfg, run_dir, items)
    assert (guessed.anchor, guessed.positive_id) == ("User: I love kids films like Up (2009)", "16")

    train_stage.run(cfg, run_dir)
    record = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["finetune"]
    assert record["pairs_by_source"] == {"dialogue": 5, "distill": 0, "cross": 0, "lossy": 1}
    assert {f"lossy:{lossy_zip}", f"movie_names:{names}"} <= set(run_dir.manifest("train-retriever")["inputs"])
    data_dir = run_dir.stage_dir("data")
    args = (cfg.index.encoder, 0, data_dir / "train.jsonl", None, data_dir / "lossy_dialogues.jsonl", frozenset(),
            train_stage.interleaved_inputs(cfg))
    default = train_stage._finetune_spec(dataclasses.replace(cfg.train_retriever, lossy_pairs_from="seeker_side"),
                                         *args)
    assert default["lossy_pairs"] == {"max": 5, "sha256": file_sha256(data_dir / "lossy_dialogues.jsonl")}
    interleaved = train_stage._finetune_spec(cfg.train_retriever, *args)
    assert interleaved["lossy_pairs"]["from"] == "interleaved"
    assert set(interleaved["lossy_pairs"]["files"]) == {f"lossy:{lossy_zip}", f"movie_names:{names}"}

    # another zip at the same path: its positions may hold other (even held-out) dialogues
    with zipfile.ZipFile(lossy_zip, "w") as z:
        z.writestr("precessed.json", json.dumps([entry, entry]))
    with pytest.raises(DataError, match="is not the file the data stage read.*rerun `reges data`"):
        train_stage.lossy_pairs(cfg, run_dir, items)


def test_content_and_people_features_are_tuned_and_retrieve_loads_them(tmp_path: Path) -> None:
    """train_retriever.content / .people: each feature gets a tuned weight (people.json is written), and retrieve
    scores with them."""
    run_dir, cfg = _run_dir(tmp_path)
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, content=True, people=True)
    cfg = dataclasses.replace(cfg, train_retriever=tc)
    train_stage.run(cfg, run_dir)
    out = run_dir.stage_dir("train-retriever")
    spec = read_json(out / "fusion.json")
    assert spec["features"] == ["dense_dialogue", "content", "comention", "people", "popularity", "mentioned"]
    for name in ("content", "people"):
        assert name in spec["weights"]["no_query"] and name in spec["tune"]["no_query"]["alone"]
    assert (out / "people.json").is_file() and "people.json" in run_dir.manifest("train-retriever")["outputs"]
    weights = {**spec["weights"], "no_query": {**spec["weights"]["no_query"], "people": 0.5}}  # force its use
    write_json(out / "fusion.json", {**spec, "weights": weights})
    assert FusedRetriever.load(run_dir.path, "cpu").people is not None
    write_json(out / "fusion.json", spec)
    retrieve_stage.run(cfg, run_dir)
    assert read_trec(run_dir.stage_dir("retrieve") / "dev.trec")


def test_neighbours_feature_is_fitted_on_tune_saved_and_served(tmp_path: Path) -> None:
    """train_retriever.neighbours: (m, tau) chosen on tune by the feature alone, the train contexts saved, the
    feature tuned last among the fusion features, and retrieve scores with it."""
    run_dir, cfg = _run_dir(tmp_path)
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, neighbours=True)
    cfg = dataclasses.replace(cfg, train_retriever=tc)
    train_stage.run(cfg, run_dir)
    out = run_dir.stage_dir("train-retriever")
    spec = read_json(out / "fusion.json")
    assert spec["features"][-1] == "neighbours" and "neighbours" in spec["tune"]["no_query"]["alone"]
    report = spec["neighbours"]
    assert report["train_examples"] == len(TRAIN_DIALOGUES)
    best = max(report["tune_objective"].values())
    assert report["tune_objective"][f"{report['m']}/{report['tau']:g}"] == best
    assert run_dir.manifest("train-retriever")["outputs"]["neighbours.npz"]["rows"] == len(TRAIN_DIALOGUES)
    weights = {**spec["weights"], "no_query": {**spec["weights"]["no_query"], "neighbours": 1.0}}  # force its use
    write_json(out / "fusion.json", {**spec, "weights": weights})
    retriever = FusedRetriever.load(run_dir.path, "cpu")
    assert retriever.neighbours is not None and (retriever.neighbours.m, retriever.neighbours.tau) == (
        report["m"], report["tau"])
    # a train example never votes with its own dialogue: t4's "love story" has no other neighbour recommending
    # Notting Hill, so the feature gives it nothing there
    t4 = next(ex for ex in retrieve_stage.read_examples(run_dir.stage_dir("data") / "train.jsonl")
              if ex.dialogue_id == "t4")
    own = retriever.features([t4.context], [None], ["t4"], ["neighbours"])["neighbours"][0]
    assert own[retriever.column["15"]] == 0.0
    anyone = retriever.features([t4.context], [None], [None], ["neighbours"])["neighbours"][0]
    assert anyone[retriever.column["15"]] > 0
    retrieve_stage.run(cfg, run_dir)
    assert read_trec(run_dir.stage_dir("retrieve") / "dev.trec")
    # a bundle exported from the run carries the neighbours and scores as the run does
    (run_dir.path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    bundle = FusedRetriever.load(export_run(run_dir, tmp_path / "bundle", "test data"), "cpu")
    assert bundle.neighbours is not None
    np.testing.assert_allclose(bundle.scores([t4.context], [None]), retriever.scores([t4.context], [None]),
                               rtol=1e-3, atol=1e-5)  # float16 card embeddings in the bundle


def test_lossy_dialogues_vote_in_the_neighbours_feature_when_asked(tmp_path: Path) -> None:
    """train_retriever.neighbours_lossy: the lossy file's order-free examples join the voters; without the file, or
    without the feature, a clear error."""
    run_dir, cfg = _run_dir(tmp_path)
    lossy = [Dialogue("lossy-2", [Turn("assistant", "you might like Toy Story", ["16"]),
                                  Turn("user", "i'm looking for a kids movie like Up", ["11"])])]
    data = run_dir.stage_dir("data")
    files = {name: (lossy if name == "lossy_dialogues.jsonl" else [json.loads(line) for line in
                                                                   (data / name).read_text().splitlines()])
             for name in ("train.jsonl", "train_dialogues.jsonl", "tune.jsonl", "dev.jsonl", "lossy_dialogues.jsonl")}
    shutil.rmtree(data)
    _write_stage(run_dir, "data", files)
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, neighbours=True, neighbours_lossy=True)
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    spec = read_json(run_dir.stage_dir("train-retriever") / "fusion.json")
    assert spec["neighbours"]["train_examples"] == len(TRAIN_DIALOGUES) + 1
    assert "data/lossy_dialogues" in run_dir.manifest("train-retriever")["inputs"]
    (run_dir.stage_dir("data") / "lossy_dialogues.jsonl").unlink()
    with pytest.raises(ConfigError, match="neighbours_lossy=true needs"):
        train_stage.run(dataclasses.replace(cfg, train_retriever=tc, run=RunConfig(show_progress=False,
                                                                                    overwrite=True)), run_dir)
    with pytest.raises(ConfigError, match="set train_retriever.neighbours=true or"):
        TrainRetrieverConfig(neighbours_lossy=True)


def test_another_datasets_dialogues_vote_in_the_neighbours_feature_when_asked(tmp_path: Path) -> None:
    """train_retriever.neighbours_cross: the cross_dataset's recommending turns (matched by title) join the
    voters, under their prefixed dialogue ids; without cross_dataset, a clear error."""
    run_dir, cfg = _run_dir(tmp_path)
    other = _other_dataset_asking_for_up(tmp_path)
    tc = dataclasses.replace(cfg.train_retriever, finetune=False, neighbours=True, neighbours_cross=True,
                             cross_dataset=CrossDatasetConfig(format="custom", files=[str(other)]))
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    assert read_json(run_dir.stage_dir("train-retriever") / "fusion.json")["neighbours"]["train_examples"] == (
        len(TRAIN_DIALOGUES) + 3)
    voters = DialogueNeighbours.load(run_dir.stage_dir("train-retriever"), len(ITEMS))
    cross = [i for i, d in enumerate(voters.dialogue_ids.tolist()) if d.startswith(CROSS_DIALOGUE_PREFIX)]
    assert len(cross) == 3
    up = ItemIndex.load(run_dir.stage_dir("train-retriever") / "index").item_ids.index("11")
    assert all(voters.indices[voters.indptr[i]:voters.indptr[i + 1]].tolist() == [up] for i in cross)
    with pytest.raises(ConfigError, match="neighbours_cross=true lets train_retriever.cross_dataset"):
        TrainRetrieverConfig(neighbours=True, neighbours_cross=True)


def test_a_lora_tuned_encoder_ships_as_its_adapter(tmp_path: Path) -> None:
    """train_retriever.lora_rank: only adapters train; encoder_adapter/ is saved next to the merged encoder, and
    without encoder/ (a shipped bundle) the base model plus the adapter give the same scores."""
    run_dir, cfg = _run_dir(tmp_path, bert=True)
    tc = dataclasses.replace(cfg.train_retriever, lora_rank=4)
    train_stage.run(dataclasses.replace(cfg, train_retriever=tc), run_dir)
    out = run_dir.stage_dir("train-retriever")
    spec = read_json(out / "fusion.json")
    assert spec["encoder_adapter"] == "encoder_adapter" and spec["base_encoder"] == cfg.index.encoder
    assert (out / "encoder_adapter" / "adapter_config.json").is_file()
    assert not (out / "encoder_adapter" / "README.md").exists()  # no PEFT model card
    assert not (out / "encoder" / "encoder_adapter").exists()
    adapter_bytes = sum(f.stat().st_size for f in (out / "encoder_adapter").iterdir())
    encoder_bytes = sum(f.stat().st_size for f in (out / "encoder").rglob("*") if f.is_file())
    assert adapter_bytes < encoder_bytes / 2
    contexts = [[Turn("user", "a heist like Heat", ["12"])], [Turn("user", "kids movie")]]
    merged = FusedRetriever.load(run_dir.path, "cpu").scores(contexts, [None, None])
    other, other_cfg = _run_dir(tmp_path / "frozen", bert=True)  # the same random BERT, not trained
    frozen = dataclasses.replace(other_cfg.train_retriever, finetune=False)
    train_stage.run(dataclasses.replace(other_cfg, train_retriever=frozen), other)
    assert not np.allclose(FusedRetriever.load(other.path, "cpu").scores(contexts, [None, None]), merged)
    shutil.rmtree(out / "encoder")
    rebuilt = FusedRetriever.load(run_dir.path, "cpu").scores(contexts, [None, None])
    np.testing.assert_allclose(rebuilt, merged, rtol=1e-4, atol=1e-4)


def test_an_approximate_index_makes_retrieve_score_candidates(tmp_path: Path) -> None:
    """index.index_type=hnsw: train-retriever builds an HNSW index, and retrieve and FusedRetriever.load take the
    candidate path (retrieve.candidate_pool), with the same hits as whole-catalog scoring."""
    run_dir, cfg = _run_dir(tmp_path)
    cfg = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, index_type="hnsw"),
                              retrieve=dataclasses.replace(cfg.retrieve, candidate_pool=2))
    train_stage.run(cfg, run_dir)
    assert read_json(run_dir.stage_dir("train-retriever") / "index" / "index.json")["index_type"] == "hnsw"
    retrieve_stage.run(cfg, run_dir)
    assert set(run_dir.manifest("retrieve")["splits"]["train"]["candidates"]) == {"deepened", "fallbacks"}
    retriever = FusedRetriever.load(run_dir.path, "cpu", candidate_pool=2)
    assert retriever.index is not None and retriever.candidate_pool == 2
    examples = _examples(TRAIN_DIALOGUES)
    contexts, ids = [ex.context for ex in examples], [ex.dialogue_id for ex in examples]
    whole = top_hits(retriever.scores(contexts, [None] * len(examples), ids), retriever.item_ids, retriever.id_rank, 4)
    trec = read_trec(run_dir.stage_dir("retrieve") / "train.trec")
    for ex, hits in zip(examples, whole, strict=True):
        assert [h.item_id for h in trec[ex.example_id]] == [h.item_id for h in hits]
