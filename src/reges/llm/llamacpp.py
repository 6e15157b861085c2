"""The llama.cpp backend (llama-cpp-python over a GGUF file): the fast CPU inference path.

Prompts are rendered with the chat template stored in the GGUF metadata. `choose` restricts sampling with a GBNF
grammar whose only sentences are the candidate strings; `rank` evaluates prompt + candidate tokens and reads the
log-probabilities of the candidate's tokens, all candidates in one decode (`SequenceScorer`: one sequence each, sharing
the prompt's key/value cache). Generation decodes one sequence at a time, so batches are loops; llama-cpp-python's
prefix cache reuses the key/value cache when consecutive prompts share a beginning (the system message).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator, Sequence
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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities of a (rows, vocabulary) logit array, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], chunk: int = 32) -> np.ndarray:
    """log p(tokens[i]) under row i of a (rows, vocabulary) logit array, `chunk` rows at a time (a 150k-token
    vocabulary makes the whole float64 softmax of 200 rows a quarter of a gigabyte)."""
    out = np.empty(len(tokens))
    for start in range(0, len(tokens), chunk):
        rows = log_softmax(logits[start : start + chunk])
        out[start : start + chunk] = rows[np.arange(len(rows)), tokens[start : start + chunk]]
    return out


class SequenceScorer:
    """Log-likelihoods of many continuations of one prompt, in one llama.cpp decode.

    Why: `Llama` keeps one sequence per context, so scoring k candidates after a prompt took k decodes of a few
    tokens each, one after another: with a 1.5B model 6-7 s of a 10-13 s rank call (docs/results/scaling.md).
    Here a second context over the same weights holds up to `max_seqs` sequences in one unified key/value cache:
    the prompt is decoded once as sequence 0 (a logit row for its last token only), every candidate gets a
    sequence that shares the prompt's cached keys and values (`llama_memory_seq_cp`, no copy), and all candidates'
    tokens go through one batch. Candidates that do not fit one batch, the cache or `max_seqs` go in further groups.

    Args:
        llm: The loaded model (its weights, context size, batch size and threads are reused).
        lora_path: The GGUF LoRA adapter `llm` was loaded with, or None.
        max_seqs: Sequences the context holds (the prompt's included).
    """

    def __init__(self, llm: Llama, lora_path: str | None = None, max_seqs: int = 32) -> None:
        from llama_cpp import llama_cpp as lib
        from llama_cpp._internals import LlamaContext

        if max_seqs < 2:
            raise ModelError(f"max_seqs must be >= 2 (the prompt and one candidate), got {max_seqs}")
        self._lib = lib
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max = max_seqs
        params.kv_unified = True  # the candidates share the prompt's cells instead of each holding n_ctx / n_seq_max
        self.max_seqs = max_seqs
        self.n_ctx = llm.n_ctx()
        self.n_batch = int(params.n_batch)
        self.n_vocab = llm.n_vocab()
        self._batch = None
        # llama-cpp-python's own context wrapper: it is freed before the model it runs on (`Llama` has no argument
        # for the sequence count, hence its private `_model`). A LoRA adapter is freed with the model, never here.
        try:
            self._context = LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as e:
            raise ModelError(f"llama.cpp could not create a {max_seqs}-sequence context of {self.n_ctx} tokens") from e
        self._ctx = self._context.ctx
        if lora_path is not None:
            adapter = lib.llama_adapter_lora_init(llm.model, lora_path.encode("utf-8"))
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if not adapter or lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                raise ModelError(f"llama.cpp could not apply the LoRA adapter {lora_path} to the scoring context")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        """Free the batch and the context (the adapter goes with the model)."""
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()

    def __del__(self) -> None:
        if hasattr(self, "_context"):
            self.close()

    def _decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
                outputs: Sequence[bool]) -> None:
        b = self._batch
        for i, (token, pos, seq, out) in enumerate(zip(tokens, positions, seqs, outputs, strict=True)):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = out
        b.n_tokens = len(tokens)
        code = self._lib.llama_decode(self._ctx, b)
        if code != 0:
            raise ModelError(f"llama_decode returned {code} for a batch of {len(tokens)} tokens")

    def _logits(self, n_outputs: int) -> np.ndarray:
        """(n_outputs, vocabulary) view of the last decode's logit rows, in batch order (llama.cpp keeps them
        contiguous in the order of the tokens marked as outputs); valid until the next decode."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(n_outputs, self.n_vocab))

    def score(self, prompt: Sequence[int], answers: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log-probabilities of each answer (token ids, EOS included) after `prompt`."""
        n = len(prompt)
        if n == 0:
            raise ModelError("SequenceScorer.score needs a non-empty prompt")
        longest = max((len(a) for a in answers), default=0)
        if n + longest > self.n_ctx or longest - 1 > self.n_batch:
            raise ModelError(f"a prompt of {n} tokens and an answer of {longest} do not fit a context of "
                             f"{self.n_ctx} tokens and batches of {self.n_batch}; raise llm.n_ctx")
        self._lib.llama_memory_clear(self._memory, True)
        for start in range(0, n, self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            last = start + len(chunk) == n
            self._decode(chunk, range(start, start + len(chunk)), [0] * len(chunk),
                         [False] * (len(chunk) - 1) + [last])
        first = log_softmax(self._logits(1))[0]  # the prompt's last token: predicts every answer's first
        scores: list[np.ndarray] = [np.empty(0)] * len(answers)
        room = min(self.n_batch, self.n_ctx - n)  # cells and batch slots for the candidates' own tokens
        group: list[int] = []
        used = 0
        for i, answer in enumerate([*answers, None]):
            fed = len(answer) - 1 if answer is not None else 0  # the last token (EOS) is predicted, never fed
            if answer is None or len(group) == self.max_seqs - 1 or used + fed > room:
                if group:
                    self._score_group(group, answers, n, first, scores)
                group, used = [], 0
            if answer is not None:
                group.append(i)
                used += fed
        return scores

    def _score_group(self, group: list[int], answers: Sequence[Sequence[int]], n: int, first: np.ndarray,
                     scores: list[np.ndarray]) -> None:
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        for seq, i in enumerate(group, start=1):
            self._lib.llama_memory_seq_cp(self._memory, 0, seq, -1, -1)
            fed = answers[i][:-1]
            tokens += fed
            positions += range(n, n + len(fed))
            seqs += [seq] * len(fed)
        predicted = [t for i in group for t in answers[i][1:]]  # what each fed token's logit row predicts
        logprobs = np.empty(0)
        if tokens:
            self._decode(tokens, positions, seqs, [True] * len(tokens))
            logprobs = token_logprobs(self._logits(len(tokens)), predicted)
        row = 0
        for i in group:
            answer = answers[i]
            rest = len(answer) - 1
            scores[i] = np.concatenate([[first[answer[0]]], logprobs[row : row + rest]])
            row += rest
        for seq in range(1, len(group) + 1):
            self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)


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
        self.llm = self._load()
        self._scorer: SequenceScorer | None = None  # a second, many-sequence context for `rank`
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

    def _load(self, logits_all: bool = False) -> Llama:
        llama = _import_llama()
        try:
            with extra_buffer_types(self.extra_buffers):
                return llama(
                    model_path=self.model_path,
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    lora_path=self.lora_path,
                    logits_all=logits_all,  # a logit row per evaluated token (teacher-forced checks); rank needs none
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
        """See `LLM.rank`: the prompt once, then every candidate + EOS in one batch (`SequenceScorer`)."""
        check_candidates(candidates)
        if self._scorer is None:
            self._scorer = SequenceScorer(self.llm, self.lora_path)
        text = self.prompt_text(prompt, max(len(self.encode(c)) for c in candidates) + 8)
        prompt_ids = self.encode(text)
        n = len(prompt_ids)
        full = [self.encode(text + c) for c in candidates]
        answers = [
            (ids[n:] if ids[:n] == prompt_ids else self.encode(c)) + [self.eos_id]
            for ids, c in zip(full, candidates, strict=True)
        ]
        token_logprobs = self._scorer.score(prompt_ids, answers)
        return [float(t.sum()) / (len(t) if length_normalized else 1) for t in token_logprobs]
