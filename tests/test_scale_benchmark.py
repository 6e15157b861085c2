"""benchmarks/scale_catalog.py: its pieces on hand-made arrays, and the script on a tiny run (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from reges.config import IndexConfig
from reges.retrieval.index import build_faiss_index

REPO = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    """Import the benchmark script by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("scale_catalog", REPO / "benchmarks" / "scale_catalog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_catalog"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


scale = _load()


def _python(args: list[str]) -> None:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"


def test_flat_index_finds_the_numpy_top_k():
    """The flat index the benchmark calls exact agrees with a full numpy argsort on every query."""
    rng = np.random.default_rng(3)
    x = scale.l2_normalize(rng.standard_normal((3000, 32)).astype(np.float32))  # (n, dim)
    queries = scale.l2_normalize(rng.standard_normal((20, 32)).astype(np.float32))
    index = build_faiss_index(x, IndexConfig(index_type="flat"), seed=0)
    _, found = index.search(queries, scale.TOP_K)
    exact = np.argsort(-(queries.astype(np.float64) @ x.T.astype(np.float64)), axis=1)[:, : scale.TOP_K]
    assert scale.recall_per_query(found, exact).tolist() == [1.0] * 20
    assert scale.numpy_recall(x, queries, found) == (1.0, 1.0)
    # and recall is not 1 by construction: a shifted id list misses
    assert scale.recall_per_query(found + 1, exact).mean() < 0.2


def test_recall_ignores_missing_results():
    found = np.array([[3, 1, -1, -1]])
    exact = np.array([[1, 2, 3, 4]])
    assert scale.recall_per_query(found, exact).tolist() == [0.5]


def test_mixture_draws_are_unit_vectors_with_the_real_mean():
    rng = np.random.default_rng(0)
    centres = scale.l2_normalize(rng.standard_normal((4, 16)).astype(np.float32))
    real = scale.l2_normalize(centres[rng.integers(0, 4, 2000)] + 0.3 * rng.standard_normal((2000, 16)))
    mixture = scale.fit_mixture(real, 4, seed=0)
    assert mixture.weights.sum() == pytest.approx(1.0)
    out = np.empty((5000, 16), dtype=np.float32)
    scale.sample_mixture(mixture, out, rng)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(out.mean(0) - real.mean(0)) < 0.05


def test_synthetic_comention_counts_are_symmetric_with_item_counts_on_the_diagonal():
    stats = scale.MentionStats(set_sizes=np.array([0, 2, 3, 5]), item_counts=np.array([0.0, 1.0, 4.0, 10.0]),
                               context_items=np.array([1, 2]))
    ids = [f"i{j}" for j in range(400)]
    counts, dropped = scale.synthetic_comention(stats, ids, np.random.default_rng(0))
    m = counts.counts
    assert (m != m.T).nnz == 0
    assert dropped >= 0 and set(counts.item_ids) <= set(ids)
    off = m.toarray()
    np.fill_diagonal(off, 0)
    # a dialogue mentioning i and j counts once for the pair and once for each item: C_ij <= min(n_i, n_j)
    diag = m.diagonal()
    assert (off <= np.minimum.outer(diag, diag)).all()
    # 400 / 4 real items * 4 real dialogues = 400 dialogues, 3/4 of them with >= 2 items
    assert 0 < diag.sum() <= 400 * 5


@pytest.fixture(scope="module")
def tiny_catalog_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/tiny.yaml's data and catalog stages: what both scale scripts read (they embed the cards)."""
    run_dir = tmp_path_factory.mktemp("scale") / "tiny"
    for stage in ("data", "catalog"):
        _python(["-m", "reges.cli", stage, "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
                 "run.show_progress=false"])
    return run_dir


@pytest.mark.slow
def test_scale_catalog_smoke(tiny_catalog_run, tmp_path):
    """The script on a tiny run: every index type, a sweep each, the fused retriever at two sizes."""
    run_dir = tiny_catalog_run
    out = tmp_path / "scale.md"
    _python(["benchmarks/scale_catalog.py", "--run-dir", str(run_dir), "--sizes", "2000", "--fusion-sizes", "500",
             "2000", "--queries", "8", "--fusion-queries", "3", "--encoder-cards", "8", "--components", "4",
             "--batch-rounds", "2", "--ef-search", "50", "64", "--nprobe", "1", "4", "--threads", "1",
             "--tmp-dir", str(tmp_path), "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    items = len((run_dir / "catalog" / "items.jsonl").read_text().splitlines())
    assert result["real"]["items"] == items and "embedded here" in result["real"]["source"]
    (size,) = result["sizes"]
    assert size["items"] == 2000 and size["real_items"] == items
    assert list(size["indexes"]) == ["flat", "ivf", "ivf_pq", "hnsw"]
    # faiss flat against numpy's matmul + argpartition: the exact top-50 the other indexes are scored against
    assert size["flat_vs_numpy"] == {"recall_strict": 1.0, "recall_ties_counted": 1.0}
    assert [len(size["indexes"][k]["sweep"]) for k in size["indexes"]] == [1, 2, 2, 2]
    assert size["indexes"]["flat"]["sweep"][0]["recall"]["mean"] == 1.0
    for entry in size["indexes"].values():
        assert entry["build_s"] >= 0 and entry["serialized_bytes"] > 0
        for point in entry["sweep"]:
            assert 0.0 <= point["recall"]["mean"] <= 1.0
            assert point["batch1"]["n"] == result["settings"]["queries"] and point["batch64"]["n"] == 2
            assert 0 < point["batch1"]["p50_ms"] <= point["batch1"]["p95_ms"]
    # flat stores every float; PQ codes are 48 bytes a row
    assert size["indexes"]["flat"]["serialized_bytes"] >= 2000 * 384 * 4
    assert size["indexes"]["ivf_pq"]["serialized_bytes"] < size["indexes"]["flat"]["serialized_bytes"] / 4
    assert list(result["fusion"]) == ["500", "2000"]
    assert all(f["search"]["p50_ms"] > 0 and f["queries"] == 3 for f in result["fusion"].values())
    assert result["encoder_timing"]["cards"] == min(8, items)
    assert result["aim"] == {"measured": False}  # no 1e6 catalog here
    page = out.read_text()
    assert page.startswith("# Million-item catalogs") and "benchmarks/scale_catalog.py --run-dir" in page
    assert "| flat |" in page and "| hnsw (hnsw_m=32, ef_construction=200) |" in page
    assert "## The fused retriever's cost per query" in page
    # --from-json renders the same page from the numbers alone
    again = tmp_path / "again.md"
    assert scale.main(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text() == page


@pytest.mark.slow
def test_fused_scale_smoke(tiny_catalog_run, tmp_path):
    """benchmarks/fused_scale.py on a tiny run: both paths per size and pool, the candidate path's top-50 checked."""
    run_dir = tiny_catalog_run
    out = tmp_path / "scale_fusion.md"
    _python(["benchmarks/fused_scale.py", "--run-dir", str(run_dir), "--sizes", "500", "2000", "--requests", "3",
             "--pool", "20", "100", "--components", "4", "--ef-search", "64", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert [s["items"] for s in result["sizes"]] == [500, 2000]
    for size in result["sizes"]:
        assert size["whole_catalog"]["n"] == 3 and size["index"]["index_type"] == "hnsw"
        assert size["index"]["ef_construction"] == IndexConfig.ef_construction
        assert list(size["pools"]) == ["20", "100"]
        for pool in size["pools"].values():
            assert 0.0 <= pool["top50_agreement"]["mean"] <= 1.0 and 0 <= pool["fallbacks"] <= 3
            assert 0 <= pool["identical_top50"] <= 3 and pool["search"]["p50_ms"] > 0
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| 500 |", "| 2,000 |"))]
    assert len(rows) == 4
