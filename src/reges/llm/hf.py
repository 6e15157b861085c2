"""The transformers backend: generation, trie-constrained choice and likelihood ranking with a local model.

Batched generation pads on the left, so every prompt ends where its answer starts. `choose` restricts decoding to
a token trie of the candidates; `rank` scores all candidates of a prompt with one forward pass over the prompt and
one batched pass over the candidates that reuses the prompt's key/value cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from reges.errors import ModelError
from reges.llm.base import Messages, check_candidates, check_choose_args, cut_at_stop, truncate_left, unique
from reges.llm.lora import load_adapter, merge_adapter
from reges.llm.scoring import answer_token_ids, packed_answers
from reges.llm.trie import TokenTrie

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from reges.config import LLMConfig

logger = logging.getLogger(__name__)

# Candidate tokens scored per forward pass in `rank` (bounds memory: tokens x vocabulary logits, tokens x context).
RANK_CHUNK_TOKENS = 512


class _StopOnStrings(StoppingCriteria):
    """Stop a row once its generated text contains any stop string (per-row, so batches stop row by row)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _row_major(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _dense_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() > 2 and x.stride() != _row_major(x.shape):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def dense_output_head(model: PreTrainedModel) -> None:
    """Give the output layer its input with row-major strides (a forward pre-hook on it; inference only).

    Why: with `logits_to_keep=1` (every generation prefill, `rank`) the head gets the last position sliced out of
    (B, T, H): shape (B, 1, H), batch stride T*H. torch.matmul then does not fold it into one matrix product and
    takes `bmm`, which on CPU copies the broadcast (H, vocab) weight per call (pytorch/pytorch#186148, #151934).
    With SmolLM2's 49,152 x 576 bf16 head that copy took 125 ms for one prompt and 1.07 s for a batch of 8, against
    3 ms for the same product with a copied 576-value input. The copy of the input costs nothing in comparison.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_dense_input)


class HFLLM:
    """An `LLM` over a transformers causal LM (optionally a PEFT model) and its tokenizer.

    Args:
        model: The causal LM, in eval mode, on its device.
        tokenizer: Its tokenizer; needs a chat template and an EOS token (the end of an assistant turn).
        n_ctx: Context window in tokens (capped by the model's `max_position_embeddings`).
        batch_size: Prompts per `generate`/`choose` batch.
        prompt_lookup_tokens: Greedy `generate` of a batch of one drafts up to this many tokens from the prompt
            (prompt lookup decoding, `LLMConfig.prompt_lookup_tokens`); 0: off.
        seed: Seed of this model's sampling stream (`generate` with temperature > 0), as llama.cpp's `seed`.

    Example:
        >>> llm = HFLLM.from_config(LLMConfig(model="smollm2-135m-instruct"))
        >>> llm.choose([[{"role": "user", "content": "Best space horror movie?"}]], [["Alien", "Titanic"]])
        ['Alien']
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        n_ctx: int = 2048,
        batch_size: int = 8,
        prompt_lookup_tokens: int = 0,
        seed: int = 0,
    ) -> None:
        if prompt_lookup_tokens < 0:
            raise ModelError(f"llm.prompt_lookup_tokens must be >= 0 (0: off), got {prompt_lookup_tokens}")
        if not tokenizer.chat_template:
            raise ModelError(
                f"the tokenizer of {model.config.name_or_path!r} has no chat template; use an instruct/chat model"
            )
        if tokenizer.eos_token_id is None:
            raise ModelError(f"the tokenizer of {model.config.name_or_path!r} has no EOS token")
        self.model = model
        dense_output_head(model)
        self.tokenizer = tokenizer
        max_positions = model.config.max_position_embeddings
        self.n_ctx = min(n_ctx, max_positions) if max_positions else n_ctx
        self.batch_size = batch_size
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.device = next(model.parameters()).device
        self.seed = seed
        self._sampling_state: torch.Tensor | None = None  # the generator state where the last sampling call ended

    @classmethod
    def from_config(cls, cfg: LLMConfig, adapter: str | None = None, seed: int = 0) -> HFLLM:
        """Load `cfg.model` (and a PEFT LoRA adapter folder, if given) as configured.

        The adapter is merged into the base weights: this object only runs inference, and a merged model skips the
        two extra low-rank matmuls (and PEFT's Python layer) per adapted projection, which on CPU is a visible
        share of a decoding step. Outputs equal the unmerged model's up to float rounding.
        """
        from reges.llm.models import load_hf

        model, tokenizer = load_hf(cfg)
        if adapter:
            model = merge_adapter(load_adapter(model, adapter))
            model.eval()
        return cls(
            model,
            tokenizer,
            n_ctx=cfg.n_ctx,
            batch_size=cfg.batch_size,
            prompt_lookup_tokens=cfg.prompt_lookup_tokens,
            seed=seed,
        )

    # --- prompts -----------------------------------------------------------------------------------------------
    def render(self, messages: Messages) -> str:
        """The prompt text: the chat template applied with the generation prompt."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        # The chat template writes the special tokens itself, so the tokenizer must not add BOS again.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_text(self, messages: Messages, answer_tokens: int) -> str:
        """Render `messages`, cut from the left if needed to leave `answer_tokens` free in the context window."""
        budget = self.n_ctx - answer_tokens
        messages = truncate_left(messages, lambda m: len(self.encode(self.render(m))), budget)
        return self.render(messages)

    def answer_ids(self, prompt: str, answers: list[str]) -> list[list[int]]:
        """Token ids of each answer as the tokenizer produces them right after `prompt` (`answer_token_ids`)."""
        return answer_token_ids(self.tokenizer, prompt, answers)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _generation_config(self, max_new_tokens: int, temperature: float) -> GenerationConfig:
        # Explicit, so a model's own generation_config.json (sampling defaults) cannot change our decoding.
        sample = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )

    @contextmanager
    def _own_sampling_stream(self) -> Iterator[None]:
        """Run the block on this model's own sampling stream, and give the caller's generator state back after it.

        transformers samples from torch's global generator of the model's device and takes no generator of its own,
        so the global one is lent to the block: set to where this model's last sampling call ended (seeded with
        `seed` before the first), and read back and restored when the block ends. Sampling is then repeatable for a
        seed whatever else the process draws, and calling `generate` changes no global state.
        """
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        else:
            generator = torch.default_generator
        caller_state = generator.get_state()
        if self._sampling_state is None:
            generator.manual_seed(self.seed)
        else:
            generator.set_state(self._sampling_state)
        try:
            yield
        finally:
            self._sampling_state = generator.get_state()
            generator.set_state(caller_state)

    # --- LLM interface -----------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        """See `LLM.generate`. Greedy when `temperature` is 0; sampling draws from this model's stream (`seed`)."""
        if max_new_tokens < 1:
            raise ModelError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            rows = [self.encode(self.prompt_text(m, max_new_tokens)) for m in batch]
            input_ids, attention_mask = self._left_pad(rows)
            criteria = StoppingCriteriaList([_StopOnStrings(self.tokenizer, stop, input_ids.shape[1])] if stop else [])
            config = self._generation_config(max_new_tokens, temperature)
            if len(batch) == 1 and temperature == 0 and self.prompt_lookup_tokens:
                # transformers drafts from the prompt for one sequence only; a served turn is one
                config.prompt_lookup_num_tokens = self.prompt_lookup_tokens
            sampling = self._own_sampling_stream() if temperature > 0 else nullcontext()
            with torch.inference_mode(), sampling:
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    stopping_criteria=criteria,
                )
            texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            answers.extend(cut_at_stop(t, stop) for t in texts)
        return answers

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        """See `LLM.choose`: greedy decoding restricted to a token trie of each prompt's candidates."""
        check_choose_args(prompts, candidates)
        chosen: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            batch_cands = [unique(c) for c in candidates[start : start + self.batch_size]]
            rows, tries = [], []
            for messages, cands in zip(batch, batch_cands, strict=True):
                longest = max(len(self.encode(c)) for c in cands) + 8  # slack: junction tokenization may differ
                text = self.prompt_text(messages, longest)
                tries.append(TokenTrie(self.answer_ids(text, cands), self.eos_id))
                rows.append(self.encode(text))
            input_ids, attention_mask = self._left_pad(rows)
            width = input_ids.shape[1]

            def allowed(batch_id: int, ids: torch.Tensor, tries: list[TokenTrie] = tries, width: int = width) -> list:
                return tries[batch_id].allowed(ids[width:].tolist())

            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=self._generation_config(max(t.max_len for t in tries) + 1, 0.0),
                    prefix_allowed_tokens_fn=allowed,
                )
            for trie, cands, row in zip(tries, batch_cands, out[:, width:].tolist(), strict=True):
                index = trie.match(row)
                assert index is not None, f"constrained decoding left the candidates: {row}"
                chosen.append(cands[index])
        return chosen

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        """See `LLM.rank`: log p(candidate + EOS | prompt) from the model's log-softmax, summed over tokens.

        One forward pass over the prompt fills the key/value cache; then the candidates go through together, packed
        into one sequence after the prompt: a block mask lets each candidate's tokens see the prompt and the tokens
        before them in the same candidate, and position ids restart at the prompt's end for each. Nothing is copied
        per candidate (repeating the cache for a batch of 50 candidates after an 800-token prompt moved 2 GB).
        """
        check_candidates(candidates)
        longest = max(len(self.encode(c)) for c in candidates) + 8
        text = self.prompt_text(prompt, longest)
        prompt_ids = self.encode(text)
        n_prompt = len(prompt_ids)
        answers = [ids + [self.eos_id] for ids in self.answer_ids(text, candidates)]
        scores: list[float] = []
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True, logits_to_keep=1
            )
            cache = out.cache
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,) next-token log-probs after the prompt
            for chunk in _packs(answers, RANK_CHUNK_TOKENS):
                packed = [t for a in chunk for t in a]
                width = len(packed)
                allowed, positions = packed_answers(n_prompt, chunk)
                dtype = self.model.dtype
                mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
                logits = self.model(
                    input_ids=torch.tensor([packed], device=self.device),
                    position_ids=torch.tensor([positions], device=self.device),
                    attention_mask=mask[None, None].to(self.device),  # (1, 1, T, P + T), additive
                    cache=cache,
                    use_cache=True,
                ).logits[0]  # (T, V)
                cache.crop(-width)  # forget this chunk's candidates, keep the prompt
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                offset = 0
                for a in chunk:
                    token_logprobs = [first[a[0]].item()] + [
                        logprobs[offset + j - 1, a[j]].item() for j in range(1, len(a))
                    ]
                    offset += len(a)
                    total = sum(token_logprobs)
                    scores.append(total / len(token_logprobs) if length_normalized else total)
        return scores


def _packs(answers: list[list[int]], max_tokens: int) -> list[list[list[int]]]:
    """Consecutive groups of answers with at most `max_tokens` tokens each (an answer longer than that alone)."""
    packs: list[list[list[int]]] = [[]]
    size = 0
    for a in answers:
        if packs[-1] and size + len(a) > max_tokens:
            packs.append([])
            size = 0
        packs[-1].append(a)
        size += len(a)
    return packs
