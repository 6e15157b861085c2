"""The OpenAI-compatible backend: any server with /v1/chat/completions (vLLM, llama.cpp server, Ollama, OpenAI).

The teacher can be a large model here, and inference scales out behind the endpoint. Requests of a batch run
concurrently (`llm.batch_size` at a time). Connection errors, timeouts and 5xx answers are retried
`llm.max_retries` times with exponential backoff, then raise ModelError naming the URL; 4xx answers fail at once
with the server's message.

What depends on the server:
- `choose`: `llm.api_constraint` picks the server-side constraint: "grammar" sends a GBNF grammar of the
  candidates (llama.cpp server, llama-cpp-python's server), "guided_choice" sends the candidate list the way vLLM
  took it up to 0.11, "structured_outputs" the way vLLM takes it since (`{"structured_outputs": {"choice": [...]}}`;
  vLLM 0.12 removed `guided_choice`), "none" sends nothing. An answer that is not exactly a candidate (no
  constraint, or a server that ignored it) is mapped to the closest candidate with rapidfuzz, and a warning says so.
- `rank`: /v1/completions with `echo` and `logprobs` (OpenAI legacy semantics, vLLM), on a prompt rendered with the
  chat template of `llm.api_template_model`. vLLM returns the prompt's logprobs this way, so it is the GPU path for
  `generate.mode=rank` (docs/inference_server.md). llama.cpp's own server returns no prompt logprobs (clear error
  here); llama-cpp-python's server returns them shifted by one position (abetlen/llama-cpp-python#1983), so its
  scores are not the candidates' log-likelihoods. Where rank is refused, the error names the modes that work.
- Long prompts are not cut here (we do not have the server's tokenizer): a server answers 400 when a prompt exceeds
  its context, which surfaces as a ModelError.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from reges.errors import ModelError
from reges.io import REDACTED
from reges.llm.base import Messages, check_candidates, check_choose_args, cut_at_stop, gbnf_choice, render_chat, unique

if TYPE_CHECKING:
    from reges.config import LLMConfig

logger = logging.getLogger(__name__)

BACKOFF_S = 0.25  # first retry delay; doubles with every retry
# What works where a server cannot rank, appended to the errors of rank and of a rejected constraint.
RANK_ALTERNATIVES = (
    "on this server use generate.mode=constrained (llm.api_constraint=grammar on llama.cpp servers, "
    "structured_outputs on vLLM >= 0.12, guided_choice on older vLLM) or generate.mode=free, which every server "
    "supports; rank needs a server that echoes prompt logprobs "
    "(vLLM: docs/inference_server.md) or llm.backend hf / llamacpp"
)


API_KEY_ENV = ("REGES_API_KEY", "OPENAI_API_KEY")


def resolve_api_key(cfg: LLMConfig) -> str:
    """The endpoint's key: `api_key` when given (not the "***" a saved run holds), else the first line of
    `api_key_file`, else $REGES_API_KEY, else $OPENAI_API_KEY, else "" (no key).

    Raises:
        ModelError: `api_key_file` is missing or unreadable.
    """
    if cfg.api_key and cfg.api_key != REDACTED:
        return cfg.api_key
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            mode = path.stat().st_mode
            key = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"llm.api_key_file {path} cannot be read ({e}); check the path") from None
        if mode & 0o077:
            logger.warning("%s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777)
        return key
    return next((os.environ[name] for name in API_KEY_ENV if os.environ.get(name)), "")


class RequestRejected(ModelError):
    """The server answered 4xx: the request itself is wrong for it (retrying cannot help)."""


class OpenAILLM:
    """An `LLM` behind an OpenAI-compatible HTTP endpoint.

    Args:
        url: The server's base URL, with or without the trailing /v1 ("http://127.0.0.1:8000").
        api_model: The `model` field sent with each request.
        api_key: Bearer token ("" for none).
        timeout_s: Per-request timeout.
        max_retries: Retries on connection errors, timeouts and 5xx answers.
        batch_size: Requests in flight at once.
        constraint: How `choose` constrains the server ("grammar", "guided_choice", "structured_outputs" or
            "none").
        template: (chat template, BOS token, EOS token) for `rank` prompts, or None when `rank` is not wanted.

    Example:
        >>> llm = OpenAILLM("http://127.0.0.1:8080")
        >>> llm.generate([[{"role": "user", "content": "Name a horror movie."}]], max_new_tokens=16)
    """

    def __init__(
        self,
        url: str,
        api_model: str = "default",
        api_key: str = "",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        batch_size: int = 8,
        constraint: Literal["grammar", "guided_choice", "structured_outputs", "none"] = "grammar",
        template: tuple[str, str, str] | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.api_model = api_model
        self.max_retries = max_retries
        self.batch_size = max(1, batch_size)
        self.constraint = constraint
        self.template = template
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    @classmethod
    def from_config(cls, cfg: LLMConfig) -> OpenAILLM:
        """Connect to the endpoint `cfg.model` as configured (nothing is sent until the first call)."""
        template = None
        if cfg.api_template_model:
            from reges.llm.models import load_chat_template

            template = load_chat_template(cfg.api_template_model)
        return cls(
            cfg.model,
            api_model=cfg.api_model,
            api_key=resolve_api_key(cfg),
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            batch_size=cfg.batch_size,
            constraint=cfg.api_constraint,
            template=template,
        )

    def close(self) -> None:
        self.client.close()

    # --- HTTP --------------------------------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to `<base>/v1/<path>`, retrying transient failures; return the decoded answer.

        Raises:
            ModelError: The server stayed unreachable (or kept failing with 5xx) through all retries, or answered
                with a 4xx error.
        """
        url = f"{self.base_url}/v1/{path}"
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = BACKOFF_S * 2 ** (attempt - 1)
                logger.warning("retry %d/%d of %s in %.2f s: %s", attempt, self.max_retries, url, delay, problem)
                time.sleep(delay)
            try:
                response = self.client.post(url, json=body)
            except httpx.TransportError as e:  # connection refused, timeouts, broken connections
                problem = f"{type(e).__name__}: {e}"
                continue
            if response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise RequestRejected(
                    f"{url} rejected the request with HTTP {response.status_code}: {response.text[:500]}; check "
                    "llm.api_model, llm.api_key, the prompt length against the server's context, and that the server "
                    "supports this request (llm.api_constraint for choose)"
                )
            return response.json()
        raise ModelError(
            f"cannot get an answer from {url} after {self.max_retries + 1} attempt(s) ({problem}); check that the "
            "server is running and that llm.model is its address, or raise llm.timeout_s / llm.max_retries"
        )

    def _map(self, fn: Any, items: list[Any]) -> list[Any]:
        if len(items) <= 1 or self.batch_size == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.batch_size, len(items))) as pool:
            return list(pool.map(fn, items))

    def _chat(self, messages: Messages, max_tokens: int, temperature: float, **extra: Any) -> str:
        body = {
            "model": self.api_model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **extra,
        }
        answer = self.post("chat/completions", body)
        try:
            return answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise ModelError(f"{self.base_url}: unexpected chat completion answer {str(answer)[:300]}") from e

    # --- LLM interface -----------------------------------------------------------------------------------------
    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        """See `LLM.generate`."""
        if max_new_tokens < 1:
            raise ModelError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        extra = {"stop": list(stop)} if stop else {}
        texts = self._map(lambda m: self._chat(m, max_new_tokens, temperature, **extra), prompts)
        return [cut_at_stop(t, stop) for t in texts]

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        """See `LLM.choose`: server-side constraint per `llm.api_constraint`, else closest candidate (warned)."""
        from rapidfuzz import fuzz, process

        check_choose_args(prompts, candidates)
        cand_lists = [unique(c) for c in candidates]

        def one(args: tuple[Messages, list[str]]) -> str:
            messages, cands = args
            extra: dict[str, Any] = {}
            if self.constraint == "grammar":
                extra["grammar"] = gbnf_choice(cands)
            elif self.constraint == "guided_choice":
                extra["guided_choice"] = cands
            elif self.constraint == "structured_outputs":
                extra["structured_outputs"] = {"choice": cands}
            # Enough tokens for any tokenization of the longest candidate (one token per byte at worst).
            longest = max(len(c.encode("utf-8")) for c in cands) + 1
            try:
                return self._chat(messages, longest, 0.0, **extra)
            except RequestRejected as e:
                if self.constraint == "none":
                    raise
                raise RequestRejected(
                    f"{e}; if the server does not take llm.api_constraint={self.constraint}, set the one it takes "
                    "(grammar: llama.cpp servers, structured_outputs: vLLM >= 0.12, guided_choice: older vLLM; none: "
                    "any server, the answer mapped to the closest candidate), or use generate.mode=free"
                ) from e

        answers = self._map(one, list(zip(prompts, cand_lists, strict=True)))
        chosen, mapped = [], 0
        for answer, cands in zip(answers, cand_lists, strict=True):
            if answer in cands:
                chosen.append(answer)
                continue
            mapped += 1
            best = process.extractOne(answer.strip(), cands, scorer=fuzz.WRatio)
            chosen.append(best[0])
        if mapped:
            logger.warning(
                "%s: %d of %d answers were not exactly a candidate (llm.api_constraint=%s%s) and were mapped to the "
                "closest candidate with rapidfuzz",
                self.base_url,
                mapped,
                len(answers),
                self.constraint,
                "" if self.constraint == "none" else ", which the server seems to ignore",
            )
        return chosen

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        """See `LLM.rank`: /v1/completions with echo + logprobs over the rendered prompt + candidate + EOS."""
        check_candidates(candidates)
        if self.template is None:
            raise ModelError(
                "rank on the openai backend needs the served model's chat template: set llm.api_template_model to "
                f"the same model as a local name, folder or .gguf file; or {RANK_ALTERNATIVES}"
            )
        template, bos, eos = self.template
        text = render_chat(template, prompt, bos, eos)

        def one(candidate: str) -> float:
            answer_text = candidate + eos
            body = {
                "model": self.api_model,
                "prompt": text + answer_text,
                "max_tokens": 1,  # some servers read 0 as "no limit"; the one generated token is ignored
                "temperature": 0.0,
                "echo": True,
                "logprobs": 1,
            }
            try:
                answer = self.post("completions", body)
            except RequestRejected as e:
                raise RequestRejected(f"{e}; rank sends /v1/completions with echo and logprobs: "
                                      f"{RANK_ALTERNATIVES}") from e
            try:
                lp = answer["choices"][0]["logprobs"]
                offsets, token_logprobs = lp["text_offset"], lp["token_logprobs"]
            except (KeyError, IndexError, TypeError) as e:
                raise ModelError(
                    f"{self.base_url} returned no logprobs for /v1/completions ({str(answer)[:200]}); this server "
                    f"does not support rank: {RANK_ALTERNATIVES}"
                ) from e
            # OpenAI semantics: text_offset[i] is where token i starts in the echoed text (prompt + completion), and
            # token_logprobs[i] is log p(token i | tokens before it). The candidate's tokens are those starting inside
            # candidate + EOS; the generated token starts after it and is left out.
            start, end = len(text), len(text) + len(answer_text)
            span = [i for i, off in enumerate(offsets) if start <= off < end]
            spelled = "".join(lp["tokens"][i] for i in span) if "tokens" in lp else ""
            if not span or spelled not in (answer_text, candidate) or any(token_logprobs[i] is None for i in span):
                raise ModelError(
                    f"{self.base_url} echoed logprobs that do not line up with the prompt (candidate {candidate!r} "
                    f"spelled {spelled!r}); this server does not support rank (llama.cpp's server echoes no prompt "
                    f"logprobs; llama-cpp-python's drops special tokens from its offsets): {RANK_ALTERNATIVES}"
                )
            picked = [token_logprobs[i] for i in span]
            total = float(sum(picked))
            return total / len(picked) if length_normalized else total

        return self._map(one, candidates)
