"""The shipped recommender: export of a trained run, and (slow) a real recommendation from the installed bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reges.cli import main
from reges.config import load_config
from reges.errors import ConfigError, StageNotReadyError
from reges.io import MANIFEST, RunDir
from reges.recommender import PipelineRecommender
from reges.shipped import SERVING_FILES, default_run_dir, export_run


def _fake_trained_run(root: Path, encoder: str) -> RunDir:
    """A run directory with the files serving reads (contents are placeholders; export only copies them)."""
    for stage, names in SERVING_FILES.items():
        for name in names:
            path = root / stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == "adapter":
                path.mkdir(exist_ok=True)
                (path / "adapter_model.safetensors").write_bytes(b"weights")
                (path / "adapter.gguf").write_bytes(b"not shipped")
                (path / "README.md").write_text("PEFT's model card of an adapter trained before save_adapter\n")
            elif name.endswith(".npy"):
                np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
            elif name == "items.jsonl":
                item = {"item_id": "1", "title": "Alien (1979)", "text": "Alien (1979). Plot: a crew.", "year": 1979,
                        "meta": {"genre": ["horror"], "plot": "A crew meets an alien."}}
                path.write_text(json.dumps(item) + "\n")
            elif name == "fusion.json":
                path.write_text(json.dumps({"encoder": encoder}))
            else:
                path.write_text("x\n")
        (root / stage).mkdir(parents=True, exist_ok=True)
        (root / stage / MANIFEST).write_text("{}")
    (root / "config.yaml").write_text("run: {name: fake, show_progress: true, threads: 1}\nllm: {n_ctx: 1024}\n")
    return RunDir(root)


def test_export_copies_what_serving_reads_with_float16_embeddings(tmp_path: Path) -> None:
    run = _fake_trained_run(tmp_path / "run", encoder="all-MiniLM-L6-v2")
    out = export_run(run, tmp_path / "bundle", "# Sources\nReDial, CC BY 4.0\n")
    emb = np.load(out / "train-retriever" / "index" / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (out / "train-item" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "train-item" / "adapter" / "adapter.gguf").exists()
    assert not (out / "train-item" / "adapter" / "README.md").exists()
    assert "adapter/README.md" not in json.loads((out / "train-item" / MANIFEST).read_text())["files"]
    shipped_item = json.loads((out / "catalog" / "items.jsonl").read_text())
    assert shipped_item["text"] == "Alien (1979). Genre: horror." and "plot" not in shipped_item["meta"]
    assert (out / "SOURCES.md").read_text().startswith("# Sources") and (out / "config.yaml").is_file()
    assert all((out / stage / MANIFEST).is_file() for stage in SERVING_FILES)
    # the build machine's thread pin and progress bars do not ship; the trained settings do
    shipped = load_config(out / "config.yaml")
    assert shipped.run.threads == 0 and not shipped.run.show_progress
    assert shipped.run.name == "fake" and shipped.llm.n_ctx == 1024


def test_export_refuses_a_fine_tuned_encoder_and_incomplete_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="finetune=false"):
        export_run(_fake_trained_run(tmp_path / "a", encoder="encoder"), tmp_path / "out", "")
    run = _fake_trained_run(tmp_path / "b", encoder="all-MiniLM-L6-v2")
    (run.path / "train-item" / MANIFEST).unlink()  # an expert is optional: shipped without it
    assert not (export_run(run, tmp_path / "out", "") / "train-item").exists()
    (run.path / "train-retriever" / MANIFEST).unlink()
    with pytest.raises(StageNotReadyError, match="train-retriever"):
        export_run(run, tmp_path / "out", "")
    with pytest.raises(StageNotReadyError, match="no shipped recommender 'nope'"):
        default_run_dir("nope")


@pytest.mark.slow
def test_recommend_from_the_shipped_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first command: a real recommendation, offline, from what the package ships."""
    assert main(["recommend", "--json", "I loved Inception and Interstellar, something mind-bending please"]) == 0
    rec = json.loads(capsys.readouterr().out)
    titles = [c["title"] for c in rec["candidates"]]
    assert rec["title"] and rec["query"] and len(titles) == 5
    assert not {"Inception (2010)", "Interstellar (2014)"} & {rec["title"], *titles}  # named by the user
    # both experts ship and run: the Query Expert wrote the query, the Item Expert ranks (fused, tuned alpha)
    stages = PipelineRecommender.from_run_dir(default_run_dir()).stages
    assert stages["query"] == "query expert" and stages["pick"] == "item expert (rank)"
