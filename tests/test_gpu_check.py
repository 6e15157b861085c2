"""scripts/gpu_check.sh: it refuses cleanly without CUDA, and its checks run (as a CPU dry run) before any GPU does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "results" / "gpu_check.md"


def load_script():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run")
def test_without_cuda_the_script_refuses_and_leaves_the_page(tmp_path: Path) -> None:
    before = PAGE.read_text(encoding="utf-8")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "unchanged" in proc.stderr
    assert PAGE.read_text(encoding="utf-8") == before
    assert load_script().main(["--out", str(tmp_path / "page.md")]) == 2 and not (tmp_path / "page.md").exists()


def test_the_page_says_whether_it_ran_on_a_gpu() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert "not yet run on a GPU" in text or "| lora_sft | ok |" in text


def test_a_cpu_dry_run_may_not_write_the_gpu_page() -> None:
    assert load_script().main(["--device", "cpu"]) == 2


@pytest.mark.slow
def test_every_check_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    assert load_script().main(["--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "CPU dry run (not a GPU result)" in text
    for name in ("lora_sft", "lora_listwise", "rank", "constrained", "free", "encoder_finetune"):
        assert f"| {name} | ok |" in text, text
    assert "| memory_estimate | skipped |" in text and "| data_parallel | skipped |" in text
