"""The llama.cpp backend (llama-cpp-python over a GGUF file): the fast CPU inference path.

Prompts are rendered with the chat template stored in the GGUF metadata. `choose` restricts sampling with a GBNF
grammar whose only sentences are the candidate strings; `rank` evaluates prompt + candidate tokens and reads the
log-probabilities of the candidate's tokens. llama-cpp-python decodes one sequence at a time, so batches are loops;
its prefix cache reuses the key/value cache when consecutive prompts share a beginning (the system message).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from reges.errors import ModelError
from reges.llm.base import (
    Messages,
    check_candidates,
    check_choose_args,
    cut_at_stop,
    gbnf_choice,
    render_chat,
    truncate_left,
    unique,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

    from reges.config import LLMConfig

logger = logging.getLogger(__name__)


def _import_llama() -> type[Llama]:
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise ModelError(
            "backend llamacpp needs llama-cpp-python; install it with `pip install 'reges[llamacpp]'` "
            "(it compiles llama.cpp, about 5 minutes)"
        ) from e
    return Llama


@contextmanager
def extra_buffer_types(enabled: bool) -> Iterator[None]:
    """Within the block, llama.cpp models load with (or without) its extra CPU weight buffer types.

    Why: llama.cpp repacks weights into CPU-specific layouts ("extra buffer types"), AMX tiles among them. Built with
    `-march=native` on a CPU that advertises AMX, it uses AMX for the quantized matmuls of every batch of more than
    one token; in a VM that advertises AMX without supporting it (our Firecracker machines) that is a general
    protection fault at `ldtilecfg` in `ggml_backend_amx_mul_mat`, killing the process. `Llama()` has no argument for
    the model parameter `use_extra_bufts`, so this swaps llama-cpp-python's default-parameter function for the
    duration of the load (not thread-safe: load models from one thread).
    """
    from llama_cpp import llama_cpp as lib

    default = lib.llama_model_default_params

    def params() -> object:
        p = default()
        p.use_extra_bufts = enabled
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


class LlamaCppLLM:
    """An `LLM` over a GGUF model run by llama.cpp, optionally with a LoRA adapter converted to GGUF.

    Args:
        model_path: The GGUF model file.
        n_ctx: Context window in tokens.
        threads: CPU threads; 0: as many as torch uses in this process (`torch.get_num_threads()`: all cores, or
            `run.threads`, which the CLI sets for the whole process). llama-cpp-python's own default is half.
        lora_path: A LoRA adapter in GGUF form (`reges.llm.gguf_lora.convert_lora_to_gguf`), or None.
        seed: Sampling seed (temperature > 0).
        extra_buffers: Let llama.cpp repack weights into its extra CPU buffer types (see `extra_buffer_types`).

    Example:
        >>> llm = LlamaCppLLM.from_config(LLMConfig(model="smollm2-135m-instruct", backend="llamacpp"))
        >>> llm.generate([[{"role": "user", "content": "Name a horror movie."}]], max_new_tokens=8)
    """

    def __init__(
        self,
        model_path: str,
        n_ctx: int = 2048,
        threads: int = 0,
        lora_path: str | None = None,
        seed: int = 0,
        extra_buffers: bool = False,
    ) -> None:
        if lora_path is not None and not lora_path.endswith(".gguf"):
            raise ModelError(
                f"backend llamacpp needs a LoRA adapter in GGUF form, got {lora_path!r}; convert the PEFT adapter "
                "with reges.llm.gguf_lora.convert_lora_to_gguf, or use backend hf"
            )
        self.model_path = model_path
        self.n_ctx = n_ctx
        if threads < 0:
            raise ModelError(f"threads must be >= 0 (0: as many as torch uses), got {threads}; set run.threads")
        if threads == 0:
            import torch

            threads = torch.get_num_threads()
        self.threads = threads
        self.lora_path = lora_path
        self.seed = seed
        self.extra_buffers = extra_buffers
        self.llm = self._load(logits_all=False)
        self._scorer: Llama | None = None  # a second context that keeps the logits of every token, for `rank`
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{model_path} has no chat template in its GGUF metadata; use an instruct/chat model")
        self.template = template
        # Prompts are cut to the context the model was trained with when that is shorter than llm.n_ctx.
        arch = self.llm.metadata.get("general.architecture", "")
        self.n_ctx = min(n_ctx, int(self.llm.metadata.get(f"{arch}.context_length", n_ctx)))
        self.eos_id = self.llm.token_eos()
        self.eos_token = self.llm.detokenize([self.eos_id], special=True).decode("utf-8")
        bos_id = self.llm.token_bos()
        self.bos_token = self.llm.detokenize([bos_id], special=True).decode("utf-8") if bos_id >= 0 else ""

    def _load(self, logits_all: bool) -> Llama:
        llama = _import_llama()
        try:
            with extra_buffer_types(self.extra_buffers):
                return llama(
                    model_path=self.model_path,
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    lora_path=self.lora_path,
                    logits_all=logits_all,
                    seed=self.seed,
                    verbose=False,
                )
        except ValueError as e:
            raise ModelError(
                f"llama.cpp cannot load {self.model_path}"
                + (f" with LoRA {self.lora_path}" if self.lora_path else "")
                + f" ({e}); check that the file is a complete GGUF model (and adapter) of a supported architecture"
            ) from e

    @classmethod
    def from_config(cls, cfg: LLMConfig, adapter: str | None = None, seed: int = 0) -> LlamaCppLLM:
        """Load `cfg.model` (a bundled name or a .gguf file) with an optional GGUF LoRA adapter."""
        from reges.llm.models import resolve_model

        source = resolve_model(cfg.model, cfg.cache_dir)
        if source.kind != "gguf":
            raise ModelError(
                f"backend llamacpp needs a GGUF model, but llm.model={cfg.model!r} is a {source.kind} model; "
                "use a .gguf file or a bundled name, or backend hf/openai"
            )
        return cls(
            source.location,
            n_ctx=cfg.n_ctx,
            lora_path=adapter,
            seed=seed,
            extra_buffers=cfg.llamacpp_extra_buffers,
        )

    # --- prompts -----------------------------------------------------------------------------------------------
    def render(self, messages: Messages) -> str:
        """The prompt text: the GGUF's chat template applied with the generation prompt."""
        return render_chat(self.template, messages, self.bos_token, self.eos_token)

    def encode(self, text: str) -> list[int]:
        # special=True: the chat template's markers (<|im_start|>) are single special tokens, not text.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_text(self, messages: Messages, answer_tokens: int) -> str:
        """Render `messages`, cut from the left if needed to leave `answer_tokens` free in the context window."""
        budget = self.n_ctx - answer_tokens
        messages = truncate_left(messages, lambda m: len(self.encode(self.render(m))), budget)
        return self.render(messages)

    def _complete(self, tokens: list[int], max_tokens: int, temperature: float, **kwargs: object) -> str:
        # Pure temperature sampling (no top-k/top-p/min-p cut, no repeat penalty), as in the hf backend;
        # temperature 0 is llama.cpp's greedy sampler.
        out = self.llm.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            **kwargs,
        )
        return out["choices"][0]["text"]

    # --- LLM interface -----------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        """See `LLM.generate`."""
        if max_new_tokens < 1:
            raise ModelError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        answers = []
        for messages in prompts:
            tokens = self.encode(self.prompt_text(messages, max_new_tokens))
            text = self._complete(tokens, max_new_tokens, temperature, stop=list(stop or []))
            answers.append(cut_at_stop(text, stop))
        return answers

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        """See `LLM.choose`: greedy sampling under a GBNF grammar of the candidate strings."""
        from llama_cpp import LlamaGrammar

        check_choose_args(prompts, candidates)
        chosen = []
        for messages, cands in zip(prompts, candidates, strict=True):
            cands = unique(cands)
            grammar = LlamaGrammar.from_string(gbnf_choice(cands), verbose=False)
            # The grammar admits any tokenization of a candidate, down to one token per byte: that bounds the length.
            longest = max(len(c.encode("utf-8")) for c in cands) + 1
            tokens = self.encode(self.prompt_text(messages, max(len(self.encode(c)) for c in cands) + 8))
            text = self._complete(tokens, longest, 0.0, grammar=grammar)
            if text not in cands:
                raise ModelError(f"grammar-constrained decoding returned {text!r}, not one of {cands}")
            chosen.append(text)
        return chosen

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        """See `LLM.rank`: evaluate the prompt once, then each candidate + EOS after it, reading every logit."""
        check_candidates(candidates)
        if self._scorer is None:
            # logits_all keeps one logit row per evaluated token, which `rank` needs and generation does not
            # (it costs a vocabulary-sized output projection per prompt token), hence a second context.
            self._scorer = self._load(logits_all=True)
        scorer = self._scorer
        text = self.prompt_text(prompt, max(len(self.encode(c)) for c in candidates) + 8)
        prompt_ids = self.encode(text)
        n = len(prompt_ids)
        full = [self.encode(text + c) for c in candidates]
        answers = [
            (ids[n:] if ids[:n] == prompt_ids else self.encode(c)) + [self.eos_id]
            for ids, c in zip(full, candidates, strict=True)
        ]
        scorer.reset()
        scorer.eval(prompt_ids)
        scores = []
        for answer in answers:
            scorer.n_tokens = n  # drop the previous candidate from the key/value cache, keep the prompt
            scorer.eval(answer)
            logits = scorer.scores[n - 1 : n - 1 + len(answer)].astype(np.float64)  # (len(answer), V)
            logits -= logits.max(axis=1, keepdims=True)
            logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            token_logprobs = logprobs[np.arange(len(answer)), answer]
            total = float(token_logprobs.sum())
            scores.append(total / len(answer) if length_normalized else total)
        return scores
