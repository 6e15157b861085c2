"""Stage `retrieve`: top-k catalog items per recommendation example, written as TREC run files.

For every split in `retrieve.splits`, each example's context becomes a query (`retrieve.query`: the full
dialogue or its last two turns, see `queries.py`), queries are embedded in batches with the encoder that
built the index, and the index returns `retrieve.top_k` items per query -> `retrieve/{split}.trec`.

An example with no usable context (an empty query) cannot be embedded meaningfully. Instead of ranking
items by an arbitrary vector, it gets the popularity ranking (most mentioned items in the train
dialogues): the usual cold-start answer. This is logged with a count and recorded in the manifest.

Fused mode: when `train-retriever/` is complete and `retrieve.fusion` is on, the learned retriever ranks instead
(`fusion.FusedRetriever`: tuned encoder, co-mentions, popularity, repeats, and the Query Expert's query from
`rewrite/{split}.jsonl` when that file exists). Every example leaves its own dialogue out of the co-mention and
popularity counts, which matters for `train` (retrieved for `mine`): its dialogues are in the counts. Examples
with no context need no special case there: the features that have no signal z-score to 0.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reges.catalog import alias_map, canonical_dialogue, canonical_example, read_catalog, run_aliases
from reges.config import IndexConfig, PipelineConfig
from reges.errors import ConfigError, DataError
from reges.io import RunDir, now_iso, read_jsonl, write_trec
from reges.llm.models import resolve_device
from reges.records import Dialogue, Hit, RecExample
from reges.retrieval.encoder import Encoder, SentenceEncoder, load_encoder
from reges.retrieval.fusion import FusedRetriever, zscore_rows
from reges.retrieval.index import ItemIndex
from reges.retrieval.queries import context_to_query, read_queries

logger = logging.getLogger(__name__)


def retrieve(
    queries: dict[str, str],
    index: ItemIndex,
    encoder: Encoder,
    top_k: int,
    batch_size: int = 64,
    fallback: Sequence[Hit] = (),
    show_progress: bool = False,
) -> dict[str, list[Hit]]:
    """Dense retrieval for many queries at once (in memory, no file I/O).

    Args:
        queries: query id -> query text.
        index: The item index; must come from the same encoder as `encoder`.
        encoder: Embeds the queries (L2-normalised rows).
        top_k: Hits kept per query.
        batch_size: Queries embedded per encoder batch.
        fallback: Ranking given to empty (whitespace-only) queries, e.g. `popularity_ranking(...)`; its
            first `top_k` hits are used. With no fallback, empty queries get no hits. Either way the
            number of empty queries is logged.
        show_progress: tqdm bar over encoding batches.

    Returns:
        query id -> hits sorted by (-score, item_id), for every id in `queries`.

    Raises:
        ConfigError: `top_k` or `batch_size` < 1.

    Example:
        >>> retrieve({"ex1": "User: a scary movie please"}, index, encoder, top_k=50)["ex1"][0]
        Hit(item_id='1234', score=0.52)
    """
    if top_k < 1:
        raise ConfigError(f"retrieve.top_k must be >= 1, got {top_k}; set retrieve.top_k in the YAML")
    if batch_size < 1:
        raise ConfigError(f"retrieve.batch_size must be >= 1, got {batch_size}")
    qids = sorted(queries)
    empty = [q for q in qids if not queries[q].strip()]
    nonempty = [q for q in qids if queries[q].strip()]
    results: dict[str, list[Hit]] = {}
    if empty:
        what = f"the fallback ranking ({len(fallback)} items)" if fallback else "no hits"
        logger.warning("%d of %d queries are empty (no dialogue context); they get %s", len(empty), len(qids), what)
        for q in empty:
            results[q] = list(fallback[:top_k])
    if nonempty:
        embeddings = encoder.encode([queries[q] for q in nonempty], batch_size, show_progress)  # (n, dim)
        for q, hits in zip(nonempty, index.search(embeddings, top_k), strict=True):
            results[q] = hits
    return results


def retrieve_fused(
    examples: Sequence[RecExample],
    retriever: FusedRetriever,
    queries: dict[str, str] | None,
    top_k: int,
    batch_size: int = 256,
    show_progress: bool = False,
) -> dict[str, list[Hit]]:
    """Fused retrieval for examples (in memory), each leaving its own dialogue out of the counts.

    Args:
        examples: The examples (context, dialogue_id).
        retriever: The learned retriever.
        queries: example_id -> the Query Expert's query (None, or ids absent: no query for that example).
        top_k: Hits kept per example.
        batch_size: Examples scored per batch (each holds a few (batch, catalog) float64 matrices).
        show_progress: tqdm bar over batches.

    Returns:
        example_id -> hits sorted by (-score, item_id).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"retrieve.batch_size must be >= 1, got {batch_size}")
    out: dict[str, list[Hit]] = {}
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="fused retrieval", disable=not show_progress):
        batch = examples[start : start + batch_size]
        hits = retriever.search(
            [ex.context for ex in batch],
            [(queries or {}).get(ex.example_id) for ex in batch],
            top_k,
            exclude_dialogue_ids=[ex.dialogue_id for ex in batch],
        )
        out.update(zip([ex.example_id for ex in batch], hits, strict=True))
    return out


def item_popularity(dialogues: list[Dialogue]) -> Counter[str]:
    """Mention counts: how many turns of `dialogues` mention each item (an item counts once per turn)."""
    counts: Counter[str] = Counter()
    for dialogue in dialogues:
        for turn in dialogue.turns:
            counts.update(set(turn.item_ids))
    return counts


def popularity_ranking(counts: Counter[str] | dict[str, int], item_ids: list[str], seed: int) -> list[Hit]:
    """Every catalog item ranked by mention count, ties broken at random with `seed`.

    Many items share a count (most have 0 or 1 mentions), and an id-ordered tie-break would favour
    whatever id scheme the dataset uses; a seeded random order is neutral and reproducible. The tie-break
    is folded into the score (count + a fraction in [0, 0.5)) so the order survives any (-score, item_id)
    re-sort, e.g. in TREC files.

    Args:
        counts: item id -> mention count (items not present count 0).
        item_ids: The catalog's item ids (the ranking covers exactly these).
        seed: Seed of the tie-breaking permutation.

    Returns:
        All items as hits, best first; score = count + tie-break fraction.
    """
    rng = np.random.default_rng(seed)
    ordered = sorted(item_ids)  # independent of catalog order
    position = rng.permutation(len(ordered))  # random rank among equals
    n = len(ordered)
    hits = [Hit(i, counts.get(i, 0) + 0.5 * (n - p) / (n + 1)) for i, p in zip(ordered, position, strict=True)]
    hits.sort(key=lambda h: (-h.score, h.item_id))
    return hits


def read_examples(path: str | Path, aliases: Mapping[str, str] | None = None) -> list[RecExample]:
    """Read `data/{split}.jsonl`; example ids must be unique and free of whitespace (they are TREC qids).

    Args:
        aliases: The run's catalog aliases (`reges.catalog.alias_map`): every target and mention is mapped to the
            item its dataset id was folded into (`canonical_example`). Why: with `catalog.clean=true` a folded id
            is not in the catalog, and a stage reading it as it is would drop that target or mention.

    Raises:
        DataError: a duplicate id or an id containing whitespace.
    """
    examples = [RecExample.from_dict(d) for d in read_jsonl(path)]
    seen: set[str] = set()
    for ex in examples:
        if ex.example_id in seen:
            raise DataError(f"{path}: example_id {ex.example_id!r} appears twice; ids must be unique per split")
        if not ex.example_id or any(c.isspace() for c in ex.example_id):
            raise DataError(f"{path}: example_id {ex.example_id!r} is empty or contains whitespace")
        seen.add(ex.example_id)
    return [canonical_example(ex, aliases) for ex in examples] if aliases else examples


def split_features(fr: FusedRetriever, run_dir: str | Path, split: str, names: Sequence[str], with_query: bool = True
                   ) -> tuple[list[RecExample], list[str | None], dict[str, np.ndarray]]:
    """One split of a run scored as the train-retriever stage tunes it: (examples, queries, z-scored features).

    Why here: the benchmarks that re-tune or re-weight a run's fusion (query_feature_effect, weight_stability) must
    see the features the stage tuned on, each example's own dialogue left out of the counts (tune dialogues may be
    counted; dev dialogues never are).

    Args:
        names: The features to compute (`fusion.FEATURES`).
        with_query: Read the Query Expert's queries from `rewrite/{split}.jsonl` (False: none).
    """
    run_dir = Path(run_dir)
    examples = read_examples(run_dir / "data" / f"{split}.jsonl", run_aliases(run_dir))  # as the stages read them
    texts: list[str | None] = [None] * len(examples)
    if with_query:
        queries = read_queries(run_dir / "rewrite" / f"{split}.jsonl")
        texts = [queries.get(ex.example_id) for ex in examples]
    raw = fr.features([ex.context for ex in examples], texts, [ex.dialogue_id for ex in examples], names)
    return examples, texts, {name: zscore_rows(x) for name, x in raw.items()}


def read_dialogues(path: str | Path, aliases: Mapping[str, str] | None = None) -> list[Dialogue]:
    """Read `data/{split}_dialogues.jsonl` (or `data/lossy_dialogues.jsonl`), every turn's ids mapped through
    `aliases` when given, as `read_examples` does."""
    dialogues = [Dialogue.from_dict(d) for d in read_jsonl(path)]
    return [canonical_dialogue(d, aliases) for d in dialogues] if aliases else dialogues


def load_index_encoder(index: ItemIndex, cfg: IndexConfig) -> SentenceEncoder:
    """The encoder that built `index`, loaded for queries (device and max_seq_length from `cfg`).

    Raises:
        ConfigError: `cfg.encoder` names a different encoder than the one the index was built with.
    """
    if index.encoder != cfg.encoder:
        raise ConfigError(
            f"index/ was built with encoder {index.encoder!r} but index.encoder is {cfg.encoder!r}; "
            "rerun `reges index` with run.overwrite=true, or set index.encoder back"
        )
    device = resolve_device(cfg.device, "index.device")
    return SentenceEncoder(load_encoder(cfg.encoder, device, cfg.max_seq_length))


def trec_tag(name: str) -> str:
    """The run name as a TREC tag (one whitespace-free token)."""
    return "_".join(name.split()) or "reges"


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Retrieve candidates for every example of `retrieve.splits`; write `retrieve/{split}.trec`, then the manifest.

    Example:
        reges retrieve --config configs/redial.yaml --run-dir runs/redial retrieve.query=last2
    """
    started = now_iso()
    data_dir = run_dir.require("data")
    index_dir = run_dir.require("index")
    catalog_path = run_dir.require("catalog") / "items.jsonl"
    # the dialogues' dataset ids mapped to the cleaned catalog's items (none without catalog.clean): a film named
    # under a folded id is still "mentioned", and its co-mentions count for the item it was folded into
    aliases = alias_map(read_catalog(catalog_path))
    rc = cfg.retrieve
    split_paths = {split: data_dir / f"{split}.jsonl" for split in rc.splits}
    for split, path in split_paths.items():
        if not path.is_file():
            raise DataError(f"{path} not found; retrieve.splits has {split!r} but the data stage did not write it")
    train_dialogues_path = data_dir / "train_dialogues.jsonl"
    fused = rc.fusion and run_dir.is_complete("train-retriever")
    rewrite_paths = {}
    if fused and run_dir.is_complete("rewrite"):
        rewrite_paths = {s: run_dir.stage_dir("rewrite") / f"{s}.jsonl" for s in rc.splits}
        rewrite_paths = {s: p for s, p in rewrite_paths.items() if p.is_file()}
    out = run_dir.begin("retrieve", cfg.run.overwrite)

    if fused:
        retriever = FusedRetriever.load(run_dir.path, cfg.index.device, rc.nprobe, rc.ef_search, rc.candidate_pool)
        encoder_name = retriever.encoder_name
        logger.info("retrieve: fused scores of train-retriever/ (query feature on splits %s)", sorted(rewrite_paths))
    else:
        index = ItemIndex.load(index_dir, rc.nprobe, rc.ef_search)
        encoder = load_index_encoder(index, cfg.index)
        fallback = popularity_ranking(
            item_popularity(read_dialogues(train_dialogues_path, aliases)), index.item_ids, cfg.run.seed
        )
        encoder_name = index.encoder

    outputs: dict[str, int] = {}
    per_split: dict[str, dict[str, float]] = {}
    for split, path in split_paths.items():
        examples = read_examples(path, aliases)
        t0 = time.perf_counter()
        if fused:
            rewrites = read_queries(rewrite_paths[split]) if split in rewrite_paths else None
            ranking = retrieve_fused(examples, retriever, rewrites, rc.top_k, show_progress=cfg.run.show_progress)
            empty = sum(1 for ex in examples if not any(t.content.strip() for t in ex.context))
            with_query = sum(1 for ex in examples if (rewrites or {}).get(ex.example_id, "").strip())
        else:
            queries = {ex.example_id: context_to_query(ex.context, rc.query, rc.max_query_chars) for ex in examples}
            ranking = retrieve(queries, index, encoder, rc.top_k, rc.batch_size, fallback, cfg.run.show_progress)
            empty = sum(1 for q in queries.values() if not q.strip())
            with_query = 0
        seconds = time.perf_counter() - t0
        outputs[f"{split}.trec"] = write_trec(out / f"{split}.trec", ranking, tag=trec_tag(cfg.run.name))
        per_split[split] = {
            "queries": len(examples),
            "empty_queries": empty,
            "seconds": round(seconds, 3),
            "queries_per_s": round(len(examples) / seconds, 1) if seconds > 0 else 0.0,
        }
        if fused:
            per_split[split]["with_query"] = with_query
            if retriever.index is not None:  # the candidate path: how often it had to read deeper or fall back
                per_split[split]["candidates"] = {"deepened": retriever.deepened, "fallbacks": retriever.fallbacks}
                retriever.deepened = retriever.fallbacks = 0
        logger.info("retrieve %s: %d queries, %.1f queries/s", split, len(examples), per_split[split]["queries_per_s"])

    inputs = {f"data/{split}": path for split, path in split_paths.items()}
    inputs["data/train_dialogues"] = train_dialogues_path
    inputs["catalog"] = catalog_path
    inputs["index"] = index_dir / "index.faiss"
    if fused:
        inputs["train-retriever/fusion"] = run_dir.stage_dir("train-retriever") / "fusion.json"
        inputs.update({f"rewrite/{s}": p for s, p in rewrite_paths.items()})
    run_dir.finish(
        "retrieve",
        config=dataclasses.asdict(rc),
        inputs=inputs,
        outputs=outputs,
        seed=cfg.run.seed,
        started=started,
        extra={
            "mode": "fused" if fused else "dense",
            "encoder": encoder_name,
            "query": rc.query,
            "splits": per_split,
        },
    )
