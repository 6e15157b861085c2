"""Encoders and the FAISS item index: loading rules, exact search with ties, index types, the `index` stage."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_fakes import KeywordEncoder, build_tiny_sentence_transformer

from reges.catalog import read_catalog
from reges.config import IndexConfig, PipelineConfig, RunConfig
from reges.errors import CatalogError, ConfigError, DataError, ModelError, StageCompleteError, StageNotReadyError
from reges.io import RunDir, now_iso, write_jsonl
from reges.records import Item
from reges.retrieval import index as index_stage
from reges.retrieval.encoder import SentenceEncoder, l2_normalize, load_encoder
from reges.retrieval.index import ItemIndex, build_faiss_index

ITEMS = [
    Item("10", "Alien (1979)", "Alien (1979). Genre: horror, sci-fi. Plot: a space crew meets an alien.", 1979),
    Item("11", "Up (2009)", "Up (2009). Genre: animation, family. Plot: an old man flies his house.", 2009),
    Item("12", "Heat (1995)", "Heat (1995). Genre: crime, drama. Plot: a detective hunts a thief.", 1995),
    Item("13", "Jaws (1975)", "Jaws (1975). Genre: horror, thriller. Plot: a shark attacks a beach town.", 1975),
]




@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny_st"), [it.text for it in ITEMS])


def _keyword_index(index_type: str = "flat", **kwargs: int) -> tuple[ItemIndex, KeywordEncoder]:
    encoder = KeywordEncoder(["horror", "family", "crime", "shark", "space"])
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    cfg = dataclasses.replace(IndexConfig(), index_type=index_type, **kwargs)  # type: ignore[arg-type]
    return ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], cfg, seed=0), encoder


def test_load_encoder_rules(tiny_st_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither 'all-MiniLM-L6-v2'"):
        load_encoder("sentence-transformers/not-here", "cpu", 64)
    with pytest.raises(ModelError, match="max_seq_length must be >= 1"):
        load_encoder(str(tiny_st_dir), "cpu", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError):
        load_encoder(str(tmp_path / "empty"), "cpu", 64)
    model = load_encoder(str(tiny_st_dir), "cpu", 64)
    emb = SentenceEncoder(model).encode(["a shark attacks", "an old man"], batch_size=2, show_progress=False)
    assert emb.shape == (2, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert SentenceEncoder(model).encode([], 4, False).shape == (0, 16)


def test_load_encoder_leaves_the_process_threads_alone(tiny_st_dir: Path) -> None:
    # run.threads is the CLI's to set (reges.cli.apply_threads); a library load must not change it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_encoder(str(tiny_st_dir), "cpu", 64)
        load_encoder("all-MiniLM-L6-v2", "cpu", 64)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_load_encoder_refuses_cuda_without_a_gpu(tiny_st_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ModelError, match="no CUDA device"):
        load_encoder(str(tiny_st_dir), "cuda", 64)


def test_l2_normalize_keeps_zero_rows_finite() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_flat_search_is_exact_and_sorted() -> None:
    index, encoder = _keyword_index()
    hits = index.search(encoder.encode(["a horror movie with a shark", "crime"], 8, False), top_k=2)
    # Jaws = (horror, shark)/sqrt2 -> 1.0; Alien = (horror, space)/sqrt2 -> 0.5
    assert [h.item_id for h in hits[0]] == ["13", "10"]
    assert hits[0][0].score == pytest.approx(1.0) and hits[0][1].score == pytest.approx(0.5)
    assert [h.item_id for h in hits[1]] == ["12", "10"]  # Heat 1.0, then a tie at 0.0 broken by item_id
    assert len(index.search(encoder.encode(["x"], 8, False), top_k=100)[0]) == len(ITEMS)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        index.search(encoder.encode(["x"], 8, False), top_k=0)
    with pytest.raises(ModelError, match="do not fit the index dimension 5"):
        index.search(np.zeros((1, 3), dtype=np.float32), top_k=1)


def test_ties_beyond_the_fetch_margin_are_broken_by_item_id() -> None:
    # 60 identical vectors: FAISS returns ties in any order; the top 3 must still be the 3 smallest ids.
    ids = [f"id{i:03d}" for i in range(60)][::-1]
    emb = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (60, 1))
    index = ItemIndex.from_embeddings(emb, ids, IndexConfig(), seed=0)
    hits = index.search(np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32), top_k=3)
    assert [h.item_id for h in hits[0]] == ["id000", "id001", "id002"]
    assert [h.item_id for h in hits[1]] == ["id000", "id001", "id002"]


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_flat_on_a_small_catalog(index_type: str) -> None:
    flat, encoder = _keyword_index()
    approx, _ = _keyword_index(index_type, nlist=2, nprobe=2)
    queries = encoder.encode(["horror shark", "family", "space horror"], 8, False)
    for a, b in zip(flat.search(queries, 1), approx.search(queries, 1), strict=True):
        assert a[0].item_id == b[0].item_id
    assert approx.meta["index_type"] == index_type


def test_ivf_nlist_is_clipped_to_the_catalog(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reges.retrieval.index"):
        index, _ = _keyword_index("ivf", nlist=256, nprobe=16)
    assert "exceeds the catalog size 4" in caplog.text
    assert index.meta["nlist"] == 4 and index.meta["nprobe"] == 4


def test_bad_index_inputs() -> None:
    with pytest.raises(ConfigError, match="index_type must be 'flat', 'ivf' or 'hnsw', got 'lsh'"):
        build_faiss_index(np.eye(3, dtype=np.float32), IndexConfig(index_type="lsh"), seed=0)  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="empty catalog"):
        build_faiss_index(np.zeros((0, 3), dtype=np.float32), IndexConfig(), seed=0)
    with pytest.raises(DataError, match="do not match 2 item ids"):
        ItemIndex.from_embeddings(np.eye(3, dtype=np.float32), ["a", "b"], IndexConfig(), seed=0)


def test_read_items_rejects_bad_catalogs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(CatalogError, match="holds no items"):
        read_catalog(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "dup.jsonl", [ITEMS[0], ITEMS[0]])
    with pytest.raises(CatalogError, match="'10' appears twice"):
        read_catalog(tmp_path / "dup.jsonl")
    write_jsonl(tmp_path / "blank.jsonl", [Item("1", "X", "  ")])
    with pytest.raises(CatalogError, match="empty text card"):
        read_catalog(tmp_path / "blank.jsonl")


def test_save_load_roundtrip(tmp_path: Path) -> None:
    for index_type in ("flat", "hnsw", "ivf"):
        index, encoder = _keyword_index(index_type, nlist=2, nprobe=2)
        index.save(tmp_path / index_type)
        loaded = ItemIndex.load(tmp_path / index_type)
        q = encoder.encode(["horror shark", "family"], 8, False)
        assert loaded.search(q, 3) == index.search(q, 3)
        assert loaded.meta == index.meta
    assert (tmp_path / "flat" / "item_ids.txt").read_text().splitlines() == ["10", "11", "12", "13"]
    (tmp_path / "flat" / "index.json").unlink()
    with pytest.raises(DataError, match="index.json not found; run `reges index`"):
        ItemIndex.load(tmp_path / "flat")


def test_search_settings_apply_at_load_without_a_rebuild(tmp_path: Path) -> None:
    """retrieve.nprobe / retrieve.ef_search override what the index was built with; 0 keeps it; the build breadth
    is the configured one."""
    hnsw, _ = _keyword_index("hnsw", ef_construction=77, ef_search=9)
    assert hnsw.index.hnsw.efConstruction == 77 and hnsw.meta["ef_construction"] == 77
    hnsw.save(tmp_path / "hnsw")
    assert ItemIndex.load(tmp_path / "hnsw").index.hnsw.efSearch == 9
    wide = ItemIndex.load(tmp_path / "hnsw", ef_search=300)
    assert wide.index.hnsw.efSearch == 300 and wide.meta["ef_search"] == 300
    ivf, _ = _keyword_index("ivf", nlist=2, nprobe=1)
    ivf.save(tmp_path / "ivf")
    assert ItemIndex.load(tmp_path / "ivf").index.nprobe == 1
    assert ItemIndex.load(tmp_path / "ivf", nprobe=2).index.nprobe == 2
    assert ItemIndex.load(tmp_path / "ivf", nprobe=50).index.nprobe == 2  # at most nlist
    assert not ivf.exact and ItemIndex.load(tmp_path / "ivf").meta["ef_construction"] is None


def _cfg(encoder: str, index_type: str = "flat") -> PipelineConfig:
    return PipelineConfig(
        run=RunConfig(name="t", show_progress=False),
        index=IndexConfig(encoder=encoder, index_type=index_type, device="cpu", batch_size=2),  # type: ignore[arg-type]
    )


def _write_catalog(run_dir: RunDir, items: list[Item]) -> None:
    out = run_dir.begin("catalog", overwrite=False)
    write_jsonl(out / "items.jsonl", items)
    run_dir.finish("catalog", config={}, inputs={}, outputs={"items.jsonl": len(items)}, seed=0, started=now_iso())


def test_index_stage_writes_files_and_manifest(tiny_st_dir: Path, tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    cfg = _cfg(str(tiny_st_dir))
    with pytest.raises(StageNotReadyError, match="catalog"):
        index_stage.run(cfg, run_dir)
    _write_catalog(run_dir, ITEMS)
    index_stage.run(cfg, run_dir)

    out = run_dir.stage_dir("index")
    assert (out / "item_ids.txt").read_text().splitlines() == [it.item_id for it in ITEMS]
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (4, 16) and emb.dtype == np.float32
    manifest = run_dir.manifest("index")
    assert manifest["outputs"] == {name: {"rows": 4} for name in ("index.faiss", "item_ids.txt", "embeddings.npy")}
    assert manifest["encoder"] == str(tiny_st_dir) and manifest["dim"] == 16 and manifest["rows"] == 4
    assert manifest["items_per_s"] > 0 and manifest["device"] == "cpu"
    assert manifest["inputs"]["catalog"].startswith("sha256:")
    assert manifest["config"]["index_type"] == "flat"
    # the saved index reproduces exact search over the saved embeddings
    index = ItemIndex.load(out)
    hits = index.search(emb[2:3], top_k=1)
    assert hits[0][0].item_id == "12" and hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(StageCompleteError):
        index_stage.run(cfg, run_dir)
    index_stage.run(dataclasses.replace(cfg, run=RunConfig(overwrite=True, show_progress=False)), run_dir)


def test_index_stage_rejects_an_empty_catalog(tiny_st_dir: Path, tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    _write_catalog(run_dir, [])
    with pytest.raises(CatalogError, match="holds no items"):
        index_stage.run(_cfg(str(tiny_st_dir)), run_dir)
    assert not run_dir.is_complete("index")


@pytest.mark.slow
def test_bundled_minilm_ranks_by_meaning(tmp_path: Path) -> None:
    encoder = SentenceEncoder(load_encoder("all-MiniLM-L6-v2", "cpu", 128))
    assert encoder.dim == 384 and encoder.model.max_seq_length == 128
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    index = ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], IndexConfig(), seed=0)
    q = encoder.encode(["I want something with sharks in the ocean", "a heist with a cop and a robber"], 8, False)
    hits = index.search(q, top_k=1)
    assert hits[0][0].item_id == "13"
    assert hits[1][0].item_id == "12"
