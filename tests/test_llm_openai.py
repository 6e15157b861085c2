"""OpenAI-compatible backend: retries against endpoints that do not answer, and a real llama-cpp-python server.

The slow tests start llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) with the bundled
SmolLM2 on a loopback port: real HTTP, a real model, no mock.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from reges.config import LLMConfig
from reges.errors import ModelError
from reges.llm import load_llm
from reges.llm.openai_api import OpenAILLM

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_fails_after_bounded_retries(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there any more
    llm = load_llm(LLMConfig(model=f"http://127.0.0.1:{port}/v1", timeout_s=0.5, max_retries=2))
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="reges.llm.openai_api"):
        with pytest.raises(ModelError, match=rf"http://127\.0\.0\.1:{port}/v1/chat/completions after 3 attempt"):
            llm.generate([PROMPT], max_new_tokens=4)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    assert time.perf_counter() - start < 5


def test_silent_server_times_out_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    # A socket that listens but never answers: the connection opens (kernel backlog), the read times out.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        llm = OpenAILLM(f"http://127.0.0.1:{port}", timeout_s=0.2, max_retries=1)
        with caplog.at_level(logging.WARNING, logger="reges.llm.openai_api"):
            with pytest.raises(ModelError, match="ReadTimeout"):
                llm.choose([PROMPT], [["Paris", "Lyon"]])
        assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 1


def test_rank_without_a_template_model_says_what_to_set() -> None:
    llm = OpenAILLM("http://127.0.0.1:9")
    with pytest.raises(ModelError, match="llm.api_template_model"):
        llm.rank(PROMPT, ["Paris"])
    with pytest.raises(ModelError, match="empty candidate list"):
        llm.choose([PROMPT], [[]])


def test_choose_sends_the_constraint_each_server_takes_and_a_rejection_names_them() -> None:
    import json

    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if "guided_choice" in bodies[-1] and bodies[-1]["model"] == "new-vllm":
            return httpx.Response(400, text="guided_choice was removed")
        return httpx.Response(200, json={"choices": [{"message": {"content": "Paris"}}]})

    for constraint in ("grammar", "guided_choice", "structured_outputs", "none"):
        llm = OpenAILLM("http://127.0.0.1:9", constraint=constraint)
        llm.client = httpx.Client(transport=httpx.MockTransport(answer))
        assert llm.choose([PROMPT], [["Paris", "Lyon"]]) == ["Paris"]
    assert bodies[0]["grammar"] == 'root ::= "Paris" | "Lyon"\n'
    assert bodies[1]["guided_choice"] == ["Paris", "Lyon"]
    assert bodies[2]["structured_outputs"] == {"choice": ["Paris", "Lyon"]}
    assert not {"grammar", "guided_choice", "structured_outputs"} & set(bodies[3])
    llm = OpenAILLM("http://127.0.0.1:9", api_model="new-vllm", constraint="guided_choice")
    llm.client = httpx.Client(transport=httpx.MockTransport(answer))
    with pytest.raises(ModelError, match="structured_outputs: vLLM >= 0.12"):
        llm.choose([PROMPT], [["Paris", "Lyon"]])


# --- a real server -------------------------------------------------------------------------------------------------
# The launcher applies the same AMX workaround as the llamacpp backend (see reges.llm.llamacpp.extra_buffer_types).
LAUNCHER = """
import runpy, sys
from reges.llm.llamacpp import extra_buffer_types
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
with extra_buffer_types(False):
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server")
    from reges.llm.models import bundled_gguf_path

    port = free_port()
    command = [sys.executable, "-c", LAUNCHER, "--model", str(bundled_gguf_path("smollm2-135m-instruct"))]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
    log = tmp_path_factory.mktemp("server") / "server.log"  # a file, not a pipe: a full pipe would block the server
    log_file = log.open("w")
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start within 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.mark.slow
def test_real_server_generates(server_url: str) -> None:
    llm = load_llm(LLMConfig(model=server_url + "/v1", batch_size=2))
    prompts = [PROMPT, [{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hello."}]]
    answers = llm.generate(prompts, max_new_tokens=12)
    assert len(answers) == 3 and all(a.strip() for a in answers)
    free = answers[0]
    stop = free.split()[1]
    assert llm.generate([PROMPT], max_new_tokens=12, stop=[stop])[0] == free[: free.index(stop)]


@pytest.mark.slow
def test_real_server_choose_with_a_grammar(server_url: str, caplog: pytest.LogCaptureFixture) -> None:
    llm = load_llm(LLMConfig(model=server_url, api_constraint="grammar"))
    candidates = [["Lyon", "Marseille", "Paris (France)", 'The "City" of Light']]
    with caplog.at_level(logging.WARNING, logger="reges.llm.openai_api"):
        chosen = llm.choose([PROMPT], candidates)
    assert chosen[0] in candidates[0]
    assert "mapped" not in caplog.text  # the server honoured the grammar: the answer was exactly a candidate


@pytest.mark.slow
def test_real_server_choose_without_a_constraint_maps_and_warns(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    llm = load_llm(LLMConfig(model=server_url, api_constraint="none"))
    candidates = [["Lyon", "Marseille", "Paris, the capital of France"]]
    with caplog.at_level(logging.WARNING, logger="reges.llm.openai_api"):
        chosen = llm.choose([PROMPT], candidates)
    assert chosen[0] in candidates[0]
    assert "mapped to the closest candidate" in caplog.text


@pytest.mark.slow
def test_real_server_rank_is_refused_when_echo_is_unusable(server_url: str) -> None:
    # llama-cpp-python's server computes echo offsets without the special tokens (and shifts logprobs by one,
    # abetlen/llama-cpp-python#1983): the backend must refuse rather than return wrong scores.
    llm = load_llm(LLMConfig(model=server_url, api_template_model="smollm2-135m-instruct"))
    with pytest.raises(ModelError, match="does not support rank"):
        llm.rank(PROMPT, ["Paris", "Lyon"])


@pytest.mark.slow
def test_rewrite_and_generate_through_the_server_resume_after_a_crash(
    server_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch stages against the real server: bounded concurrency, and a run killed half-way restarts where it
    stopped, sending only the examples it had not finished (the rows equal an uninterrupted run's)."""
    import dataclasses

    from test_inference_resume import run_dir_with_query_expert

    from reges.config import GenerateConfig, PipelineConfig, RewriteConfig, RunConfig
    from reges.io import read_jsonl
    from reges.item_expert import generate
    from reges.query_expert import rewrite

    cfg = PipelineConfig(
        run=RunConfig(show_progress=False),
        llm=LLMConfig(model=server_url + "/v1", backend="openai", batch_size=2, api_constraint="grammar",
                      timeout_s=120, api_template_model="smollm2-135m-instruct"),
        rewrite=RewriteConfig(splits=["dev"], batch_size=2, max_new_tokens=12),  # 2 requests in flight
        generate=GenerateConfig(splits=["dev"], mode="constrained", top_k=3, use_adapter=False, batch_size=1),
    )
    whole = run_dir_with_query_expert(tmp_path / "whole")
    rewrite.run(cfg, whole)
    generate.run(cfg, whole)  # prompts show the server's queries (mine.query=auto)

    sent: list[int] = []
    real_generate, real_choose = OpenAILLM.generate, OpenAILLM.choose

    def dying(real, lives: int):  # noqa: ANN001, ANN202
        def call(self, prompts, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if len(sent) == lives:
                raise KeyboardInterrupt  # the process is killed here
            sent.append(len(prompts))
            return real(self, prompts, *args, **kwargs)
        return call

    rd = run_dir_with_query_expert(tmp_path / "killed")
    monkeypatch.setattr(OpenAILLM, "generate", dying(real_generate, 1))  # the first batch of 2, then killed
    with pytest.raises(KeyboardInterrupt):
        rewrite.run(cfg, rd)
    sent.clear()
    monkeypatch.setattr(OpenAILLM, "generate", dying(real_generate, 100))
    rewrite.run(cfg, rd)
    assert sent == [1]  # the one example left
    assert read_jsonl(rd.stage_dir("rewrite") / "dev.jsonl") == read_jsonl(whole.stage_dir("rewrite") / "dev.jsonl")
    assert rd.manifest("rewrite")["splits"]["dev"]["resumed_queries"] == 2

    sent.clear()
    monkeypatch.setattr(OpenAILLM, "choose", dying(real_choose, 1))
    with pytest.raises(KeyboardInterrupt):
        generate.run(cfg, rd)
    sent.clear()
    monkeypatch.setattr(OpenAILLM, "choose", dying(real_choose, 100))
    generate.run(cfg, rd)
    assert sent == [1, 1]
    rows, expected = (read_jsonl(r.stage_dir("generate") / "dev.jsonl") for r in (rd, whole))
    assert [(r["example_id"], r["item_id"]) for r in rows] == [(r["example_id"], r["item_id"]) for r in expected]

    # rank needs prompt logprobs, which this server cannot give: the error names the modes that work here
    rank = dataclasses.replace(cfg, run=RunConfig(show_progress=False, overwrite=True),
                               generate=dataclasses.replace(cfg.generate, mode="rank", fusion_alpha=1.0))
    with pytest.raises(ModelError, match="generate.mode=constrained"):
        generate.run(rank, rd)
