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
