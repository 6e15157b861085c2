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

Every error is a 4xx JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so OpenAI
clients surface the message: malformed JSON, schema violations, unknown roles, empty dialogues and oversized
input (limits in `ServerConfig`) are refused before any model runs, and one handler maps `RegesError` to 4xx.

Concurrent requests are batched: the `MicroBatcher` collects requests for `batch_window_ms`, then answers them
with one `recommend_many` call on a single model thread, so N simultaneous users cost one batched pass through
each model instead of N queued ones. Swagger/ReDoc pages are off: they load their scripts from a CDN, which an
offline machine cannot reach.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from reges.errors import CatalogError, ConfigError, DataError, RegesError
from reges.recommender import (
    ASK_FOR_PREFERENCES,
    Recommendation,
    Recommender,
    check_context,
    parse_messages,
    wants_recommendation,
)
from reges.records import Turn

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


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
    batch_window_ms: After a request arrives, how long the micro-batcher waits for more before running the batch.
    max_batch_size: Most dialogues per `recommend_many` call.
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

    def __post_init__(self) -> None:
        for name in ("default_top_k", "max_top_k", "max_messages", "max_message_chars", "max_total_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server {name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_size < 1 or self.batch_window_ms < 0:
            raise ConfigError(
                f"server max_batch_size must be >= 1 and batch_window_ms >= 0, got {self.max_batch_size} "
                f"and {self.batch_window_ms}"
            )
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ConfigError(f"default_top_k {self.default_top_k} must lie in [1, max_top_k={self.max_top_k}]")


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
    413: {"model": ErrorResponse, "description": "Request body too large."},
    422: {"model": ErrorResponse, "description": "Malformed JSON, schema violation or unusable dialogue."},
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


class MicroBatcher:
    """Collects concurrent requests for a few milliseconds and answers them with one `recommend_many` call.

    Model calls run on one dedicated thread: the models are shared, never used by two threads at once, and the event
    loop stays free to accept requests (which queue up and form the next batch) while a batch runs.

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
        """Queue one dialogue; returns its recommendation and the size of the batch it ran in."""
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
            try:
                await self._run(batch)
            except Exception as e:  # a bug, not bad input: fail these requests (500), keep serving the next ones
                logger.exception("batch of %d failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[int, list[_Pending]] = {}
        for p in batch:
            groups.setdefault(p.top_k, []).append(p)  # recommend_many takes one top_k
        for top_k, group in groups.items():
            contexts = [p.context for p in group]
            try:
                recs = await loop.run_in_executor(self._executor, self.recommender.recommend_many, contexts, top_k)
            except RegesError as e:
                if len(group) == 1:
                    if not group[0].future.done():
                        group[0].future.set_exception(e)
                    continue
                # One bad dialogue must not fail its neighbours: answer them one by one.
                logger.info("a batch of %d raised %s; answering its requests one by one", len(group), e)
                for p in group:
                    await self._run([p])
                continue
            self.requests += len(group)
            self.batches += 1
            for p, rec in zip(group, recs, strict=True):
                if not p.future.done():  # the client may have gone away
                    p.future.set_result((rec, len(group)))


# --- Body size limit -----------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent.

    The body is read (bounded) before the app sees it and replayed to it; recommend requests are small, so buffering
    costs nothing and a huge upload never reaches the JSON parser.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
            message = await receive()
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
        body = json.dumps(_error_body(message, "request_too_large")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- The app -------------------------------------------------------------------------------------------------------


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
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    @app.exception_handler(RegesError)
    async def reges_error(request: Request, exc: RegesError) -> JSONResponse:
        status = 422 if isinstance(exc, DataError | CatalogError) else 400
        return JSONResponse(_error_body(str(exc), "invalid_request_error"), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(_validation_message(exc), "invalid_request_error"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(_error_body(message, "invalid_request_error"), status_code=exc.status_code)

    def to_context(messages: list[Message]) -> list[Turn]:
        """Check the configured limits, then turn messages into dialogue turns (DataError -> 422)."""
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
    """uvicorn's h11 protocol with TCP_NODELAY set on every connection.

    uvicorn writes a response's headers and body separately, and asyncio leaves Nagle's algorithm on for accepted
    sockets here (their `proto` is 0, which its TCP_NODELAY check skips). On a keep-alive connection the body then
    waits for the client's delayed ACK: measured 44 ms added to every request after a connection's first, against
    0.3 ms with TCP_NODELAY (GET /health, loopback, this machine).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings `reges serve` uses (`NoDelayH11Protocol`); extra keyword arguments go to uvicorn.Config.

    Example:
        >>> uvicorn.Server(uvicorn_config(create_app(recommender), port=8000)).run()
    """
    return uvicorn.Config(app, host=host, port=port, http=NoDelayH11Protocol, **kwargs)


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
