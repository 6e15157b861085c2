"""LoRA training speed of SmolLM2-135M-Instruct on CPU: fp32 vs bf16 weights vs bf16 autocast.

    .venv/bin/python benchmarks/llm_training.py --rounds 2 --steps 5 --out docs/results/llm_training_run.md

The page it writes is generated whole; docs/results/llm_training.md keeps dated, hand-written readings of it.

Setup: r=16 LoRA on q,k,v,o, batches of 4 examples x 256 tokens, completion-only loss, AdamW.

Modes: "float32" and "bfloat16" run `reges.llm.lora.train_lora` itself (`dtype="bfloat16"`: bf16 base weights,
fp32 LoRA weights and optimizer state); "autocast" is `train_lora`'s step written out bare with fp32 weights under
`torch.autocast(bfloat16)`, to decide which bf16 flavour `train_lora` should offer; "bare-float32" is that bare step
without autocast, the floor any trainer (TRL's included) could reach, to measure `train_lora`'s own overhead.

Each mode runs in its own process (so peak RSS is that mode's), and the modes take turns for `--rounds` rounds, so
that load from other jobs on a shared machine spreads over all of them. Step times are pooled over the rounds,
the first `--warmup` steps of each process left out, and summarised by their median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reges.config import LLMConfig  # noqa: E402
from reges.llm.lora import IGNORE_INDEX, LoraTrainConfig, collate, tokenize_example, train_lora  # noqa: E402
from reges.llm.models import load_hf  # noqa: E402

logger = logging.getLogger("benchmarks.llm_training")

SEQ_TOKENS = 256
BATCH = 4
MODES = ("float32", "bfloat16", "autocast", "bare-float32")
WORDS = (
    "I loved The Matrix and Alien but the sequels were weaker . Have you seen Heat or The Thing ? I want something "
    "scary tonight , maybe a classic horror movie from the eighties with a great score . My wife prefers comedy "
    "and romance , so a movie we both enjoy would be perfect . We watched Titanic last week and it was too long . "
    "Do you know any good thriller with a twist ending ? Something like The Sixth Sense or Fight Club ."
).split()


def make_examples(tokenizer, n: int, seed: int) -> tuple[list[dict], int, int]:
    """Dialogue-like chats whose prompt is cut to `SEQ_TOKENS - completion` tokens, so each example is 256 tokens."""
    rng = random.Random(seed)
    answer = "You might enjoy The Shining (1980): a classic horror movie with a great score and a twist."
    examples = []
    for _ in range(n):
        turns = [" ".join(rng.choices(WORDS, k=60)) for _ in range(6)]
        prompt = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        examples.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    probe = tokenize_example(tokenizer, examples[0], 10_000, 10_000)
    completion_tokens = sum(t != IGNORE_INDEX for t in probe.labels)
    return examples, SEQ_TOKENS - completion_tokens, completion_tokens


def train_config(steps: int, max_prompt: int, max_completion: int, dtype: str) -> LoraTrainConfig:
    return LoraTrainConfig(
        r=16,
        alpha=32.0,
        dropout=0.05,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        max_steps=steps,
        batch_size=BATCH,
        max_prompt_tokens=max_prompt,
        max_completion_tokens=max_completion,
        save_every_steps=0,
        dtype=dtype,
        device="cpu",
        log_every=0,
    )


def run_mode(mode: str, steps: int) -> dict:
    """One mode in this process: its step times, losses and peak RSS."""
    model, tokenizer = load_hf(LLMConfig(device="cpu", dtype="float32"))
    examples, max_prompt, max_completion = make_examples(tokenizer, BATCH * steps, seed=0)
    cfg = train_config(steps, max_prompt, max_completion, "bfloat16" if mode == "bfloat16" else "float32")
    if mode in ("float32", "bfloat16"):
        with tempfile.TemporaryDirectory() as out:
            result = train_lora(model, tokenizer, examples, cfg, Path(out), show_progress=False)
            step_times = json.loads((Path(out) / "trainer_state.json").read_text())["step_times_s"]
        losses = result.losses
    else:
        step_times, losses = bare_steps(model, tokenizer, examples, cfg, autocast=mode == "autocast")
    return {
        "mode": mode,
        "step_times_s": step_times,
        "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_avg": os.getloadavg()[0],
    }


def bare_steps(
    model, tokenizer, examples: list[dict], cfg: LoraTrainConfig, autocast: bool
) -> tuple[list[float], list[float]]:
    """`train_lora`'s step written out bare (fp32 weights, optionally under bf16 autocast): no scheduler, no
    length grouping (every example has the same length), no bookkeeping."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules))
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    rows = [tokenize_example(tokenizer, e, cfg.max_prompt_tokens, cfg.max_completion_tokens) for e in examples]
    peft_model.train()
    step_times, losses = [], []
    for start in range(0, len(rows), cfg.batch_size):
        t0 = time.perf_counter()
        batch = collate(rows[start : start + cfg.batch_size], tokenizer.pad_token_id)
        targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = peft_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
        loss_sum = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum"
        )
        (loss_sum / targets).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum.item() / targets)
        step_times.append(time.perf_counter() - t0)
    return step_times, losses


def summarise(runs: list[dict], warmup: int) -> list[dict]:
    rows = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        times = [t for r in mine for t in r["step_times_s"][warmup:]]
        median = float(np.median(times))
        rows.append(
            {
                "mode": mode,
                "median_step_s": median,
                "p25_step_s": float(np.percentile(times, 25)),
                "p75_step_s": float(np.percentile(times, 75)),
                "timed_steps": len(times),
                "tokens_per_s": BATCH * SEQ_TOKENS / median,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "loss_first_last": [mine[0]["losses"][0], mine[0]["losses"][-1]],
            }
        )
    return rows


def write_report(summary: list[dict], runs: list[dict], args: argparse.Namespace) -> None:
    names = {
        "float32": "`train_lora`, `dtype=float32`",
        "bfloat16": "`train_lora`, `dtype=bfloat16` (bf16 base, fp32 LoRA)",
        "autocast": "bare step, fp32 weights + bf16 autocast",
        "bare-float32": "bare step, float32 (no trainer)",
    }
    loads = [r["load_avg"] for r in runs]
    fp32 = next(r for r in summary if r["mode"] == "float32")["median_step_s"]
    lines = [
        "# LoRA training speed (SmolLM2-135M-Instruct, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/llm_training.py --rounds {args.rounds} --steps {args.steps} "
        f"--warmup {args.warmup} --threads {args.threads} --out {args.out}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (AVX512-BF16, AMX), no GPU; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads. Date: {datetime.date.today().isoformat()}. Shared with other jobs "
        f"(1-minute load average {min(loads):.1f}-{max(loads):.1f} on 2 cores at the end of each process), so single "
        "steps vary a lot; the median and quartiles over all rounds are the figures to use.",
        "",
        f"Setup: r=16, alpha=32, dropout 0.05 on q,k,v,o; batch {BATCH} x {SEQ_TOKENS} tokens (completion-only loss); "
        f"AdamW. Each mode ran {args.rounds} times in its own process, {args.steps} steps each, the first "
        f"{args.warmup} not timed; the modes took turns.",
        "",
        "| mode | median step (s) | p25-p75 (s) | tokens/s (median) | vs float32 | peak RSS (MiB) | loss 1st->last |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        first, last = r["loss_first_last"]
        lines.append(
            f"| {names[r['mode']]} | {r['median_step_s']:.2f} | {r['p25_step_s']:.2f}-{r['p75_step_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {fp32 / r['median_step_s']:.2f}x | {r['peak_rss_mb']:.0f} | "
            f"{first:.3f} -> {last:.3f} |"
        )
    lines += ["", "Raw results:", "", "```json", json.dumps(runs, indent=1), "```", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="times each mode runs, taking turns")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run not timed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--out", default="docs/results/llm_training_run.md")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode ...
    parser.add_argument("--result", help=argparse.SUPPRESS)  # ... and write its JSON here
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.mode:
        Path(args.result).write_text(json.dumps(run_mode(args.mode, args.steps)))
        return 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for mode in MODES:
                result = Path(tmp) / f"{mode}-{round_}.json"
                cmd = [sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--result", str(result)]
                cmd += ["--threads", str(args.threads)]
                subprocess.run(cmd, check=True)
                runs.append(json.loads(result.read_text()))
                logger.info("%s round %d: %s", mode, round_, [round(t, 2) for t in runs[-1]["step_times_s"]])
    write_report(summarise(runs, args.warmup), runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
