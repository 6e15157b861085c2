"""LLMs behind one small interface: transformers, llama.cpp, or any OpenAI-compatible endpoint.

`load_llm(cfg)` returns an object with `generate`, `choose` and `rank` (the `LLM` Protocol in `reges.llm.base`).
The backends live in their own modules and import their heavy dependencies (torch, llama-cpp-python, httpx) only
when chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reges.errors import ConfigError, ModelError
from reges.llm.base import LLM, Messages

if TYPE_CHECKING:
    from reges.config import LLMConfig

__all__ = ["LLM", "Messages", "load_llm", "resolve_backend", "trained_adapter"]


def resolve_backend(cfg: LLMConfig) -> str:
    """`llm.backend` with "auto" resolved: openai for an http(s) URL in `llm.model`, hf otherwise."""
    if cfg.backend == "auto":
        return "openai" if cfg.model.startswith(("http://", "https://")) else "hf"
    return cfg.backend


def trained_adapter(cfg: LLMConfig, train_dir: Path) -> str | None:
    """The adapter a training stage wrote in `train_dir`, in the form the backend loads.

    hf loads the PEFT folder `adapter/`, llamacpp the GGUF file `adapter.gguf` (written only when the base model is a
    GGUF file or a bundled name), openai none: the endpoint must serve the adapter itself (None is returned).

    Raises:
        ConfigError: llamacpp was asked for but there is no `adapter.gguf`.
    """
    backend = resolve_backend(cfg)
    if backend == "hf":
        return str(train_dir / "adapter")
    if backend == "llamacpp":
        path = train_dir / "adapter.gguf"
        if not path.is_file():
            raise ConfigError(
                f"{path} not found: {train_dir.name} writes a GGUF adapter only when llm.model is a GGUF file or a "
                "bundled name; use llm.backend=hf, or retrain from a GGUF base"
            )
        return str(path)
    return None


def load_llm(cfg: LLMConfig, adapter: str | None = None, seed: int = 0) -> LLM:
    """Load the LLM that `cfg` describes.

    Args:
        cfg: The `llm` config section. backend "auto" means openai for an http(s) URL in `cfg.model`, hf otherwise.
        adapter: A LoRA adapter: a PEFT adapter folder for hf, a GGUF LoRA file for llamacpp (none for openai).
        seed: Sampling seed (hf and llamacpp: each model samples from its own seeded stream, so loading and
            sampling leave the process's global generators alone; openai: not sent).

    Returns:
        An object implementing `LLM`.

    Raises:
        ModelError: The model cannot be resolved or loaded, or the backend cannot take an adapter.

    Example:
        >>> llm = load_llm(LLMConfig(model="smollm2-135m-instruct", backend="llamacpp"))
        >>> llm.choose([[{"role": "user", "content": "A space horror movie?"}]], [["Alien", "Titanic"]])
        ['Alien']
    """
    backend = resolve_backend(cfg)
    if backend == "hf":
        from reges.llm.hf import HFLLM

        return HFLLM.from_config(cfg, adapter, seed=seed)
    elif backend == "llamacpp":
        from reges.llm.llamacpp import LlamaCppLLM

        return LlamaCppLLM.from_config(cfg, adapter, seed=seed)
    elif backend == "openai":
        from reges.llm.openai_api import OpenAILLM

        if adapter:
            raise ModelError(
                f"backend openai cannot apply the adapter {adapter!r}: load it into the server instead "
                "(for example llama.cpp server --lora, or vLLM --lora-modules)"
            )
        if not cfg.model.startswith(("http://", "https://")):
            raise ModelError(f"backend openai needs an http(s) URL in llm.model, got {cfg.model!r}")
        return OpenAILLM.from_config(cfg)
    raise ModelError(f"llm.backend must be auto, hf, llamacpp or openai, got {backend!r}")
