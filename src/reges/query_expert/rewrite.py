"""Stage `rewrite`: the trained Query Expert writes one preference query per example.

`llm.model` with the adapter of `train-query` (the PEFT folder for the hf backend, `adapter.gguf` for llamacpp;
an openai endpoint must serve the trained adapter itself) reads the student prompt of each example
(`prompts.query_prompt`, the same as in training) and writes a query by greedy decoding, in batches.

Files under `rewrite/`:
    {split}.jsonl   {"example_id", "query"}, sorted by example_id, one row per example of the split
    manifest.json   written last; per split: queries, empty queries, seconds, queries/s, latency p50/p95

Latency: generation runs in batches of `rewrite.batch_size`, so a query's latency is the wall time of the batch
it was in (what a caller waits for its answer); queries/s is the throughput. The server calls `rewrite_queries`
with one dialogue at a time, where the two agree.

Resume: every finished batch is appended to `rewrite/checkpoints/{split}.partial.jsonl` (`reges.llm.partial`), so
a run that crashed or was killed restarts where it stopped when the command is run again: examples found there,
under the same model, adapter and decoding settings and with the same prompt, are not sent to the LLM again. Through
an OpenAI-compatible server (`llm.backend=openai`), `llm.batch_size` requests are in flight at once, each retried
`llm.max_retries` times; a batch of `rewrite.batch_size` prompts is the unit that is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from reges.config import PipelineConfig, RewriteConfig
from reges.errors import ConfigError, ModelError
from reges.io import RunDir, file_sha256, now_iso, write_jsonl
from reges.llm import resolve_backend, trained_adapter
from reges.llm.base import LLM
from reges.llm.partial import CHECKPOINTS, PartialRows, llm_settings, sha
from reges.query_expert.prompts import query_prompt
from reges.records import Turn
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger(__name__)

_WRAPPING = "\"'“”‘’`* "


def clean_query(text: str) -> str:
    """The query in a generated answer: its first non-empty line, without wrapping quotes, whitespace collapsed."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return " ".join(line.strip().strip(_WRAPPING).split())


def rewrite_queries_timed(
    llm: LLM,
    contexts: Sequence[list[Turn]],
    batch_size: int,
    max_new_tokens: int,
    show_progress: bool = False,
) -> tuple[list[str], list[float]]:
    """`rewrite_queries`, also returning each query's latency (the wall time of its batch, in seconds)."""
    if batch_size < 1:
        raise ConfigError(f"rewrite.batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ConfigError(f"rewrite.max_new_tokens must be >= 1, got {max_new_tokens}")
    queries: list[str] = []
    latencies: list[float] = []
    starts = range(0, len(contexts), batch_size)
    for start in tqdm(starts, desc="rewrite", unit="batch", disable=not show_progress):
        batch = [query_prompt(list(c)) for c in contexts[start : start + batch_size]]
        t0 = time.perf_counter()
        answers = llm.generate(batch, max_new_tokens, temperature=0.0, stop=["\n"])
        seconds = time.perf_counter() - t0
        if len(answers) != len(batch):
            raise ModelError(f"the LLM returned {len(answers)} answers for {len(batch)} prompts")
        queries.extend(clean_query(a) for a in answers)
        latencies.extend([seconds] * len(batch))
    return queries, latencies


def rewrite_queries(
    llm: LLM,
    contexts: list[list[Turn]],
    batch_size: int,
    max_new_tokens: int,
    show_progress: bool = False,
) -> list[str]:
    """Write one preference query per dialogue context with the Query Expert (greedy, batched, in memory).

    Args:
        llm: The student: the base model with the `train-query` adapter (any `reges.llm` backend).
        contexts: Dialogue contexts, oldest turn first.
        batch_size: Prompts per `llm.generate` call.
        max_new_tokens: Most tokens per query.
        show_progress: tqdm bar over the batches.

    Returns:
        One query per context, in order ("" when the model wrote nothing).

    Example:
        >>> llm = load_llm(LLMConfig(), adapter="runs/redial/train-query/adapter")
        >>> rewrite_queries(llm, [[Turn("user", "Something scary like Alien (1979)?")]], 8, 48)
        ['horror, sci-fi. Alien (1979)']
    """
    return rewrite_queries_timed(llm, contexts, batch_size, max_new_tokens, show_progress)[0]


def adapter_for_backend(cfg: PipelineConfig, train_dir: Path) -> str | None:
    """The Query Expert's adapter for the configured backend (`reges.llm.trained_adapter`); openai: none, logged.

    Raises:
        ConfigError: llamacpp was asked for but train-query wrote no GGUF adapter (the base is not a GGUF model).
    """
    adapter = trained_adapter(cfg.llm, train_dir)
    if adapter is None:
        logger.info("backend %s: the endpoint must serve the trained adapter (%s) itself", resolve_backend(cfg.llm),
                    train_dir / "adapter")
    return adapter


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Write `rewrite/{split}.jsonl` for every split of `rewrite.splits` the data stage wrote, then the manifest.

    Example:
        reges rewrite --config configs/redial.yaml --run-dir runs/redial llm.backend=llamacpp
    """
    from reges.llm import load_llm

    started = now_iso()
    rc: RewriteConfig = cfg.rewrite
    if not rc.splits:
        raise ConfigError("rewrite.splits is empty; list the splits to rewrite, e.g. [tune, dev]")
    data_dir = run_dir.require("data")
    train_dir = run_dir.require("train-query")
    split_paths = {}
    for split in rc.splits:
        path = data_dir / f"{split}.jsonl"
        if path.is_file():
            split_paths[split] = path
        else:
            logger.warning("rewrite: the data stage wrote no %s split (%s); skipped", split, path)
    if not split_paths:
        raise ConfigError(f"none of rewrite.splits={rc.splits} was written by the data stage; check data/")
    adapter = adapter_for_backend(cfg, train_dir)
    out = run_dir.begin("rewrite", cfg.run.overwrite)  # keeps checkpoints/: the partial results of a killed run
    llm = load_llm(cfg.llm, adapter=adapter, seed=cfg.run.seed)
    backend = resolve_backend(cfg.llm)
    settings = {
        "stage": "rewrite",
        "llm": llm_settings(cfg.llm, backend),
        "train-query": file_sha256(train_dir / "manifest.json"),  # the adapter: retrained, the answers change
        "max_new_tokens": rc.max_new_tokens,
        # how prompts are batched can move a padded batch's answers on local backends, not through a server
        "batch_size": None if backend == "openai" else rc.batch_size,
    }

    outputs: dict[str, int] = {}
    per_split: dict[str, dict[str, float | int]] = {}
    for split, path in split_paths.items():
        examples = sorted(read_examples(path), key=lambda ex: ex.example_id)
        partial = PartialRows(out / CHECKPOINTS / f"{split}.partial.jsonl", settings)
        done = partial.load()
        input_shas = {ex.example_id: sha(query_prompt(list(ex.context))) for ex in examples}
        todo = [ex for ex in examples
                if done.get(ex.example_id, {}).get("input_sha") != input_shas[ex.example_id]]
        t0 = time.perf_counter()
        bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"rewrite {split}", unit="example",
                   disable=not cfg.run.show_progress)
        for start in range(0, len(todo), rc.batch_size):
            batch = todo[start : start + rc.batch_size]
            queries, latencies = rewrite_queries_timed(llm, [ex.context for ex in batch], rc.batch_size,
                                                       rc.max_new_tokens)
            finished = [{"example_id": ex.example_id, "input_sha": input_shas[ex.example_id], "query": q,
                         "latency_s": s} for ex, q, s in zip(batch, queries, latencies, strict=True)]
            partial.append(finished)
            done.update((row["example_id"], row) for row in finished)
            bar.update(len(batch))
        bar.close()
        seconds = time.perf_counter() - t0
        queries = [done[ex.example_id]["query"] for ex in examples]
        latencies = [done[ex.example_id]["latency_s"] for ex in examples]
        rows = [{"example_id": ex.example_id, "query": q} for ex, q in zip(examples, queries, strict=True)]
        outputs[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", rows)
        per_split[split] = {
            "queries": len(rows),
            "resumed_queries": len(examples) - len(todo),
            "empty_queries": sum(1 for q in queries if not q),
            "seconds": round(seconds, 3),
            "queries_per_s": round(len(todo) / seconds, 2) if seconds > 0 else 0.0,
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else 0.0,
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else 0.0,
            "query_words_mean": round(float(np.mean([len(q.split()) for q in queries])), 2) if queries else 0.0,
        }
        logger.info("rewrite %s: %d queries, %.2f queries/s", split, len(rows), per_split[split]["queries_per_s"])

    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # every split is written: nothing left to resume
    inputs = {f"data/{split}": path for split, path in split_paths.items()}
    inputs["train-query/adapter"] = train_dir / "adapter"
    run_dir.finish(
        "rewrite",
        config=dataclasses.asdict(rc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "llm": {"model": cfg.llm.model, "backend": cfg.llm.backend, "threads": cfg.run.threads},
            "adapter": adapter,
            "splits": per_split,
        },
    )
