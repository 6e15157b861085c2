"""llama.cpp rank mode: every candidate in one batch against one decode per candidate, on a run's served prompts.

Why: `LlamaCppLLM.rank` used to evaluate the prompt with a logit row per token and then each candidate after it,
one decode after another (llama-cpp-python's `Llama` holds one sequence): with the 1.5B Item Expert 10-13 s per
pick, twice the hf backend's (docs/results/scaling.md). It now scores through `reges.llm.llamacpp.SequenceScorer`
(one sequence per candidate sharing the prompt's key/value cache, all candidates in one decode, a logit row for the
prompt's last token only). This benchmark keeps the old procedure as the reference, times both on the same prompts
(the run's Item Expert prompts, candidates and GGUF adapter on a seeded sample of a split, in the served setting
when the run's config says so), alternating which goes first, and checks that they score alike.

Usage (threads: llama.cpp's; the run's train-item must have written adapter.gguf):
    .venv/bin/python benchmarks/rank_batching.py --run-dir runs/inspired --prompts 20 --threads 2 \\
        --override mine.exclude_named=true --out docs/results/rank_batching_135m_inspired.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reges.catalog import read_catalog
from reges.config import load_config
from reges.errors import RegesError
from reges.io import RunDir, machine_info, now_iso, write_json
from reges.item_expert.generate import adapter_path, build_prompts, load_split_inputs, resolve_query_file
from reges.item_expert.prompts import PromptFormat
from reges.llm.base import Messages
from reges.llm.llamacpp import LlamaCppLLM, extra_buffer_types, log_softmax

logger = logging.getLogger("rank_batching")


class SequentialRank:
    """The procedure `LlamaCppLLM.rank` used before 2026-12-07: a context with a logit row per token, the prompt
    evaluated once, then each candidate + EOS after it (the cache cut back to the prompt in between)."""

    def __init__(self, llm: LlamaCppLLM) -> None:
        from llama_cpp import Llama

        self.llm = llm
        with extra_buffer_types(llm.extra_buffers):
            self.scorer = Llama(model_path=llm.model_path, n_ctx=llm.n_ctx, n_threads=llm.threads,
                                n_threads_batch=llm.threads, lora_path=llm.lora_path, logits_all=True,
                                seed=llm.seed, verbose=False)

    def rank(self, prompt: Messages, candidates: list[str]) -> list[float]:
        llm = self.llm
        text = llm.prompt_text(prompt, max(len(llm.encode(c)) for c in candidates) + 8)
        prompt_ids = llm.encode(text)
        n = len(prompt_ids)
        answers = [(ids[n:] if ids[:n] == prompt_ids else llm.encode(c)) + [llm.eos_id]
                   for ids, c in ((llm.encode(text + c), c) for c in candidates)]
        self.scorer.reset()
        self.scorer.eval(prompt_ids)
        scores = []
        for answer in answers:
            self.scorer.n_tokens = n
            self.scorer.eval(answer)
            logprobs = log_softmax(self.scorer.scores[n - 1 : n - 1 + len(answer)])
            scores.append(float(logprobs[np.arange(len(answer)), answer].sum()))
        return scores


def ratio_ci(old: list[float], new: list[float], resamples: int, seed: int) -> tuple[float, float, float]:
    """Median of the per-prompt ratios old / new and its 95 % bootstrap interval (prompts resampled)."""
    ratios = np.array(old) / np.array(new)
    rng = np.random.default_rng(seed)
    draws = [float(np.median(rng.choice(ratios, len(ratios)))) for _ in range(resamples)]
    return float(np.median(ratios)), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with retrieve and train-item complete")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--prompts", type=int, default=20, help="seeded sample of the split's examples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--override", dest="overrides", nargs="*", default=[],
                        help="config overrides on top of the run's config.yaml (e.g. item_llm.model=...)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = ["item_llm.backend=llamacpp", f"run.threads={args.threads}", *args.overrides]
    torch.set_num_threads(args.threads)  # what LlamaCppLLM gives llama.cpp (its threads=0), as `reges` sets it
    try:
        cfg = load_config(args.run_dir / "config.yaml", overrides)
        run_dir = RunDir(args.run_dir)
        items = {it.item_id: it for it in read_catalog(run_dir.require("catalog") / "items.jsonl")}
        inputs = load_split_inputs(run_dir, args.split, items, cfg.generate.top_k,
                                   resolve_query_file(cfg, run_dir, args.split), args.prompts, cfg.run.seed,
                                   exclude_named=cfg.mine.exclude_named)
        prompts, titles = build_prompts(inputs, PromptFormat.from_config(cfg.mine))
        llm = LlamaCppLLM.from_config(cfg.item_expert_llm, adapter=adapter_path(cfg, run_dir), seed=cfg.run.seed)
    except RegesError as e:
        parser.error(str(e))
    reference = SequentialRank(llm)
    llm.rank(prompts[0], titles[0])  # warm-up: builds the scoring context
    reference.rank(prompts[0], titles[0])
    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    diffs, same_best, prompt_tokens = [], 0, []
    for i, (prompt, cands) in enumerate(zip(prompts, titles, strict=True)):
        order = ("sequential", "batched") if i % 2 == 0 else ("batched", "sequential")
        scores = {}
        for name in order:
            t0 = time.perf_counter()
            scores[name] = reference.rank(prompt, cands) if name == "sequential" else llm.rank(prompt, cands)
            times[name].append(time.perf_counter() - t0)
        diffs.append(float(np.abs(np.array(scores["sequential"]) - np.array(scores["batched"])).max()))
        same_best += int(np.argmax(scores["sequential"]) == np.argmax(scores["batched"]))
        prompt_tokens.append(len(llm.encode(llm.prompt_text(prompt, 64))))
    ratio = ratio_ci(times["sequential"], times["batched"], 2000, cfg.run.seed)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/rank_batching.py", *sys.argv[1:]])
    m = machine_info()
    n = len(prompts)
    lines = [
        f"# llama.cpp rank: one batch against one decode per candidate ({args.run_dir}, {args.split})", "",
        f"Generated by `{command}` on {now_iso()} ({m['cpu_model']}, {m['cores']} cores, {args.threads} llama.cpp "
        f"threads). Model `{cfg.item_expert_llm.model}` with the run's GGUF adapter; {n} seeded {args.split} "
        f"prompts ({statistics.median(prompt_tokens):.0f} tokens median), {len(titles[0])} candidates each"
        f"{' (films the dialogue named left out)' if cfg.mine.exclude_named else ''}; the two procedures alternate "
        "which goes first; one warm-up call each.", "",
        "| procedure | p50 (ms) | p95 (ms) |", "|---|---:|---:|",
    ]
    for name in ("sequential", "batched"):
        ms = sorted(t * 1000 for t in times[name])
        lines.append(f"| {name} | {statistics.median(ms):,.0f} | {ms[min(n - 1, int(0.95 * n))]:,.0f} |")
    lines += ["", f"Per-prompt speed-up (sequential / batched): median **{ratio[0]:.2f}x** [95 % CI {ratio[1]:.2f}, "
              f"{ratio[2]:.2f}]. Scores: largest difference of a candidate's log-likelihood {max(diffs):.4f} nats "
              f"(median over prompts {statistics.median(diffs):.4f}); same best candidate in {same_best} of {n} "
              "prompts (batched matrix products round differently from one-sequence ones)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {"times_s": times, "max_abs_diff": diffs, "same_best": same_best,
                                               "prompts": n, "prompt_tokens": prompt_tokens,
                                               "speedup_median_ci": ratio, "overrides": overrides,
                                               "command": command, "machine": m})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
