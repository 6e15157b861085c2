"""How much device memory a LoRA training run needs, estimated from the model's shape before any weight is loaded.

`train-query` and `train-item` log `MemoryEstimate.summary()` before they load the base model, so a 7B run that
cannot fit says so in its first lines instead of after minutes of loading. The shape comes from `config.json` (an
HF folder, or only that file of a Hugging Face id), or from a GGUF file's metadata: no weights are read.

What is counted, per training process (data parallelism keeps a full copy on every GPU):
- weights: every base parameter at the training dtype (2 bytes in bf16, 4 in fp32; 4-bit NF4 would be ~0.55);
- LoRA: the adapter weights, their gradients and AdamW's two moments, all fp32: 16 bytes per LoRA parameter;
- activations: what autograd keeps per token and layer for a decoder layer with RMSNorm, grouped-query attention
  through SDPA (no attention matrix stored: FlashAttention / memory-efficient kernels) and a SwiGLU MLP, counted as
  8 hidden + 2 key/value + 4 intermediate values per token per layer at the compute dtype (norm inputs upcast to
  fp32, q/k/v, attention output, MLP gate/up/product); with gradient checkpointing only each layer's input is kept,
  plus one layer's full set during its recomputation;
- logits: the training loop projects onto the vocabulary only where a target token is predicted
  (`logits_to_keep`), in fp32, three copies (logits, log-softmax, gradient).
Not counted: the CUDA context and allocator slack (about 1 GiB on a GPU), the tokenizer and data.

It is an estimate (the activation count is within about 30 % of measured peaks for Llama-style models), meant to
tell 20 GiB from 80 GiB, not to plan the last gigabyte.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reges.errors import ModelError
from reges.llm.lora import LoraTrainConfig

logger = logging.getLogger(__name__)

GIB = 2**30
BYTES_PER_WEIGHT = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "nf4": 0.55}
# Values autograd keeps per token per decoder layer, in units of hidden / kv width / intermediate (see the docstring).
ACT_HIDDEN, ACT_KV, ACT_INTERMEDIATE = 8, 2, 4
LORA_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
LOGIT_COPIES = 3  # logits (fp32), log-softmax, their gradient


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on.

    Attributes:
        name: What the shape was read from (for messages).
        num_params: Parameters of the base model.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the MLP.
        num_layers: Decoder layers.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (grouped-query attention).
        vocab_size: Vocabulary (the lm_head's output width).
    """

    name: str
    num_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each adaptable linear layer of one decoder layer, and of lm_head."""
        h, kv, inter = self.hidden_size, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {
            "q_proj": (h, self.num_heads * self.head_dim),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (self.num_heads * self.head_dim, h),
            "gate_proj": (h, inter),
            "up_proj": (h, inter),
            "down_proj": (inter, h),
            "lm_head": (h, self.vocab_size),
        }

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str) -> ModelShape:
        """The shape of a transformers `config.json` (Llama, Qwen2, Mistral, Gemma... field names).

        Raises:
            ModelError: A size is missing (not a decoder-only model with these fields).
        """
        config = config.get("text_config", config)  # multimodal configs nest the language model's
        try:
            h, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
            inter, heads = int(config["intermediate_size"]), int(config["num_attention_heads"])
            vocab = int(config["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{name}: config.json lacks {e} (hidden_size, num_hidden_layers, intermediate_size, "
                             "num_attention_heads, vocab_size); the memory estimate covers decoder-only LMs") from None
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
        kv = kv_heads * head_dim
        per_layer = h * heads * head_dim * 2 + h * kv * 2 + 3 * h * inter + 2 * h
        if config.get("attention_bias") or config.get("model_type") == "qwen2":  # q/k/v biases
            per_layer += heads * head_dim + 2 * kv
        embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
        return cls(name, layers * per_layer + embeddings + h, h, inter, layers, heads, kv_heads, vocab)

    @classmethod
    def from_gguf(cls, path: str | Path) -> ModelShape:
        """The shape in a GGUF file's metadata; the parameter count is that of its tensors (no weight is read).

        Raises:
            ModelError: The file cannot be read or lacks the sizes.
        """
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
            fields = reader.fields
            arch = fields["general.architecture"].contents()

            def size(key: str) -> int:
                return int(fields[f"{arch}.{key}"].contents())

            vocab = len(fields["tokenizer.ggml.tokens"].data)
            return cls(
                Path(path).name,
                sum(int(t.n_elements) for t in reader.tensors),
                size("embedding_length"),
                size("feed_forward_length"),
                size("block_count"),
                size("attention.head_count"),
                size("attention.head_count_kv"),
                vocab,
            )
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot read the model sizes from {path} ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak device memory of one training process, in GiB.

    Attributes:
        shape: The model.
        weight_dtype: dtype of the base weights.
        lora_params: Trainable LoRA parameters.
        weights_gib: Base weights.
        lora_gib: LoRA weights, gradients and AdamW state.
        activations_gib: Activations kept for the backward pass of one micro-batch.
        logits_gib: Vocabulary projections of one micro-batch.
        tokens_per_pass: Tokens in one micro-batch (batch x sequence).
    """

    shape: ModelShape
    weight_dtype: str
    lora_params: int
    weights_gib: float
    lora_gib: float
    activations_gib: float
    logits_gib: float
    tokens_per_pass: int

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.lora_gib + self.activations_gib + self.logits_gib

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"memory estimate per training process for {self.shape.name} ({_count(self.shape.num_params)} "
            f"params, {self.weight_dtype}): weights {self.weights_gib:.1f} GiB + LoRA {self.lora_params / 1e6:.1f} M "
            f"params with grads and AdamW {self.lora_gib:.2f} GiB + activations {self.activations_gib:.1f} GiB + "
            f"logits {self.logits_gib:.2f} GiB ({self.tokens_per_pass} tokens per pass) = {self.total_gib:.1f} GiB, "
            "plus about 1 GiB CUDA context on a GPU (an estimate: see reges/llm/memory.py)"
        )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def estimate_lora_memory(
    shape: ModelShape,
    weight_dtype: str,
    r: int,
    target_modules: tuple[str, ...] | list[str],
    batch_size: int,
    seq_tokens: int,
    logit_tokens: int,
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """Peak memory of one LoRA training process (see the module docstring for what is counted).

    Args:
        shape: The base model.
        weight_dtype: "float32", "bfloat16", "float16" or "nf4" (4-bit base weights; activations then in bf16).
        r: LoRA rank.
        target_modules: Adapted linear layers (names as in `ModelShape.module_dims`; others count nothing).
        batch_size: Sequences per forward/backward pass.
        seq_tokens: Tokens per sequence (prompt + completion, or prompt + packed candidates).
        logit_tokens: Positions per pass projected onto the vocabulary.
        gradient_checkpointing: Keep only each layer's input (and one layer's activations while recomputing).

    Raises:
        ModelError: An unknown dtype.

    Example:
        >>> shape = ModelShape("Qwen2.5-7B", 7_615_616_512, 3584, 18944, 28, 28, 4, 152064)
        >>> round(estimate_lora_memory(shape, "bfloat16", 16, ["q_proj", "v_proj"], 1, 1024, 64).weights_gib, 1)
        14.2
    """
    if weight_dtype not in BYTES_PER_WEIGHT:
        raise ModelError(f"weight dtype must be one of {sorted(BYTES_PER_WEIGHT)}, got {weight_dtype!r}")
    dims = shape.module_dims()
    lora_params = 0
    for name in target_modules:
        if name in dims:
            fan_in, fan_out = dims[name]
            lora_params += r * (fan_in + fan_out) * (1 if name == "lm_head" else shape.num_layers)
    act_bytes = 4 if weight_dtype == "float32" else 2
    tokens = batch_size * seq_tokens
    kv = shape.num_kv_heads * shape.head_dim
    per_token_layer = (ACT_HIDDEN * shape.hidden_size + ACT_KV * kv + ACT_INTERMEDIATE * shape.intermediate_size)
    if gradient_checkpointing:
        activations = tokens * act_bytes * (shape.num_layers * shape.hidden_size + per_token_layer)
    else:
        activations = tokens * act_bytes * shape.num_layers * per_token_layer
    logits = logit_tokens * shape.vocab_size * 4 * LOGIT_COPIES
    return MemoryEstimate(
        shape=shape,
        weight_dtype=weight_dtype,
        lora_params=lora_params,
        weights_gib=shape.num_params * BYTES_PER_WEIGHT[weight_dtype] / GIB,
        lora_gib=lora_params * LORA_BYTES_PER_PARAM / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        tokens_per_pass=tokens,
    )


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~")) and not Path(model).exists()


def model_shape(model: str, cache_dir: str = "") -> ModelShape:
    """The shape of `llm.model` without loading (or downloading) its weights.

    A bundled name or .gguf file: its metadata. An HF folder: its config.json. A Hugging Face id: its config.json
    alone, from the HF cache or downloaded (a few KB).

    Raises:
        ModelError: An endpoint URL (no local shape), or config.json cannot be found or read.
    """
    if _looks_like_hub_id(model):
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "config.json"))
        except Exception as e:  # offline, unknown id, gated: the estimate is only informative
            raise ModelError(f"cannot get config.json of {model!r} ({type(e).__name__}: {e})") from None
        return ModelShape.from_hf_config(json.loads(path.read_text(encoding="utf-8")), model)
    from reges.llm.models import resolve_model

    source = resolve_model(model, cache_dir)
    if source.kind == "url":
        raise ModelError(f"llm.model={model!r} is an endpoint: its memory is the server's")
    if source.kind == "gguf":
        return ModelShape.from_gguf(source.location)
    path = Path(source.location) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path} ({e})") from None
    return ModelShape.from_hf_config(config, source.name)


def training_estimate(shape: ModelShape, cfg: LoraTrainConfig, candidate_tokens: int = 0) -> MemoryEstimate:
    """The estimate for the passes `train_lora` runs with `cfg` (at the longest prompt the budget allows).

    sft: `batch_size` sequences of prompt + completion budget, logits at the completion positions. listwise: one
    example per pass, the prompt followed by `candidate_tokens` packed candidate tokens, logits at those positions.
    """
    if cfg.objective == "listwise":
        batch, seq, logit_tokens = 1, cfg.max_prompt_tokens + candidate_tokens, candidate_tokens + 1
    else:
        batch = cfg.batch_size
        seq, logit_tokens = cfg.max_prompt_tokens + cfg.max_completion_tokens, batch * cfg.max_completion_tokens
    return estimate_lora_memory(shape, cfg.dtype, cfg.r, cfg.target_modules, batch, seq, logit_tokens,
                                cfg.gradient_checkpointing)


def log_training_estimate(model: str, cache_dir: str, cfg: LoraTrainConfig,
                          candidate_tokens: int = 0) -> MemoryEstimate | None:
    """Log the estimate of a LoRA run on `model` before it loads; None (logged) when the shape is unavailable.

    Why not raise: the estimate informs, and training can proceed without it (e.g. a model id offline whose
    weights are nevertheless in a local folder).
    """
    try:
        shape = model_shape(model, cache_dir)
    except ModelError as e:
        logger.info("no memory estimate: %s", e)
        return None
    estimate = training_estimate(shape, cfg, candidate_tokens)
    logger.info("%s", estimate.summary())
    return estimate
