"""`reges evaluate --dataset-file`: a trained run on a file in its published format, evaluated as it is served.

The tiny run here is shaped like configs/redial.yaml and configs/inspired.yaml (Query Expert, fine-tuned fused
retriever, rank mode with `generate.fusion_alpha: null`, so the alpha is tuned on `tune`), with random tiny models so
that it builds in seconds. The slow test evaluates a copy of the shipped ReDial bundle on real ReDial lines.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from retrieval_fakes import build_tiny_sentence_transformer
from tiny_models import build_tiny_llama

from reges.cli import main
from reges.config import PipelineConfig, load_config
from reges.eval.official_file import child_run_dir, evaluate_file, served_fusion_alpha
from reges.io import RunDir, read_jsonl, read_trec
from reges.item_expert.generate import fuse_scores
from reges.recommender import PipelineRecommender
from reges.shipped import SHIPPED_ROOT, export_run

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO / "examples" / "books"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture
def in_repo() -> Iterator[None]:
    """Config paths (examples/books, ../shared/data) are relative to the repository root."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)


def _tiny_overrides(models: Path) -> list[str]:
    """configs/tiny.yaml with random tiny models, and rank mode with the alpha tuned (as the real configs)."""
    return [
        "run.show_progress=false",
        "run.threads=1",
        f"index.encoder={models / 'encoder'}",
        "train_retriever.lora_rank=0",  # the random tiny encoder is a static embedding: no layers for LoRA adapters
        f"llm.model={models / 'llm'}",
        "llm.device=cpu",
        "llm.dtype=float32",
        "train_query.dtype=float32",
        "train_item.dtype=float32",
        "generate.mode=rank",
        "generate.fusion_alpha=null",
    ]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    texts = [line for p in ("items.jsonl", "dialogues.jsonl") for line in (BOOKS / p).read_text().splitlines()]
    build_tiny_sentence_transformer(root / "encoder", texts + ["User Assistant"])
    build_tiny_llama(root / "llm", extra_text="\n".join(texts))
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> tuple[Path, PipelineConfig]:
    """`reges all` on configs/tiny.yaml in rank mode: every stage, the alpha tuned on the tune split."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    overrides = _tiny_overrides(tiny_models)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert main(["all", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), *overrides]) == 0
        cfg = load_config("configs/tiny.yaml", overrides)
    finally:
        os.chdir(cwd)
    assert cfg.generate.mode == "rank" and cfg.generate.fusion_alpha is None
    trained = RunDir(run_dir).manifest("generate")
    assert trained["fusion_tuning"]["split"] == "tune" and trained["fusion_alpha_from"] == "tuned on split 'tune'"
    return run_dir, cfg


def _held_out_file(path: Path, lines: int = 2) -> Path:
    """Dialogues in the books' published format (custom JSONL) that the trained run has not seen (new ids)."""
    rows = [json.loads(line) for line in (BOOKS / "dialogues.jsonl").read_text().splitlines()[:lines]]
    path.write_text("".join(json.dumps({**r, "dialogue_id": "new-" + r["dialogue_id"]}) + "\n" for r in rows))
    return path


def _assert_picks_fused_with(child: Path, alpha: float) -> None:
    """Every rank-mode row's ranking is the retriever's scores fused with the expert's by exactly `alpha`."""
    hits = read_trec(child / "retrieve" / "test.trec")
    rows = read_jsonl(child / "generate" / "test.jsonl")
    assert rows
    for row in rows:
        scores = {h.item_id: h.score for h in hits[row["example_id"]]}
        fused = fuse_scores([scores[i] for i in row["candidate_ids"]], row["llm_scores"], alpha)
        expected = dict(zip(row["candidate_ids"], fused.tolist(), strict=True))
        assert row["ranking"][0][0] == row["item_id"]
        for item_id, score in row["ranking"]:
            assert score == pytest.approx(expected[item_id], abs=2e-3), (row["example_id"], item_id)


def test_official_file_uses_the_alpha_the_trained_run_tuned(
    tiny_run: tuple[Path, PipelineConfig], tmp_path: Path, in_repo: None
) -> None:
    run_dir, cfg = tiny_run
    trained = RunDir(run_dir).manifest("generate")
    held_out = _held_out_file(tmp_path / "held_out.jsonl")

    child = evaluate_file(cfg, RunDir(run_dir), held_out)

    assert child == child_run_dir(RunDir(run_dir), held_out).path
    manifest = RunDir(child).manifest("generate")
    # the trained alpha, not re-tuned (the file's run has no tune split) and not the 1.0 default
    assert manifest["fusion_alpha"] == trained["fusion_alpha"]
    assert manifest["fusion_alpha_from"] == (
        f"the trained run's {run_dir / 'generate' / 'manifest.json'}, tuned on split 'tune'"
    )
    assert manifest["fusion_tuning"] is None and set(manifest["splits"]) == {"test"}
    assert not (child / "generate" / "tune.jsonl").exists()
    _assert_picks_fused_with(child, trained["fusion_alpha"])
    # exactly what `reges recommend` serves from the trained run: the same alpha, the fused retriever
    served = PipelineRecommender.from_run_dir(run_dir, ["run.threads=1"])
    assert served.cfg.generate.fusion_alpha == manifest["fusion_alpha"]
    assert served.fused is not None and RunDir(child).manifest("retrieve")["mode"] == "fused"
    # the Query Expert rewrote the file's examples, and the report carries the end-to-end section with that alpha
    assert (child / "rewrite" / "test.jsonl").is_file()
    metrics = json.loads((child / "evaluate" / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"test"}
    assert metrics["end_to_end"]["test"]["fusion_alpha"] == trained["fusion_alpha"]
    assert f"fusion alpha {trained['fusion_alpha']:.2f}" in (child / "evaluate" / "report.md").read_text()


def test_without_a_complete_generate_the_alpha_is_the_served_fallback(
    tiny_run: tuple[Path, PipelineConfig], tmp_path: Path, in_repo: None
) -> None:
    run_dir, cfg = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval-*"))
    (copy / "generate" / "manifest.json").unlink()  # an interrupted generate: serving ignores it
    assert served_fusion_alpha(cfg, RunDir(copy))[0] == 1.0
    given = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, fusion_alpha=0.3))
    assert served_fusion_alpha(given, RunDir(run_dir)) == (0.3, "generate.fusion_alpha")
    constrained = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, mode="constrained"))
    assert served_fusion_alpha(constrained, RunDir(run_dir)) == (None, "")

    child = evaluate_file(cfg, RunDir(copy), _held_out_file(tmp_path / "held_out.jsonl"))

    manifest = RunDir(child).manifest("generate")
    assert manifest["fusion_alpha"] == 1.0
    assert manifest["fusion_alpha_from"].startswith("1 (the Item Expert alone, as served)")
    _assert_picks_fused_with(child, 1.0)
    assert PipelineRecommender.from_run_dir(copy, ["run.threads=1"]).cfg.generate.fusion_alpha == 1.0


def test_a_bundle_without_index_gets_one_from_the_retriever_embeddings(
    tiny_run: tuple[Path, PipelineConfig], tiny_models: Path, tmp_path: Path, in_repo: None
) -> None:
    """A shipped bundle (export_run of a frozen-encoder run: no index/, float16 embeddings) is evaluated as is."""
    run_dir, _ = tiny_run
    frozen = tmp_path / "frozen"
    shutil.copytree(run_dir, frozen, ignore=shutil.ignore_patterns("eval-*"))
    overrides = [*_tiny_overrides(tiny_models), "train_retriever.finetune=false", "run.overwrite=true"]
    assert main(["train-retriever", "--config", "configs/tiny.yaml", "--run-dir", str(frozen), *overrides]) == 0
    bundle = export_run(RunDir(frozen), tmp_path / "bundle", "tiny books\n")
    assert not (bundle / "index").exists() and (bundle / "generate" / "manifest.json").is_file()
    # export_run rewrote catalog/items.jsonl (no plots) and the embeddings (float16): the manifests list the bundle's
    # own sizes, so nothing reads as damaged
    for stage in ("catalog", "train-retriever"):
        RunDir(bundle).check_files(stage)
    cfg = load_config(bundle / "config.yaml", ["run.threads=1"])

    child = evaluate_file(cfg, RunDir(bundle), _held_out_file(tmp_path / "held_out.jsonl"))

    index = RunDir(child).manifest("index")
    assert index["built_from"] == str(bundle / "train-retriever" / "index")
    assert index["outputs"]["item_ids.txt"]["rows"] == 20 and not (child / "index").is_symlink()
    manifest = RunDir(child).manifest("generate")
    assert manifest["fusion_alpha"] == RunDir(bundle).manifest("generate")["fusion_alpha"]
    assert manifest["fusion_alpha_from"].startswith(f"the trained run's {bundle / 'generate' / 'manifest.json'}")
    metrics = json.loads((child / "evaluate" / "metrics.json").read_text())
    assert {"retrieve", "dense_full"} <= set(metrics["splits"]["test"])  # the dense baselines search the new index

    # a fine-tuned encoder's embeddings are not what `reges index` builds: the index stage embeds the catalog itself
    no_index = tmp_path / "no-index"
    shutil.copytree(run_dir, no_index, ignore=shutil.ignore_patterns("eval-*"))
    shutil.rmtree(no_index / "index")
    child = evaluate_file(cfg, RunDir(no_index), _held_out_file(tmp_path / "held_out.jsonl"))
    index = RunDir(child).manifest("index")
    assert "built_from" not in index and index["outputs"]["item_ids.txt"]["rows"] == 20
    assert np.load(child / "index" / "embeddings.npy").shape[0] == 20


def test_pytest_collects_no_test_from_the_package() -> None:
    """Modules under src/ named like test files hold no test-like functions (pytest would collect them)."""
    package = REPO / "src" / "reges"
    for path in sorted(package.rglob("test_*.py")):
        module = importlib.import_module(".".join(path.relative_to(package.parent).with_suffix("").parts))
        assert not [name for name, obj in vars(module).items() if name.startswith("test") and callable(obj)], path


@pytest.mark.slow
def test_the_shipped_redial_bundle_on_a_redial_file(tmp_path: Path, in_repo: None) -> None:
    """A copy of src/reges/shipped/redial (no index/) on ReDial lines in the published test-file format.

    The lines are 2 dialogues of tests/fixtures/redial/kgsf_valid_data.jsonl (the official test file is held back;
    these dialogues are in the bundle's train files, so the data stage drops them from train: the path is tested
    here, not the numbers). The bundle's config reads the real data (../shared/data) to rebuild the data stage.
    """
    assert SHARED_DATA.is_dir(), f"the real data is needed at {SHARED_DATA} (the shipped config's data files)"
    bundle = tmp_path / "redial"
    shutil.copytree(SHIPPED_ROOT / "redial", bundle)
    test_file = tmp_path / "test_data.jsonl"
    lines = (REPO / "tests" / "fixtures" / "redial" / "kgsf_valid_data.jsonl").read_text().splitlines(keepends=True)
    test_file.write_text("".join(lines[:2]))
    cfg = load_config(bundle / "config.yaml", ["run.threads=1"])
    assert cfg.generate.mode == "rank" and cfg.generate.fusion_alpha is None

    child = evaluate_file(cfg, RunDir(bundle), test_file)

    assert child == bundle / "eval-test-data"
    # the bundle's retriever holds the LoRA-tuned encoder's embeddings, so the index stage embedded the catalog with
    # the frozen encoder itself (the dense baselines search it)
    assert "built_from" not in RunDir(child).manifest("index")
    catalog_size = len(read_jsonl(bundle / "catalog" / "items.jsonl"))
    assert RunDir(child).manifest("index")["outputs"]["item_ids.txt"]["rows"] == catalog_size
    trained_alpha = RunDir(bundle).manifest("generate")["fusion_alpha"]
    manifest = RunDir(child).manifest("generate")
    assert manifest["fusion_alpha"] == trained_alpha == 0.35
    assert manifest["fusion_alpha_from"].startswith(f"the trained run's {bundle / 'generate' / 'manifest.json'}")
    assert RunDir(child).manifest("retrieve")["mode"] == "fused"
    _assert_picks_fused_with(child, trained_alpha)
    metrics = json.loads((child / "evaluate" / "metrics.json").read_text())
    examples = len(read_jsonl(child / "data" / "test.jsonl"))
    assert examples > 0 and metrics["splits"]["test"]["retrieve"]["all"]["n_examples"] == examples
    assert metrics["end_to_end"]["test"]["methods"]["item_expert"]["all"]["n_examples"] == examples
    assert "fusion alpha 0.35" in (child / "evaluate" / "report.md").read_text()
