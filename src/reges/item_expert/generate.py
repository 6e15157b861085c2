"""Stage `generate`: the Item Expert picks one of the retrieved candidates for every example.

Modes (`generate.mode`):
    free         greedy decoding of a title, mapped to a candidate by `match_candidate` (exact display title, then
                 normalised, then fuzzy title matching from `reges.titles`). A *hallucination* is an answer that
                 matches no candidate; such an answer is also looked up in the whole catalog (`in_catalog`), and
                 when it names a catalog item that item is the pick (it can still be right, just not from the list).
    constrained  `llm.choose` over the candidate titles: decoding cannot leave them, zero hallucination.
    rank         `llm.rank` scores every candidate title (log-likelihood as the answer); the list is re-ranked by
                 (1 - alpha) z(retriever score) + alpha z(log-likelihood) (`fuse_scores`), whose first item is the
                 pick. alpha (`generate.fusion_alpha`) is tuned on the `tune` split when not given (`tune_alpha`):
                 a 135M expert alone orders 20 candidates worse than the retriever, but it may know things the
                 retriever does not (which discussed item the next turn returns to, what the last turn asks for);
                 the tuned alpha says how much (0.15 on ReDial, 0 on INSPIRED: docs/results/item_expert.md).
The candidates are the first `generate.top_k` items of `retrieve/{split}.trec`; the prompt is `item_prompt` with the
`mine.*` prompt settings, and the Query Expert's query from `rewrite/{split}.jsonl` when it is used (see
`mine.query`; with the adapter, prompts show a query exactly when the training prompts did).

Files written under `run_dir/generate/`:
    {split}.jsonl   one row per example, sorted by example_id: {"example_id", "mode", "text", "item_id" (null when
                    the answer matches nothing), "in_candidates", "in_catalog", "candidate_ids", "ranking":
                    [[item_id, fused score], ...] (rank mode only, best first), "llm_scores" (rank mode: the
                    log-likelihood of each candidate, in candidate_ids order), "latency_s"}
                    When alpha is tuned, the tune split's rows are written too (`{tune_split}.jsonl`).
    manifest.json   written last; per split: examples, hallucinations, catalog misses, latency p50/p95; rank mode:
                    the alpha used, where it came from ("fusion_alpha_from") and, when tuned, the success rate of
                    every alpha on the tune split

Resume: the picks of every finished batch of `generate.batch_size` prompts are appended to
`generate/checkpoints/{split}.partial.jsonl` (`reges.llm.partial`); started again after a crash or a kill, the stage
sends only the examples not found there (same model, adapter, mode and decoding settings, same prompt and
candidates) to the LLM. The picks are saved before fusion, so a resumed rank-mode run still tunes alpha on all of
them. Through an OpenAI-compatible server (`llm.backend=openai`) `llm.batch_size` requests are in flight at once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from reges.catalog import alias_map, read_catalog
from reges.config import GenerateConfig, PipelineConfig
from reges.data.sampling import sample_rows
from reges.errors import ConfigError, DataError, ModelError
from reges.io import RunDir, file_sha256, now_iso, read_trec, write_jsonl
from reges.item_expert.mining import query_path
from reges.item_expert.prompts import PromptFormat, candidate_titles, item_prompt, strip_id_suffix
from reges.llm import resolve_backend, trained_adapter
from reges.llm.base import LLM, Messages
from reges.llm.partial import CHECKPOINTS, PartialRows, llm_settings, sha
from reges.records import Item, RecExample, mentioned_item_ids
from reges.retrieval.queries import read_queries
from reges.retrieval.retrieve import read_examples
from reges.titles import TitleMatcher, parse_title

logger = logging.getLogger(__name__)

PickMode = Literal["free", "constrained", "rank"]
MODES: tuple[PickMode, ...] = ("free", "constrained", "rank")
# rapidfuzz score above which a free answer matches a candidate title (the catalog's default threshold).
FUZZY_THRESHOLD = 92.0
# A free answer ends at a new line, or where a model copying a candidate line reaches its card (" | genre: ...").
FREE_STOP = ["\n", " | "]
# The alphas `tune_alpha` tries: 0 (the retriever's order) to 1 (the Item Expert alone).
ALPHA_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
# "3. Title", "3) Title", "- Title": list markers a model copies from the numbered candidate list.
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,3}\s*[.)]|[-*•])\s+")


@dataclass(frozen=True)
class Pick:
    """The Item Expert's answer to one prompt.

    Attributes:
        text: What the model answered (free: the generated text; constrained: the chosen title; rank: the best).
        index: Position of the picked candidate; None when a free answer matches no candidate (a hallucination).
        ranking: Rank mode: (candidate position, score) for every candidate, best first; otherwise empty.
        latency_s: Model time for this prompt: its batch's wall time divided by the batch size (rank: its own).
    """

    text: str
    index: int | None
    ranking: list[tuple[int, float]]
    latency_s: float


def clean_answer(text: str) -> str:
    """The title part of a free answer: first line, list marker and a copied " | attributes" card removed."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LIST_MARKER.sub("", line)
    return line.split(" | ", 1)[0].strip()


def match_candidate(
    text: str, titles: Sequence[str], fuzzy_threshold: float = FUZZY_THRESHOLD, ignore_year: bool = True
) -> int | None:
    """Position of the candidate a free answer names, or None (a hallucination).

    Order: the exact display title (after `clean_answer`); then `TitleMatcher` over the titles without their
    " [item_id]" suffix (normalised key and year, then fuzzy); last, the title without its year, when exactly one
    candidate has it: the list is closed, so "Joker (1961)" names the listed "Joker (2019)" (small models get
    years wrong; `ignore_year=False` skips this step), while the catalog lookup of a miss (`pick_rows`) still
    refuses a wrong year. When several candidates tie (a shared title answered without its id), the first in the
    list, the retriever's best, wins.
    """
    answer = clean_answer(text)
    if not answer:
        return None
    exact = [i for i, t in enumerate(titles) if t == answer]
    if exact:
        return exact[0]
    folded = [i for i, t in enumerate(titles) if t.casefold() == answer.casefold()]
    if folded:
        return folded[0]
    matcher = TitleMatcher([(str(i), strip_id_suffix(t)) for i, t in enumerate(titles)], fuzzy_threshold)
    found = matcher.match_all(strip_id_suffix(answer))
    if found:
        return min(int(i) for i in found)
    if not ignore_year:
        return None
    key = parse_title(strip_id_suffix(answer))[0]
    same_title = [i for i, t in enumerate(titles) if parse_title(strip_id_suffix(t))[0] == key]
    return same_title[0] if key and len(same_title) == 1 else None


def pick_items(
    llm: LLM,
    prompts: Sequence[Messages],
    candidate_titles: Sequence[Sequence[str]],
    mode: PickMode,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    length_normalized: bool = False,
    show_progress: bool = False,
) -> list[Pick]:
    """Let the Item Expert pick one candidate per prompt (in memory; the server reuses it).

    Args:
        llm: Any `LLM` (the base model or the trained expert).
        prompts: One `item_prompt` chat per decision.
        candidate_titles: For each prompt, its candidates' display titles (`candidate_titles`), in the order shown.
        mode: "free", "constrained" or "rank".
        max_new_tokens: Free mode: most tokens generated.
        batch_size: Prompts per model call (free and constrained); 1 makes `latency_s` a per-turn latency.
        length_normalized: Rank mode: mean log-probability per token instead of the total.
        show_progress: tqdm bar over prompts.

    Returns:
        One `Pick` per prompt, in order.

    Raises:
        ConfigError: Unknown mode, or batch_size / max_new_tokens < 1.
        ModelError: Prompt and title lists differ in length, or a title list is empty.

    Example:
        >>> titles = candidate_titles(candidates)
        >>> pick_items(llm, [item_prompt(context, None, candidates)], [titles], "constrained")[0].index
        3
    """
    if mode not in MODES:
        raise ConfigError(f"generate.mode must be one of {list(MODES)}, got {mode!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(
            f"generate.batch_size and generate.max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}"
        )
    if len(prompts) != len(candidate_titles):
        raise ModelError(f"pick_items got {len(prompts)} prompts but {len(candidate_titles)} title lists")
    for i, titles in enumerate(candidate_titles):
        if not titles or len(set(titles)) != len(titles):
            raise ModelError(f"prompt {i}: candidate titles must be a non-empty list of distinct strings")
    picks: list[Pick] = []
    bar = tqdm(total=len(prompts), desc=f"pick ({mode})", disable=not show_progress)
    if mode == "rank":
        for prompt, titles in zip(prompts, candidate_titles, strict=True):
            t0 = time.perf_counter()
            scores = llm.rank(prompt, list(titles), length_normalized)
            seconds = time.perf_counter() - t0
            order = sorted(range(len(titles)), key=lambda i: (-scores[i], i))
            ranking = [(i, float(scores[i])) for i in order]
            picks.append(Pick(titles[order[0]], order[0], ranking, seconds))
            bar.update(1)
    else:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            batch_titles = [list(t) for t in candidate_titles[start : start + batch_size]]
            t0 = time.perf_counter()
            if mode == "free":
                texts = llm.generate(batch, max_new_tokens, temperature=0.0, stop=FREE_STOP)
            else:
                texts = llm.choose(batch, batch_titles)
            seconds = (time.perf_counter() - t0) / len(batch)
            for text, titles in zip(texts, batch_titles, strict=True):
                if mode == "free":
                    index = match_candidate(text, titles)
                else:
                    assert text in titles, f"constrained decoding returned {text!r}, not a candidate"
                    index = titles.index(text)
                picks.append(Pick(text, index, [], seconds))
            bar.update(len(batch))
    bar.close()
    return picks


@dataclass(frozen=True)
class SplitInputs:
    """What one split's prompts are built from.

    Attributes:
        examples: The examples to pick for.
        candidates: example id -> candidate items, in the retriever's order.
        queries: example id -> query, or None when prompts show no query.
        retriever_scores: example id -> the retriever's score of each candidate, in candidate order.
    """

    examples: list[RecExample]
    candidates: dict[str, list[Item]]
    queries: dict[str, str] | None
    retriever_scores: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def _zscore(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def fuse_scores(retriever_scores: Sequence[float], llm_scores: Sequence[float], alpha: float) -> np.ndarray:
    """(1 - alpha) z(retriever) + alpha z(LLM) per candidate: both scales made comparable within the list.

    Raises:
        ConfigError: alpha outside [0, 1].
        ModelError: The two score lists differ in length.

    Example:
        >>> fuse_scores([3.0, 2.0, 1.0], [-9.0, -1.0, -5.0], 0.0).argmax()  # alpha 0: the retriever's top-1
        0
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"generate.fusion_alpha must be in [0, 1], got {alpha}")
    if len(retriever_scores) != len(llm_scores):
        raise ModelError(f"{len(retriever_scores)} retriever scores but {len(llm_scores)} LLM scores")
    return (1.0 - alpha) * _zscore(retriever_scores) + alpha * _zscore(llm_scores)


def _llm_scores(pick: Pick, n: int) -> list[float]:
    """A rank-mode pick's log-likelihoods back in candidate order."""
    scores = [0.0] * n
    for i, score in pick.ranking:
        scores[i] = score
    return scores


def expert_choice(row: dict[str, Any]) -> str:
    """The candidate a rank-mode row's expert log-likelihoods alone put first (alpha 1; ties: the earlier one)."""
    scores = row["llm_scores"]
    return row["candidate_ids"][max(range(len(scores)), key=lambda i: (scores[i], -i))]


def fuse_pick(pick: Pick, titles: Sequence[str], retriever_scores: Sequence[float], alpha: float) -> Pick:
    """A rank-mode pick re-ranked by `fuse_scores`: index, text and ranking (fused scores) of the fused list."""
    fused = fuse_scores(retriever_scores, _llm_scores(pick, len(titles)), alpha)
    order = sorted(range(len(titles)), key=lambda i: (-fused[i], i))
    return Pick(titles[order[0]], order[0], [(i, float(fused[i])) for i in order], pick.latency_s)


def tune_alpha(inputs: SplitInputs, picks: Sequence[Pick]) -> tuple[float, list[dict[str, float]]]:
    """The fusion alpha with the best success rate on a held-out split (protocol all; ties: novel, then smaller).

    Returns:
        (alpha, one {"alpha", "success_all", "success_novel"} row per alpha of `ALPHA_GRID`).

    Raises:
        ModelError: The picks are not rank-mode picks (no ranking).
    """
    if any(not p.ranking for p in picks):
        raise ModelError("tune_alpha needs rank-mode picks (generate.mode=rank)")
    table = []
    for alpha in ALPHA_GRID:
        hits_all, hits_novel, n_novel = 0, 0, 0
        for ex, pick in zip(inputs.examples, picks, strict=True):
            cands = inputs.candidates[ex.example_id]
            fused = fuse_scores(inputs.retriever_scores[ex.example_id], _llm_scores(pick, len(cands)), alpha)
            chosen = cands[int(np.argmax(fused))].item_id
            hits_all += chosen in ex.target_item_ids
            novel = ex.novel_target_ids()
            if novel:
                n_novel += 1
                hits_novel += chosen in novel
        table.append(
            {
                "alpha": alpha,
                "success_all": hits_all / max(len(picks), 1),
                "success_novel": hits_novel / max(n_novel, 1),
            }
        )
    best = max(table, key=lambda r: (r["success_all"], r["success_novel"], -r["alpha"]))
    return best["alpha"], table


def build_prompts(inputs: SplitInputs, fmt: PromptFormat) -> tuple[list[Messages], list[list[str]]]:
    """The prompt and the candidate display titles of every example, in `inputs.examples` order."""
    prompts, titles = [], []
    for ex in inputs.examples:
        cands = inputs.candidates[ex.example_id]
        query = inputs.queries[ex.example_id] if inputs.queries is not None else None
        prompts.append(item_prompt(ex.context, query, cands, fmt))
        titles.append(candidate_titles(cands))
    return prompts, titles


def pick_rows(
    inputs: SplitInputs,
    picks: Sequence[Pick],
    mode: PickMode,
    catalog: TitleMatcher | None,
    alpha: float = 1.0,
) -> list[dict[str, Any]]:
    """Rows of `generate/{split}.jsonl` from the picks (free-mode misses are looked up in `catalog`).

    Rank mode: the ranking and the pick are those of `fuse_scores` with `alpha`.
    """
    rows = []
    for ex, pick in zip(inputs.examples, picks, strict=True):
        cands = inputs.candidates[ex.example_id]
        llm_scores: list[float] = []
        if mode == "rank":
            llm_scores = _llm_scores(pick, len(cands))
            pick = fuse_pick(pick, candidate_titles(cands), inputs.retriever_scores[ex.example_id], alpha)
        if pick.index is not None:
            item_id, in_catalog = cands[pick.index].item_id, True
        else:
            assert catalog is not None, "a free answer outside the candidates needs the catalog matcher"
            item_id = catalog.match(strip_id_suffix(clean_answer(pick.text)))
            in_catalog = item_id is not None
        rows.append(
            {
                "example_id": ex.example_id,
                "mode": mode,
                "text": pick.text,
                "item_id": item_id,
                "in_candidates": pick.index is not None,
                "in_catalog": in_catalog,
                "candidate_ids": [c.item_id for c in cands],
                "ranking": [[cands[i].item_id, round(s, 4)] for i, s in pick.ranking] if mode == "rank" else [],
                "llm_scores": [round(s, 4) for s in llm_scores],
                "latency_s": round(pick.latency_s, 4),
            }
        )
    return sorted(rows, key=lambda r: r["example_id"])


def load_split_inputs(
    run_dir: RunDir,
    split: str,
    items: dict[str, Item],
    top_k: int,
    query_file: Path | None,
    max_examples: int,
    seed: int,
    *,
    exclude_named: bool = False,
) -> SplitInputs:
    """Examples (a seeded sample when max_examples > 0), their first top_k retrieved items and their queries.

    With exclude_named (`mine.exclude_named`), items the dialogue already named are left out before the first top_k
    are taken, as the recommender does when it serves.

    Raises:
        DataError: An example has no ranking, or a ranked item is not in the catalog, or a query is missing.
    """
    if top_k < 1:
        raise ConfigError(f"generate.top_k must be >= 1, got {top_k}; set generate.top_k in the YAML")
    data_path = run_dir.require("data") / f"{split}.jsonl"
    if not data_path.is_file():
        raise DataError(f"{data_path} not found; the data stage did not write split {split!r}")
    trec = run_dir.require("retrieve") / f"{split}.trec"
    if not trec.is_file():
        raise DataError(f"{trec} not found; add {split!r} to retrieve.splits and rerun retrieve")
    examples = sorted(read_examples(data_path, alias_map(items.values())), key=lambda e: e.example_id)
    examples = sample_rows(examples, max_examples, seed, "generate.max_examples")
    rankings = read_trec(trec)
    candidates: dict[str, list[Item]] = {}
    retriever_scores: dict[str, list[float]] = {}
    for ex in examples:
        hits = rankings.get(ex.example_id)
        if not hits:
            raise DataError(f"{trec} has no candidates for example {ex.example_id!r}; rerun `reges retrieve`")
        named = mentioned_item_ids(ex.context) if exclude_named else set()
        ids = [i for i in dict.fromkeys(h.item_id for h in hits) if i not in named][:top_k]
        if not ids:
            raise DataError(
                f"{trec} ranks only items that example {ex.example_id!r} already named; with mine.exclude_named "
                "retrieve deeper (raise retrieve.top_k and rerun `reges retrieve`)"
            )
        unknown = [i for i in ids if i not in items]
        if unknown:
            raise DataError(
                f"{trec} ranks item {unknown[0]!r}, which is not in the catalog; rerun `reges retrieve` with "
                "run.overwrite=true"
            )
        candidates[ex.example_id] = [items[i] for i in ids]
        best = {}
        for h in hits:
            best.setdefault(h.item_id, h.score)
        retriever_scores[ex.example_id] = [best[i] for i in ids]
    queries = None
    if query_file is not None:
        all_queries = read_queries(query_file)
        missing = [ex.example_id for ex in examples if ex.example_id not in all_queries]
        if missing:
            raise DataError(f"{query_file} has no query for {len(missing)} examples (e.g. {missing[0]!r})")
        queries = {ex.example_id: all_queries[ex.example_id] for ex in examples}
    return SplitInputs(examples, candidates, queries, retriever_scores)


def pick_to_row(example_id: str, input_sha: str, pick: Pick) -> dict[str, Any]:
    """A pick as a row of the partial-results file (floats kept exactly: JSON round-trips them)."""
    return {"example_id": example_id, "input_sha": input_sha, "text": pick.text, "index": pick.index,
            "ranking": [[i, s] for i, s in pick.ranking], "latency_s": pick.latency_s}


def pick_from_row(row: dict[str, Any]) -> Pick:
    return Pick(row["text"], row["index"], [(int(i), float(s)) for i, s in row["ranking"]], float(row["latency_s"]))


def resumable_picks(
    llm: LLM, prompts: Sequence[Messages], titles: Sequence[Sequence[str]], example_ids: Sequence[str],
    partial: PartialRows, gc: GenerateConfig, show_progress: bool,
) -> tuple[list[Pick], int]:
    """`pick_items` over the examples not already in `partial`, saving each finished batch there.

    Returns:
        (one pick per prompt, in order; how many came from the partial file).
    """
    done = partial.load()
    input_shas = [sha([prompt, list(t)]) for prompt, t in zip(prompts, titles, strict=True)]
    picks: list[Pick | None] = [
        pick_from_row(done[eid]) if done.get(eid, {}).get("input_sha") == s else None
        for eid, s in zip(example_ids, input_shas, strict=True)
    ]
    todo = [i for i, p in enumerate(picks) if p is None]
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"pick ({gc.mode})",
               disable=not show_progress)
    for start in range(0, len(todo), gc.batch_size):
        batch = todo[start : start + gc.batch_size]
        new = pick_items(llm, [prompts[i] for i in batch], [titles[i] for i in batch], gc.mode, gc.max_new_tokens,
                         gc.batch_size, gc.length_normalized)
        partial.append([pick_to_row(example_ids[i], input_shas[i], p) for i, p in zip(batch, new, strict=True)])
        for i, p in zip(batch, new, strict=True):
            picks[i] = p
        bar.update(len(batch))
    bar.close()
    return [p for p in picks if p is not None], len(prompts) - len(todo)


def adapter_path(cfg: PipelineConfig, run_dir: RunDir) -> str:
    """The trained adapter for `llm.backend` (`reges.llm.trained_adapter`): adapter/ (hf) or adapter.gguf (llamacpp).

    Raises:
        ConfigError: llamacpp was asked for but train-item wrote no GGUF adapter.
        ModelError: The backend takes no local adapter (openai).
    """
    adapter = trained_adapter(cfg.item_expert_llm, run_dir.require("train-item"))
    if adapter is None:
        raise ModelError(
            f"backend {resolve_backend(cfg.item_expert_llm)} cannot load the item expert's adapter; serve it behind "
            "the endpoint, or set generate.use_adapter=false"
        )
    return adapter


def resolve_query_file(cfg: PipelineConfig, run_dir: RunDir, split: str) -> Path | None:
    """The rewrite file whose queries this split's prompts show (the same rule as training, see module doc).

    Raises:
        ConfigError: The adapter was trained with queries but none exist for this split, or the prompt format
            changed since training.
    """
    path = query_path(run_dir, split, cfg.mine.query)
    if not cfg.generate.use_adapter:
        return path
    trained = run_dir.manifest("train-item")
    fmt = PromptFormat.from_config(cfg.mine).to_dict()
    if trained.get("prompt_format") != fmt:
        raise ConfigError(
            f"the item expert was trained on prompts with {trained.get('prompt_format')}, but the mine.* prompt "
            f"settings now give {fmt}; restore them, or retrain (reges mine/train-item with run.overwrite=true)"
        )
    if trained.get("query_used") and path is None:
        raise ConfigError(
            f"the item expert was trained on prompts with a query, but there is no rewrite/{split}.jsonl; add "
            f"{split!r} to rewrite.splits and rerun rewrite"
        )
    if not trained.get("query_used") and path is not None:
        logger.info("%s: the item expert was trained without queries, so its prompts show none", split)
        return None
    return path


def run(cfg: PipelineConfig, run_dir: RunDir, fusion_alpha_from: str = "") -> None:
    """Pick an item for every example of `generate.splits`; write `generate/{split}.jsonl`, then the manifest.

    Args:
        cfg: The pipeline config (generate.*, mine.* prompt settings, the Item Expert's LLM).
        run_dir: The run directory (catalog, data, retrieve, train-item; rewrite when the expert saw queries).
        fusion_alpha_from: Rank mode with a given generate.fusion_alpha: where that alpha comes from, recorded in
            the manifest as "fusion_alpha_from" (`reges evaluate --dataset-file` passes the trained run's
            generate/manifest.json); "" means the config. A tuned alpha is recorded as tuned on `tune_split`.

    Example:
        reges generate --config configs/redial.yaml --run-dir runs/redial generate.mode=rank generate.top_k=20
    """
    from reges.llm import load_llm

    started = now_iso()
    gc = cfg.generate
    if not gc.splits:
        raise ConfigError("generate.splits is empty; list the splits to pick items for, e.g. [dev]")
    if gc.mode not in MODES:
        raise ConfigError(f"generate.mode must be one of {list(MODES)}, got {gc.mode!r}")
    fmt = PromptFormat.from_config(cfg.mine)
    items_path = run_dir.require("catalog") / "items.jsonl"
    items_list = read_catalog(items_path)
    items = {it.item_id: it for it in items_list}
    adapter = adapter_path(cfg, run_dir) if gc.use_adapter else None
    tuning = gc.mode == "rank" and gc.fusion_alpha is None
    assert not (fusion_alpha_from and gc.fusion_alpha is None), "fusion_alpha_from given, generate.fusion_alpha null"
    splits = list(dict.fromkeys([gc.tune_split, *gc.splits] if tuning else gc.splits))
    if tuning:
        have = (
            run_dir.stage_dir("data") / f"{gc.tune_split}.jsonl",
            run_dir.stage_dir("retrieve") / f"{gc.tune_split}.trec",
        )
        if not all(path.is_file() for path in have):
            raise ConfigError(
                f"generate.mode=rank tunes generate.fusion_alpha on split {gc.tune_split!r}, but {have[0]} or "
                f"{have[1]} is missing; set data.tune_fraction and add {gc.tune_split!r} to retrieve.splits, or set "
                "generate.fusion_alpha (0: the retriever's order, 1: the Item Expert alone)"
            )
    query_files = {split: resolve_query_file(cfg, run_dir, split) for split in splits}
    split_inputs = {
        split: load_split_inputs(
            run_dir, split, items, gc.top_k, query_files[split], gc.max_examples, cfg.run.seed,
            exclude_named=cfg.mine.exclude_named,
        )
        for split in splits
    }
    out = run_dir.begin("generate", cfg.run.overwrite)  # keeps checkpoints/: the partial results of a killed run
    llm = load_llm(cfg.item_expert_llm, adapter=adapter, seed=cfg.run.seed)
    backend = resolve_backend(cfg.item_expert_llm)
    settings = {
        "stage": "generate",
        "llm": llm_settings(cfg.item_expert_llm, backend),
        "train-item": file_sha256(run_dir.stage_dir("train-item") / "manifest.json") if adapter else None,
        "mode": gc.mode,
        "max_new_tokens": gc.max_new_tokens,
        "length_normalized": gc.length_normalized,
        # how prompts are batched can move a padded batch's answers on local backends, not through a server
        "batch_size": None if backend == "openai" else gc.batch_size,
    }
    catalog = (
        TitleMatcher([(it.item_id, it.title) for it in items_list], cfg.catalog.fuzzy_threshold)
        if gc.mode == "free"
        else None
    )

    inputs: dict[str, Path] = {"catalog": items_path}
    if adapter is not None:
        inputs["adapter"] = Path(adapter)
    split_picks: dict[str, tuple[list[Pick], float]] = {}
    resumed: dict[str, int] = {}
    for split, si in split_inputs.items():
        inputs[f"data/{split}"] = run_dir.stage_dir("data") / f"{split}.jsonl"
        inputs[f"retrieve/{split}"] = run_dir.stage_dir("retrieve") / f"{split}.trec"
        if query_files[split] is not None:
            inputs[f"rewrite/{split}"] = query_files[split]
        prompts, titles = build_prompts(si, fmt)
        t0 = time.perf_counter()
        partial = PartialRows(out / CHECKPOINTS / f"{split}.partial.jsonl", settings)
        picks, resumed[split] = resumable_picks(llm, prompts, titles, [ex.example_id for ex in si.examples],
                                                partial, gc, cfg.run.show_progress)
        split_picks[split] = (picks, time.perf_counter() - t0)

    alpha, alpha_table = (gc.fusion_alpha if gc.fusion_alpha is not None else 1.0), None
    if tuning:
        alpha, alpha_table = tune_alpha(split_inputs[gc.tune_split], split_picks[gc.tune_split][0])
        logger.info("fusion alpha tuned on %s: %.2f (success %s)", gc.tune_split, alpha,
                    next(r for r in alpha_table if r["alpha"] == alpha))
    outputs: dict[str, int] = {}
    per_split: dict[str, Any] = {}
    for split, (picks, seconds) in split_picks.items():
        rows = pick_rows(split_inputs[split], picks, gc.mode, catalog, alpha)
        outputs[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", rows)
        latencies = np.asarray([r["latency_s"] for r in rows]) if rows else np.zeros(1)
        per_split[split] = {
            "examples": len(rows),
            "hallucinations": sum(not r["in_candidates"] for r in rows),
            "catalog_misses": sum(not r["in_catalog"] for r in rows),
            "query_used": split_inputs[split].queries is not None,
            "resumed_examples": resumed[split],
            "seconds": round(seconds, 2),
            "latency_s": {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))},
        }
        logger.info(
            "generate %s (%s, k=%d): %d examples, %d hallucinations, %.2f s/example",
            split, gc.mode, gc.top_k, len(rows), per_split[split]["hallucinations"], seconds / max(len(rows), 1),
        )
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # every split is written: nothing left to resume
    run_dir.finish(
        "generate",
        config=dataclasses.asdict(gc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "splits": per_split,
            "mode": gc.mode,
            "top_k": gc.top_k,
            "use_adapter": gc.use_adapter,
            "model": cfg.item_expert_llm.model,
            "backend": cfg.item_expert_llm.backend,
            "prompt_format": fmt.to_dict(),
            "fusion_alpha": alpha if gc.mode == "rank" else None,
            "fusion_alpha_from": (
                (f"tuned on split {gc.tune_split!r}" if tuning else fusion_alpha_from or "generate.fusion_alpha")
                if gc.mode == "rank"
                else None
            ),
            "fusion_tuning": {"split": gc.tune_split, "alphas": alpha_table} if alpha_table is not None else None,
        },
    )
