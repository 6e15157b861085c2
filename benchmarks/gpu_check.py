"""Run the CUDA code paths once with tiny random models built from configs; write the log to a Markdown page.

    bash scripts/gpu_check.sh            # on a machine with a GPU: writes docs/results/gpu_check.md (under 5 minutes)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check.md   # the same checks on CPU

Nothing is downloaded: the models are random (a 2-layer Llama with a WordLevel tokenizer, a 16-dim static
sentence encoder, from tests/tiny_models.py and tests/retrieval_fakes.py), and a ~0.2B random Llama built from a
`LlamaConfig` measures the memory estimate against the real peak.

Checks (each: ok, FAILED with the error, or skipped with the reason):
    lora_sft          train_lora on the device in bf16, 3 steps; the first loss against fp32 on the CPU
    lora_listwise     the listwise objective with gradient checkpointing, 2 steps
    rank              HFLLM.rank on the device (fp32) against the CPU's scores
    constrained       HFLLM.choose (trie-constrained decoding) on the device: always a candidate (vs the CPU: reported)
    free              HFLLM.generate greedy on the device: some text (whether it is the CPU's: reported)
    encoder_finetune  finetune_encoder on the device with bf16 autocast, 3 epochs: the loss falls
    memory_estimate   reges.llm.memory's estimate against torch.cuda.max_memory_allocated (CUDA only)
    data_parallel     2 processes on NCCL (torchrun) against one process (needs 2 GPUs)
Without CUDA (and without --device cpu) it refuses with status 2 and leaves the page alone. A run with
--device cpu is a dry run of this script itself (tests/test_gpu_check.py) and may not write the GPU page.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))  # the tiny model builders of the test suite

import torch  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "results" / "gpu_check.md"
NOT_RUN = "not yet run on a GPU"
EXAMPLES = [
    {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
    for q, a in [("I like scary movies", "Jaws"), ("a funny family movie", "Up"), ("Hello !", "Heat (1995)"),
                 ("Can you recommend a movie ?", "The Matrix (1999)")] * 2
]
PROMPT = [{"role": "user", "content": "I loved Alien (1979) . Which one do you recommend ?"}]
CANDIDATES = ["Jaws (1975)", "The Matrix (1999)", "Titanic (1997)", "Up (2009)"]


@dataclasses.dataclass
class Result:
    name: str
    status: str  # "ok", "FAILED" or "skipped"
    seconds: float
    details: str


def _tiny_llama(work: Path) -> Path:
    from tiny_models import build_tiny_llama

    folder = work / "tiny-llama"
    return folder if folder.is_dir() else build_tiny_llama(folder)


def _lora_cfg(device: str, **changes: object):  # noqa: ANN202
    from reges.llm.lora import LoraTrainConfig

    base = LoraTrainConfig(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj", "o_proj", "lm_head"),
                           lr=3e-2, max_steps=3, batch_size=2, grad_accum=2, save_every_steps=0, device=device,
                           log_every=0)
    return dataclasses.replace(base, **changes)


def check_lora_sft(device: str, work: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reges.io import read_json
    from reges.llm.lora import train_lora

    folder = _tiny_llama(work)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = "bfloat16" if device == "cuda" else "float32"
    result = train_lora(AutoModelForCausalLM.from_pretrained(folder), tokenizer, EXAMPLES,
                        _lora_cfg(device, dtype=dtype), work / "lora-sft", False)
    reference = train_lora(AutoModelForCausalLM.from_pretrained(folder), tokenizer, EXAMPLES,
                           _lora_cfg("cpu", max_steps=1), work / "lora-sft-cpu", False)
    state = read_json(result.adapter_dir.parent / "trainer_state.json")
    assert all(torch.isfinite(torch.tensor(result.losses))), result.losses
    gap = abs(result.losses[0] - reference.losses[0]) / reference.losses[0]
    assert gap < 0.05, f"first loss {result.losses[0]:.4f} on {device} ({dtype}) vs {reference.losses[0]:.4f} on CPU"
    return (f"{dtype} on {state['device']}: losses {[round(x, 4) for x in result.losses]}, first loss within "
            f"{gap:.1e} of fp32 CPU; {result.tokens_per_s:.0f} tokens/s; peak CUDA "
            f"{state.get('peak_cuda_mb', 0.0):.0f} MiB")


def check_lora_listwise(device: str, work: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reges.llm.lora import train_lora

    folder = _tiny_llama(work)
    examples = [{**e, "candidates": sorted({x["completion"][0]["content"] for x in EXAMPLES})} for e in EXAMPLES]
    cfg = _lora_cfg(device, dtype="bfloat16" if device == "cuda" else "float32", objective="listwise", max_steps=2,
                    gradient_checkpointing=True)
    result = train_lora(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                        examples, cfg, work / "lora-listwise", False)
    assert all(torch.isfinite(torch.tensor(result.losses))), result.losses
    return f"{cfg.dtype}, gradient checkpointing: losses {[round(x, 4) for x in result.losses]}"


def _llms(device: str, work: Path):  # noqa: ANN202
    from reges.config import LLMConfig
    from reges.llm.hf import HFLLM

    folder = str(_tiny_llama(work))
    return (HFLLM.from_config(LLMConfig(model=folder, device=device, dtype="float32")),
            HFLLM.from_config(LLMConfig(model=folder, device="cpu", dtype="float32")))


def check_rank(device: str, work: Path) -> str:
    llm, cpu = _llms(device, work)
    scores, expected = llm.rank(PROMPT, CANDIDATES), cpu.rank(PROMPT, CANDIDATES)
    gap = max(abs(a - b) for a, b in zip(scores, expected, strict=True))
    assert gap < 1e-3, f"rank scores {scores} on {device} vs {expected} on CPU"
    return f"fp32 scores {[round(s, 3) for s in scores]}, within {gap:.1e} of the CPU's"


# A random tiny model's next-token logits are nearly flat, so greedy choices may flip at a near tie between devices:
# constrained and free decoding must run and stay within the candidates; agreeing with the CPU is reported.
def check_constrained(device: str, work: Path) -> str:
    llm, cpu = _llms(device, work)
    lists = [CANDIDATES, CANDIDATES[::-1]]
    chosen, expected = llm.choose([PROMPT, PROMPT], lists), cpu.choose([PROMPT, PROMPT], lists)
    assert all(c in CANDIDATES for c in chosen), chosen
    return f"chose {chosen} ({'the CPU too' if chosen == expected else f'the CPU chose {expected}'})"


def check_free(device: str, work: Path) -> str:
    llm, cpu = _llms(device, work)
    text, expected = llm.generate([PROMPT], 8)[0], cpu.generate([PROMPT], 8)[0]
    assert isinstance(text, str) and text.strip(), repr(text)
    return f"greedy text {text!r} ({'the CPU too' if text == expected else f'the CPU wrote {expected!r}'})"


def check_encoder_finetune(device: str, work: Path) -> str:
    from retrieval_fakes import build_tiny_sentence_transformer
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from reges.config import TrainRetrieverConfig
    from reges.records import Item, RecExample, Turn
    from reges.retrieval.finetune import build_pairs, finetune_encoder

    items = {str(i): Item(str(i), t, f"{t}. {g}") for i, (t, g) in enumerate(
        [("Alien (1979)", "horror space"), ("Up (2009)", "family animation"), ("Heat (1995)", "crime heist"),
         ("Jaws (1975)", "horror shark"), ("Toy Story (1995)", "family toys")])}
    examples = [RecExample(f"e{i}", f"d{i}", [Turn("user", text)], [target], [False]) for i, (text, target) in
                enumerate([("something scary in space", "0"), ("a film for my kids", "1"), ("a clever heist", "2"),
                           ("a shark movie", "3"), ("animated toys", "4")])]
    texts = [it.text for it in items.values()] + [t.content for ex in examples for t in ex.context] + ["User:"]
    static = SentenceTransformer(str(build_tiny_sentence_transformer(work / "st", texts)), device="cpu")
    model = SentenceTransformer(modules=[*static, Dense(16, 16)], device=device)  # a Linear for autocast
    pairs = build_pairs(examples, items, "full", 1000)
    cfg = TrainRetrieverConfig(epochs=3, batch_size=5, lr=0.05, warmup_ratio=0.0, save_every_steps=0, chunk_size=0,
                               dtype="auto")
    result = finetune_encoder(model, pairs, [[] for _ in pairs], items, cfg, seed=0)
    assert result.loss_end < result.loss_start, dataclasses.asdict(result)
    return f"{result.dtype} autocast: loss {result.loss_start:.3f} -> {result.loss_end:.3f}"


def check_memory_estimate(device: str, work: Path) -> str:
    if device != "cuda":
        raise SkipCheck("measures torch.cuda.max_memory_allocated")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reges.llm.lora import train_lora
    from reges.llm.memory import ModelShape, training_estimate

    folder = _tiny_llama(work)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    words = " ".join(["the movie was good and the story was great ."] * 110)  # ~1000 prompt tokens
    examples = [{"prompt": [{"role": "user", "content": words}],
                 "completion": [{"role": "assistant", "content": "Jaws ( 1975 ) or Up"}]}] * 4
    cfg = _lora_cfg(device, dtype="bfloat16", r=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                    max_prompt_tokens=1024, max_completion_tokens=16, max_steps=2, batch_size=2, grad_accum=1)
    torch.cuda.reset_peak_memory_stats()
    train_lora(model, tokenizer, examples, cfg, work / "lora-memory", False)
    measured = torch.cuda.max_memory_allocated() / 2**30
    estimate = training_estimate(ModelShape.from_hf_config(config.to_dict(), "random Llama"), cfg)
    ratio = estimate.total_gib / measured
    assert 0.5 < ratio < 2.0, f"estimate {estimate.total_gib:.2f} GiB vs measured {measured:.2f} GiB"
    return (f"{estimate.shape.num_params / 1e6:.0f} M params, 2 x {cfg.max_prompt_tokens + 16} tokens: estimated "
            f"{estimate.total_gib:.2f} GiB (activations {estimate.activations_gib:.2f}), measured peak "
            f"{measured:.2f} GiB (ratio {ratio:.2f})")


def check_data_parallel(device: str, work: Path) -> str:
    if device != "cuda" or torch.cuda.device_count() < 2:
        raise SkipCheck(f"needs 2 GPUs, found {torch.cuda.device_count() if device == 'cuda' else 0}")
    import distributed_worker as worker

    from reges.io import read_json

    folder = _tiny_llama(work)
    worker.job_lora(str(folder), str(work / "dp-one"), {"device": "cuda"})
    spec = work / "dp.json"
    spec.write_text(json.dumps([{"job": "lora", "model_dir": str(folder), "out_dir": str(work / "dp-two"),
                                 "config": {"device": "cuda"}}]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(TESTS / "distributed_worker.py"), str(spec)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (read_json(work / name / "trainer_state.json")["losses"] for name in ("dp-one", "dp-two"))
    gap = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    assert gap < 1e-4, f"losses {b} on 2 GPUs vs {a} on one"
    return f"NCCL, 2 processes: losses within {gap:.1e} (relative) of one process"


class SkipCheck(Exception):
    """The check does not apply here; the message says why."""


CHECKS: list[tuple[str, Callable[[str, Path], str]]] = [
    ("lora_sft", check_lora_sft),
    ("lora_listwise", check_lora_listwise),
    ("rank", check_rank),
    ("constrained", check_constrained),
    ("free", check_free),
    ("encoder_finetune", check_encoder_finetune),
    ("memory_estimate", check_memory_estimate),
    ("data_parallel", check_data_parallel),
]


def environment(device: str) -> dict[str, str]:
    import importlib.util

    from reges.io import library_versions

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda (torch build)": str(torch.version.cuda), "device": device}
    if device == "cuda":
        env["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        env["bf16 supported"] = str(torch.cuda.is_bf16_supported())
    for name in ("bitsandbytes", "flash_attn"):
        env[name] = "installed" if importlib.util.find_spec(name) else "not installed"
    versions = library_versions()
    env.update({k: versions[k] for k in ("reges", "git", "transformers", "peft") if k in versions})
    return env


def render(results: list[Result], env: dict[str, str], device: str, seconds: float) -> str:
    title = "GPU check" if device == "cuda" else "GPU check: CPU dry run (not a GPU result)"
    lines = [
        f"# {title}",
        "",
        "Written by `bash scripts/gpu_check.sh` (benchmarks/gpu_check.py): the CUDA code paths of reges run once with "
        "tiny random models built from configs (nothing downloaded). See the script's docstring for what each "
        "check compares.",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {seconds:.0f} s in all.",
        "",
        "| check | status | seconds | details |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.details.replace('|', '/')} |" for r in results]
    lines += ["", "Environment:", ""] + [f"- {k}: {v}" for k, v in env.items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (default); cpu runs the same checks as a dry run of this script")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown page to write")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); nothing was "
              f"run and {args.out} is unchanged. Run it on a machine with a GPU, or pass --device cpu --out FILE for "
              "a dry run of the script.", file=sys.stderr)
        return 2
    if args.device == "cpu" and args.out.resolve() == DEFAULT_OUT.resolve():
        print(f"gpu_check: a CPU dry run does not write {DEFAULT_OUT}; pass --out FILE", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name, check in CHECKS:
            if args.only is not None and name not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                status, details = "ok", check(args.device, Path(tmp))
            except SkipCheck as e:
                status, details = "skipped", str(e)
            except Exception as e:  # a failed check is reported, and the others still run
                status, details = "FAILED", f"{type(e).__name__}: {e}"
                traceback.print_exc()
            results.append(Result(name, status, time.perf_counter() - t0, details))
            print(f"{name:<18} {status:<8} {results[-1].seconds:6.1f} s  {details}", flush=True)
    page = render(results, environment(args.device), args.device, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if any(r.status == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
