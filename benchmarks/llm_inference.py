"""Benchmark SmolLM2-135M-Instruct inference per backend and write docs/results/llm_inference.md.

Measures, for transformers in fp32 and bf16 and for llama.cpp (Q4_1 GGUF):
- prefill and generation throughput (tokens/s) with a key/value cache, greedy, one sequence;
- `choose` latency (constrained decoding) with 10 and 50 candidate movie titles listed in the prompt;
- `rank` latency (likelihood of every candidate) with 10 and 50 candidates;
- how closely the two backends agree (teacher-forced next-token argmax and KL, greedy texts).
Every timing is the median of `--runs` runs. The whole benchmark takes a few minutes on 2 cores.

Command:
    .venv/bin/python benchmarks/llm_inference.py --runs 3 --threads 1 --out docs/results/llm_inference.md

The page it writes is generated whole; docs/results/llm.md keeps dated, hand-written readings of its numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from reges.config import LLMConfig
from reges.llm.hf import HFLLM
from reges.llm.llamacpp import LlamaCppLLM
from reges.llm.models import resolve_model

logger = logging.getLogger("llm_inference")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TITLES = REPO.parent / "shared" / "data" / "movies" / "txy77__iEvaLM-CRS" / "data" / "redial" / "id2info.json"
SYSTEM = "You are a movie recommender. Pick the one movie from the candidates that the user will like most."
DIALOGUE = (
    "User: Hi! I'm looking for a movie for tonight. I love science fiction with a bit of horror, like Alien (1979) "
    "and The Thing (1982).\nAssistant: Great picks! Have you seen Event Horizon (1997)?\nUser: Yes, a bit too gory "
    "for me. I liked Arrival (2016) and Interstellar (2014) more, the slower and smarter kind.\n"
)


def median_time(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_measured(fn: Callable[[], float], runs: int) -> float:
    """Median of the seconds `fn` reports for its own timed part, over `runs` calls after one warm-up call."""
    fn()
    return statistics.median(fn() for _ in range(runs))


def item_prompt(titles: list[str]) -> list[dict[str, str]]:
    listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(titles))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{DIALOGUE}\nCandidates:\n{listing}\nAnswer with one title from the list."},
    ]


def long_prompt_ids(llm: HFLLM, n_tokens: int) -> list[int]:
    text = llm.render(item_prompt([f"Movie number {i}" for i in range(200)]))
    ids = llm.encode(text)
    assert len(ids) >= n_tokens, "the prompt text is too short for --prompt-tokens"
    return ids[:n_tokens]


def hf_throughput(llm: HFLLM, ids: list[int], new_tokens: int, runs: int) -> tuple[float, float]:
    """(prefill tokens/s, generation tokens/s) with a manual greedy loop over the key/value cache."""
    prompt = torch.tensor([ids])

    def prefill() -> object:
        with torch.inference_mode():
            return llm.model(input_ids=prompt, use_cache=True, logits_to_keep=1)

    def decode() -> float:
        with torch.inference_mode():
            out = llm.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            start = time.perf_counter()
            token = out.logits[:, -1:].argmax(-1)
            for _ in range(new_tokens):
                out = llm.model(input_ids=token, cache=out.cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - start

    return len(ids) / median_time(prefill, runs), new_tokens / median_measured(decode, runs)


def cpp_throughput(llm: LlamaCppLLM, ids: list[int], new_tokens: int, runs: int) -> tuple[float, float]:
    """(prefill tokens/s, generation tokens/s) with llama.cpp's eval and its greedy sampler."""
    lib = llm.llm

    def prefill() -> None:
        lib.reset()
        lib.eval(ids)

    def decode() -> float:
        lib.reset()
        lib.eval(ids)
        start = time.perf_counter()
        for _ in range(new_tokens):
            lib.eval([lib.sample(temp=0.0)])
        return time.perf_counter() - start

    return len(ids) / median_time(prefill, runs), new_tokens / median_measured(decode, runs)


def agreement(hf: HFLLM, cpp: LlamaCppLLM) -> dict[str, object]:
    """Teacher-forced next-token agreement on a conversation, and greedy texts on a few prompts."""
    text = hf.render(item_prompt(["Arrival (2016)", "Aliens (1986)", "Titanic (1997)"])) + "Aliens (1986)"
    ids = hf.encode(text)
    with torch.inference_mode():
        hf_lp = torch.log_softmax(hf.model(torch.tensor([ids])).logits[0].float(), -1).numpy()
    scorer = cpp._load(logits_all=True)
    scorer.eval(ids)
    logits = scorer.scores[: len(ids)].astype(np.float64)
    cpp_lp = logits - logits.max(1, keepdims=True)
    cpp_lp -= np.log(np.exp(cpp_lp).sum(1, keepdims=True))
    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        item_prompt(["Arrival (2016)", "Aliens (1986)", "Titanic (1997)"]),
        [{"role": "user", "content": "List three colours."}],
        [{"role": "user", "content": "Say hello."}],
        [{"role": "user", "content": "Recommend a comedy for a family evening."}],
        [{"role": "user", "content": "Who directed Jaws?"}],
    ]
    hf_text = hf.generate(prompts, max_new_tokens=24)
    cpp_text = cpp.generate(prompts, max_new_tokens=24)
    same_tokens = []
    for a, b in zip(hf_text, cpp_text, strict=True):
        ta, tb = hf.encode(a), hf.encode(b)
        n = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
        same_tokens.append(n)
    return {
        "tokens": len(ids),
        "argmax_agreement": float((hf_lp.argmax(1) == cpp_lp.argmax(1)).mean()),
        "mean_kl": float((np.exp(hf_lp) * (hf_lp - cpp_lp)).sum(1).mean()),
        "identical": sum(a == b for a, b in zip(hf_text, cpp_text, strict=True)),
        "prompts": len(prompts),
        "same_prefix_tokens": same_tokens,
        "examples": list(zip(hf_text, cpp_text, strict=True))[:3],
    }


def notes(fp32: tuple[float, float], bf16: tuple[float, float], rows: dict[str, tuple[float, float]]) -> list[str]:
    """The decisions these numbers support, worded from the numbers of this run."""
    prefill, generation = bf16[0] / fp32[0], bf16[1] / fp32[1]
    if prefill > 1 and generation >= 0.9:
        verdict = (
            "bf16 prefills faster and generates about as fast or faster, so `llm.dtype: auto` picks bfloat16 on CPUs "
            "with native bf16 (AVX512-BF16 or AMX, read from /proc/cpuinfo) and on CUDA, float32 elsewhere. Set "
            "`llm.dtype: float32` for exact scores: bf16 rounds every activation."
        )
    else:
        verdict = (
            "this run does not show bf16 faster, yet `llm.dtype: auto` picks bfloat16 on CPUs with native bf16: "
            "check the load average above, rerun, and revisit `reges.llm.models.resolve_dtype` if it holds."
        )
    lines = [
        "## Notes and decisions",
        "",
        f"- dtype on CPU: bf16 / fp32 = x{prefill:.2f} prefill, x{generation:.2f} generation. {verdict}",
        "- llama.cpp and AMX: this llama-cpp-python build (`-march=native`) sends quantized matmuls of more than one "
        "token to AMX tiles, and in our VMs, which advertise AMX, that is a general protection fault (`ldtilecfg` in "
        "`ggml_backend_amx_mul_mat`) that kills the process on any prompt longer than one token. The backend loads "
        "models with llama.cpp's extra buffer types off (`llm.llamacpp_extra_buffers: false`, the default); a build "
        "without AMX (`-DGGML_NATIVE=OFF` and explicit AVX-512 flags) would not need it.",
    ]
    threaded = [name for name in rows if name.startswith("llamacpp Q4_1, ")]
    if threaded:
        one, many = rows["llamacpp Q4_1"], rows[threaded[0]]
        compared = (
            f"llama.cpp with all cores generated {many[1]:.1f} tok/s against {one[1]:.1f} tok/s with one thread "
            f"(prefill {many[0]:.0f} vs {one[0]:.0f} tok/s)"
        )
        if many[1] < one[1]:
            lines.append(
                f"- Threads on a busy machine: {compared}. Its threads meet at a barrier after every operation; when "
                "other jobs hold the cores, each barrier waits for a descheduled thread. On a shared machine set "
                "`run.threads` below the number of free cores (torch's threads suffer the same way)."
            )
        else:
            lines.append(f"- Threads: {compared}; the cores were free enough for more threads to help.")
    return lines


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"]
    return {
        "cpu": model or platform.processor(),
        "cores": str(os.cpu_count()),
        "flags": " ".join(f for f in wanted if f" {f}" in flags),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "versions": ", ".join(
            f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "llama_cpp_python") if _installed(p)
        ),
    }


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "llm_inference.md")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--titles-file", type=Path, default=DEFAULT_TITLES, help="ReDial id2info.json (titles)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[10, 50],
                        help="candidate-list sizes for choose and rank (at most 50)")
    args = parser.parse_args(argv)
    if not all(1 <= n <= 50 for n in args.candidates):
        parser.error(f"--candidates must lie in 1..50 (titles are sampled 50 at a time), got {args.candidates}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:  # this script is the process's entry point, as the CLI is for `reges`; llama.cpp takes torch's
        torch.set_num_threads(args.threads)

    info = json.loads(args.titles_file.read_text(encoding="utf-8"))
    titles = sorted({v["name"] for v in info.values()})
    rng = np.random.default_rng(0)
    pool = [titles[i] for i in rng.choice(len(titles), size=50, replace=False)]
    load_start = os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)

    rows, latency = {}, {}
    backends: dict[str, HFLLM | LlamaCppLLM] = {}
    for name, cfg in [
        ("hf fp32", LLMConfig(model="smollm2-135m-instruct", backend="hf", dtype="float32")),
        ("hf bf16", LLMConfig(model="smollm2-135m-instruct", backend="hf", dtype="bfloat16")),
        ("llamacpp Q4_1", LLMConfig(model="smollm2-135m-instruct", backend="llamacpp")),
    ]:
        logger.info("benchmarking %s", name)
        llm = HFLLM.from_config(cfg) if cfg.backend == "hf" else LlamaCppLLM.from_config(cfg)
        backends[name] = llm
        ids = long_prompt_ids(backends["hf fp32"], args.prompt_tokens)
        if isinstance(llm, HFLLM):
            rows[name] = hf_throughput(llm, ids, args.gen_tokens, args.runs)
        else:
            rows[name] = cpp_throughput(llm, ids, args.gen_tokens, args.runs)
        for n in args.candidates:
            prompt_tokens = len(backends["hf fp32"].encode(backends["hf fp32"].render(item_prompt(pool[:n]))))
            calls = iter(range(10**6))

            def fresh(n: int = n, calls: Iterator[int] = calls) -> tuple[list[dict[str, str]], list[str]]:
                # A new candidate order on every call, as every example brings its own candidates: llama-cpp-python
                # would otherwise reuse the previous call's key/value cache and skip the prefill.
                k = next(calls)
                titles = pool[:n][k % n :] + pool[:n][: k % n]
                return item_prompt(titles), titles

            choose_s = median_time(lambda llm=llm, fresh=fresh: llm.choose(*[[x] for x in fresh()]), args.runs)
            rank_s = median_time(lambda llm=llm, fresh=fresh: llm.rank(*fresh()), args.runs)
            latency[(name, n)] = (prompt_tokens, choose_s, rank_s)
        logger.info("%s: %s", name, rows[name])
        if name == "hf bf16":
            del backends[name]  # keep memory down; fp32 stays for the agreement check
    all_cores = os.cpu_count() or 1
    if (args.threads or all_cores) != all_cores:
        # llama.cpp's threads wait for each other at every operation: on a busy machine more threads can be slower.
        logger.info("benchmarking llamacpp with %d threads", all_cores)
        gguf = resolve_model("smollm2-135m-instruct", "").location
        ids = long_prompt_ids(backends["hf fp32"], args.prompt_tokens)
        rows[f"llamacpp Q4_1, {all_cores} threads"] = cpp_throughput(
            LlamaCppLLM(gguf, threads=all_cores), ids, args.gen_tokens, args.runs
        )
    agree = agreement(backends["hf fp32"], backends["llamacpp Q4_1"])
    load_end = os.getloadavg()[0]
    finished = dt.datetime.now(dt.timezone.utc)
    m = machine()

    fp32, bf16 = rows["hf fp32"], rows["hf bf16"]
    lines = [
        "# LLM inference: SmolLM2-135M-Instruct per backend",
        "",
        "Written by `benchmarks/llm_inference.py`; rerun it to refresh (a few minutes).",
        "",
        f"- Command: `.venv/bin/python benchmarks/llm_inference.py --runs {args.runs} --threads {args.threads}"
        f" --prompt-tokens {args.prompt_tokens} --gen-tokens {args.gen_tokens}"
        f" --candidates {' '.join(map(str, args.candidates))}`",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC, {(finished - started).total_seconds():.0f} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; CPU flags: {m['flags']}",
        f"- Threads: {args.threads or os.cpu_count()}; {m['versions']}",
        f"- Load average (1 min) at start / end: {load_start:.1f} / {load_end:.1f} (the machine is shared: other "
        "jobs ran during the benchmark, so absolute numbers are pessimistic; ratios measured back to back are "
        "the useful part)",
        f"- Timings: median of {args.runs} runs after one warm-up.",
        "",
        "## Throughput (one sequence, greedy, with a key/value cache)",
        "",
        f"| backend | prefill tok/s ({args.prompt_tokens}-token prompt) | generation tok/s ({args.gen_tokens} new) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {p:.0f} | {g:.1f} |" for name, (p, g) in rows.items()]
    lines += [
        "",
        f"bf16 / fp32 speed on this CPU: prefill x{bf16[0] / fp32[0]:.2f}, generation x{bf16[1] / fp32[1]:.2f}.",
        "",
        "## `choose` and `rank` latency (candidate movie titles listed in the prompt)",
        "",
        "| backend | candidates | prompt tokens | choose s | rank s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {n} | {p} | {c:.2f} | {r:.2f} |" for (name, n), (p, c, r) in latency.items()]
    lines += [
        "",
        "## Do the backends agree? (transformers fp32 on the dequantized GGUF vs llama.cpp on the Q4_1 GGUF)",
        "",
        f"- Teacher-forced over a {agree['tokens']}-token conversation: next-token argmax agreement "
        f"{agree['argmax_agreement']:.3f}, mean KL(hf || llama.cpp) {agree['mean_kl']:.4f} nats.",
        f"- Greedy, 24 new tokens: identical text for {agree['identical']} of {agree['prompts']} prompts; tokens "
        f"identical from the start: {agree['same_prefix_tokens']}.",
        "- Why they differ: llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits, transformers uses "
        "the dequantized weights in fp32. Where the top two tokens are within about 0.1 logit, greedy decoding flips "
        "and the texts part. `rank` totals agree within a fraction of a nat (tests/test_llm_llamacpp.py); on an exact "
        "F32 GGUF the two backends agree to 1e-4 (same tests).",
        "",
        "Examples (hf | llama.cpp):",
        "",
    ]
    lines += [f"- `{a!r}` | `{b!r}`" for a, b in agree["examples"]]
    lines += ["", *notes(fp32, bf16, rows), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
