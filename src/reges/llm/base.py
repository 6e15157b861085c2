"""The LLM interface every backend implements, and the helpers backends share.

`LLM` is a Protocol (composition, not inheritance): `HFLLM`, `LlamaCppLLM` and `OpenAILLM` each implement the three
methods on their own, and code that needs an LLM takes any object with this shape (tests pass tiny models).

Prompts are chat messages (`[{"role": "system" | "user" | "assistant", "content": str}, ...]`); each backend renders
them with the model's chat template and the generation prompt, so a prompt means the same on every backend.

Long prompts: a prompt that does not fit in the context window (`llm.n_ctx` minus the room the answer needs) is cut
from the LEFT, keeping the system message: whole oldest messages are dropped first, then the oldest remaining message
loses characters from its start. A warning is logged each time. Why the left: the most recent turns matter most to a
recommender, and the system message holds the instructions. Put instructions in the system message, not at the start
of a long user message, or they are the first thing cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from reges.errors import ModelError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class LLM(Protocol):
    """What the query and item experts need from a language model."""

    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        """Write the assistant's answer to each prompt (batched).

        Args:
            prompts: One chat (list of messages) per answer wanted.
            max_new_tokens: Most tokens per answer.
            temperature: 0 for greedy decoding, > 0 to sample.
            stop: Strings that end an answer; the answer is cut before the first one.

        Returns:
            One answer per prompt, without special tokens.
        """
        ...

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        """Answer each prompt with exactly one of its candidate strings (constrained decoding).

        Args:
            prompts: One chat per decision.
            candidates: For each prompt, the strings the answer must be one of.

        Returns:
            For each prompt, one string of its candidate list, verbatim.
        """
        ...

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        """Score each candidate as the assistant's complete answer to `prompt`.

        Args:
            prompt: The chat.
            candidates: Answers to score.
            length_normalized: Return the mean log-probability per token instead of the total.

        Returns:
            For each candidate, log p(candidate + end-of-turn | prompt): the end-of-turn token is scored too, so that
            "The Matrix" is not preferred over "The Matrix Reloaded" merely for being a prefix of it.
        """
        ...


def check_candidates(candidates: list[str], where: str = "") -> None:
    """Raise ModelError for an empty candidate list or an empty candidate string."""
    if not candidates:
        raise ModelError(f"empty candidate list{where}; pass at least one candidate string")
    for c in candidates:
        if not isinstance(c, str) or not c.strip():
            raise ModelError(f"candidate {c!r}{where} is not a non-empty string; remove it from the candidates")


def check_choose_args(prompts: list[Messages], candidates: list[list[str]]) -> None:
    """Check that `choose` got one non-empty candidate list per prompt."""
    if len(prompts) != len(candidates):
        raise ModelError(
            f"choose() got {len(prompts)} prompts but {len(candidates)} candidate lists; pass one list per prompt"
        )
    for i, cands in enumerate(candidates):
        check_candidates(cands, f" for prompt {i}")


def unique(strings: list[str]) -> list[str]:
    """Strings in first-seen order without duplicates."""
    return list(dict.fromkeys(strings))


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """Cut `text` before the earliest occurrence of any stop string."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def render_chat(template: str, messages: Messages, bos_token: str, eos_token: str) -> str:
    """Render `messages` with a Jinja chat template and the generation prompt, as transformers does.

    Used by the llama.cpp and OpenAI backends, which have the template (from GGUF metadata) but not transformers'
    tokenizer. Same Jinja settings as `transformers` (`trim_blocks`, `lstrip_blocks`, sandboxed).
    """
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ModelError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True
    )


def truncate_left(messages: Messages, count_tokens: Callable[[Messages], int], max_tokens: int) -> Messages:
    """Cut a chat from the left until its rendered prompt has at most `max_tokens` tokens.

    Keeps the system message (dropped only if it alone does not fit), drops the oldest other messages whole while
    more than one remains, then cuts characters from the start of the oldest remaining message (binary search on
    the cut position). Logs a warning whenever it cuts.

    Args:
        messages: The chat.
        count_tokens: Tokens of a rendered chat (with the generation prompt), as the backend counts them.
        max_tokens: The budget: the context window minus the room for the answer.

    Returns:
        The chat itself when it fits, else a shortened copy.

    Raises:
        ModelError: Not even an empty last message fits (the budget is smaller than the chat template's own tokens).
    """
    total = count_tokens(messages)
    if total <= max_tokens:
        return messages
    head = [messages[0]] if messages and messages[0]["role"] == "system" else []
    rest = [dict(m) for m in messages[len(head) :]]
    if not rest:
        head, rest = [], [dict(m) for m in messages]
    dropped = 0
    while len(rest) > 1 and count_tokens(head + rest) > max_tokens:
        rest.pop(0)
        dropped += 1

    def with_cut(cut: int, head: Messages) -> Messages:
        return head + [{**rest[0], "content": rest[0]["content"][cut:]}] + rest[1:]

    content = rest[0]["content"]
    cut = 0
    if count_tokens(head + rest) > max_tokens:
        if head and count_tokens(with_cut(len(content), head)) > max_tokens:
            logger.warning("the system message alone does not fit in %d tokens: dropping it", max_tokens)
            head = []
        if count_tokens(with_cut(len(content), head)) > max_tokens:
            raise ModelError(
                f"a prompt cannot fit in {max_tokens} tokens even with its messages emptied; "
                "raise llm.n_ctx or lower the answer length"
            )
        lo, hi = 1, len(content)  # the smallest cut that fits lies in (lo - 1, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if count_tokens(with_cut(mid, head)) <= max_tokens:
                hi = mid
            else:
                lo = mid + 1
        cut = hi
    out = with_cut(cut, head)
    logger.warning(
        "prompt of %d tokens exceeds %d (llm.n_ctx minus room for the answer): cut from the left, dropping %d "
        "message(s) and %d character(s)",
        total,
        max_tokens,
        dropped,
        cut,
    )
    return out


def gbnf_choice(candidates: list[str]) -> str:
    """A GBNF grammar (llama.cpp) whose only sentences are the candidate strings, verbatim.

    Inside a GBNF string literal, backslash, double quote and control characters must be escaped; every other
    character (accents included) stands for itself.
    """
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def literal(s: str) -> str:
        return '"' + "".join(escapes.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 0x20 else ch) for ch in s) + '"'

    return "root ::= " + " | ".join(literal(c) for c in unique(candidates)) + "\n"
