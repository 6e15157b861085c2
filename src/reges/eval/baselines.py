"""Retrieval baselines, all ranking the full catalog, scored by the same harness as the pipeline.

    popularity   items by mention count in the train dialogues (ties at random, seeded); same list for
                 every example. What a recommender gets with no understanding of the dialogue.
    bm25         BM25 (bm25s, Lucene variant, English stopwords) over item cards, the full context as query.
    dense_full   the frozen index encoder over the full raw dialogue (the retrieve stage with query=full).
    dense_last2  the same over the last two turns only.
    oracle       one query per target built from the true item's own attributes (`evaluate.oracle_fields`,
                 default genre, director, stars, plot; never the title): the ceiling a query writer could
                 reach with this retriever.
    copy         Kostric & Balog's naive baseline (SIGIR 2026): the items the context mentions, in reversed order
                 of mention (the last named first), and nothing else. It measures how much of a protocol's recall
                 repeating the dialogue earns (ReDial test, their numbers: R@1 0.043 on "full", 0 on "fresh" by
                 construction).

Empty queries (no context, or an oracle target without attributes) get the popularity ranking, counted
and reported by the evaluate stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

from reges.errors import CatalogError, ConfigError
from reges.records import Hit, Item, Turn

logger = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("popularity", "bm25", "dense_full", "dense_last2", "oracle", "copy")

# Labels for the usual attributes in an oracle query; any other meta key is labelled by its name.
ORACLE_LABELS: dict[str, str] = {"genre": "Genre", "director": "Director", "star": "Stars", "plot": "Plot"}
DEFAULT_ORACLE_FIELDS: tuple[str, ...] = ("genre", "director", "star", "plot")


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, (list, tuple)):
        return ", ".join(" ".join(str(v).split()) for v in value if str(v).strip())
    return "" if value is None else str(value)


def oracle_query(item: Item, fields: Sequence[str] = DEFAULT_ORACLE_FIELDS) -> str:
    """A query describing `item` by its attributes: "Genre: ... Director: ... Stars: ... Plot: ...".

    The title is never used: the oracle measures how well a description of the item finds it, not title
    lookup. With the plot included the query repeats most of the card, so it is close to a lookup anyway;
    `fields=("genre", "director", "star")` is the stricter ceiling.

    Args:
        item: The true item.
        fields: Meta keys to describe, in order (`evaluate.oracle_fields`).

    Returns:
        The query; "" when the item has none of the attributes (e.g. an item known only by its title).

    Raises:
        ConfigError: `fields` contains "title".
    """
    if "title" in fields:
        raise ConfigError("evaluate.oracle_fields must not contain 'title': the oracle describes, it does not name")
    parts = []
    for key in fields:
        text = _as_text(item.meta.get(key)).rstrip(". ")
        if text:
            parts.append(f"{ORACLE_LABELS.get(key, key.capitalize())}: {text}.")
    return " ".join(parts)


class BM25Ranker:
    """BM25 over item cards, ranking the whole catalog exactly.

    Scores every item for every query (cheap at catalog sizes where BM25 is a baseline) so that ties,
    common among zero-score items, are broken by item_id exactly as the dense index does.

    Example:
        >>> ranker = BM25Ranker(items)
        >>> ranker.search({"ex1": "User: a funny heist movie"}, top_k=50)["ex1"][:1]
        [Hit(item_id='455', score=7.1)]
    """

    def __init__(self, items: Sequence[Item]) -> None:
        if not items:
            raise CatalogError("BM25 needs a non-empty catalog; check catalog/items.jsonl")
        self.item_ids = [it.item_id for it in items]
        self._id_order = np.argsort(np.argsort(np.array(self.item_ids, dtype=object)))  # (n,) rank of each id
        tokens = bm25s.tokenize([it.text for it in items], stopwords="en", show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def search(self, queries: dict[str, str], top_k: int, fallback: Sequence[Hit] = ()) -> dict[str, list[Hit]]:
        """Top-k items per query by BM25 score, ties by item_id; queries with no tokens get `fallback`."""
        qids = sorted(queries)
        tokenized = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False, return_ids=False)
        results: dict[str, list[Hit]] = {}
        for qid, tokens in zip(qids, tokenized, strict=True):
            if not tokens:
                results[qid] = list(fallback[:top_k])
                continue
            scores = np.asarray(self.retriever.get_scores(tokens), dtype=np.float64)  # (n,)
            order = np.lexsort((self._id_order, -scores))[:top_k]
            results[qid] = [Hit(self.item_ids[i], float(scores[i])) for i in order]
        return results

    def count_empty(self, queries: dict[str, str]) -> int:
        """How many queries have no BM25 token (they get the fallback ranking)."""
        tokenized = bm25s.tokenize(list(queries.values()), stopwords="en", show_progress=False, return_ids=False)
        return sum(1 for t in tokenized if not t)


def copy_ranking(context: Sequence[Turn], catalog_ids: set[str] | frozenset[str]) -> list[Hit]:
    """The copy baseline's list: the catalog items the context mentions, in reversed order of mention.

    The mentions of every turn, in order, reversed, each item kept at its last mention: the item named last comes
    first. Score 1 / rank, so the list survives a (-score, item_id) re-sort. Items absent from the catalog are
    left out.

    Example:
        >>> [h.item_id for h in copy_ranking([Turn("user", "A or B", ["a", "b"]), Turn("user", "C", ["c"])],
        ...                                   {"a", "b", "c"})]
        ['c', 'b', 'a']
    """
    mentions = [item_id for turn in context for item_id in turn.item_ids if item_id in catalog_ids]
    ordered = list(dict.fromkeys(reversed(mentions)))
    return [Hit(item_id, 1.0 / rank) for rank, item_id in enumerate(ordered, start=1)]
