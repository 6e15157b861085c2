"""benchmarks/scaling_report.py: the table shows each variant's figures from its run directory."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from reges.io import write_trec
from reges.records import Hit

REPO = Path(__file__).resolve().parents[1]


def _load():  # noqa: ANN202 - a benchmark script, loaded as a module
    spec = importlib.util.spec_from_file_location("scaling_report", REPO / "benchmarks" / "scaling_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _success(mean: float) -> dict:
    return {"success_rate": {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05}, "n_examples": 120}


def _run(root: Path, trained: bool, fused: float) -> Path:
    for stage in ("evaluate", "generate", "train-item"):
        (root / stage).mkdir(parents=True)
    methods = {
        "retriever_top1": {"all": _success(0.15), "novel": _success(0.03)},
        "item_expert": {"all": _success(fused), "novel": _success(0.04)},
        "item_expert_alone": {"all": _success(0.09), "novel": _success(0.02)},
        "retriever_top1_unmentioned": {"all": _success(0.07)},
        "item_expert_unmentioned": {"all": _success(0.08)},
    }
    e2e = {"mode": "rank", "top_k": 20, "use_adapter": trained, "model": "qwen2.5-coder-1.5b-instruct",
           "methods": methods}
    (root / "evaluate" / "metrics.json").write_text(json.dumps({"end_to_end": {"dev": e2e}}))
    gen = {"fusion_alpha": 0.35, "splits": {"dev": {"hallucinations": 0, "latency_s": {"p50": 6.5, "p95": 9.0}}}}
    (root / "generate" / "manifest.json").write_text(json.dumps(gen))
    (root / "train-item" / "manifest.json").write_text(json.dumps({"wall_time_s": 3000, "examples": 96,
                                                                     "final_loss": 2.5, "peak_rss_mb": 9000}))
    return root


def test_report_lists_each_variant(tmp_path: Path) -> None:
    report = _load()
    untuned, trained = _run(tmp_path / "u", False, 0.12), _run(tmp_path / "t", True, 0.18)
    out = tmp_path / "scaling.md"
    assert report.main(["--split", "dev", "--out", str(out), "--run", f"untuned={untuned}",
                        "--run", f"listwise={trained}"]) == 0
    page = out.read_text()
    lines = [line for line in page.splitlines() if line.startswith("| untuned") or line.startswith("| listwise")]
    assert len(lines) == 2
    assert "| no | 20 | 120 | 0.35 | 0.150 [0.100, 0.200] | 0.120 [0.070, 0.170]" in lines[0]
    assert lines[0].endswith("| 6.50 | - |")  # untuned: no training time, even though the folder has a manifest
    assert "| yes |" in lines[1] and "0.180 [0.130, 0.230]" in lines[1] and lines[1].endswith("| 50.0 |")
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["train_examples"] for r in rows] == [None, 96]


def test_expert_diagnostics_counts_what_the_choice_follows(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("expert_diagnostics", REPO / "benchmarks" / "expert_diagnostics.py")
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    run = tmp_path / "run"
    for stage in ("data", "catalog", "generate"):
        (run / stage).mkdir(parents=True)
    items = [{"item_id": i, "title": t, "text": t} for i, t in (("a", "Alien (1979)"), ("b", "Up (2009)"),
                                                                  ("c", "The Shining (1980)"))]
    (run / "catalog" / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    turn = {"role": "user", "content": "I loved Alien (1979)", "item_ids": ["a"]}
    examples = [{"example_id": f"e{i}", "dialogue_id": "d", "context": [turn], "target_item_ids": ["c"],
                 "target_mentioned": [False], "target_titles": ["The Shining (1980)"]} for i in range(2)]
    (run / "data" / "dev.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    # train dialogues: b is mentioned in two, a in one, c in none
    dialogues = [{"dialogue_id": f"t{i}", "turns": [{"role": "user", "content": "x", "item_ids": ids}]}
                 for i, ids in enumerate((["a", "b"], ["b"]))]
    (run / "data" / "train_dialogues.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    rows = [  # e0: the expert follows the retriever to the named Alien; e1: it picks the short title, position 2
        {"example_id": "e0", "candidate_ids": ["a", "b", "c"], "llm_scores": [-1.0, -2.0, -3.0]},
        {"example_id": "e1", "candidate_ids": ["c", "b", "a"], "llm_scores": [-3.0, -1.0, -2.0]},
    ]
    (run / "generate" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "retrieve").mkdir()  # the retriever's scores of the candidates, in their order
    write_trec(run / "retrieve" / "dev.trec", {"e0": [Hit("a", 3.0), Hit("b", 2.0), Hit("c", 1.0)],
                                               "e1": [Hit("c", 3.0), Hit("b", 2.0), Hit("a", 1.0)]}, "t")
    got = diag.diagnose(run, "dev")
    assert (got["examples"], got["agree_with_top1"], got["mean_position"]) == (2, 0.5, 1.5)
    assert (got["picks_shortest_title"], got["picks_named_item"]) == (0.5, 0.5)
    # e1 picks b, the most popular; e0's scores fall with popularity on a, b, c = 1, 2, 0 mentions only partly
    assert got["picks_most_popular"] == 0.5
    assert got["spearman_loglik_vs_popularity"] == pytest.approx((0.5 + 1.0) / 2)
    # the target c: the expert ranks it 3rd in e0 and 3rd in e1; the retriever 3rd and 1st
    assert (got["targets_in_candidates"], got["target_rank_expert"], got["target_rank_retriever"]) == (2, 3.0, 2.0)
    # fused picks: alpha 0 is the retriever's top-1 (e1's c is a hit), alpha 1 the expert alone (no hit); the best
    # alpha on the split is the smallest of the best
    curve = got["fused_success_by_alpha"]
    assert (curve[0.0], curve[1.0], got["best_alpha_on_split"]) == (0.5, 0.0, 0.0)
    assert diag.main(["--split", "dev", "--out", str(tmp_path / "d.md"), "--run", f"x={run}"]) == 0
    assert "| x | 2 | 3 | 0.500 | 1.5 |" in (tmp_path / "d.md").read_text()
    # --pair: a copy whose e0 scores are reversed and whose e1 saw other candidates (left out)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    flipped = [{**rows[0], "llm_scores": [-3.0, -2.0, -1.0]}, {**rows[1], "candidate_ids": ["a", "b", "c"]}]
    (other / "generate" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flipped))
    # calibrated: argmax of other - run on e0 = [-2, 0, 2] picks c, the target
    assert diag.agreement(run, other, "dev") == {"examples": 1, "spearman": -1.0, "same_first_choice": 0.0,
                                                 "calibrated_success": 1.0}
    assert diag.main(["--split", "dev", "--out", str(tmp_path / "p.md"), "--run", f"x={run}", "--run", f"y={other}",
                      "--pair", "x,y"]) == 0
    assert "| x | y | 1 | -1.00 | 0.000 | 1.000 |" in (tmp_path / "p.md").read_text()
