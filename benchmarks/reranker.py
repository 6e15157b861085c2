"""A learned reranker, the cheap alternative to the Item Expert: a cross-encoder fine-tuned from all-MiniLM-L6-v2 on
the retriever's hard negatives, fused with the retriever's score exactly as the Item Expert's rank mode is.

Training pairs come from the run's `train` split and its retrieval (`retrieve/train.trec`, each example retrieved
without its own dialogue in the counts): per example the mined candidates of `reges mine` (`select_candidates`,
hard negatives, the served setting by default: films the dialogue named are neither candidates nor targets), the
target labelled 1 and `--negatives` of the others (seeded) labelled 0. `--retrieved-only` keeps the examples whose
target the retriever ranked (no inserted targets: those teach "unlike the retriever's top" as a positive). The
input is the dialogue rendered like the retrieve stage (`context_to_query`, the end kept) paired with the item's
card; binary cross-entropy on one logit.

Evaluation on `tune` and `dev`: every example's top `--top-k` retrieved candidates (named films left out), scored
by the reranker; the pick is the first of `(1 - alpha) z(retriever) + alpha z(reranker)` (`generate.fuse_scores`),
alpha tuned on `tune` (`generate.tune_alpha`). Success rates with 95 % clustered-bootstrap intervals
(`eval.metrics.summarize_picks`) for the retriever's top-1 (alpha 0), the reranker alone (alpha 1) and fused; with
named films left out these are the as-served figures. Cost: training wall time and pairs/s, scoring time per
example (all its candidates), one thread unless --threads.

Usage:
    .venv/bin/python benchmarks/reranker.py --run-dir runs/inspired --out docs/results/reranker_inspired.md
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from reges.catalog import alias_map, read_catalog
from reges.eval.metrics import PickOutcome, summarize_picks
from reges.io import RunDir, machine_info, now_iso, read_trec
from reges.item_expert.generate import (
    ALPHA_GRID,
    Pick,
    SplitInputs,
    fuse_pick,
    load_split_inputs,
    tune_alpha,
)
from reges.item_expert.mining import select_candidates
from reges.item_expert.prompts import candidate_titles
from reges.records import Item
from reges.retrieval.encoder import BUNDLED_MINILM, resolve_encoder_path
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger("benchmarks.reranker")

MAX_QUERY_CHARS = 2000


def training_pairs(run_dir: RunDir, items: dict[str, Item], args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(dialogue text, card, label) pairs from the train split's mined candidates."""
    examples = sorted(read_examples(run_dir.require("data") / "train.jsonl", alias_map(items.values())),
                      key=lambda e: e.example_id)
    rankings = read_trec(run_dir.require("retrieve") / "train.trec")
    catalog_ids = sorted(items)
    rng = np.random.default_rng(args.seed)
    pairs = []
    for ex in examples:
        mined = select_candidates(ex, [h.item_id for h in rankings.get(ex.example_id, [])], catalog_ids, "hard",
                                  args.top_k, args.seed, exclude_named=args.exclude_named)
        if mined is None or (mined.inserted and args.retrieved_only):
            continue
        text = context_to_query(ex.context, "full", MAX_QUERY_CHARS)
        negatives = [c for c in mined.candidate_ids if c not in ex.target_item_ids]
        chosen = rng.choice(len(negatives), size=min(args.negatives, len(negatives)), replace=False)
        pairs.append((text, items[mined.target_item_id].text, 1.0))
        pairs += [(text, items[negatives[i]].text, 0.0) for i in chosen]
    if args.max_pairs:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(args.max_pairs, len(pairs)),
                                                     replace=False))]
    return pairs


def encode_pairs(tokenizer: Any, texts: list[str], cards: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """[CLS] dialogue end [SEP] card start [SEP], at most max_length tokens: the card keeps its beginning (its title)
    and at least half the budget, the dialogue keeps its end (what the seeker last asked for)."""
    total = max_length - 3
    ids, types = [], []
    for text, card in zip(texts, cards, strict=True):
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        b = tokenizer(card, add_special_tokens=False)["input_ids"]
        keep_b = min(len(b), max(total - len(a), total // 2))
        keep_a = total - keep_b
        a, b = (a[-keep_a:] if keep_a > 0 else []), b[:keep_b]
        ids.append([tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(ids), width), dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (row, kind) in enumerate(zip(ids, types, strict=True)):
        input_ids[i, :len(row)] = torch.tensor(row)
        token_type_ids[i, :len(row)] = torch.tensor(kind)
        attention_mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def train(pairs: list[tuple[str, str, float]], args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the cross-encoder; returns (model, tokenizer, record)."""
    folder = resolve_encoder_path(BUNDLED_MINILM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(pairs) + args.batch_size - 1) // args.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), args.batch_size):
            batch = [pairs[i] for i in order[start:start + args.batch_size]]
            enc = encode_pairs(tokenizer, [b[0] for b in batch], [b[1] for b in batch], args.max_length)
            logits = model(**enc).logits.squeeze(-1)  # (batch,)
            loss = loss_fn(logits, torch.tensor([b[2] for b in batch]))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            if len(losses) % 50 == 0:
                logger.info("epoch %d step %d/%d: loss %.4f (mean of the last 50)", epoch, len(losses), steps,
                            float(np.mean(losses[-50:])))
    seconds = time.perf_counter() - t0
    model.eval()
    return model, tokenizer, {"pairs": len(pairs), "steps": len(losses), "seconds": round(seconds, 1),
                              "pairs_per_s": round(args.epochs * len(pairs) / seconds, 1),
                              "loss_first_50": round(float(np.mean(losses[:50])), 4),
                              "loss_last_50": round(float(np.mean(losses[-50:])), 4)}


@torch.no_grad()
def rerank(model: Any, tokenizer: Any, inputs: SplitInputs,
           args: argparse.Namespace) -> tuple[list[Pick], list[float]]:
    """A rank-mode `Pick` per example (candidate positions by reranker score) and each example's scoring time."""
    picks, seconds = [], []
    for ex in inputs.examples:
        cands = inputs.candidates[ex.example_id]
        text = context_to_query(ex.context, "full", MAX_QUERY_CHARS)
        t0 = time.perf_counter()
        enc = encode_pairs(tokenizer, [text] * len(cands), [c.text for c in cands], args.max_length)
        scores = model(**enc).logits.squeeze(-1).tolist()  # (k,)
        seconds.append(time.perf_counter() - t0)
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
        picks.append(Pick(cands[order[0]].title, order[0], [(i, scores[i]) for i in order], seconds[-1]))
    return picks, seconds


def outcomes(inputs: SplitInputs, picks: list[Pick], alpha: float) -> list[PickOutcome]:
    """Each example's pick of the fused list at `alpha` (`fuse_pick`, as `reges generate` fuses), as
    `summarize_picks` scores it."""
    out = []
    for ex, pick in zip(inputs.examples, picks, strict=True):
        cands = inputs.candidates[ex.example_id]
        fused = fuse_pick(pick, candidate_titles(cands), inputs.retriever_scores[ex.example_id], alpha)
        assert fused.index is not None  # a ranking always picks a candidate
        out.append(PickOutcome(ex.example_id, ex.dialogue_id, cands[fused.index].item_id, True, True,
                               tuple(ex.target_item_ids), tuple(ex.target_mentioned),
                               tuple(c.item_id for c in cands)))
    return out


def render(r: dict[str, Any]) -> str:
    m, s, t = r["machine"], r["settings"], r["training"]
    lines = [
        f"# A learned reranker on {r['dataset']}: a MiniLM cross-encoder on the retriever's hard negatives",
        "",
        f"Measured {r['date']} on {m['cpu_model']} ({m['cores']} logical cores), {s['threads']} thread; load average "
        f"before {m['load_average']} (other jobs share these cores: times are upper bounds). Raw numbers: the .json "
        "next to this file.",
        "",
        f"```\n{r['command']}\n```",
        "",
        f"Training: {t['pairs']:,} pairs (the mined target + {s['negatives']} hard negatives per `train` example"
        + (" whose target the retriever ranked" if s.get("retrieved_only") else "") + ", "
        f"k = {s['top_k']}, named films {'left out' if s['exclude_named'] else 'kept'}), {s['epochs']} epoch(s), "
        f"batch {s['batch_size']}, lr {s['lr']}, max {s['max_length']} tokens: {t['seconds'] / 60:.1f} min, "
        f"{t['pairs_per_s']} pairs/s; loss {t['loss_first_50']} (first 50 steps) -> {t['loss_last_50']} (last 50).",
        f"Scoring: p50 {r['score_p50_s'] * 1000:.0f} ms per example ({s['top_k']} candidates). Fusion alpha tuned on "
        f"`tune` ({r['tune_examples']} examples): **{r['alpha']}** (0 = the retriever's order, 1 = the reranker "
        "alone).",
        "",
        f"Success of the single pick on `dev` ({r['dev_examples']} examples; named films left out of the candidates, "
        "so these are the as-served figures), mean [95 % clustered-bootstrap CI]:",
        "",
        "| pick | all | novel | given a target among the candidates (all) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in r["dev"].items():
        cells = []
        for protocol in ("all", "novel"):
            x = row[protocol]["success_rate"]
            cells.append(f"{x['mean']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]")
        g = row["all"]["success_given_candidates"]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {g['mean']:.3f} "
                     f"(n = {row['all']['n_target_in_candidates']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a run with data, catalog and retrieve of "
                                                                     "train, tune and dev")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--negatives", type=int, default=7, help="hard negatives per training example")
    parser.add_argument("--max-pairs", type=int, default=0, help="a seeded sample of training pairs (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--keep-named", dest="exclude_named", action="store_false",
                        help="keep the films the dialogue named among candidates and targets (default: served)")
    parser.add_argument("--retrieved-only", action="store_true",
                        help="train only on examples whose target the retriever ranked within --top-k (as "
                             "mine.insert_missing=false): an inserted target is a positive the retriever ranks low")
    parser.add_argument("--eval-max", type=int, default=0, help="a seeded sample of tune/dev examples (0: all)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if min(args.top_k, args.negatives, args.epochs, args.batch_size, args.threads) < 1:
        parser.error("--top-k, --negatives, --epochs, --batch-size and --threads must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join([".venv/bin/python", "benchmarks/reranker.py", *given])
    torch.set_num_threads(args.threads)  # this script is the process's entry point, as the CLI is for `reges`
    machine = machine_info()
    run_dir = RunDir(args.run_dir)
    items = {it.item_id: it for it in read_catalog(run_dir.require("catalog") / "items.jsonl")}

    pairs = training_pairs(run_dir, items, args)
    logger.info("%d training pairs", len(pairs))
    model, tokenizer, record = train(pairs, args)
    split_inputs = {split: load_split_inputs(run_dir, split, items, args.top_k, None, args.eval_max, args.seed,
                                             exclude_named=args.exclude_named) for split in ("tune", "dev")}
    picks, seconds = {}, []
    for split, inputs in split_inputs.items():
        picks[split], t = rerank(model, tokenizer, inputs, args)
        seconds += t
    alpha, table = tune_alpha(split_inputs["tune"], picks["tune"])
    dev = {}
    for name, a in (("retriever top-1", 0.0), ("reranker alone", 1.0), (f"fused (alpha {alpha})", alpha)):
        found = outcomes(split_inputs["dev"], picks["dev"], a)
        dev[name] = {p: summarize_picks(found, p, args.bootstrap, args.seed) for p in ("all", "novel")}
    result = {
        "date": now_iso(), "command": command, "machine": machine, "dataset": read_dataset_name(run_dir),
        "settings": {k: v for k, v in vars(args).items() if k not in ("run_dir", "out")},
        "training": record, "alpha": alpha, "alpha_grid": list(ALPHA_GRID), "tune_table": table,
        "tune_examples": len(split_inputs["tune"].examples), "dev_examples": len(split_inputs["dev"].examples),
        "score_p50_s": float(np.median(seconds)), "dev": dev,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(result), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


def read_dataset_name(run_dir: RunDir) -> str:
    """The run's data format (redial, inspired, ...) from its data manifest, for the page title."""
    return str(run_dir.manifest("data").get("config", {}).get("format", run_dir.path.name))


if __name__ == "__main__":
    raise SystemExit(main())
