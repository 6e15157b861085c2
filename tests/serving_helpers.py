"""Shared by the serving tests: a tiny run directory (books example) and a real uvicorn server in a thread."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from retrieval_fakes import build_tiny_sentence_transformer

from reges.catalog import read_items
from reges.cli import main
from reges.records import Hit, Turn
from reges.retrieval.constraints import apply_constraints, parse_constraints
from reges.server import uvicorn_config

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO / "examples" / "books"


def catalog_titles(run_dir: Path) -> dict[str, str]:
    """item_id -> display title in the run's catalog."""
    return {it.item_id: it.title for it in read_items(run_dir / "catalog" / "items.jsonl")}


def served_order(run_dir: Path, user_text: str, candidates: list[tuple[str, float]]) -> list[str]:
    """The order the recommender serves (item_id, score) candidates in: best score first, then the stated
    constraints' re-ordering (a request for "epic fantasy" brings fantasy films forward)."""
    items = {it.item_id: it for it in read_items(run_dir / "catalog" / "items.jsonl")}
    by_score = sorted((Hit(i, s) for i, s in candidates), key=lambda h: -h.score)
    return [h.item_id for h in apply_constraints(by_score, parse_constraints([Turn("user", user_text)]), items)]


def build_tiny_run(run_dir: Path, encoder_dir: Path | None = None) -> Path:
    """Stages data, catalog and index of configs/tiny.yaml into `run_dir` (the frozen serving path).

    Args:
        run_dir: Where the run goes.
        encoder_dir: Where to build a random 16-dim sentence-transformer over the books vocabulary (fast, for the
            default tests); None keeps the config's real all-MiniLM-L6-v2 (slow tests).
    """
    overrides = ["run.show_progress=false", "run.threads=1"]
    if encoder_dir is not None:
        texts = [line for p in ("items.jsonl", "dialogues.jsonl") for line in (BOOKS / p).read_text().splitlines()]
        build_tiny_sentence_transformer(encoder_dir, texts + ["User Assistant"])
        overrides.append(f"index.encoder={encoder_dir}")
    cwd = os.getcwd()
    os.chdir(REPO)  # config paths are relative to the repository root
    try:
        for stage in ("data", "catalog", "index"):
            assert main([stage, "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), *overrides]) == 0
    finally:
        os.chdir(cwd)
    return run_dir


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run `app` under a real uvicorn on a free loopback port; yields the base URL, stops the server after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
