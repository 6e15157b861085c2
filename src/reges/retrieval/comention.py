"""The co-mention prior: items mentioned in the same training dialogues predict each other.

A ReDial seeker who mentions "Get Out" and "It" is likely to be recommended "A Quiet Place": not because the
dialogue text says so, but because other dialogues that mention the first two mention the third. Counting
that is the strongest single retrieval signal we measured (tune, R@50 ~0.4 alone vs 0.14 for a frozen
encoder over the raw dialogue), and it needs no model.

Statistics, over a set of dialogues (each reduced to the SET of item ids it mentions, any role):
    pair_counts[i, j]  number of dialogues mentioning both i and j (i != j)
    item_counts[i]     number of dialogues mentioning i (stored as the diagonal of the same matrix)
Score of a candidate j for a context whose mentioned items are I (see `NORMALIZATIONS`):
    count        sum_i C_ij
    log          sum_i log(1 + C_ij)
    conditional  sum_i C_ij / n_i                     (sum of P(j | i))
    cosine       sum_i C_ij / sqrt(n_i * n_j)
    pmi          sum_i max(0, log(C_ij * D / (n_i * n_j)))
"conditional" is the default: on the ReDial `tune` split (train + lossy counts, 449 examples) it ranked best
alone (mean of R@10/R@50 over both protocols 0.270; count 0.265, log 0.267, cosine 0.226, pmi 0.152, and
damping popular candidates by n_j ** 0.25 / 0.5 / 0.75: 0.262 / 0.228 / 0.170). Weighting context items by
recency or by who mentioned them moved it by less than 0.01: not kept.

Leave one dialogue out: retrieving for a train example whose own dialogue is in the counts would let the
prior read the answer (the target co-occurs with the context items in that very dialogue). `scores(...,
exclude_dialogue_ids=...)` subtracts that dialogue's contribution exactly: 1 from C_ij for every pair of its
items and from n_i for each of its items. The dialogue's item set is kept for this (`dialogues.jsonl`).

Files (written by `save`, read by `load`), under one folder:
    comention.npz        scipy.sparse CSR (num_items, num_items) int32; diagonal = item_counts
    comention_ids.txt    row i = the item id on line i
    comention_dialogues.jsonl   {"dialogue_id", "item_ids"} per counted dialogue (for leave-one-out)
No pickles: `save_npz(..., compressed=True)` and `load_npz` with `allow_pickle=False`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from reges.errors import ConfigError, DataError
from reges.io import atomic_open, read_jsonl, write_jsonl
from reges.records import Dialogue, Turn

logger = logging.getLogger(__name__)

Normalization = Literal["count", "log", "conditional", "cosine", "pmi"]
NORMALIZATIONS: tuple[str, ...] = ("count", "log", "conditional", "cosine", "pmi")

MATRIX_FILE = "comention.npz"
IDS_FILE = "comention_ids.txt"
DIALOGUES_FILE = "comention_dialogues.jsonl"


def dialogue_item_set(dialogue: Dialogue) -> list[str]:
    """The distinct items a dialogue mentions (any role), sorted: its unit of co-occurrence."""
    return sorted({i for turn in dialogue.turns for i in turn.item_ids})


def context_item_ids(context: Sequence[Turn]) -> list[str]:
    """The distinct items mentioned in a context, in order of first mention."""
    seen: dict[str, None] = {}
    for turn in context:
        for item_id in turn.item_ids:
            seen.setdefault(item_id, None)
    return list(seen)


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"train_retriever.comention_normalization must be one of {list(NORMALIZATIONS)}, "
                          f"got {normalization!r}")


class CoMention:
    """Co-mention counts over dialogues, scoring any catalog for any context.

    Example:
        >>> cm = CoMention.fit(train_dialogues + lossy_dialogues)
        >>> cm.save("runs/x/train-retriever")
        >>> scorer = CoMention.load("runs/x/train-retriever")
        >>> scorer.scores([["1001", "1002"]], catalog_ids, "conditional").shape
        (1, 6924)
    """

    def __init__(self, item_ids: list[str], counts: sp.csr_matrix, dialogues: dict[str, list[str]]) -> None:
        if counts.shape != (len(item_ids), len(item_ids)):
            raise DataError(f"co-mention matrix of shape {counts.shape} does not match {len(item_ids)} item ids")
        if len(set(item_ids)) != len(item_ids):
            raise DataError("co-mention item ids are not unique; refit the co-mention prior (reges train-retriever)")
        self.item_ids = item_ids
        self.row = {item_id: r for r, item_id in enumerate(item_ids)}
        self.counts = counts.tocsr()  # (n, n) int32, symmetric; diagonal = item counts
        self.item_counts = np.asarray(self.counts.diagonal(), dtype=np.float64)  # (n,)
        self.dialogues = dialogues

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogues)

    @classmethod
    def fit(cls, dialogues: Iterable[Dialogue]) -> CoMention:
        """Count co-mentions over `dialogues` (each dialogue counts once per item pair, whatever the repeats).

        Dialogues mentioning no item still count in `num_dialogues` (they are part of the population PMI
        normalises by) but add no pair.

        Raises:
            DataError: two dialogues share a dialogue_id (leave-one-out could not tell them apart).
        """
        sets: dict[str, list[str]] = {}
        for d in dialogues:
            if d.dialogue_id in sets:
                raise DataError(f"dialogue_id {d.dialogue_id!r} appears twice in the co-mention dialogues; "
                                "ids must be unique across train and lossy dialogues")
            sets[d.dialogue_id] = dialogue_item_set(d)
        item_ids = sorted({i for items in sets.values() for i in items})
        row = {item_id: r for r, item_id in enumerate(item_ids)}
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        for items in sets.values():
            idx = np.array([row[i] for i in items], dtype=np.int64)
            rows.append(np.repeat(idx, len(idx)))  # every ordered pair, diagonal included (= item count)
            cols.append(np.tile(idx, len(idx)))
        n = len(item_ids)
        if rows:
            r = np.concatenate(rows)
            c = np.concatenate(cols)
        else:
            r = c = np.zeros(0, dtype=np.int64)
        counts = sp.coo_matrix((np.ones(len(r), dtype=np.int32), (r, c)), shape=(n, n)).tocsr()
        counts.sum_duplicates()
        logger.info("co-mention prior: %d dialogues, %d items, %d item pairs", len(sets), n, (counts.nnz - n) // 2)
        return cls(item_ids, counts, sets)

    def save(self, path: str | Path) -> dict[str, int]:
        """Write comention.npz, comention_ids.txt and comention_dialogues.jsonl into folder `path`.

        Returns:
            Row counts per file, for the manifest.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_open(path / MATRIX_FILE, "wb") as f:
            sp.save_npz(f, self.counts, compressed=True)
        with atomic_open(path / IDS_FILE) as f:
            f.writelines(f"{item_id}\n" for item_id in self.item_ids)
        rows = ({"dialogue_id": d, "item_ids": items} for d, items in sorted(self.dialogues.items()))
        n_dialogues = write_jsonl(path / DIALOGUES_FILE, rows)
        return {MATRIX_FILE: len(self.item_ids), IDS_FILE: len(self.item_ids), DIALOGUES_FILE: n_dialogues}

    @classmethod
    def load(cls, path: str | Path) -> CoMention:
        """Read a folder written by `save`.

        Raises:
            DataError: a file is missing or the files disagree.
        """
        path = Path(path)
        for name in (MATRIX_FILE, IDS_FILE, DIALOGUES_FILE):
            if not (path / name).is_file():
                raise DataError(f"{path / name} not found; run `reges train-retriever` with train_retriever.comention "
                                "on to fit the co-mention prior")
        counts = sp.load_npz(path / MATRIX_FILE).tocsr()  # load_npz never unpickles
        item_ids = (path / IDS_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        dialogues = {str(r["dialogue_id"]): [str(i) for i in r["item_ids"]] for r in read_jsonl(path / DIALOGUES_FILE)}
        return cls(item_ids, counts, dialogues)

    def count_columns(self, catalog_ids: Sequence[str]) -> np.ndarray:
        """(num_catalog,) the count-matrix column of each catalog item, -1 for items never counted."""
        return np.array([self.row.get(i, -1) for i in catalog_ids], dtype=np.int64)

    def scores(
        self,
        contexts: Sequence[Sequence[str]],
        catalog_ids: Sequence[str],
        normalization: Normalization,
        exclude_dialogue_ids: Sequence[str | None] | None = None,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """Co-mention scores of every catalog item for each context.

        Args:
            contexts: Per query, the item ids mentioned in its context (unknown ids are ignored).
            catalog_ids: The items to score, in the order of the returned columns (any catalog: items absent
                from the counts score 0).
            normalization: One of `NORMALIZATIONS` (see the module docstring).
            exclude_dialogue_ids: Per query, a dialogue whose contribution is subtracted (leave one dialogue
                out), or None. An id that is not among the counted dialogues subtracts nothing.
            columns: `count_columns(catalog_ids)`, when the caller scores one catalog many times (mapping a million
                ids costs more than scoring them: docs/results/scale.md).

        Returns:
            (len(contexts), len(catalog_ids)) float64; an all-zero row for a context with no known item.
        """
        _check_normalization(normalization)
        if exclude_dialogue_ids is not None and len(exclude_dialogue_ids) != len(contexts):
            raise DataError(f"{len(exclude_dialogue_ids)} exclude_dialogue_ids for {len(contexts)} contexts")
        # Column of each catalog item in the count matrix (-1: never counted).
        col = self.count_columns(catalog_ids) if columns is None else columns  # (num_catalog,)
        if len(col) != len(catalog_ids):
            raise DataError(f"{len(col)} columns for {len(catalog_ids)} catalog ids; pass count_columns(catalog_ids)")
        known = col >= 0
        out = np.zeros((len(contexts), len(catalog_ids)), dtype=np.float64)
        for q, items in enumerate(contexts):
            excluded = exclude_dialogue_ids[q] if exclude_dialogue_ids is not None else None
            s = self.row_scores(items, normalization, excluded)
            if s is not None:
                out[q, known] = s[col[known]]
        return out

    def row_scores(self, items: Sequence[str], normalization: Normalization,
                   exclude_dialogue_id: str | None = None) -> np.ndarray | None:
        """Co-mention scores of every counted item (the rows of the count matrix) for one context.

        Every catalog item outside the counts scores 0, so this vector holds all of a context's non-zero scores:
        what the fused retriever needs to score a few candidates of a huge catalog and still know the whole
        catalog's mean and spread (`fusion.FusedRetriever.search`).

        Args:
            items: The item ids mentioned in the context (unknown ids are ignored).
            normalization: One of `NORMALIZATIONS`.
            exclude_dialogue_id: A counted dialogue whose contribution is subtracted, or None.

        Returns:
            (num_counted_items,) float64 aligned with `item_ids`, or None when no context item carries evidence.
        """
        _check_normalization(normalization)
        rows = sorted({self.row[i] for i in items if i in self.row})
        if not rows:
            return None
        sub = self.counts[rows].toarray().astype(np.float64)  # (|I|, n): C_ij, diagonal entries = n_i
        n_all = self.item_counts.copy()  # (n,)
        total = float(self.num_dialogues)
        own = self.dialogues.get(exclude_dialogue_id) if exclude_dialogue_id is not None else None
        if own is not None:
            own_rows = np.array([self.row[i] for i in own], dtype=np.int64)
            in_own = np.isin(np.array(rows), own_rows)  # context items that the excluded dialogue mentions
            sub[np.ix_(in_own, own_rows)] -= 1.0
            n_all[own_rows] -= 1.0
            total -= 1.0
        n_ctx = n_all[rows]  # (|I|,) counts of the context items
        sub[np.arange(len(rows)), rows] = 0.0  # an item does not co-occur with itself
        keep = n_ctx > 0  # a context item seen only in the excluded dialogue carries no evidence
        sub, n_ctx = sub[keep], n_ctx[keep]
        if not len(n_ctx):
            return None
        n_cand = np.maximum(n_all, 1.0)  # (n,) >= 1 wherever C_ij > 0
        if normalization == "count":
            return sub.sum(0)
        if normalization == "log":
            return np.log1p(sub).sum(0)
        if normalization == "conditional":
            return (sub / n_ctx[:, None]).sum(0)
        if normalization == "cosine":
            return (sub / np.sqrt(n_ctx[:, None] * n_cand[None, :])).sum(0)
        with np.errstate(divide="ignore"):  # pmi
            pmi = np.log(sub * max(total, 1.0) / (n_ctx[:, None] * n_cand[None, :]))
        return np.where(sub > 0, np.maximum(pmi, 0.0), 0.0).sum(0)

