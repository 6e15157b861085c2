"""Stage `evaluate`: Recall@k with confidence intervals for the run's retrieval and the baselines.

For each split in `evaluate.splits`, every method ranks the FULL catalog for every example:
    retrieve     the run's own candidates, `retrieve/{split}.trec` (when the retrieve stage is complete)
    popularity, bm25, dense_full, dense_last2, oracle   the baselines in `evaluate.baselines` (see baselines.py)
    copy         Kostric & Balog's naive baseline, always (it needs no model)
and is scored under four protocols at every cutoff in `evaluate.cutoffs`: ours, "all" and "novel", and Kostric &
Balog's standardised ReDial sets, "full" and "fresh" (their "dedup"); see metrics.py.

Item ids: a cleaned catalog folds duplicate dataset ids of one film into one item (`reges.catalog.clean_catalog`).
Every example's targets and context mentions, and the train dialogues behind the popularity baseline, are mapped
through the catalog's alias map first (`canonical_example`), so a target named by a folded id is that item, and
whether a target was "mentioned earlier" is decided per film.

Files written under `run_dir/evaluate/`:
    metrics.json       {"primary_metric": "recall@50", "splits": {split: {method: {protocol: {...}}}}, ...}
    per_example.jsonl  one row per (split, method, example): each target's rank, so any metric can be recomputed
    report.md          markdown tables, one per split and protocol
When `generate/` is complete, metrics.json and report.md also get an end-to-end section ("end_to_end"): for each
evaluated split that generate covered, the Item Expert's success rate, success given a target is among the
candidates, hallucination and catalog-miss rates next to the retriever's top-1 on the same examples, and in rank
mode Recall@{1,5,10} of the re-ranked list next to the retriever's own order (see `end_to_end_metrics`).
    manifest.json      written last
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reges.catalog import alias_map, canonical_example, read_catalog
from reges.config import PipelineConfig
from reges.errors import ConfigError, DataError
from reges.eval.baselines import BASELINES, BM25Ranker, copy_ranking, oracle_query
from reges.eval.metrics import (
    EVAL_PROTOCOLS,
    PROTOCOLS,
    PickOutcome,
    TargetRank,
    recall_key,
    summarize,
    summarize_picks,
    target_ranks,
)
from reges.io import RunDir, atomic_open, now_iso, read_jsonl, read_trec, write_json, write_jsonl
from reges.item_expert.generate import expert_choice
from reges.linking import TitleSpotter
from reges.records import Hit, Item, RecExample, mentioned_item_ids
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query
from reges.retrieval.retrieve import (
    item_popularity,
    load_index_encoder,
    popularity_ranking,
    read_dialogues,
    read_examples,
    retrieve,
)

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "recall@50"
RUN_METHOD = "retrieve"
_DENSE_BASELINES = ("dense_full", "dense_last2", "oracle")

# "As served" picks skip every film whose title the dialogue named, not only the named ids (a user who rejected
# Titanic (1997) must not get Titanic (2012)); what `PipelineRecommender` must exclude too.
EXCLUDE_SAME_TITLE = True

METHOD_DESCRIPTIONS = {
    RUN_METHOD: "this run's retrieve stage (the TREC run files in retrieve/)",
    "popularity": "train mention counts, ties at random (seeded)",
    "bm25": "BM25 over item cards, query = full dialogue context",
    "dense_full": "frozen index encoder, query = full dialogue context",
    "dense_last2": "frozen index encoder, query = last two turns",
    "oracle": "frozen index encoder, query = the true item's attributes ({fields}; never the title), one per target",
    "copy": "the items the context mentions, in reversed order of mention (Kostric & Balog's naive baseline)",
}


def rankings_to_pairs(
    examples: list[RecExample], rankings: dict[str, list[Hit]], catalog_ids: frozenset[str]
) -> list[TargetRank]:
    """Score each example's targets against that example's ranking (missing ranking = all misses)."""
    pairs: list[TargetRank] = []
    for ex in examples:
        ranked = [h.item_id for h in rankings.get(ex.example_id, [])]
        pairs.extend(target_ranks(
            ex.example_id, ex.dialogue_id, ex.target_item_ids, ex.target_mentioned, ranked, catalog_ids,
            bool(ex.context),
        ))
    return pairs


def oracle_pairs(
    examples: list[RecExample], item_rankings: dict[str, list[Hit]], catalog_ids: frozenset[str]
) -> list[TargetRank]:
    """Score each target against the ranking of its own oracle query (`item_rankings[target_id]`)."""
    pairs: list[TargetRank] = []
    for ex in examples:
        for target, mentioned in zip(ex.target_item_ids, ex.target_mentioned, strict=True):
            ranked = [h.item_id for h in item_rankings.get(target, [])]
            pairs.extend(target_ranks(
                ex.example_id, ex.dialogue_id, [target], [mentioned], ranked, catalog_ids, bool(ex.context)
            ))
    return pairs


def _check_cutoffs(cutoffs: list[int]) -> list[int]:
    if not cutoffs:
        raise ConfigError("evaluate.cutoffs is empty; list at least one cutoff, e.g. [1, 5, 10, 20, 50]")
    bad = [k for k in cutoffs if k < 1]
    if bad:
        raise ConfigError(f"evaluate.cutoffs must all be >= 1, got {bad}")
    return sorted(set(cutoffs))


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def render_report(metrics: dict[str, Any], run_name: str, catalog_size: int, details: dict[str, Any]) -> str:
    """Markdown report: one table per split and protocol, then the method descriptions and notes."""
    cutoffs: list[int] = metrics["cutoffs"]
    primary = metrics["primary_metric"]
    lines = [
        f"# Retrieval evaluation: {run_name}",
        "",
        f"Recall@k over (example, target) pairs, full catalog of {catalog_size} items. Primary metric: {primary}. "
        f"95% CI: percentile bootstrap over dialogues ({metrics['bootstrap']} resamples, seed {metrics['seed']}). "
        "Targets missing from the catalog count as misses. Protocol *all*: every target; "
        "*novel*: targets not mentioned earlier in the dialogue; *full* and *fresh*: Kostric & Balog's standardised "
        "sets, i.e. *all* and *novel* without the examples that have no context.",
        "",
    ]
    for split, methods in metrics["splits"].items():
        for protocol in metrics["protocols"]:
            first = next(iter(methods.values()))[protocol]
            lines += [
                f"## {split}, protocol {protocol} ({first['n_examples']} examples, {first['n_targets']} targets, "
                f"{first['n_dialogues']} dialogues, {first['missing_targets']} targets missing from the catalog)",
                "",
                "| method | " + " | ".join(f"R@{k}" for k in cutoffs) + f" | {primary} 95% CI |",
                "|---|" + "---:|" * len(cutoffs) + "---|",
            ]
            for method, by_protocol in methods.items():
                m = by_protocol[protocol]
                cells = [_fmt(m[recall_key(k)]["mean"]) for k in cutoffs]
                ci = m[primary] if primary in m else m[recall_key(cutoffs[-1])]
                lines.append(
                    f"| {method} | " + " | ".join(cells) + f" | [{_fmt(ci['ci_low'])}, {_fmt(ci['ci_high'])}] |"
                )
            lines.append("")
    if "end_to_end" in metrics:
        lines += render_end_to_end(metrics["end_to_end"])
    lines += ["## Methods", ""]
    shown = {m for methods in metrics["splits"].values() for m in methods}
    fields = ", ".join(metrics["oracle_fields"])
    lines += [f"- **{m}**: {METHOD_DESCRIPTIONS[m].format(fields=fields)}" for m in METHOD_DESCRIPTIONS if m in shown]
    notes = [
        f"- {split} / {method}: {d['empty_queries']} empty queries got the popularity ranking"
        for split, by_method in details.items()
        for method, d in by_method.items()
        if d.get("empty_queries")
    ]
    notes += [
        f"- {split} / {method}: {d['unranked_examples']} examples had no ranking (counted as misses)"
        for split, by_method in details.items()
        for method, d in by_method.items()
        if d.get("unranked_examples")
    ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


# --- End to end: the Item Expert's pick (generate/) against the retriever's top-1 -----------------------------------

E2E_CUTOFFS = (1, 5, 10)
E2E_METHODS = {
    "retriever_top1": "the first of the candidates the Item Expert saw (the retriever's pick)",
    "item_expert": "the Item Expert's pick (generate/; rank mode: fused with the retriever's scores, fusion alpha)",
    "item_expert_alone": "rank mode: the candidate the Item Expert's log-likelihood alone ranks first (alpha 1)",
    "retriever_top1_unmentioned": "as served: the retriever's first candidate not mentioned earlier in the dialogue, "
    "nor sharing a title with one that was (the recommender never recommends a film the dialogue already named)",
    "item_expert_unmentioned": "as served, rank mode: the first candidate of the fused ranking not mentioned earlier "
    "nor sharing a title with one that was (the recommender drops those before the Item Expert sees them, so its "
    "z-scores and prompt differ a little)",
}


def pick_outcomes(
    examples: list[RecExample],
    rows: list[dict[str, Any]],
    path: Path,
    same_title: Callable[[set[str]], set[str]] | None = None,
) -> dict[str, list[PickOutcome]]:
    """Outcomes of the Item Expert's picks and of the retriever's top-1 on the examples generate covered.

    Rank-mode rows also give "item_expert_alone": the expert's own first choice, before fusion. The "_unmentioned"
    methods pick as the served recommender does, skipping items the dialogue already mentioned (and, given
    `same_title`, every item sharing a title with one of them): protocol "all" rewards repeating those, which a
    recommender users talk to must not do.

    Raises:
        DataError: A row names an example the split does not have, or has no candidates.
    """
    by_id = {ex.example_id: ex for ex in examples}
    expert, top1, alone, top1_new, expert_new = [], [], [], [], []
    for row in rows:
        ex = by_id.get(str(row["example_id"]))
        if ex is None:
            raise DataError(
                f"{path} has example {row['example_id']!r}, which the data split lacks; the data changed after "
                "generate ran: rerun `reges generate` with run.overwrite=true"
            )
        candidates = tuple(row.get("candidate_ids") or ())
        if not candidates:
            raise DataError(f"{path}: example {ex.example_id!r} has no candidate_ids; rerun `reges generate`")
        targets, mentioned = tuple(ex.target_item_ids), tuple(ex.target_mentioned)
        expert.append(
            PickOutcome(ex.example_id, ex.dialogue_id, row["item_id"], bool(row["in_candidates"]),
                        bool(row["in_catalog"]), targets, mentioned, candidates)
        )
        first = candidates[0]
        top1.append(PickOutcome(ex.example_id, ex.dialogue_id, first, True, True, targets, mentioned, candidates))
        if row.get("llm_scores"):
            best = expert_choice(row)
            alone.append(PickOutcome(ex.example_id, ex.dialogue_id, best, True, True, targets, mentioned, candidates))
        # picked from the candidates by construction; None (every candidate already named) scores as a miss
        named = mentioned_item_ids(ex.context)
        if same_title is not None:
            named = same_title(named)
        first_new = next((c for c in candidates if c not in named), None)
        top1_new.append(PickOutcome(ex.example_id, ex.dialogue_id, first_new, True, True, targets, mentioned,
                                    candidates))
        if row.get("ranking"):
            new = next((str(item_id) for item_id, _ in row["ranking"] if item_id not in named), None)
            expert_new.append(PickOutcome(ex.example_id, ex.dialogue_id, new, True, True, targets, mentioned,
                                          candidates))
    outcomes = {"retriever_top1": top1, "item_expert": expert}
    if alone and len(alone) == len(expert):
        outcomes["item_expert_alone"] = alone
    outcomes["retriever_top1_unmentioned"] = top1_new
    if expert_new and len(expert_new) == len(expert):
        outcomes["item_expert_unmentioned"] = expert_new
    return outcomes


def end_to_end_metrics(
    examples: list[RecExample],
    rows: list[dict[str, Any]],
    path: Path,
    generate_manifest: dict[str, Any],
    catalog_ids: frozenset[str],
    resamples: int,
    seed: int,
    same_title: Callable[[set[str]], set[str]] | None = None,
) -> dict[str, Any]:
    """End-to-end metrics of one split: see `summarize_picks`; rank mode adds Recall@k of the re-ranked list.

    Recall@k of the rank list and of the retriever's order are computed over the same candidate lists (the top_k the
    Item Expert saw), so their difference is what re-ranking changed; cutoffs above top_k are left out.
    """
    outcomes = pick_outcomes(examples, rows, path, same_title)
    top_k = int(generate_manifest["top_k"])
    out: dict[str, Any] = {
        "mode": generate_manifest["mode"],
        "top_k": top_k,
        "use_adapter": generate_manifest["use_adapter"],
        "model": generate_manifest.get("model", ""),
        "fusion_alpha": generate_manifest.get("fusion_alpha"),
        "methods": {
            method: {protocol: summarize_picks(picked, protocol, resamples, seed) for protocol in PROTOCOLS}
            for method, picked in outcomes.items()
        },
    }
    if generate_manifest["mode"] == "rank":
        cutoffs = [k for k in E2E_CUTOFFS if k <= top_k]
        by_id = {ex.example_id: ex for ex in examples}
        lists = {
            "retriever": {str(r["example_id"]): list(r["candidate_ids"]) for r in rows},
            "item_expert": {str(r["example_id"]): [item_id for item_id, _ in r["ranking"]] for r in rows},
        }
        out["rank_recall"] = {"cutoffs": cutoffs}
        for method, ranked in lists.items():
            pairs = [
                p
                for example_id, ids in sorted(ranked.items())
                for p in target_ranks(
                    example_id, by_id[example_id].dialogue_id, by_id[example_id].target_item_ids,
                    by_id[example_id].target_mentioned, ids, catalog_ids,
                )
            ]
            out["rank_recall"][method] = {
                protocol: summarize(pairs, protocol, cutoffs, resamples, seed) for protocol in PROTOCOLS
            }
    return out


def render_end_to_end(end_to_end: dict[str, Any]) -> list[str]:
    """Markdown lines of the end-to-end section: one table per split, plus the rank-list recall in rank mode."""
    lines: list[str] = []
    for split, e2e in end_to_end.items():
        tuned = "trained adapter" if e2e["use_adapter"] else "base model, untuned"
        if e2e.get("fusion_alpha") is not None:
            tuned += f", fusion alpha {e2e['fusion_alpha']:.2f}"
        first = e2e["methods"]["item_expert"]
        lines += [
            f"## End to end: {split} (mode {e2e['mode']}, {tuned}, k = {e2e['top_k']}; "
            f"{first['all']['n_examples']} examples, {first['novel']['n_examples']} with a novel target)",
            "",
            "Success: the single pick is a target (novel: a novel target); 95% CI over dialogues. "
            "*|shown*: over examples where a target was among the k candidates.",
            "",
            "| method | success all | 95% CI | success novel | 95% CI | success all \\|shown | "
            "success novel \\|shown | hallucination | catalog miss |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for method, by_protocol in e2e["methods"].items():
            a, n = by_protocol["all"], by_protocol["novel"]
            lines.append(
                f"| {method} | {_fmt(a['success_rate']['mean'])} | [{_fmt(a['success_rate']['ci_low'])}, "
                f"{_fmt(a['success_rate']['ci_high'])}] | {_fmt(n['success_rate']['mean'])} | "
                f"[{_fmt(n['success_rate']['ci_low'])}, {_fmt(n['success_rate']['ci_high'])}] | "
                f"{_fmt(a['success_given_candidates']['mean'])} ({a['n_target_in_candidates']}) | "
                f"{_fmt(n['success_given_candidates']['mean'])} ({n['n_target_in_candidates']}) | "
                f"{_fmt(a['hallucination_rate']['mean'])} | {_fmt(a['catalog_miss_rate']['mean'])} |"
            )
        lines.append("")
        if "rank_recall" in e2e:
            cutoffs = e2e["rank_recall"]["cutoffs"]
            lines += [
                f"Recall@k of the candidate list, retriever order vs the Item Expert's re-ranking ({split}):",
                "",
                "| list | " + " | ".join(f"R@{k} {p}" for p in PROTOCOLS for k in cutoffs) + " |",
                "|---|" + "---:|" * (len(cutoffs) * len(PROTOCOLS)),
            ]
            for method in ("retriever", "item_expert"):
                m = e2e["rank_recall"][method]
                cells = [_fmt(m[p][recall_key(k)]["mean"]) for p in PROTOCOLS for k in cutoffs]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    shown = {m for e2e in end_to_end.values() for m in e2e["methods"]}
    lines += [f"- **{m}**: {d}" for m, d in E2E_METHODS.items() if m in shown] + [""] if end_to_end else []
    return lines


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Score the run's retrieval and the baselines; write metrics.json, per_example.jsonl, report.md, manifest.

    Example:
        reges evaluate --config configs/redial.yaml --run-dir runs/redial evaluate.bootstrap=2000
    """
    started = now_iso()
    ec = cfg.evaluate
    cutoffs = _check_cutoffs(list(ec.cutoffs))
    unknown = [b for b in ec.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown evaluate.baselines {unknown}; choose from {list(BASELINES)}")
    depth = max(cutoffs)

    data_dir = run_dir.require("data")
    items_path = run_dir.require("catalog") / "items.jsonl"
    need_index = any(b in _DENSE_BASELINES for b in ec.baselines)
    index_dir = run_dir.require("index") if need_index else None
    retrieve_dir = run_dir.stage_dir("retrieve") if run_dir.is_complete("retrieve") else None
    if retrieve_dir is None:
        logger.info("retrieve/ is not complete: evaluating the baselines only")
    else:
        retrieve_top_k = int(run_dir.manifest("retrieve")["config"]["top_k"])
        if retrieve_top_k < depth:
            raise ConfigError(
                f"retrieve/ kept top_k={retrieve_top_k} candidates but evaluate.cutoffs go up to {depth}; "
                f"rerun retrieve with retrieve.top_k={depth} or lower the cutoffs"
            )
    split_paths = {split: data_dir / f"{split}.jsonl" for split in ec.splits}
    for split, path in split_paths.items():
        if not path.is_file():
            raise DataError(f"{path} not found; evaluate.splits has {split!r} but the data stage did not write it")
        if retrieve_dir is not None and not (retrieve_dir / f"{split}.trec").is_file():
            raise ConfigError(
                f"evaluate.splits has {split!r} but retrieve/{split}.trec does not exist; "
                "add it to retrieve.splits and rerun retrieve (run.overwrite=true)"
            )
    train_dialogues_path = data_dir / "train_dialogues.jsonl"
    out = run_dir.begin("evaluate", cfg.run.overwrite)

    items = read_catalog(items_path)
    catalog_ids = frozenset(it.item_id for it in items)
    by_id: dict[str, Item] = {it.item_id: it for it in items}
    aliases = alias_map(items)
    train_dialogues = read_dialogues(train_dialogues_path, aliases)
    popularity = popularity_ranking(item_popularity(train_dialogues), [it.item_id for it in items], cfg.run.seed)
    same_title = TitleSpotter(items).same_title_ids if EXCLUDE_SAME_TITLE else None
    index = encoder = None
    if index_dir is not None:
        index = ItemIndex.load(index_dir, cfg.retrieve.nprobe, cfg.retrieve.ef_search)
        if set(index.item_ids) != catalog_ids:
            raise DataError("index/ does not cover the same items as catalog/items.jsonl; rerun `reges index`")
        encoder = load_index_encoder(index, cfg.index)
    bm25 = BM25Ranker(items) if "bm25" in ec.baselines else None
    rc = cfg.retrieve

    metrics: dict[str, Any] = {
        # recall@50 when it is computed (the candidate-list size the pipeline uses), else the deepest cutoff
        "primary_metric": PRIMARY_METRIC if PRIMARY_METRIC in map(recall_key, cutoffs) else recall_key(depth),
        "cutoffs": cutoffs,
        "protocols": list(EVAL_PROTOCOLS),
        "bootstrap": ec.bootstrap,
        "seed": cfg.run.seed,
        "catalog_size": len(items),
        "catalog_aliases": len(aliases),
        "oracle_fields": list(ec.oracle_fields),
        "splits": {},
    }
    details: dict[str, dict[str, dict[str, Any]]] = {}
    per_example: list[dict[str, Any]] = []
    aliased_targets: dict[str, int] = {}
    for split, path in split_paths.items():
        raw_examples = read_examples(path)
        examples = [canonical_example(ex, aliases) for ex in raw_examples]
        aliased_targets[split] = sum(t in aliases for ex in raw_examples for t in ex.target_item_ids)
        example_ids = {ex.example_id for ex in examples}
        results: dict[str, list[TargetRank]] = {}
        details[split] = {}
        methods = ([RUN_METHOD] if retrieve_dir is not None else []) + list(ec.baselines)
        for method in methods:
            t0 = time.perf_counter()
            empty = unranked = 0
            if method == RUN_METHOD:
                assert retrieve_dir is not None
                trec_path = retrieve_dir / f"{split}.trec"
                ranking = read_trec(trec_path)
                extra = sorted(set(ranking) - example_ids)
                if extra:
                    raise DataError(
                        f"{trec_path} has {len(extra)} query ids not in {path} (e.g. {extra[0]!r}); the data "
                        "changed after retrieve ran: rerun `reges retrieve` with run.overwrite=true"
                    )
                unranked = len(example_ids - set(ranking))
                if unranked:
                    logger.warning("%s: %d examples have no ranking; they count as misses", trec_path, unranked)
                pairs = rankings_to_pairs(examples, ranking, catalog_ids)
            elif method == "popularity":
                pairs = rankings_to_pairs(
                    examples, {ex.example_id: popularity[:depth] for ex in examples}, catalog_ids
                )
            elif method == "bm25":
                assert bm25 is not None
                queries = {ex.example_id: context_to_query(ex.context, "full", rc.max_query_chars) for ex in examples}
                empty = bm25.count_empty(queries)
                pairs = rankings_to_pairs(examples, bm25.search(queries, depth, popularity), catalog_ids)
            elif method in ("dense_full", "dense_last2"):
                assert index is not None and encoder is not None
                mode = "full" if method == "dense_full" else "last2"
                queries = {ex.example_id: context_to_query(ex.context, mode, rc.max_query_chars) for ex in examples}
                empty = sum(1 for q in queries.values() if not q.strip())
                ranking = retrieve(queries, index, encoder, depth, rc.batch_size, popularity, cfg.run.show_progress)
                pairs = rankings_to_pairs(examples, ranking, catalog_ids)
            elif method == "oracle":
                assert index is not None and encoder is not None
                # The oracle query depends only on the item, so each distinct target is queried once.
                queries = {
                    t: oracle_query(by_id[t], ec.oracle_fields)
                    for ex in examples
                    for t in ex.target_item_ids
                    if t in by_id
                }
                empty = sum(1 for q in queries.values() if not q.strip())
                ranking = retrieve(queries, index, encoder, depth, rc.batch_size, popularity, cfg.run.show_progress)
                pairs = oracle_pairs(examples, ranking, catalog_ids)
            elif method == "copy":
                pairs = rankings_to_pairs(
                    examples, {ex.example_id: copy_ranking(ex.context, catalog_ids) for ex in examples}, catalog_ids
                )
            else:
                raise ConfigError(f"unknown method {method!r}; choose from {list(BASELINES)}")
            results[method] = pairs
            seconds = round(time.perf_counter() - t0, 3)
            details[split][method] = {"empty_queries": empty, "unranked_examples": unranked, "seconds": seconds}

        metrics["splits"][split] = {
            method: {
                protocol: summarize(pairs, protocol, cutoffs, ec.bootstrap, cfg.run.seed)
                for protocol in EVAL_PROTOCOLS
            }
            for method, pairs in results.items()
        }
        for method, pairs in results.items():
            by_example: dict[str, list[TargetRank]] = {}
            for p in pairs:
                by_example.setdefault(p.example_id, []).append(p)
            for ex in sorted(examples, key=lambda e: e.example_id):
                per_example.append(
                    {
                        "split": split,
                        "method": method,
                        "example_id": ex.example_id,
                        "dialogue_id": ex.dialogue_id,
                        "targets": [
                            {
                                "item_id": p.item_id,
                                "mentioned": p.mentioned,
                                "in_catalog": p.in_catalog,
                                "rank": p.rank,
                            }
                            for p in by_example.get(ex.example_id, [])
                        ],
                    }
                )
        primary = metrics["primary_metric"]
        for method in results:
            m = metrics["splits"][split][method]
            logger.info(
                "%s %-11s %s all %.3f novel %.3f",
                split,
                method,
                primary,
                m["all"][primary]["mean"],
                m["novel"][primary]["mean"],
            )
    metrics["details"] = details
    # (example, target) pairs whose dataset id was folded into another item's id by catalog cleaning
    metrics["aliased_targets"] = aliased_targets

    generate_inputs: dict[str, Path] = {}
    if run_dir.is_complete("generate"):
        generate_manifest = run_dir.manifest("generate")
        end_to_end: dict[str, Any] = {}
        for split, path in split_paths.items():
            gen_path = run_dir.stage_dir("generate") / f"{split}.jsonl"
            if not gen_path.is_file():
                logger.info("generate/ has no %s split: no end-to-end metrics for it", split)
                continue
            end_to_end[split] = end_to_end_metrics(
                read_examples(path, aliases), read_jsonl(gen_path), gen_path,
                generate_manifest, catalog_ids, ec.bootstrap, cfg.run.seed, same_title,
            )
            generate_inputs[f"generate/{split}"] = gen_path
            m = end_to_end[split]["methods"]
            expert, top1 = m["item_expert"], m["retriever_top1"]
            logger.info(
                "%s end to end (%s, k=%d): success all %.3f (retriever top-1 %.3f), novel %.3f (%.3f)",
                split, end_to_end[split]["mode"], end_to_end[split]["top_k"],
                expert["all"]["success_rate"]["mean"], top1["all"]["success_rate"]["mean"],
                expert["novel"]["success_rate"]["mean"], top1["novel"]["success_rate"]["mean"],
            )
        if end_to_end:
            metrics["end_to_end"] = end_to_end

    write_json(out / "metrics.json", metrics)
    n_rows = write_jsonl(out / "per_example.jsonl", per_example)
    with atomic_open(out / "report.md") as f:
        f.write(render_report(metrics, cfg.run.name, len(items), details))

    inputs: dict[str, Path] = {f"data/{split}": path for split, path in split_paths.items()}
    inputs["data/train_dialogues"] = train_dialogues_path
    inputs["catalog"] = items_path
    if index_dir is not None:
        inputs["index"] = index_dir / "index.faiss"
    if retrieve_dir is not None:
        inputs.update({f"retrieve/{split}": retrieve_dir / f"{split}.trec" for split in split_paths})
    inputs.update(generate_inputs)
    run_dir.finish(
        "evaluate",
        config=dataclasses.asdict(ec),
        inputs=inputs,
        outputs={"metrics.json": len(split_paths), "per_example.jsonl": n_rows, "report.md": len(split_paths)},
        seed=cfg.run.seed,
        started=started,
        extra={"primary_metric": metrics["primary_metric"]},
    )
