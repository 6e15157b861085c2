"""End to end through the CLI on the tiny books config (real MiniLM, real FAISS), its metrics checked against the run's
own files and against properties any sound run has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.cli import main
from reges.pipeline import PIPELINE

REPO = Path(__file__).resolve().parents[1]

CUTOFFS = (1, 5, 10)  # evaluate.cutoffs of configs/tiny.yaml


def _recall(pairs: list[tuple[bool, int | None]], top_k: int, protocol: str) -> float:
    """recall@k from (mentioned, rank) pairs, written out here apart from reges.eval.metrics."""
    kept = [rank for mentioned, rank in pairs if protocol == "all" or not mentioned]
    return sum(rank is not None and rank <= top_k for rank in kept) / len(kept) if kept else 0.0


def check_dev_recall(run_dir: Path) -> None:
    """metrics.json's dev recall against values derived from the stage files, and properties any sound run has."""
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    dev = metrics["splits"]["dev"]
    examples = [json.loads(line) for line in (run_dir / "data" / "dev.jsonl").read_text().splitlines()]
    items = [json.loads(line)["item_id"] for line in (run_dir / "catalog" / "items.jsonl").read_text().splitlines()]

    # 1. Every method's recall is what its per-example ranks give (evaluate's aggregation).
    ranks: dict[str, list[tuple[bool, int | None]]] = {}
    for line in (run_dir / "evaluate" / "per_example.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "dev":
            ranks.setdefault(row["method"], []).extend((t["mentioned"], t["rank"]) for t in row["targets"])
    assert set(ranks) >= {"retrieve", "popularity", "bm25", "oracle"}
    for method, pairs in ranks.items():
        for protocol in ("all", "novel"):
            for k in CUTOFFS:
                got = dev[method][protocol][f"recall@{k}"]["mean"]
                assert got == pytest.approx(_recall(pairs, k, protocol), abs=1e-9), (method, protocol, k)

    # 2. The retrieve stage's recall, derived from its TREC file and the dev targets alone.
    trec: dict[str, list[str]] = {}
    for line in (run_dir / "retrieve" / "dev.trec").read_text().splitlines():
        qid, _, item_id, rank, _, _ = line.split()
        trec.setdefault(qid, []).append(item_id)
        assert len(trec[qid]) == int(rank)  # rows in rank order
    from_trec = [
        (mentioned, trec[ex["example_id"]].index(t) + 1 if t in trec[ex["example_id"]] else None)
        for ex in examples
        for t, mentioned in zip(ex["target_item_ids"], ex["target_mentioned"], strict=True)
    ]
    for protocol in ("all", "novel"):
        for k in CUTOFFS:
            assert dev["retrieve"][protocol][f"recall@{k}"]["mean"] == pytest.approx(_recall(from_trec, k, protocol))

    # 3. Properties. A ranking that ignored the dialogue would find a target in its first k of the catalog's items
    # with chance k / len(items): the retriever must do better than that at 5 and 10.
    for k in (5, 10):
        assert _recall(from_trec, k, "all") > k / len(items), k
    # The oracle's query is the target's own genre, author and plot: in a catalog of distinct books it finds it first.
    assert dev["oracle"]["all"]["recall@1"]["mean"] == 1.0
    # Popularity ranks by train mentions: a target no train dialogue mentions comes after every mentioned item.
    mentioned_in_train: dict[str, int] = {}
    for line in (run_dir / "data" / "train_dialogues.jsonl").read_text().splitlines():
        for item_id in {i for turn in json.loads(line)["turns"] for i in turn["item_ids"]}:
            mentioned_in_train[item_id] = mentioned_in_train.get(item_id, 0) + 1
    targets = [t for ex in examples for t in ex["target_item_ids"]]
    if len(mentioned_in_train) >= 10:
        reachable = sum(t in mentioned_in_train for t in targets)
        assert dev["popularity"]["all"]["recall@10"]["mean"] <= reachable / len(targets)
    # The lexical baseline does not beat the pipeline's retriever on dialogues that name topics, not titles.
    assert dev["bm25"]["all"]["recall@10"]["mean"] <= dev["retrieve"]["all"]["recall@10"]["mean"]


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root
    run_dir = tmp_path / "tiny"
    assert main(["all", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir)]) == 0
    for stage in (st.name for st in PIPELINE):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage
    assert (run_dir / "config.yaml").is_file()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "recall@10"
    check_dev_recall(run_dir)

    # End to end: the constrained Item Expert picks among the candidates, so it never hallucinates.
    picks = metrics["end_to_end"]["dev"]
    assert picks["mode"] == "constrained" and picks["use_adapter"]
    for protocol in ("all", "novel"):
        assert picks["methods"]["item_expert"][protocol]["hallucination_rate"]["mean"] == 0.0

    # Served from the run dir: a fusion weight of 0 on the Item Expert leaves the retriever's order, so the
    # recommender does not load it (and pays nothing for it).
    from reges.recommender import PipelineRecommender

    for alpha, pick in (("0", "retriever top-1"), ("0.5", "item expert (rank)")):
        overrides = ["generate.mode=rank", f"generate.fusion_alpha={alpha}"]
        recommender = PipelineRecommender.from_run_dir(run_dir, overrides)
        assert recommender.stages["pick"] == pick and (recommender.item_llm is None) == (alpha == "0")

    # The trained run on a separate file in the dataset's format: same report, trained stages linked, not redone.
    held_out = tmp_path / "held_out.jsonl"
    rows = [json.loads(line) for line in (REPO / "examples/books/dialogues.jsonl").read_text().splitlines()[:2]]
    held_out.write_text("".join(json.dumps({**r, "dialogue_id": "new-" + r["dialogue_id"]}) + "\n" for r in rows))
    args = ["evaluate", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), "--dataset-file", str(held_out)]
    assert main(args) == 0
    child = run_dir / "eval-held-out"
    assert (child / "train-item").is_symlink() and (child / "evaluate" / "report.md").is_file()
    test_metrics = json.loads((child / "evaluate" / "metrics.json").read_text())
    assert set(test_metrics["splits"]) == {"test"} and "test" in test_metrics["end_to_end"]
    assert json.loads((child / "data" / "stats.json").read_text())["splits"]["test"]["dialogues"] == 2

    # A second `all` finds every stage complete and redoes nothing.
    before = {s: (run_dir / s / "manifest.json").stat().st_mtime_ns for s in (st.name for st in PIPELINE)}
    assert main(["all", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir)]) == 0
    assert before == {s: (run_dir / s / "manifest.json").stat().st_mtime_ns for s in (st.name for st in PIPELINE)}


def test_resume_after_interrupted_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage folder without a manifest (a killed run) is redone by `all`; complete ones are kept."""
    monkeypatch.chdir(REPO)
    run_dir = tmp_path / "tiny"
    assert main(["data", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir)]) == 0
    (run_dir / "catalog").mkdir()
    (run_dir / "catalog" / "items.jsonl").write_text('{"half": ')  # what a kill mid-write could leave
    data_mtime = (run_dir / "data" / "manifest.json").stat().st_mtime_ns
    assert main(["catalog", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "catalog" / "manifest.json").is_file()
    assert len((run_dir / "catalog" / "items.jsonl").read_text().splitlines()) == 20
    assert (run_dir / "data" / "manifest.json").stat().st_mtime_ns == data_mtime


def test_cli_errors_exit_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--run-dir", str(tmp_path)]) == 2
    assert "has no manifest.json; run `reges catalog" in capsys.readouterr().err
    assert main(["data", "--run-dir", str(tmp_path), "retrieve.topk=3"]) == 2
    assert "did you mean retrieve.top_k" in capsys.readouterr().err
    bad = tmp_path / "missing.jsonl"
    assert main(["data", "--run-dir", str(tmp_path / "r"), "data.format=custom", f"data.train_files=[{bad}]"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r" / "data" / "manifest.json").exists()


def test_cli_sets_run_threads_for_the_whole_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run.threads is applied once by the CLI, before a stage runs or a recommender loads; stages never change it."""
    import faiss
    import torch

    from reges.errors import StageNotReadyError
    from reges.recommender import PipelineRecommender

    monkeypatch.chdir(REPO)
    seen: list[tuple[int, int]] = []

    def fake_from_run_dir(path: Path, overrides: list[str] | None = None, **options: object) -> PipelineRecommender:
        seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        raise StageNotReadyError("stop here: the threads were set before any model would load")

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        torch.set_num_threads(2)
        faiss.omp_set_num_threads(2)
        run_dir = tmp_path / "tiny"
        assert main(["data", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), "run.threads=1"]) == 0
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        assert "threads: 1" in (run_dir / "config.yaml").read_text()

        torch.set_num_threads(2)
        faiss.omp_set_num_threads(2)
        assert main(["data", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), "run.overwrite=true"]) == 0
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)  # run.threads=0: left alone

        monkeypatch.setattr(PipelineRecommender, "from_run_dir", fake_from_run_dir)
        assert main(["recommend", "--run-dir", str(run_dir), "--override", "run.threads=1", "a film please"]) == 2
        assert seen == [(1, 1)]
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
