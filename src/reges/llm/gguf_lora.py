"""Convert a PEFT LoRA adapter of a Llama or Qwen2 model to a GGUF LoRA adapter for llama.cpp.

`llama_cpp.Llama(model_path=base.gguf, lora_path=adapter.gguf)` then applies the adapter at run time, so the fast
CPU backend serves fine-tuned experts without merging and re-quantizing the base model.

Why our own converter and not llama.cpp's `convert_lora_to_gguf.py`: that script ships only in the llama.cpp
source tree (and llama-cpp-python's sdist), imports the 10k-line `convert_hf_to_gguf.py`, and needs the base
model's HF folder; users who `pip install reges` have none of these. A LoRA adapter of the two architectures our
LLMs have (SmolLM2: llama; Qwen2.5: qwen2) needs only three things, all done here with the `gguf` package:

- tensor names: HF module `model.layers.{i}.self_attn.q_proj` -> `blk.{i}.attn_q.weight`, with `.lora_a` /
  `.lora_b` suffixes (gguf's own name map, the one llama.cpp's converter uses);
- shapes: lora_a as PEFT stores it, (rank, in_features), and lora_b as (out_features, rank); gguf writes numpy
  shapes reversed, which is the ggml layout llama.cpp checks (`a.ne = [in, rank]`, `b.ne = [rank, out]`);
- the q/k row permutation: llama.cpp's HF->GGUF conversion permutes the rows of each head of q_proj and k_proj
  (HF's RoPE rotates the two halves of a head, ggml's rotates adjacent pairs). The LoRA update B @ A of those
  layers must have its rows permuted the same way, and permuting the rows of B does exactly that. Llama only:
  Qwen2 rotates halves in both (llama.cpp's `Qwen2Model` converts q/k unchanged, and runs it with NEOX RoPE).

The metadata is what llama.cpp's adapter loader reads: `general.architecture` (must equal the base model's),
`general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (llama.cpp scales by alpha / rank, as
PEFT does). The base model's GGUF supplies the head counts and the tensor shapes the adapter is checked against.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from reges.errors import ModelError

logger = logging.getLogger(__name__)

# general.architecture -> (gguf.MODEL_ARCH member whose tensor names it uses, whether q/k rows are permuted)
_ARCHITECTURES = {"llama": ("LLAMA", True), "qwen2": ("QWEN2", False)}
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def permute_qk_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj/k_proj weight (or LoRA B) from HF's RoPE layout to ggml's.

    The same permutation as `LlamaModel.permute` in llama.cpp's `convert_hf_to_gguf.py`: within each head, HF
    keeps the two rotated halves apart (rows 0..d/2-1, then d/2..d-1), ggml interleaves them (0, d/2, 1, d/2+1, ...).

    Args:
        weight: (n_head * head_dim, ...) rows of one projection.
        n_head: Heads of that projection (num_key_value_heads for k_proj).

    Returns:
        The permuted copy, same shape.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise ModelError(f"cannot permute {rows} rows into {n_head} heads of even size; is the base model right?")
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape).copy()
    )


def _field_value(reader, key: str) -> str | int | None:
    """A scalar string or integer field of a GGUF file (None when absent)."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if value.dtype == np.uint8:  # strings are stored as raw bytes
        return bytes(value).decode("utf-8")
    return int(value[0])


def _adapter_alpha(config: dict, adapter_dir: Path) -> float:
    """The alpha to store so that llama.cpp's scale (alpha / rank) equals PEFT's, refusing what GGUF cannot hold."""
    if config.get("peft_type") != "LORA":
        raise ModelError(f"{adapter_dir} holds a {config.get('peft_type')} adapter; only LoRA converts to GGUF")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") != "none",
    }
    if any(unsupported.values()):
        names = ", ".join(k for k, v in unsupported.items() if v)
        raise ModelError(
            f"{adapter_dir}: adapter settings {names} have no GGUF LoRA equivalent; train without them "
            "(LoraTrainConfig never sets them)"
        )
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        # PEFT scales rsLoRA by alpha / sqrt(r); llama.cpp by alpha / r. One alpha fits only if all ranks agree.
        if config.get("rank_pattern"):
            raise ModelError(f"{adapter_dir}: rsLoRA with a rank_pattern cannot be expressed in GGUF")
        alpha *= math.sqrt(float(config["r"]))
    return alpha


def convert_lora_to_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> Path:
    """Write a PEFT LoRA adapter of a Llama or Qwen2 model as a GGUF LoRA adapter for llama.cpp.

    Args:
        adapter_dir: A PEFT adapter folder (adapter_config.json, adapter_model.safetensors), e.g. `adapter/`
            written by `reges.llm.lora.train_lora`.
        base_gguf: The base model's GGUF file the adapter will be applied to (any quantization): it gives the
            architecture, head counts and tensor shapes.
        out_path: The .gguf file to write (written to a temporary file, then renamed into place).

    Returns:
        `out_path`.

    Raises:
        ModelError: The adapter or the base model is missing or unsupported, or they do not fit each other.

    Example:
        >>> convert_lora_to_gguf("runs/x/query_expert/adapter", bundled_gguf_path("smollm2-135m-instruct"),
        ...                      "runs/x/query_expert/adapter.gguf")
        >>> llama_cpp.Llama(model_path=str(base), lora_path="runs/x/query_expert/adapter.gguf")
    """
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, base_gguf, out_path = Path(adapter_dir), Path(base_gguf), Path(out_path)
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelError(
            f"{adapter_dir} is not a PEFT adapter folder (needs adapter_config.json and adapter_model.safetensors)"
        )
    if not base_gguf.is_file():
        raise ModelError(f"base model GGUF not found: {base_gguf}; pass the .gguf the adapter will be applied to")
    alpha = _adapter_alpha(json.loads(config_path.read_text(encoding="utf-8")), adapter_dir)

    reader = gguf.GGUFReader(str(base_gguf))
    arch = _field_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{base_gguf} is a {arch!r} model; GGUF LoRA conversion supports {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(for others, use llama.cpp's convert_lora_to_gguf.py)"
        )
    n_head = _field_value(reader, f"{arch}.attention.head_count")
    n_head_kv = _field_value(reader, f"{arch}.attention.head_count_kv") or n_head
    n_layer = _field_value(reader, f"{arch}.block_count")
    base_shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # ggml order: (in, out)
    del reader
    model_arch, permute_qk = _ARCHITECTURES[arch]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[model_arch], int(n_layer))

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(weights_path)).items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ModelError(
                f"{weights_path}: tensor {key!r} is not a LoRA A/B weight; only adapters on linear layers convert"
            )
        pairs.setdefault(match["module"], {})[match["part"]] = value

    tensors: list[tuple[str, np.ndarray]] = []
    for module in sorted(pairs, key=lambda m: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m)]):
        part = pairs[module]
        if set(part) != {"A", "B"}:
            raise ModelError(f"{weights_path}: module {module} has lora_{''.join(part)} only; the file is incomplete")
        gguf_name = name_map.get_name(module)
        if gguf_name is None:
            raise ModelError(f"{weights_path}: module {module} has no llama.cpp tensor; adapt other layers")
        target = f"{gguf_name}.weight"
        if target not in base_shapes:
            hint = " (the base model ties lm_head to the embeddings)" if gguf_name == "output" else ""
            raise ModelError(f"{base_gguf} has no tensor {target} for the adapter's {module}{hint}")
        lora_a = part["A"].astype(np.float32)  # (rank, in_features)
        lora_b = part["B"].astype(np.float32)  # (out_features, rank)
        if permute_qk and module.endswith("q_proj"):
            lora_b = permute_qk_rows(lora_b, int(n_head))
        elif permute_qk and module.endswith("k_proj"):
            lora_b = permute_qk_rows(lora_b, int(n_head_kv))
        in_features, out_features = base_shapes[target][:2]
        if lora_a.shape[1] != in_features or lora_b.shape[0] != out_features or lora_a.shape[0] != lora_b.shape[1]:
            raise ModelError(
                f"adapter {module}: A {lora_a.shape} / B {lora_b.shape} do not fit {target} of {base_gguf} "
                f"(in {in_features}, out {out_features}); was the adapter trained on this base model?"
            )
        tensors += [(f"{target}.lora_a", lora_a), (f"{target}.lora_b", lora_b)]
    if not tensors:
        raise ModelError(f"{weights_path} holds no LoRA weights")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    logger.info(
        "wrote GGUF LoRA adapter %s (%d tensors, alpha %.3g) from %s", out_path, len(tensors), alpha, adapter_dir
    )
    return out_path


def try_convert_lora_to_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> bool:
    """`convert_lora_to_gguf`, or a warning when the base model's architecture has no converter here.

    Why: the GGUF adapter only serves `llm.backend=llamacpp`; a stage that trained for an hour must not fail at the
    end because of it (the hf and openai backends use the PEFT adapter). Returns whether the file was written.
    """
    try:
        convert_lora_to_gguf(adapter_dir, base_gguf, out_path)
    except ModelError as e:
        logger.warning("no GGUF copy of the adapter (%s); llm.backend=llamacpp cannot load it, hf and openai can", e)
        return False
    return True
