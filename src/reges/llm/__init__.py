"""LLMs behind one small interface: transformers, llama.cpp, or any OpenAI-compatible endpoint.

`load_llm(cfg)` returns an object with `generate`, `choose` and `rank` (the `LLM` Protocol in `reges.llm.base`).
The backends live in their own modules and import their heavy dependencies (torch, llama-cpp-python, httpx) only
when chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reges.errors import ModelError
from reges.llm.base import LLM, Messages

if TYPE_CHECKING:
    from reges.config import LLMConfig

__all__ = ["LLM", "Messages", "load_llm"]


def load_llm(cfg: LLMConfig, adapter: str | None = None, seed: int = 0) -> LLM:
    """Load the LLM that `cfg` describes.

    Args:
        cfg: The `llm` config section. backend "auto" means openai for an http(s) URL in `cfg.model`, hf otherwise.
        adapter: A LoRA adapter: a PEFT adapter folder for hf, a GGUF LoRA file for llamacpp (none for openai).
        seed: Sampling seed for llamacpp (hf samples with torch's global generator; seed it with torch.manual_seed).

    Returns:
        An object implementing `LLM`.

    Raises:
        ModelError: The model cannot be resolved or loaded, or the backend cannot take an adapter.

    Example:
        >>> llm = load_llm(LLMConfig(model="smollm2-135m-instruct", backend="llamacpp"))
        >>> llm.choose([[{"role": "user", "content": "A space horror movie?"}]], [["Alien", "Titanic"]])
        ['Alien']
    """
    backend = cfg.backend
    if backend == "auto":
        backend = "openai" if cfg.model.startswith(("http://", "https://")) else "hf"
    if backend == "hf":
        from reges.llm.hf import HFLLM

        return HFLLM.from_config(cfg, adapter)
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
