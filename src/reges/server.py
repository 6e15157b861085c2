"""HTTP API over a `Recommender`: a recommend endpoint, an OpenAI-compatible chat endpoint and a web chat page.

Routes (`create_app(recommender)`):
    POST /v1/recommend          {"messages": [{"role", "content"}], "top_k"} -> pick, query, candidates, latency
    POST /v1/chat/completions   OpenAI Chat Completions (also `"stream": true`: SSE chunks, then `data: [DONE]`);
                                the answer's text is the recommendation's reply, and a `recommendation` field
                                carries the structured result (null while the user has said nothing to go on)
    GET  /v1/models             the one model this server answers as
    GET  /health                liveness plus request/batch counters
    GET  /openapi.json          the API description
    GET  /                      the web chat page (`reges/web/`, static files under /static)

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so OpenAI
clients surface the message: malformed JSON, schema violations, unknown roles, empty dialogues, text that is not
valid Unicode (lone surrogates) and oversized input (limits in `ServerConfig`) are refused with a 4xx before any
model runs, and one handler maps `RegesError` to 4xx. A failure inside the models is a JSON 500 for the request
that caused it alone. Half-sent requests are cut off: headers that stall are closed (`header_timeout_s`), bodies
that stall get a 408 (`body_timeout_s`).

Concurrent requests are batched: the `MicroBatcher` collects requests for `batch_window_ms`, then answers them
with one `recommend_many` call on a single model thread (at the batch's largest top_k, each answer cut to its own),
so N simultaneous users cost one batched pass through each model instead of N queued ones. Swagger/ReDoc pages
are off: they load their scripts from a CDN, which an offline machine cannot reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from reges.errors import CatalogError, ConfigError, DataError, RegesError
from reges.recommender import (
    ASK_FOR_PREFERENCES,
    Recommendation,
    Recommender,
    check_context,
    parse_messages,
    reply_text,
    wants_recommendation,
)
from reges.records import Turn

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


# The `reges serve` flag behind each ServerConfig field, so that a refused value names its fix.
SERVE_FLAGS: dict[str, str] = {
    "default_top_k": "--top-k",
    "batch_window_ms": "--batch-window-ms",
    "max_batch_size": "--max-batch-size",
    "max_total_chars": "--max-total-chars",
    "max_body_bytes": "--max-body-bytes",
}


@dataclass(frozen=True)
class ServerConfig:
    """Attributes:
    model_name: The model id /v1/models lists and chat completions answer with (the run name, for `reges serve`).
    default_top_k: Candidates returned when a request gives no top_k.
    max_top_k: Largest top_k a request may ask for.
    max_messages: Most messages in one request.
    max_message_chars: Longest content of one message.
    max_total_chars: Most characters over all messages of one request.
    max_body_bytes: Request bodies larger than this are refused (413) before they are parsed.
    batch_window_ms: After a request arrives, how long the micro-batcher waits for more before running the batch
        (0: no waiting; a batch is what queued up while the previous one ran).
    max_batch_size: Most dialogues per `recommend_many` call.
    header_timeout_s: A connection whose request line and headers are not complete this long after it opened (or
        after the first byte of its next request) is closed, so half-sent requests cannot hold connections.
    body_timeout_s: Longest wait for each chunk of a request body; then the request gets a 408 and is closed.

    Raises:
        ConfigError: a value out of range (the message names the field, the value and the `reges serve` flag).
    """

    model_name: str = "reges"
    default_top_k: int = 5
    max_top_k: int = 50
    max_messages: int = 64
    max_message_chars: int = 4000
    max_total_chars: int = 16000
    max_body_bytes: int = 1_000_000
    batch_window_ms: float = 5.0
    max_batch_size: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        counts = {
            "default_top_k": self.default_top_k,
            "max_top_k": self.max_top_k,
            "max_messages": self.max_messages,
            "max_message_chars": self.max_message_chars,
            "max_total_chars": self.max_total_chars,
            "max_body_bytes": self.max_body_bytes,
            "max_batch_size": self.max_batch_size,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(_bad_setting(name, value, "must be >= 1", "an integer >= 1"))
        # `not x >= 0` also refuses NaN; timeouts must be finite for the event loop's timers
        if not _is_number(self.batch_window_ms) or not 0 <= self.batch_window_ms < math.inf:
            raise ConfigError(_bad_setting("batch_window_ms", self.batch_window_ms, "must be >= 0", "0 or more"))
        for name, value in {"header_timeout_s": self.header_timeout_s, "body_timeout_s": self.body_timeout_s}.items():
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigError(_bad_setting(name, value, "must be > 0", "a positive number of seconds"))
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ConfigError(
                f"default_top_k {self.default_top_k} must lie in [1, max_top_k={self.max_top_k}]; pass a smaller "
                "--top-k"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad_setting(name: str, value: object, rule: str, wanted: str) -> str:
    fix = f"pass {SERVE_FLAGS[name]} with {wanted}" if name in SERVE_FLAGS else f"set ServerConfig.{name} to {wanted}"
    return f"server {name} {rule}, got {value!r}; {fix}"


def check_listen_address(host: str, port: int) -> None:
    """Refuse an address the server could not listen on, before minutes of model loading are spent in vain.

    Checks the port range, resolves the host and binds a socket there once (with SO_REUSEADDR, as uvicorn does, so
    a port left in TIME_WAIT passes): a port in use, a privileged port or an address of another machine fail now,
    not after the models are loaded. Another process may still take the port in between; uvicorn then fails as
    before.

    Raises:
        ConfigError: the port lies outside 1..65535, the host does not resolve, or binding fails.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port must lie in 1..65535, got {port!r}; pass a free port such as 8000")
    if not host:
        raise ConfigError("--host is empty; pass 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    try:
        family, type_, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ConfigError(
            f"--host {host!r} does not resolve ({e.strerror}); pass an address of this machine, e.g. 127.0.0.1"
        ) from e
    with socket.socket(family, type_, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({e.strerror}); pass a free --port (ports below 1024 need "
                "privileges) and a --host of this machine"
            ) from e


# --- Request and response models -----------------------------------------------------------------------------------


class TextPart(BaseModel):
    """One part of an OpenAI multi-part message; only text parts carry anything a recommender can read."""

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message. `system`/`developer` messages are accepted and ignored; other OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    item_ids: list[str] = Field(
        default_factory=list,
        description="reges extension: ids of catalog items this turn mentions; they are not recommended again in "
        "this dialogue (echo a recommendation's item_id on the assistant message that carried it)",
    )

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class RecommendRequest(BaseModel):
    messages: list[Message] = Field(
        min_length=1, description="The dialogue so far, oldest first; at least one user message with text."
    )
    top_k: int | None = Field(default=None, ge=1, description="Candidates to return (at most the server's limit).")


class CandidateOut(BaseModel):
    item_id: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    item_id: str = Field(description="The picked item.")
    title: str
    query: str = Field(description="The preference query the Query Expert wrote ('' when the pipeline has none).")
    candidates: list[CandidateOut] = Field(description="The retriever's ranking, best first.")
    latency_ms: dict[str, float] = Field(description="Milliseconds per stage for the batch this request ran in.")
    reply: str = Field(description="A short chat answer.")
    batch_size: int = Field(description="Dialogues answered together with this one.")


class ChatRequest(BaseModel):
    """OpenAI Chat Completions request; sampling fields (temperature, max_tokens, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default="", description="Any value; the server answers as its one model.")
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    top_k: int | None = Field(default=None, ge=1, description="reges extension: candidates in `recommendation`.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    recommendation: RecommendResponse | None = Field(
        description="reges extension: the structured recommendation behind the answer; null when the user has "
        "not said anything preference-like yet (the answer then asks for it)."
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reges"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    requests: int = Field(description="Dialogues answered since start-up.")
    batches: int = Field(description="recommend_many calls since start-up (requests / batches = mean batch size).")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (bad value)."},
    408: {"model": ErrorResponse, "description": "The request body stalled (the connection is closed)."},
    413: {"model": ErrorResponse, "description": "Request body too large."},
    422: {"model": ErrorResponse, "description": "Malformed JSON, schema violation or unusable dialogue."},
    500: {"model": ErrorResponse, "description": "The recommender failed on this request (a bug: see the log)."},
}


# One server-sent event of a streamed chat completion: `data` is a JSON `chat.completion.chunk`, or `[DONE]` last.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}


# --- Micro-batching ------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    context: list[Turn]
    top_k: int
    future: asyncio.Future[tuple[Recommendation, int]]


class RecommendFailed(Exception):
    """The models raised something other than a `RegesError` for one request: a bug, or input the checks missed.

    Raised to that request alone (answered as a JSON 500); the traceback is logged once, by the batcher.
    """


class MicroBatcher:
    """Collects concurrent requests for a few milliseconds and answers them with one `recommend_many` call.

    Model calls run on one dedicated thread: the models are shared, never used by two threads at once, and the event
    loop stays free to accept requests (which queue up and form the next batch) while a batch runs.

    Requests with different top_k share a batch: it runs at the largest top_k and each answer is cut to its own
    (`cut_to_top_k`). When a batch raises, its requests are answered one by one, so one bad request fails alone.

    Example:
        >>> batcher = MicroBatcher(recommender, window_ms=5, max_batch_size=32)
        >>> await batcher.start()
        >>> rec, batch_size = await batcher.submit([Turn("user", "a scary movie")], top_k=5)
    """

    def __init__(self, recommender: Recommender, window_ms: float, max_batch_size: int) -> None:
        self.recommender = recommender
        self.window_s = window_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.requests = 0
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reges-model")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, context: list[Turn], top_k: int) -> tuple[Recommendation, int]:
        """Queue one dialogue; returns its recommendation and the size of the batch it ran in.

        Raises:
            RegesError: the recommender refused this dialogue (bad input).
            RecommendFailed: the recommender failed on this dialogue in any other way.
        """
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        future: asyncio.Future[tuple[Recommendation, int]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(context, top_k, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())  # queued while the last batch ran: no reason to wait
            try:
                await self._run(batch)
            except Exception as e:  # a bug in the batcher itself: fail these requests, keep serving the next ones
                logger.exception("batch of %d failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RecommendFailed(f"internal error ({type(e).__name__})"))

    async def _run(self, batch: list[_Pending]) -> None:
        """One `recommend_many` call at the batch's largest top_k; on failure, each request again on its own."""
        loop = asyncio.get_running_loop()
        top_k = max(p.top_k for p in batch)
        contexts = [p.context for p in batch]
        try:
            recs = await loop.run_in_executor(self._executor, self.recommender.recommend_many, contexts, top_k)
        except Exception as e:
            if len(batch) > 1:
                # Which request broke the batch is unknown: answer them one by one, so it alone fails.
                logger.info("a batch of %d raised %s; answering its requests one by one", len(batch), type(e).__name__)
                for p in batch:
                    await self._run([p])
            else:
                self._fail(batch[0], e)
            return
        self.requests += len(batch)
        self.batches += 1
        for p, rec in zip(batch, recs, strict=True):
            if not p.future.done():  # the client may have gone away
                p.future.set_result((cut_to_top_k(rec, p.top_k), len(batch)))

    def _fail(self, pending: _Pending, error: Exception) -> None:
        """A RegesError goes to the request as it is (a 4xx); anything else is logged with its traceback, once."""
        if not isinstance(error, RegesError):
            logger.error("the recommender failed on one request", exc_info=error)
            error = RecommendFailed(f"the recommender failed on this request ({type(error).__name__})")
        if not pending.future.done():
            pending.future.set_exception(error)


def cut_to_top_k(rec: Recommendation, top_k: int) -> Recommendation:
    """`rec`, answered for a larger top_k, as a call with `top_k` answers it (what lets top_k values share a batch).

    `recommend_many` ranks by (-score, item_id) and picks among the first `generate.top_k` candidates whatever
    top_k is asked, so a smaller top_k only shortens the candidate list and the alternatives the reply names.
    (Approximate indexes whose search depends on the depth asked for, e.g. HNSW with k > ef_search, may differ;
    batching already varies that depth with the items the batch's dialogues mention.)
    """
    if len(rec.candidates) <= top_k:
        return rec
    candidates = rec.candidates[:top_k]
    alternatives = [c.title for c in candidates if c.item_id != rec.item_id]
    return dataclasses.replace(rec, candidates=candidates, reply=reply_text(rec.title, rec.query, alternatives))


# --- Body size limit -----------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent, and
    bodies that stall for `timeout_s` between chunks with 408.

    The body is read (bounded) before the app sees it and replayed to it; recommend requests are small, so buffering
    costs nothing and a huge upload never reaches the JSON parser. The stall timeout frees the connections of
    clients that send headers and then too little body: without it they are held until the client gives up.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                await self._time_out(send, size, int(length) if length.isdigit() else None)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as Starlette expects

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable[..., Any], size: int) -> None:
        message = (
            f"request body of {size} bytes exceeds the limit of {self.max_bytes}; send a shorter dialogue "
            "(or start the server with a larger --max-body-bytes)"
        )
        # The connection stays open: uvicorn discards the rest of the body, and a client still uploading reads
        # this answer instead of a reset connection.
        await _send_json(send, 413, _error_body(message, "request_too_large"), close=False)

    async def _time_out(self, send: Callable[..., Any], size: int, length: int | None) -> None:
        got = f"{size} of {length} bytes" if length is not None else f"{size} bytes"
        message = (
            f"the request body was not received within {self.timeout_s:g} s ({got} arrived); send the whole body "
            "without pausing"
        )
        logger.debug("408 after %s of a request body", got)
        # Closed: the rest of this body may never come, and the connection must not be reused mid-body.
        await _send_json(send, 408, _error_body(message, "request_timeout"), close=True)


async def _send_json(send: Callable[..., Any], status: int, content: dict[str, Any], close: bool) -> None:
    """A JSON response sent straight through ASGI, for middleware that answers before the app runs."""
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- The app -------------------------------------------------------------------------------------------------------

# JSON's \uXXXX escapes can spell half of a UTF-16 surrogate pair; Python keeps it in the str, but no tokenizer (and
# no UTF-8 encoder) accepts it.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_unicode(messages: list[Message]) -> None:
    """Refuse text that is not valid Unicode before it reaches a tokenizer (which would fail the whole batch).

    Raises:
        DataError: a message's content or item id holds a lone surrogate (the message names the field).
    """
    for i, m in enumerate(messages):
        fields = [(f"messages.{i}.content", m.text())] + [(f"messages.{i}.item_ids", x) for x in m.item_ids]
        for field, text in fields:
            found = _LONE_SURROGATE.search(text)
            if found:
                raise DataError(
                    f"{field} holds a lone UTF-16 surrogate (U+{ord(found.group()):04X} at position {found.start()}), "
                    "which is not text; send valid Unicode (a character outside the BMP as a surrogate pair such as "
                    "\\ud83d\\ude00, or as UTF-8)"
                )


def _error_body(message: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _validation_message(exc: RequestValidationError) -> str:
    """One readable line from pydantic's error list: where, what, and for bad JSON how to fix it."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            return (
                f"malformed JSON body ({reason}); send a JSON object like "
                '{"messages": [{"role": "user", "content": "..."}]}'
            )
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    more = len(exc.errors()) - 3
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def create_app(recommender: Recommender, cfg: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `recommender` (models already loaded; the app only batches calls to it).

    Args:
        recommender: Shared by every request; called from one worker thread through the micro-batcher.
        cfg: Limits, batching and the model name (defaults: `ServerConfig()`).

    Example:
        >>> app = create_app(PipelineRecommender.from_run_dir("runs/inspired"), ServerConfig(model_name="inspired"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    cfg = cfg or ServerConfig()
    batcher = MicroBatcher(recommender, cfg.batch_window_ms, cfg.max_batch_size)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="reges",
        version="0.1.0",
        summary="Conversational recommendation: dialogue in, one catalog item out (ReGeS).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.config = cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)

    @app.exception_handler(RegesError)
    async def reges_error(request: Request, exc: RegesError) -> JSONResponse:
        status = 422 if isinstance(exc, DataError | CatalogError) else 400
        return JSONResponse(_error_body(str(exc), "invalid_request_error"), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(_validation_message(exc), "invalid_request_error"), status_code=422)

    @app.exception_handler(RecommendFailed)
    async def recommend_failed(request: Request, exc: RecommendFailed) -> JSONResponse:
        message = f"{exc}; other requests are not affected, and the server log has the traceback"
        return JSONResponse(_error_body(message, "server_error"), status_code=500)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # The last resort (Starlette logs the traceback after this answer): JSON like every other error, so
        # clients show a message instead of failing to parse "Internal Server Error".
        message = f"internal error ({type(exc).__name__}): {request.method} {request.url.path}; see the server log"
        return JSONResponse(_error_body(message, "server_error"), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(_error_body(message, "invalid_request_error"), status_code=exc.status_code)

    def to_context(messages: list[Message]) -> list[Turn]:
        """Check the configured limits and the text, then turn messages into dialogue turns (DataError -> 422)."""
        if len(messages) > cfg.max_messages:
            raise DataError(f"{len(messages)} messages exceed the limit of {cfg.max_messages}; send the latest ones")
        total = 0
        for i, m in enumerate(messages):
            n = len(m.text())
            if n > cfg.max_message_chars:
                raise DataError(f"message {i} has {n} characters, over the limit of {cfg.max_message_chars}")
            total += n
        if total > cfg.max_total_chars:
            raise DataError(
                f"the messages hold {total} characters, over the limit of {cfg.max_total_chars}; send fewer turns"
            )
        check_unicode(messages)
        context = parse_messages([{"role": m.role, "content": m.text(), "item_ids": m.item_ids} for m in messages])
        check_context(context)
        return context

    def resolve_top_k(top_k: int | None) -> int:
        if top_k is None:
            return cfg.default_top_k
        if not 1 <= top_k <= cfg.max_top_k:
            raise ConfigError(f"top_k must lie in [1, {cfg.max_top_k}], got {top_k}")
        return top_k

    def to_response(rec: Recommendation, batch_size: int) -> RecommendResponse:
        return RecommendResponse(**rec.to_dict(), batch_size=batch_size)

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        """Recommend one item for the dialogue, with the query, the candidates and per-stage latency."""
        top_k = resolve_top_k(req.top_k)
        rec, batch_size = await batcher.submit(to_context(req.messages), top_k)
        return to_response(rec, batch_size)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            **ERROR_RESPONSES,
            200: {
                "description": "A chat completion, or with `stream: true` server-sent `chat.completion.chunk`s.",
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            },
        },
    )
    async def chat_completions(req: ChatRequest) -> Any:
        """OpenAI-compatible chat: the reply recommends an item once the user has said what they like."""
        top_k = resolve_top_k(req.top_k)
        context = to_context(req.messages)
        if wants_recommendation(context):
            rec, batch_size = await batcher.submit(context, top_k)
            content, recommendation = rec.reply, to_response(rec, batch_size)
        else:
            content, recommendation = ASK_FOR_PREFERENCES, None
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=cfg.model_name,
            choices=[Choice(index=0, message=AssistantMessage(content=content), finish_reason="stop")],
            recommendation=recommendation,
        )
        if not req.stream:
            return completion
        return StreamingResponse(
            _sse_chunks(completion),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The single model this server answers as."""
        return ModelList(data=[ModelCard(id=cfg.model_name, created=started)])

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness, plus how many requests and batches were served."""
        return Health(status="ok", model=cfg.model_name, requests=batcher.requests, batches=batcher.batches)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY set on every connection and a deadline for request headers.

    TCP_NODELAY: uvicorn writes a response's headers and body separately, and asyncio leaves Nagle's algorithm on for
    accepted sockets here (their `proto` is 0, which its TCP_NODELAY check skips). On a keep-alive connection the
    body then waits for the client's delayed ACK: measured 44 ms added to every request after a connection's first,
    against 0.3 ms with TCP_NODELAY (GET /health, loopback, this machine).

    Header deadline: uvicorn times out only idle keep-alive connections, and stops that timer at the first byte, so
    a client that opens a connection and sends nothing, or half a request line, holds it forever (1,500 of them were
    held in a test). A timer started when the connection opens, and again at the first byte of each following
    request, closes the connection unless the request line and headers are complete within `header_timeout_s`.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        header_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._start_header_timer()  # the first bytes of the next request on a keep-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # headers complete (body or end next), or a refused request
            self._stop_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # No request yet, so no HTTP response is possible (h11 answers only requests): just close.
            logger.debug("closing %s: request headers incomplete after %g s", self.client, self.header_timeout_s)
            self.transport.close()


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings `reges serve` uses; extra keyword arguments go to uvicorn.Config.

    The protocol is `NoDelayH11Protocol` with the header timeout of the app's `ServerConfig` (from `create_app`).

    Example:
        >>> uvicorn.Server(uvicorn_config(create_app(recommender), port=8000)).run()
    """
    cfg: ServerConfig = app.state.config
    protocol = functools.partial(NoDelayH11Protocol, header_timeout_s=cfg.header_timeout_s)
    return uvicorn.Config(app, host=host, port=port, http=protocol, **kwargs)  # type: ignore[arg-type]


async def _sse_chunks(completion: ChatCompletion) -> AsyncIterator[str]:
    """A finished completion as OpenAI stream chunks: the role, the text word by word, the stop, `[DONE]`.

    The pipeline does not produce tokens one by one, so the answer is complete before the first chunk; streaming
    exists for clients that only speak `stream: true`.
    """
    head = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created}
    head["model"] = completion.model

    def chunk(delta: dict[str, str], finish_reason: str | None, **extra: Any) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in re.findall(r"\S+\s*", completion.choices[0].message.content):
        yield chunk({"content": piece}, None)
    rec = completion.recommendation
    yield chunk({}, "stop", recommendation=rec.model_dump() if rec is not None else None)
    yield "data: [DONE]\n\n"
