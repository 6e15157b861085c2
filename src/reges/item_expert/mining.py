"""Stage `mine`: Item Expert training examples whose negatives are the retriever's own candidates.

For every example of `mine.splits`, the candidates are:
    hard     the first `mine.top_k` items of `retrieve/{split}.trec` (whatever retriever wrote it);
    random   a seeded random sample of `mine.top_k` catalog items (the ablation: easy negatives).
The training target is the best-ranked target among the candidates. When no target is among them, one target
(seeded random choice) replaces the candidate at a seeded random position, and the row says `inserted`. Why
replace and not append: the list keeps its length, and the target's position carries no signal the model could
learn ("the inserted one is last"). Seeds are drawn per example from (run.seed, example_id), so a row does not
depend on which other examples were mined.

Examples none of whose targets is in the catalog cannot be answered and are skipped (counted in the manifest).

Files written under `run_dir/mine/`:
    {split}.jsonl   one row per example, sorted by example_id:
                    {"example_id", "candidate_ids", "target_item_id", "inserted", "prompt": [messages],
                     "completion": [{"role": "assistant", "content": target display title}]}
    manifest.json   written last; per split: examples, skipped, inserted and its share, target position
                    histogram, prompt tokens p50/p95/max (the `llm.model` tokenizer with its chat template)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reges.catalog import alias_map, read_catalog
from reges.config import PipelineConfig
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_trec, write_jsonl
from reges.item_expert.prompts import PromptFormat, candidate_titles, item_prompt
from reges.records import Hit, Item, RecExample, mentioned_item_ids
from reges.retrieval.queries import read_queries
from reges.retrieval.retrieve import read_examples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MinedCandidates:
    """The candidate list of one training example.

    Attributes:
        candidate_ids: Items shown, in order.
        target_item_id: The item the model must answer (one of candidate_ids).
        inserted: The target was not among the retrieved/sampled items and replaced one of them.
    """

    candidate_ids: list[str]
    target_item_id: str
    inserted: bool


def example_rng(seed: int, example_id: str) -> np.random.Generator:
    """A generator that depends only on the run seed and the example id (not on the order of examples)."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


def select_candidates(
    example: RecExample,
    ranked_ids: Sequence[str],
    catalog_ids: Sequence[str],
    negatives: Literal["hard", "random"],
    top_k: int,
    seed: int,
    *,
    exclude_named: bool = False,
) -> MinedCandidates | None:
    """Candidates and training target of one example.

    Args:
        example: The example (its targets).
        ranked_ids: The retriever's ranking for it (used when negatives is "hard").
        catalog_ids: Every catalog id, sorted (targets outside it are ignored; "random" samples from it).
        negatives: "hard" or "random".
        top_k: Candidates per example.
        seed: The run seed.
        exclude_named: Leave out every item the dialogue already named, targets included (the served setting).

    Returns:
        The candidates, or None when no (unnamed, with exclude_named) target is in the catalog.
    """
    catalog = set(catalog_ids)
    named = mentioned_item_ids(example.context) if exclude_named else set()
    targets = [t for t in dict.fromkeys(example.target_item_ids) if t in catalog and t not in named]
    if not targets:
        return None
    rng = example_rng(seed, example.example_id)
    if negatives == "hard":
        candidates = [i for i in dict.fromkeys(ranked_ids) if i not in named][:top_k]
    elif negatives == "random":
        pool = [i for i in catalog_ids if i not in named] if named else catalog_ids
        picked = rng.choice(len(pool), size=min(top_k, len(pool)), replace=False)
        candidates = [pool[i] for i in picked]
    else:
        raise ConfigError(f"mine.negatives must be 'hard' or 'random', got {negatives!r}")
    position = {c: i for i, c in enumerate(candidates)}
    found = sorted((position[t], t) for t in targets if t in position)
    if found:
        return MinedCandidates(candidates, found[0][1], False)
    target = targets[int(rng.integers(len(targets)))]
    if len(candidates) < top_k:  # a short ranking: room to add the target without dropping anything
        at = int(rng.integers(len(candidates) + 1))
        candidates.insert(at, target)
    else:
        candidates[int(rng.integers(len(candidates)))] = target
    return MinedCandidates(candidates, target, True)


def mine_examples(
    examples: Sequence[RecExample],
    rankings: dict[str, list[Hit]],
    items: dict[str, Item],
    queries: dict[str, str] | None,
    negatives: Literal["hard", "random"],
    top_k: int,
    fmt: PromptFormat,
    seed: int,
    *,
    exclude_named: bool = False,
    insert_missing: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build the training rows of one split (in memory).

    Args:
        examples: The split's examples.
        rankings: example id -> the retriever's hits (needed for every example when negatives is "hard").
        items: The catalog by id.
        queries: example id -> query shown in the prompt, or None to show no query.
        negatives: "hard" or "random".
        top_k: Candidates per example.
        fmt: The prompt format.
        seed: The run seed.
        exclude_named: Candidates and targets leave out the items the dialogue named (`mine.exclude_named`).
        insert_missing: False skips examples whose target the retrieval did not rank within top_k
            (`mine.insert_missing`).

    Returns:
        (rows sorted by example_id, counts: examples, skipped_no_catalog_target (with exclude_named: no unnamed
        target in the catalog), skipped_not_retrieved, inserted, target_positions).

    Raises:
        ConfigError: top_k < 1.
        DataError: A hard-negative example has no ranking, a ranking names an item missing from the catalog, or a
            query is missing.
    """
    if top_k < 1:
        raise ConfigError(f"mine.top_k must be >= 1, got {top_k}; set mine.top_k in the YAML")
    catalog_ids = sorted(items)
    rows: list[dict[str, Any]] = []
    skipped = not_retrieved = inserted = 0
    positions: Counter[int] = Counter()
    for ex in sorted(examples, key=lambda e: e.example_id):
        ranked: list[str] = []
        if negatives == "hard":
            if ex.example_id not in rankings:
                raise DataError(
                    f"example {ex.example_id!r} has no ranking in the retrieval run; rerun `reges retrieve` for this "
                    "split (run.overwrite=true)"
                )
            ranked = [h.item_id for h in rankings[ex.example_id]]
        query = None
        if queries is not None:
            if ex.example_id not in queries:
                raise DataError(f"no query for example {ex.example_id!r} in rewrite/; rerun `reges rewrite`")
            query = queries[ex.example_id]
        mined = select_candidates(ex, ranked, catalog_ids, negatives, top_k, seed, exclude_named=exclude_named)
        if mined is None:
            skipped += 1
            continue
        if mined.inserted and not insert_missing:
            not_retrieved += 1
            continue
        unknown = [i for i in mined.candidate_ids if i not in items]
        if unknown:
            raise DataError(
                f"the retrieval run ranks item {unknown[0]!r} (example {ex.example_id!r}), which is not in the "
                "catalog; retrieve and catalog disagree: rerun `reges retrieve` with run.overwrite=true"
            )
        candidates = [items[i] for i in mined.candidate_ids]
        titles = candidate_titles(candidates)
        at = mined.candidate_ids.index(mined.target_item_id)
        inserted += mined.inserted
        positions[at + 1] += 1
        rows.append(
            {
                "example_id": ex.example_id,
                "candidate_ids": mined.candidate_ids,
                "target_item_id": mined.target_item_id,
                "inserted": mined.inserted,
                "prompt": item_prompt(ex.context, query, candidates, fmt),
                "completion": [{"role": "assistant", "content": titles[at]}],
            }
        )
    counts = {
        "examples": len(rows),
        "skipped_no_catalog_target": skipped,
        "skipped_not_retrieved": not_retrieved,
        "inserted": inserted,
        "share_inserted": round(inserted / len(rows), 4) if rows else 0.0,
        "target_positions": {str(k): positions[k] for k in sorted(positions)},
    }
    return rows, counts


def query_path(run_dir: RunDir, split: str, mode: Literal["auto", "rewrite", "none"]) -> Path | None:
    """The rewrite file whose queries the prompts of `split` show, or None for no query.

    Raises:
        StageNotReadyError / DataError: mode is "rewrite" and the rewrite stage or its file for `split` is missing.
    """
    if mode == "none":
        return None
    if mode == "rewrite":
        path = run_dir.require("rewrite") / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} not found but mine.query=rewrite; add {split!r} to rewrite.splits and rerun it")
        return path
    if mode == "auto":
        path = run_dir.stage_dir("rewrite") / f"{split}.jsonl"
        return path if run_dir.is_complete("rewrite") and path.is_file() else None
    raise ConfigError(f"mine.query must be auto, rewrite or none, got {mode!r}")


def prompt_token_counts(rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Tokens of each row's prompt as the model sees it (chat template with the generation prompt)."""
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def token_stats(counts: Sequence[int]) -> dict[str, int]:
    """p50, p95 and max of token counts (0 when empty)."""
    if not counts:
        return {"p50": 0, "p95": 0, "max": 0}
    arr = np.asarray(counts)
    return {"p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}


def load_tokenizer(cfg: PipelineConfig) -> Any:
    """The tokenizer of `llm.model` (a local model: the item expert is trained on it)."""
    from transformers import AutoTokenizer

    from reges.llm.models import hf_folder

    return AutoTokenizer.from_pretrained(str(hf_folder(cfg.item_expert_llm)))


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Write `mine/{split}.jsonl` for every split of `mine.splits`, then the manifest.

    Example:
        reges mine --config configs/redial.yaml --run-dir runs/redial mine.negatives=random
    """
    started = now_iso()
    mc = cfg.mine
    fmt = PromptFormat.from_config(mc)
    data_dir = run_dir.require("data")
    items_path = run_dir.require("catalog") / "items.jsonl"
    retrieve_dir = run_dir.require("retrieve") if mc.negatives == "hard" else None
    inputs: dict[str, Path] = {"catalog": items_path}
    plan: dict[str, tuple[Path, Path | None]] = {}
    for split in mc.splits:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} not found; mine.splits has {split!r} but the data stage did not write it")
        inputs[f"data/{split}"] = path
        if retrieve_dir is not None:
            trec = retrieve_dir / f"{split}.trec"
            if not trec.is_file():
                raise DataError(f"{trec} not found; add {split!r} to retrieve.splits and rerun retrieve")
            inputs[f"retrieve/{split}"] = trec
        qpath = query_path(run_dir, split, mc.query)
        if qpath is not None:
            inputs[f"rewrite/{split}"] = qpath
        plan[split] = (path, qpath)
    tokenizer = load_tokenizer(cfg)
    out = run_dir.begin("mine", cfg.run.overwrite)

    catalog = read_catalog(items_path)
    items = {it.item_id: it for it in catalog}
    aliases = alias_map(catalog)  # a target named by a folded id is the item it was folded into
    outputs: dict[str, int] = {}
    per_split: dict[str, Any] = {}
    for split, (path, qpath) in plan.items():
        examples = read_examples(path, aliases)
        rankings = read_trec(retrieve_dir / f"{split}.trec") if retrieve_dir is not None else {}
        queries = read_queries(qpath) if qpath is not None else None
        rows, counts = mine_examples(
            examples, rankings, items, queries, mc.negatives, mc.top_k, fmt, cfg.run.seed,
            exclude_named=mc.exclude_named, insert_missing=mc.insert_missing,
        )
        tokens = prompt_token_counts(rows, tokenizer)
        outputs[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", rows)
        per_split[split] = {**counts, "query_used": qpath is not None, "prompt_tokens": token_stats(tokens)}
        logger.info(
            "mine %s: %d examples (%d skipped), %.1f %% inserted, prompt tokens p50 %d p95 %d",
            split,
            counts["examples"],
            counts["skipped_no_catalog_target"],
            100 * counts["share_inserted"],
            per_split[split]["prompt_tokens"]["p50"],
            per_split[split]["prompt_tokens"]["p95"],
        )
    run_dir.finish(
        "mine",
        config=dataclasses.asdict(mc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={"splits": per_split, "prompt_format": fmt.to_dict(), "tokenizer_model": cfg.item_expert_llm.model},
    )
