"""The server against hostile or careless clients (2026-12-06): poisoned batches, lone surrogates, mixed top_k,
bad listen settings and half-sent requests. Real uvicorn on 127.0.0.1, raw sockets where HTTP clients are too polite.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from serving_helpers import serve_in_thread

from reges.errors import ConfigError, DataError
from reges.recommender import Candidate, PipelineRecommender, Recommendation
from reges.records import Turn
from reges.server import MicroBatcher, RecommendFailed, ServerConfig, check_listen_address, create_app

LIKES = "I loved The Hobbit, any epic fantasy?"
SURROGATE = "\ud800"  # a lone UTF-16 surrogate: valid in a JSON string escape, not encodable as UTF-8
TIMEOUTS = ServerConfig(model_name="tiny", header_timeout_s=0.5, body_timeout_s=0.5)


@pytest.fixture(scope="module")
def base_url(recommender: PipelineRecommender) -> Iterator[str]:
    with serve_in_thread(create_app(recommender, TIMEOUTS)) as url:
        yield url


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


class Poisoned:
    """Wraps a recommender; raises `error` for any batch holding a dialogue that says 'boom', records each call."""

    def __init__(self, inner: PipelineRecommender, error: Exception) -> None:
        self.inner = inner
        self.error = error
        self.calls: list[tuple[int, int]] = []  # (batch size, top_k)
        self.lock = threading.Lock()

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        return self.recommend_many([context], top_k)[0]

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        with self.lock:
            self.calls.append((len(contexts), top_k))
        if any("boom" in t.content for c in contexts for t in c):
            raise self.error
        return self.inner.recommend_many(contexts, top_k)


def _burst(url: str, bodies: list[dict[str, object]], path: str = "/v1/recommend") -> list[httpx.Response]:
    """POST every body at once. The bodies are JSON text with ASCII escapes (httpx's `json=` cannot encode a lone
    surrogate as UTF-8; a JSON escape is how a client sends one)."""
    headers = {"content-type": "application/json"}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            posts = (client.post(path, content=json.dumps(body), headers=headers) for body in bodies)
            return await asyncio.gather(*posts)

    return asyncio.run(run())


# --- 1. A request's failure stays that request's --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/recommend", "/v1/chat/completions"])
@pytest.mark.parametrize(
    ("message", "field"),
    [
        (_user(f"I loved {SURROGATE} The Hobbit"), "messages.2.content"),
        ({"role": "user", "content": [{"type": "text", "text": f"epic {SURROGATE}"}]}, "messages.2.content"),
        ({"role": "user", "content": LIKES, "item_ids": [f"x{SURROGATE}"]}, "messages.2.item_ids"),
    ],
)
def test_lone_surrogate_is_a_clear_422(base_url: str, path: str, message: dict[str, object], field: str) -> None:
    # json.dumps escapes the surrogate as \ud800: valid JSON text, as a careless client would send it
    body = json.dumps({"messages": [{"role": "system", "content": "hi"}, _user("hello"), message]})
    r = httpx.post(f"{base_url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert field in error["message"] and "surrogate" in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_surrogate_and_bad_utf8_never_reach_the_models(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/v1/recommend", content=b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', timeout=30
    )
    assert r.status_code in (400, 422) and r.headers["content-type"] == "application/json", r.text
    assert "error" in r.json()


def test_seven_requests_batched_with_a_surrogate_all_succeed(recommender: PipelineRecommender) -> None:
    """Over HTTP: the poisoned request is refused before batching; the 7 others share one batch."""
    poisoned = Poisoned(recommender, RuntimeError("unused"))
    app = create_app(poisoned, ServerConfig(model_name="tiny", batch_window_ms=300, max_batch_size=16))
    with serve_in_thread(app) as url:
        bodies: list[dict[str, object]] = [{"messages": [_user(f"{LIKES} {i}")]} for i in range(7)]
        bodies.insert(3, {"messages": [_user(f"epic {SURROGATE}")]})
        responses = _burst(url, bodies)
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 3 + [422] + [200] * 4, [r.text for r in responses]
    assert poisoned.calls == [(7, 5)]


def test_micro_batcher_isolates_a_failure_inside_the_models(recommender: PipelineRecommender) -> None:
    """Independent of the HTTP checks: a surrogate handed to the real recommender fails only its own request.

    (The recommender's tokenizer raised a TypeError for it; `check_context` may refuse it first with a DataError.
    Either way the batch fails and its requests are answered one by one.)
    """

    contexts = [[Turn("user", f"{LIKES} {i}")] for i in range(7)]
    contexts.insert(5, [Turn("user", f"fantasy {SURROGATE}")])

    async def scenario() -> list[object]:
        batcher = MicroBatcher(recommender, window_ms=300, max_batch_size=16)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(c, 3) for c in contexts), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert isinstance(results[5], RecommendFailed | DataError), results[5]
    for context, result in zip(contexts[:5] + contexts[6:], results[:5] + results[6:], strict=True):
        assert isinstance(result, tuple), result
        assert result[0].item_id == recommender.recommend(context, 3).item_id and result[1] == 1


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (RuntimeError("tokenizer exploded"), 500, "RuntimeError"),
        (DataError("boom is not a preference; say what you like"), 422, "boom is not a preference"),
    ],
)
def test_seven_requests_batched_with_a_failing_one_all_succeed(
    recommender: PipelineRecommender, error: Exception, status: int, message: str
) -> None:
    """Over HTTP: the recommender raises for the whole batch; each request is retried alone, the bad one gets JSON."""
    poisoned = Poisoned(recommender, error)
    app = create_app(poisoned, ServerConfig(model_name="tiny", batch_window_ms=300, max_batch_size=16))
    with serve_in_thread(app) as url:
        for path in ("/v1/recommend", "/v1/chat/completions"):
            poisoned.calls.clear()
            bodies: list[dict[str, object]] = [{"messages": [_user(f"{LIKES} {i}")]} for i in range(7)]
            bodies.insert(0, {"messages": [_user("boom, epic fantasy")]})
            responses = _burst(url, bodies, path)
            assert [r.status_code for r in responses] == [status] + [200] * 7, [r.text for r in responses]
            assert responses[0].headers["content-type"] == "application/json"
            assert message in responses[0].json()["error"]["message"]
            assert sorted(poisoned.calls) == sorted([(8, 5)] + [(1, 5)] * 8), poisoned.calls
        health = httpx.get(f"{url}/health").json()
    assert health["requests"] == 14


class Malformed:
    """A recommender with a bug: its answers do not fit the response schema (a score that is not a number)."""

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        return self.recommend_many([context], top_k)[0]

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        bad = Candidate("1", "A Book", "high")  # type: ignore[arg-type]
        return [Recommendation("1", "A Book", "", [bad], {"total": 1.0}, "I'd recommend A Book.") for _ in contexts]


def test_a_bug_outside_the_batcher_is_a_json_500(recommender: PipelineRecommender) -> None:
    with serve_in_thread(create_app(Malformed(), ServerConfig(model_name="tiny"))) as url:
        r = httpx.post(f"{url}/v1/recommend", json={"messages": [_user(LIKES)]}, timeout=30)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"]["message"].startswith("internal error (ValidationError): POST /v1/recommend")
        assert httpx.get(f"{url}/health").status_code == 200


class Slow:
    """Wraps a recommender; every call signals `started`, then takes 0.3 s (a batch long enough to queue behind)."""

    def __init__(self, inner: Poisoned) -> None:
        self.inner = inner
        self.started = threading.Event()

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        return self.recommend_many([context], top_k)[0]

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        self.started.set()
        time.sleep(0.3)
        return self.inner.recommend_many(contexts, top_k)


def test_zero_window_batches_what_queued_while_the_models_ran(recommender: PipelineRecommender) -> None:
    """batch_window_ms=0 adds no wait, but requests that arrive while a batch runs still form the next batch."""
    recording = Poisoned(recommender, RuntimeError("unused"))
    slow = Slow(recording)

    async def scenario() -> None:
        batcher = MicroBatcher(slow, window_ms=0, max_batch_size=16)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit([Turn("user", LIKES)], 2))
            await asyncio.get_running_loop().run_in_executor(None, slow.started.wait)
            rest = [batcher.submit([Turn("user", f"{LIKES} {i}")], 2) for i in range(5)]
            await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert recording.calls == [(1, 2), (5, 2)]


# --- 2. Different top_k share one batch ----------------------------------------------------------------------------


def test_mixed_top_k_share_one_batch_and_match_lone_answers(recommender: PipelineRecommender) -> None:
    recording = Poisoned(recommender, RuntimeError("unused"))
    first = recommender.recommend([Turn("user", LIKES)], 1)
    contexts = [
        [Turn("user", LIKES)],
        [Turn("user", "a space opera with politics")],
        [Turn("user", LIKES), Turn("assistant", first.reply, [first.item_id]), Turn("user", "read it, what else?")],
        [Turn("user", "a cozy mystery")],
        [Turn("user", "something about dragons")],
    ]
    requests = [(c, top_k) for top_k in (1, 2, 3, 8) for c in contexts]

    async def scenario() -> list[tuple[Recommendation, int]]:
        batcher = MicroBatcher(recording, window_ms=300, max_batch_size=32)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(c, top_k) for c, top_k in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert recording.calls == [(len(requests), 8)]
    for (context, top_k), (rec, batch_size) in zip(requests, results, strict=True):
        alone = recommender.recommend(context, top_k)
        assert batch_size == len(requests) and len(rec.candidates) == top_k
        assert {**rec.to_dict(), "latency_ms": None} == {**alone.to_dict(), "latency_ms": None}, (top_k, context)


def test_mixed_top_k_over_http(recommender: PipelineRecommender) -> None:
    recording = Poisoned(recommender, RuntimeError("unused"))
    app = create_app(recording, ServerConfig(model_name="tiny", batch_window_ms=300, max_batch_size=16))
    with serve_in_thread(app) as url:
        responses = _burst(url, [{"messages": [_user(LIKES)], "top_k": top_k} for top_k in (1, 4, 2, 7)])
    assert [len(r.json()["candidates"]) for r in responses] == [1, 4, 2, 7]
    assert recording.calls == [(4, 7)] and {r.json()["batch_size"] for r in responses} == {4}


# --- 3. Settings are checked before any model loads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_body_bytes", 0, "max_body_bytes must be >= 1, got 0"),
        ("max_batch_size", 0, "max_batch_size must be >= 1, got 0"),
        ("batch_window_ms", -1.0, "batch_window_ms must be >= 0, got -1.0"),
        ("header_timeout_s", 0.0, "header_timeout_s must be > 0, got 0.0"),
        ("body_timeout_s", -5.0, "body_timeout_s must be > 0, got -5.0"),
        ("default_top_k", 0, "default_top_k must be >= 1, got 0"),
        ("max_top_k", 3, "default_top_k 5 must lie in [1, max_top_k=3]"),
        ("batch_window_ms", float("nan"), "batch_window_ms must be >= 0, got nan"),
    ],
)
def test_server_config_rejects_bad_values(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig(**{field: value})  # type: ignore[arg-type]
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("port", [0, -1, 65536, 99999])
def test_check_listen_address_rejects_out_of_range_ports(port: int) -> None:
    with pytest.raises(ConfigError, match=rf"--port must lie in 1\.\.65535, got {port}"):
        check_listen_address("127.0.0.1", port)


def test_check_listen_address_rejects_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}.*--port"):
            check_listen_address("127.0.0.1", port)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    check_listen_address("127.0.0.1", port)  # free again: no error


# --- 4. Half-sent requests are cut off ------------------------------------------------------------------------------


def _connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0 = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk


def test_half_sent_headers_are_closed(base_url: str) -> None:
    silent = _connect(base_url)  # connects and sends nothing
    partial = _connect(base_url)
    partial.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    for sock in (silent, partial):
        data, seconds = _read_until_closed(sock)
        assert data == b"" and seconds < 3.0
        sock.close()


def test_header_timer_restarts_for_each_request_on_a_keep_alive_connection(base_url: str) -> None:
    sock = _connect(base_url)
    time.sleep(0.3)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # within the 0.5 s header timeout
    time.sleep(0.4)  # the first timer (connection opened 0.7 s ago) must have been cancelled
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 1")  # the third request stalls in its headers
    data, seconds = _read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and seconds < 3.0, data
    sock.close()


def test_half_sent_body_gets_408(base_url: str) -> None:
    sock = _connect(base_url)
    head = b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    part = b'{"messages": [{"role": "user", "content": "I lov'
    sock.sendall(head + b"Content-Length: 200\r\n\r\n" + part)
    data, seconds = _read_until_closed(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"connection: close" in data.lower() and seconds < 3.0
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert "was not received within 0.5 s" in error["message"], error
    assert f"{len(part)} of 200 bytes" in error["message"], error


def test_many_half_sent_requests_are_all_closed_and_normal_ones_still_work(base_url: str) -> None:
    socks = [_connect(base_url) for _ in range(60)]
    for i, sock in enumerate(socks):
        if i % 2:
            sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n\r\n{")
        else:
            sock.sendall(b"GET /health HTTP/1.1\r\nHo")
    r = httpx.post(f"{base_url}/v1/recommend", json={"messages": [_user(LIKES)]}, timeout=10)
    assert r.status_code == 200, r.text
    for i, sock in enumerate(socks):
        data, _ = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408 ") if i % 2 else data == b""
        sock.close()
    slow_but_complete = _connect(base_url)
    body = json.dumps({"messages": [_user(LIKES)]}).encode()
    slow_but_complete.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
    time.sleep(0.2)
    slow_but_complete.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    for start in range(10, len(body), 10):
        time.sleep(0.1)  # each chunk well within the body timeout, the whole body longer than it
        slow_but_complete.sendall(body[start : start + 10])
    slow_but_complete.settimeout(10)
    assert slow_but_complete.recv(65536).startswith(b"HTTP/1.1 200 OK")
    slow_but_complete.close()


class Unused:
    """A recommender the test never reaches (it only opens connections and asks /health)."""

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        raise AssertionError("not called")

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        raise AssertionError("not called")


@pytest.mark.slow
def test_1500_half_sent_requests_are_all_released() -> None:
    """The issue's case at its size: 1,500 half-sent requests (half in the headers, half in the body) held
    connections forever; now each is closed within the timeouts while /health keeps answering."""
    cfg = ServerConfig(model_name="tiny", header_timeout_s=2.0, body_timeout_s=2.0)
    with serve_in_thread(create_app(Unused(), cfg)) as url:
        socks = []
        for i in range(1500):
            sock = _connect(url)
            if i % 2:
                sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n\r\n{")
            else:
                sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: 127.")
            socks.append(sock)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        outcomes: dict[str, int] = {}
        for sock in socks:
            data, _ = _read_until_closed(sock, limit_s=15.0)
            outcome = "closed" if data == b"" else data.split(b"\r\n", 1)[0].decode()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            sock.close()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert outcomes == {"closed": 750, "HTTP/1.1 408 Request Timeout": 750}, outcomes
