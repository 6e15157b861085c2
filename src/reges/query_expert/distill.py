"""Stage `distill`: grounded teacher pseudo-queries, kept by retrieval feedback -> the Query Expert's SFT data.

For each example of `distill.splits` (a seeded sample of `distill.max_examples`):

1. the teacher (`distill.teacher`: "grounded" or "llm", see `teacher.py`) writes `num_queries` candidate queries,
   seeing the dialogue and the true item(s);
2. every candidate goes through the grounding filter (`teacher.ground_query`): title leaks and content words the
   dialogue gives no ground for are removed, and counted;
3. retrieval feedback: each remaining candidate is searched in the frozen `index/` with the encoder that built it
   (`reges.retrieval.retrieve.retrieve`); the candidate that ranks a true item highest is kept (ties: the shorter).

Files under `distill/`:
    {split}.jsonl   one row per kept example, sorted by example_id:
                    {"example_id", "query", "prompt": [messages], "completion": [{"role": "assistant", "content":
                    query}], "candidates": [{"query", "rank"}], "title_leak": bool, "ungrounded_words": int}
                    `prompt` is the student's prompt (`prompts.query_prompt`), so the rows are TRL-style
                    prompt-completion SFT data. `rank` is the best 1-based rank of a true item for that candidate
                    (null: not in the top `feedback_top_k`). `title_leak` / `ungrounded_words`: what the filter
                    removed from the kept candidate as the teacher wrote it.
    stats.json      per split: counts (examples, skipped, candidates), leaks and ungrounded words before and after
                    the filter, R@10/R@50 and mean best rank of the kept queries vs the teacher's first candidate vs
                    the raw dialogue on the same examples, timings
    manifest.json   written last

Examples are skipped (and counted) when none of their targets is in the catalog (nothing to score) or when no
grounded candidate is left (an empty or pure chit-chat dialogue: there is nothing to imitate).

Only `train` may train the student: the teacher sees the true item, so distilled `tune`/`dev` rows are an
evaluation-only upper bound (what a perfect student of this teacher would reach), marked so in stats.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reges.catalog import alias_map, load_catalog
from reges.config import DistillConfig, PipelineConfig
from reges.data.sampling import sample_by_id
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, write_json, write_jsonl
from reges.query_expert.prompts import query_prompt
from reges.query_expert.teacher import GroundedTeacher, LLMTeacher, Teacher, dialogue_vocabulary, ground_query
from reges.records import Item, RecExample
from reges.retrieval.encoder import Encoder
from reges.retrieval.index import EMBEDDINGS_FILE, ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.recall import recall_at_k
from reges.retrieval.retrieve import load_index_encoder, read_examples, retrieve

logger = logging.getLogger(__name__)

CUTOFFS = (10, 50)


@dataclass(frozen=True)
class Candidate:
    """One filtered candidate query and how it retrieved the example's targets.

    Attributes:
        query: The query after the grounding filter.
        ranks: 1-based rank of each catalog target (None: below `feedback_top_k`), in target order.
        title_leak: The teacher's text named a true item's title (removed).
        ungrounded_words: Content words removed as ungrounded.
    """

    query: str
    ranks: tuple[int | None, ...]
    title_leak: bool
    ungrounded_words: int

    @property
    def best_rank(self) -> int | None:
        found = [r for r in self.ranks if r is not None]
        return min(found) if found else None


@dataclass(frozen=True)
class Distilled:
    """The kept query of one example, with its alternatives (see the module docstring for the row format)."""

    example: RecExample
    kept: Candidate
    candidates: list[Candidate]
    teacher_first: Candidate

    def to_row(self) -> dict[str, Any]:
        return {
            "example_id": self.example.example_id,
            "query": self.kept.query,
            "prompt": query_prompt(self.example.context),
            "completion": [{"role": "assistant", "content": self.kept.query}],
            "candidates": [{"query": c.query, "rank": c.best_rank} for c in self.candidates],
            "title_leak": self.kept.title_leak,
            "ungrounded_words": self.kept.ungrounded_words,
        }


def _sort_key(c: Candidate, cap: int) -> tuple[int, int]:
    best = c.best_rank
    return (best if best is not None else cap + 1, len(c.query))


def target_ranks(
    queries: Sequence[str],
    targets: Sequence[Sequence[str]],
    index: ItemIndex,
    encoder: Encoder,
    top_k: int,
    batch_size: int,
) -> list[tuple[int | None, ...]]:
    """Rank of each target when each query is searched in the index (dense retrieval).

    Args:
        queries: Query texts (empty ones retrieve nothing).
        targets: For each query, the item ids whose ranks are wanted.
        index: The frozen item index.
        encoder: The encoder that built `index`.
        top_k: Search depth; targets below it get None.
        batch_size: Queries per encoder batch.

    Returns:
        For each query, the 1-based rank of each of its targets (None when not in the top `top_k`).
    """
    hits = retrieve({str(i): q for i, q in enumerate(queries)}, index, encoder, top_k, batch_size)
    out = []
    for i, wanted in enumerate(targets):
        position = {h.item_id: r for r, h in enumerate(hits[str(i)], start=1)}
        out.append(tuple(position.get(t) for t in wanted))
    return out


def distill_examples(
    examples: Sequence[RecExample],
    teacher: Teacher,
    items: dict[str, Item],
    index: ItemIndex,
    encoder: Encoder,
    cfg: DistillConfig,
    raw_query_chars: int = 2000,
) -> tuple[list[Distilled], dict[str, Any]]:
    """Teacher candidates -> grounding filter -> retrieval feedback, for a list of examples (in memory).

    Args:
        examples: The examples to distill.
        teacher: Writes the candidates.
        items: The catalog by item id.
        index: The frozen index the feedback searches.
        encoder: The encoder that built `index`.
        cfg: `num_queries`, `max_query_words`, `feedback_top_k`, `batch_size`.
        raw_query_chars: Length cap of the raw-dialogue baseline query (as `retrieve.max_query_chars`).

    Returns:
        The kept queries (example order) and the figures for stats.json (counts, leaks, recall, timings).

    Example:
        >>> rows, stats = distill_examples(examples, GroundedTeacher(catalog, 4, 32), items, index, encoder, cfg)
        >>> rows[0].kept.query, stats["kept"]["recall@50"]
        ('comedy. like The Big Sick (2017)', 0.41)
    """
    stats: dict[str, Any] = {"examples": len(examples)}
    scorable = [ex for ex in examples if any(t in items for t in ex.target_item_ids)]
    stats["skipped_no_catalog_target"] = len(examples) - len(scorable)

    t0 = time.perf_counter()
    written = teacher.write(scorable, items)
    teacher_s = time.perf_counter() - t0
    if len(written) != len(scorable):
        raise DataError(f"the teacher returned {len(written)} candidate lists for {len(scorable)} examples")

    # Grounding filter.
    raw_candidates = raw_leaks = raw_ungrounded = raw_with_ungrounded = 0
    filtered: list[list[tuple[str, bool, int]]] = []
    for ex, cands in zip(scorable, written, strict=True):
        vocab = dialogue_vocabulary(ex.context, items)
        titles = [items[t].title for t in ex.target_item_ids if t in items]
        seen: dict[str, tuple[str, bool, int]] = {}
        for cand in cands[: cfg.num_queries]:
            raw_candidates += 1
            report = ground_query(cand, vocab, titles, cfg.max_query_words)
            raw_leaks += report.title_leak
            raw_ungrounded += len(report.ungrounded_words)
            raw_with_ungrounded += bool(report.ungrounded_words)
            if report.query and report.query not in seen:
                seen[report.query] = (report.query, report.title_leak, len(report.ungrounded_words))
        filtered.append(list(seen.values()))
    kept_examples = [(ex, f) for ex, f in zip(scorable, filtered, strict=True) if f]
    stats["skipped_no_grounded_candidate"] = len(scorable) - len(kept_examples)

    # Retrieval feedback: every candidate and the raw dialogue, searched in the frozen index.
    t1 = time.perf_counter()
    flat_queries = [q for _, f in kept_examples for q, _, _ in f]
    flat_targets = [[t for t in ex.target_item_ids if t in items] for ex, f in kept_examples for _ in f]
    ranks = target_ranks(flat_queries, flat_targets, index, encoder, cfg.feedback_top_k, cfg.batch_size)
    raw_queries = [context_to_query(ex.context, "full", raw_query_chars) for ex, _ in kept_examples]
    raw_targets = [[t for t in ex.target_item_ids if t in items] for ex, _ in kept_examples]
    raw_ranks = target_ranks(raw_queries, raw_targets, index, encoder, cfg.feedback_top_k, cfg.batch_size)
    retrieval_s = time.perf_counter() - t1

    results: list[Distilled] = []
    position = 0
    for ex, f in kept_examples:
        candidates = [Candidate(q, ranks[position + j], leak, ung) for j, (q, leak, ung) in enumerate(f)]
        position += len(f)
        kept = min(candidates, key=lambda c: _sort_key(c, cfg.feedback_top_k))  # min is stable: first among equals
        results.append(Distilled(ex, kept, candidates, candidates[0]))

    # Re-check the kept queries with the same filter: they must come out unchanged (no leak, nothing ungrounded).
    residual_leaks = residual_ungrounded = 0
    for d in results:
        titles = [items[t].title for t in d.example.target_item_ids if t in items]
        again = ground_query(d.kept.query, dialogue_vocabulary(d.example.context, items), titles, cfg.max_query_words)
        residual_leaks += again.title_leak
        residual_ungrounded += len(again.ungrounded_words)

    # Whether each scored target was already mentioned in the dialogue (protocol "novel" leaves those out).
    mentioned = [
        [m for t, m in zip(ex.target_item_ids, ex.target_mentioned, strict=True) if t in items]
        for ex, _ in kept_examples
    ]

    def summary(per_example: Sequence[Sequence[int | None]]) -> dict[str, float | int]:
        pairs = [r for ex_ranks in per_example for r in ex_ranks]
        novel = [
            r for ex_ranks, ms in zip(per_example, mentioned, strict=True) for r, m in zip(ex_ranks, ms, strict=True)
            if not m
        ]
        best = [min((r for r in rs if r is not None), default=cfg.feedback_top_k + 1) for rs in per_example]
        out: dict[str, float | int] = {f"recall@{k}": round(recall_at_k(pairs, k), 4) for k in CUTOFFS}
        out.update({f"novel_recall@{k}": round(recall_at_k(novel, k), 4) for k in CUTOFFS})
        out["mean_best_rank"] = round(float(np.mean(best)), 1) if best else 0.0
        out["pairs"] = len(pairs)
        out["novel_pairs"] = len(novel)
        return out

    n_written = len(results)
    stats.update(
        {
            "written": n_written,
            "candidates": raw_candidates,
            "candidates_after_filter": len(flat_queries),
            "candidates_with_title_leak": raw_leaks,
            "candidates_with_ungrounded_words": raw_with_ungrounded,
            "ungrounded_words_removed": raw_ungrounded,
            "kept_from_leaking_candidate": sum(d.kept.title_leak for d in results),
            "kept_with_title_leak": residual_leaks,
            "kept_ungrounded_words": residual_ungrounded,
            "kept": summary([d.kept.ranks for d in results]),
            "teacher_first": summary([d.teacher_first.ranks for d in results]),
            "raw_dialogue": summary(raw_ranks),
            "kept_is_teacher_first": round(sum(d.kept is d.teacher_first for d in results) / max(n_written, 1), 4),
            "query_words_mean": round(float(np.mean([len(d.kept.query.split()) for d in results])), 2)
            if results
            else 0.0,
            "rank_cap": cfg.feedback_top_k + 1,
            "teacher_seconds": round(teacher_s, 3),
            "teacher_examples_per_s": round(len(scorable) / teacher_s, 1) if teacher_s > 0 else 0.0,
            "retrieval_seconds": round(retrieval_s, 3),
        }
    )
    if residual_leaks or residual_ungrounded:
        # The filter is idempotent by construction; a residue means a bug in it, not bad data.
        logger.error("the grounding filter left %d leaks and %d ungrounded words", residual_leaks, residual_ungrounded)
    return results, stats


def build_teacher(cfg: PipelineConfig, catalog: list[Item], index: ItemIndex, index_dir: Path) -> Teacher:
    """The teacher `distill.teacher` names, with its model loaded (llm) or its catalog tables built (grounded)."""
    dc = cfg.distill
    if dc.teacher == "grounded":
        embeddings_path = index_dir / EMBEDDINGS_FILE
        if not embeddings_path.is_file():
            raise DataError(f"{embeddings_path} not found; rerun `reges index` (it writes the card embeddings)")
        embeddings = np.load(embeddings_path)  # (num_items, dim)
        return GroundedTeacher(catalog, dc.num_queries, dc.max_query_words, embeddings, index.item_ids)
    elif dc.teacher == "llm":
        from reges.llm import load_llm

        llm = load_llm(dc.teacher_llm, seed=cfg.run.seed)  # its sampling stream is seeded with run.seed
        return LLMTeacher(
            llm, dc.num_queries, dc.max_query_words, dc.teacher_temperature, dc.teacher_max_new_tokens,
            dc.teacher_llm.batch_size,
        )
    raise ConfigError(f"distill.teacher must be 'grounded' or 'llm', got {dc.teacher!r}")


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Distill every split of `distill.splits`; write `distill/{split}.jsonl`, `stats.json`, then the manifest.

    Example:
        reges distill --config configs/redial.yaml --run-dir runs/redial distill.max_examples=300
    """
    started = now_iso()
    dc = cfg.distill
    data_dir = run_dir.require("data")
    catalog_dir = run_dir.require("catalog")
    index_dir = run_dir.require("index")
    split_paths = {split: data_dir / f"{split}.jsonl" for split in dc.splits}
    for split, path in split_paths.items():
        if not path.is_file():
            raise DataError(f"{path} not found; distill.splits has {split!r} but the data stage did not write it")
    eval_only = [s for s in dc.splits if s != "train"]
    if eval_only:
        logger.warning(
            "distilling %s: the teacher sees the true items there, so these rows are an evaluation-only upper "
            "bound; train-query reads distill/train.jsonl only",
            ", ".join(eval_only),
        )
    out = run_dir.begin("distill", cfg.run.overwrite)

    t_start = time.perf_counter()
    catalog = load_catalog(run_dir)
    items = {item.item_id: item for item in catalog}
    aliases = alias_map(catalog)  # a target named by a folded id reaches the teacher as its item
    index = ItemIndex.load(index_dir)
    encoder = load_index_encoder(index, cfg.index)
    teacher = build_teacher(cfg, catalog, index, index_dir)

    outputs: dict[str, int] = {}
    all_stats: dict[str, Any] = {"teacher": dc.teacher, "encoder": index.encoder, "splits": {}}
    for split, path in split_paths.items():
        t0 = time.perf_counter()
        examples = sample_by_id(
            read_examples(path, aliases), dc.max_examples, cfg.run.seed, lambda ex: ex.example_id,
            "distill.max_examples"
        )
        results, stats = distill_examples(
            examples, teacher, items, index, encoder, dc, cfg.retrieve.max_query_chars
        )
        results.sort(key=lambda d: d.example.example_id)
        outputs[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", (d.to_row() for d in results))
        stats["evaluation_only"] = split != "train"
        stats["wall_seconds"] = round(time.perf_counter() - t0, 3)
        all_stats["splits"][split] = stats
        logger.info(
            "distill %s: %d of %d examples kept; R@50 kept %.3f vs raw dialogue %.3f; %d leaking and %d ungrounded "
            "candidates filtered",
            split,
            stats["written"],
            stats["examples"],
            stats["kept"]["recall@50"],
            stats["raw_dialogue"]["recall@50"],
            stats["candidates_with_title_leak"],
            stats["candidates_with_ungrounded_words"],
        )
    all_stats["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(out / "stats.json", all_stats)

    inputs = {f"data/{split}": path for split, path in split_paths.items()}
    inputs["catalog"] = catalog_dir / "items.jsonl"
    inputs["index"] = index_dir / "index.faiss"
    run_dir.finish(
        "distill",
        config=dataclasses.asdict(dc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={"teacher": dc.teacher, "encoder": index.encoder, "evaluation_only_splits": eval_only},
    )
