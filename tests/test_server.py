"""The HTTP API: a real PipelineRecommender (tiny run, frozen path) behind a real uvicorn, driven by real clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving_helpers import catalog_titles, serve_in_thread, served_order

from reges.cli import PIPELINE
from reges.errors import DataError
from reges.recommender import ASK_FOR_PREFERENCES, PipelineRecommender, Recommendation
from reges.records import Turn
from reges.server import MicroBatcher, ServerConfig, create_app

LIKES = "I loved The Hobbit, any epic fantasy?"
CONFIG = ServerConfig(model_name="tiny", max_total_chars=2000, max_message_chars=1000, max_body_bytes=200_000)


@pytest.fixture(scope="module")
def base_url(recommender: PipelineRecommender) -> Iterator[str]:
    with serve_in_thread(create_app(recommender, CONFIG)) as url:
        yield url


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def test_server_imports_no_training_code(serving_run: Path) -> None:
    """A fresh interpreter that imports the server and loads a run pulls in none of our training code, nor TRL.

    (Third-party trainer modules do load: `import sentence_transformers` imports its own and transformers' Trainer
    classes, and peft, eagerly. That is the library's import graph, not code we run.)
    """
    trainers = [s.module for s in PIPELINE if s.name in ("distill", "train-query", "train-retriever", "train-item")]
    training = sorted([*trainers, "reges.llm.lora", "reges.retrieval.finetune", "trl"])
    code = f"""
import sys
import reges.server
from reges.recommender import PipelineRecommender
reges.server.create_app(PipelineRecommender.from_run_dir({str(serving_run)!r}))
print(sorted(m for m in sys.modules if m in {training!r} or m.startswith("trl.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_openai_client_models_chat_and_stream(base_url: str, serving_run: Path) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]

    messages = [{"role": "system", "content": "You recommend books."}, _user(LIKES)]
    completion = client.chat.completions.create(model="tiny", messages=messages)  # type: ignore[arg-type]
    content = completion.choices[0].message.content
    rec = completion.model_extra["recommendation"]
    assert completion.model == "tiny" and completion.choices[0].finish_reason == "stop"
    assert content == rec["reply"] and content.startswith(f"I'd recommend {rec['title']}.")
    assert catalog_titles(serving_run)[rec["item_id"]] == rec["title"]

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, stream=True))  # type: ignore
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["recommendation"]["item_id"] == rec["item_id"]
    assert len({c.id for c in chunks}) == 1

    hello = client.chat.completions.create(model="any-name", messages=[_user("hi!")])
    assert hello.choices[0].message.content == ASK_FOR_PREFERENCES
    assert hello.model_extra["recommendation"] is None


def test_stream_is_server_sent_events_ending_in_done(base_url: str) -> None:
    body = {"model": "tiny", "messages": [_user(LIKES)], "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_recommend_endpoint(base_url: str, serving_run: Path) -> None:
    r = httpx.post(f"{base_url}/v1/recommend", json={"messages": [_user(LIKES)], "top_k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"item_id", "title", "query", "candidates", "latency_ms", "reply", "batch_size"}
    assert len(body["candidates"]) == 3 and body["item_id"] == body["candidates"][0]["item_id"]
    served = [(c["item_id"], c["score"]) for c in body["candidates"]]
    assert [i for i, _ in served] == served_order(serving_run, LIKES, served)
    assert body["query"] == "" and {"retrieve", "pick", "total"} <= set(body["latency_ms"])
    assert body["batch_size"] >= 1

    # Echoing the pick's id on the assistant turn that carried it: it is not recommended again.
    follow_up = [
        _user(LIKES),
        {"role": "assistant", "content": body["reply"], "item_ids": [body["item_id"]]},
        _user("Read it already, what else?"),
    ]
    again = httpx.post(f"{base_url}/v1/recommend", json={"messages": follow_up}, timeout=30).json()
    assert again["item_id"] != body["item_id"] and len(again["candidates"]) == CONFIG.default_top_k

    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["requests"] >= 2


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"messages": []}, 422, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role: Input should be"),
        ({"messages": [{"role": "system", "content": "Be nice."}]}, 422, "no user message with text"),
        ({"messages": [_user("   ")]}, 422, "no user message with text"),
        ({"messages": [_user(42)]}, 422, "messages.0.content"),
        ({"messages": [_user("x" * 1001)]}, 422, "1001 characters, over the limit of 1000"),
        ({"messages": [_user("x" * 900)] * 3}, 422, "2700 characters, over the limit of 2000"),
        ({"messages": [_user("a book")], "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1"),
        ({"messages": [_user("a book")], "top_k": 51}, 400, "top_k must lie in [1, 50], got 51"),
        ({"context": [_user("a book")]}, 422, "messages: Field required"),
        ([1, 2], 422, "invalid request"),
    ],
)
def test_invalid_requests_are_clear_4xx(base_url: str, payload: object, status: int, message: str) -> None:
    for path in ("/v1/recommend", "/v1/chat/completions"):
        r = httpx.post(f"{base_url}{path}", json=payload, timeout=30)
        assert r.status_code == status, (path, r.text)
        error = r.json()["error"]
        assert message in error["message"], (path, error)
        assert error["type"] == "invalid_request_error"


def test_malformed_oversized_and_unknown(base_url: str) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.post(f"{base_url}/v1/recommend", content=b'{"messages": [', headers=headers)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("malformed JSON body")
    big = json.dumps({"messages": [_user("y" * 300_000)]}).encode()
    r = httpx.post(f"{base_url}/v1/recommend", content=big, headers=headers)
    assert r.status_code == 413 and "exceeds the limit of 200000" in r.json()["error"]["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(300):
            yield b"z" * 1000
        yield b'"}]}'

    r = httpx.post(f"{base_url}/v1/recommend", content=chunked(), headers=headers)
    assert r.status_code == 413
    r = httpx.get(f"{base_url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found: GET /v1/nothing"

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="has no user message with text"):
        client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "Hello!"}])


def test_keep_alive_requests_are_not_held_back_by_nagle(base_url: str) -> None:
    """Without TCP_NODELAY every request after a connection's first waited ~44 ms for a delayed ACK."""
    with httpx.Client(base_url=base_url) as client:
        client.get("/health")
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            client.get("/health")
            times.append(time.perf_counter() - t0)
    assert sorted(times)[5] < 0.025, times


def test_openapi_and_page(base_url: str) -> None:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert {"/v1/recommend", "/v1/chat/completions", "/v1/models", "/health"} <= set(schema["paths"])
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and 'id="message"' in page.text
    assert httpx.get(f"{base_url}/static/chat.js").status_code == 200


class Recording:
    """Wraps a recommender and records the batch sizes it is called with; raises for dialogues saying 'boom'."""

    def __init__(self, inner: PipelineRecommender) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def recommend(self, context: list[Turn], top_k: int) -> Recommendation:
        return self.recommend_many([context], top_k)[0]

    def recommend_many(self, contexts: list[list[Turn]], top_k: int) -> list[Recommendation]:
        with self.lock:
            self.sizes.append(len(contexts))
        if any("boom" in t.content for c in contexts for t in c):
            raise DataError("boom is not a preference")
        return self.inner.recommend_many(contexts, top_k)


def test_micro_batcher_batches_and_isolates_a_bad_request(recommender: PipelineRecommender) -> None:
    recording = Recording(recommender)

    async def scenario() -> list[object]:
        batcher = MicroBatcher(recording, window_ms=200, max_batch_size=8)
        await batcher.start()
        try:
            contexts = [[Turn("user", f"{LIKES} {i}")] for i in range(10)] + [[Turn("user", "boom")]]
            return await asyncio.gather(*(batcher.submit(c, 3) for c in contexts), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    # 11 concurrent requests, batches of at most 8: [8], then [3 incl. boom] fails and is answered one by one.
    assert recording.sizes == [8, 3, 1, 1, 1]
    assert [r[1] for r in results[:8]] == [8] * 8  # type: ignore[index]
    assert [r[1] for r in results[8:10]] == [1, 1]  # type: ignore[index]
    assert isinstance(results[10], DataError)


def test_concurrent_http_requests_share_one_batch(recommender: PipelineRecommender) -> None:
    recording = Recording(recommender)
    app = create_app(recording, ServerConfig(model_name="tiny", batch_window_ms=300, max_batch_size=16))
    with serve_in_thread(app) as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = {"messages": [_user(LIKES)], "top_k": 2}
                return await asyncio.gather(*(client.post("/v1/recommend", json=body) for _ in range(6)))

        responses = asyncio.run(burst())
        health = httpx.get(f"{url}/health").json()
    assert [r.status_code for r in responses] == [200] * 6
    assert recording.sizes == [6] and {r.json()["batch_size"] for r in responses} == {6}
    assert (health["requests"], health["batches"]) == (6, 1)


def test_schemathesis_finds_no_server_error(base_url: str) -> None:
    """Property-based requests for every operation in /openapi.json, valid and (for POST) invalid ones: never a 5xx,
    and every answer matches the documented status codes, content types and response schemas.

    Schema-valid requests may still be refused (4xx): the schema cannot say "at least one user message with content
    words" or the configured size limits, so schemathesis' positive-data-acceptance check is left out.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, timeout=30)
                statuses.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text)
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            check()
    assert set(statuses) == {"GET /health", "GET /v1/models", "POST /v1/recommend", "POST /v1/chat/completions"}
    assert 422 in statuses["POST /v1/recommend"]  # the invalid inputs did reach the validation
