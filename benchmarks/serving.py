"""Serving under load: start-up time, throughput, p50/p95 latency, errors and peak server RSS per concurrency level.

Starts `reges serve` on the run directory in a subprocess, waits for /health, then for each `--clients` level sends
`--requests` POST /v1/recommend requests from that many concurrent clients (asyncio + httpx, one connection each)
and reads the server's resident memory from /proc while they run. The requests are the contexts of the run's dev
examples (real dialogues, cut to the server's limits as a client would), cycled.

With `--poisoned-fraction 0.1`, one more level runs at the largest client count where that share of the requests
carries a lone UTF-16 surrogate in its last message (refused with a 4xx since 2026-12-06); its errors count only the
other requests, which must all succeed. `--top-k` with several values cycles them over the requests (mixed traffic,
which shares batches since the batcher runs each batch at its largest top_k).

Usage:
    .venv/bin/python benchmarks/serving.py --run-dir runs/inspired --clients 1 8 32 --requests 200 \\
        --out docs/results/serving.md

It prints the markdown table, writes it (with the command, machine and settings) to `--out` and the raw numbers to
the same path with a .json suffix. Every level stops after `--max-seconds`, so the whole run stays bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from reges.io import now_iso
from reges.retrieval.retrieve import read_examples
from reges.server import ServerConfig

SERVER_LIMITS = ServerConfig()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_bodies(run_dir: Path, split: str, top_ks: list[int], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` request bodies from the split's example contexts (the latest turns that fit the limits),
    with the top_k values in turn."""
    bodies = []
    for ex in read_examples(run_dir / "data" / f"{split}.jsonl"):
        turns = [t for t in ex.context if t.content.strip()][-SERVER_LIMITS.max_messages :]
        messages = [{"role": t.role, "content": t.content[-SERVER_LIMITS.max_message_chars :]} for t in turns]
        while sum(len(m["content"]) for m in messages) > SERVER_LIMITS.max_total_chars:
            messages = messages[1:]
        if any(m["role"] == "user" for m in messages):  # the server refuses dialogues without user text
            bodies.append({"messages": messages, "top_k": top_ks[len(bodies) % len(top_ks)]})
        if len(bodies) == limit:
            break
    if not bodies:
        raise SystemExit(f"no usable dialogue in {run_dir}/data/{split}.jsonl")
    return bodies


class RssSampler:
    """Peak resident set size of a process, sampled from /proc every `interval_s` while running."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._read("VmRSS"))
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def high_water_kib(self) -> int:
        """VmHWM: the kernel's own peak RSS since the process started."""
        return self._read("VmHWM")


def poisoned(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a lone surrogate in its last message: what once failed every request batched with it."""
    last = body["messages"][-1]
    return {**body, "messages": [*body["messages"][:-1], {**last, "content": last["content"] + "\ud800"}]}


async def load_level(
    url: str, bodies: list[dict[str, Any]], clients: int, requests: int, max_seconds: float, poison_every: int = 0
) -> dict[str, Any]:
    """`requests` POSTs from `clients` concurrent clients (stopping at `max_seconds`): latencies, statuses.

    With `poison_every` N > 0, every Nth request is `poisoned`; latencies, errors and throughput then describe the
    other requests, and the poisoned ones' statuses are reported apart.
    """
    latencies: list[float] = []
    model_ms: list[float] = []  # the server's own "total" per answered request (its batch's model time)
    statuses: dict[str, int] = {}
    poisoned_statuses: dict[str, int] = {}
    next_index = 0
    deadline = time.perf_counter() + max_seconds
    headers = {"content-type": "application/json"}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < deadline:
            body = bodies[next_index % len(bodies)]
            is_poisoned = poison_every > 0 and next_index % poison_every == poison_every - 1
            next_index += 1
            # JSON text with ASCII escapes: httpx's json= encodes UTF-8, which a lone surrogate cannot be
            content = json.dumps(poisoned(body) if is_poisoned else body)
            t0 = time.perf_counter()
            try:
                response = await http.post("/v1/recommend", content=content, headers=headers)
                status = str(response.status_code)
                if response.status_code == 200:
                    model_ms.append(response.json()["latency_ms"]["total"])
            except httpx.HTTPError as e:
                status = type(e).__name__
            if is_poisoned:
                poisoned_statuses[status] = poisoned_statuses.get(status, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000.0
    ok = statuses.get("200", 0)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "poisoned_statuses": poisoned_statuses,
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "model_p50_ms": round(float(np.percentile(model_ms, 50)), 1) if model_ms else None,
        "stopped_early": len(latencies) + sum(poisoned_statuses.values()) < requests,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| clients | requests | errors | throughput (req/s) | p50 (ms) | p95 (ms) | model p50 (ms) | mean batch "
        "| peak RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["levels"]:
        clients = str(r["clients"])
        if r["poisoned_statuses"]:
            answers = ", ".join(f"{n}× {s}" for s, n in sorted(r["poisoned_statuses"].items()))
            clients += f" + {sum(r['poisoned_statuses'].values())} poisoned ({answers})"
        lines.append(
            f"| {clients} | {r['requests']}{' (time cap)' if r['stopped_early'] else ''} | {r['errors']} | "
            f"{r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['model_p50_ms']} | "
            f"{r['mean_batch']:.1f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time cap per level")
    parser.add_argument("--split", default="dev", help="data split whose example contexts become requests")
    parser.add_argument("--top-k", type=int, nargs="+", default=[5], help="one value, or several cycled per request")
    parser.add_argument(
        "--poisoned-fraction",
        type=float,
        default=0.0,
        help="> 0: one more level at the largest --clients with this share of requests poisoned (lone surrogate)",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the server (run.threads)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="passed to `reges serve --override` (e.g. generate.top_k=10), repeatable",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None, help="markdown report (raw numbers go to .json next to it)")
    args = parser.parse_args()
    if not 0 <= args.poisoned_fraction < 1:
        raise SystemExit(f"--poisoned-fraction must lie in [0, 1), got {args.poisoned_fraction}")
    poison_every = round(1 / args.poisoned_fraction) if args.poisoned_fraction > 0 else 0

    bodies = request_bodies(args.run_dir, args.split, args.top_k, limit=max(args.requests, 50))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "reges.cli", "serve", "--run-dir", str(args.run_dir), "--port", str(port),
        "--batch-window-ms", str(args.batch_window_ms), "--override", f"run.threads={args.threads}",
    ]  # fmt: skip
    for override in args.override:
        command += ["--override", override]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}:\n{server.stderr.read()}")  # type: ignore[union-attr]
            if time.perf_counter() - t0 > args.startup_timeout:
                raise SystemExit(f"the server was not ready after {args.startup_timeout} s")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        first = httpx.post(f"{url}/v1/recommend", json=bodies[0], timeout=120)
        first_ms = (time.perf_counter() - t1) * 1000.0
        if first.status_code != 200:
            raise SystemExit(f"the first request failed: {first.status_code} {first.text}")
        stages = first.json()["latency_ms"]
        idle_rss = RssSampler(server.pid)._read("VmRSS")

        levels = []
        runs = [(clients, 0) for clients in args.clients]
        if poison_every:
            runs.append((max(args.clients), poison_every))
        for clients, every in runs:
            before = httpx.get(f"{url}/health").json()
            with RssSampler(server.pid) as rss:
                level = asyncio.run(load_level(url, bodies, clients, args.requests, args.max_seconds, every))
            after = httpx.get(f"{url}/health").json()
            batches = max(1, after["batches"] - before["batches"])
            level["mean_batch"] = round((after["requests"] - before["requests"]) / batches, 2)
            level["peak_rss_mib"] = round(rss.peak_kib / 1024, 1)
            levels.append(level)
            print(f"clients {clients}: {json.dumps(level)}", file=sys.stderr)
        high_water_mib = round(RssSampler(server.pid).high_water_kib() / 1024, 1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    result = {
        "date": now_iso(),
        "command": " ".join(["benchmarks/serving.py", *sys.argv[1:]]),
        "run_dir": str(args.run_dir),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
        },
        "settings": {"split": args.split, "top_k": args.top_k, "threads": args.threads,
                     "batch_window_ms": args.batch_window_ms, "distinct_dialogues": len(bodies),
                     "overrides": args.override},
        "startup_s": round(startup_s, 2),
        "first_request_ms": round(first_ms, 1),
        "first_request_stages_ms": stages,
        "idle_rss_mib": round(idle_rss / 1024, 1),
        "high_water_rss_mib": high_water_mib,
        "levels": levels,
    }  # fmt: skip
    table = markdown(result)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.write_text(
            "# Serving under load\n\n"
            f"Measured {result['date']} on {result['machine']['platform']}, {result['machine']['cpus']} CPUs "
            f"(load average before: {result['machine']['load_average_before']}); the load generator runs on the same "
            "machine. Raw numbers: the .json next to this file.\n\n"
            f"```\n.venv/bin/python {result['command']}\n```\n\n"
            f"Run directory `{args.run_dir}`; requests are {len(bodies)} distinct `{args.split}` dialogues, "
            f"top_k {' / '.join(map(str, args.top_k))}, server torch threads {args.threads}, "
            f"batch window {args.batch_window_ms} ms.\n\n"
            f"- start-up (process start to /health 200, models loaded): **{result['startup_s']} s**\n"
            f"- first request: {result['first_request_ms']} ms (stages: {stages})\n"
            f"- server RSS idle after start-up: {result['idle_rss_mib']} MiB; high-water mark over the whole run: "
            f"{high_water_mib} MiB\n\n"
            f"{table}\n\n"
            "Latency is per request as the client sees it (queueing, batching window and HTTP included); model p50 "
            "is the server's `latency_ms.total` (the model time of the batch a request ran in); mean batch is "
            "dialogues per `recommend_many` call (from /health counters); peak RSS is sampled every 20 ms during "
            "the level. A poisoned row counts errors, latency and throughput over the other requests only.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
