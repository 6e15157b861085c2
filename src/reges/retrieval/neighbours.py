"""The nearest training dialogues as a fusion feature: what recommenders suggested to seekers who wrote alike.

Why: the other features reach an item through the films the dialogue names (co-mention prior), the people it
names, or one text-to-card encoder. A request that names no film ("a sad drama", "something funny with Jim Carrey")
has only the last, and long-tail films are where the misses are (docs/results/signals.md). This is a
non-parametric route from text to items: the context is embedded with the run's encoder (the text dense_dialogue
embeds), the `m` most similar train contexts are found, and each votes for the films its recommender then
suggested, weighted by similarity:

    neighbours_j = sum over the m nearest train examples e of exp((cos(q, e) - 1) / tau) * [j is a target of e]

`m` and `tau` are chosen on the tune split by the feature alone (`train_retriever.neighbours`, the train-retriever
stage). Only train examples are neighbours, and a query never votes with its own dialogue's examples (a train
example retrieved for mining would otherwise read its own target). Measured in docs/results/neighbours_effect_*.md
(docs/results/signals.md, last section).

File written by train-retriever: `neighbours.npz` (the train contexts' embeddings, their targets' catalog
columns as a CSR list, their dialogue ids, `m` and `tau`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reges.errors import DataError
from reges.io import atomic_open

NEIGHBOURS_FILE = "neighbours.npz"
NEIGHBOUR_COUNTS: tuple[int, ...] = (20, 100, 400, 1000, 4000)  # the m grid train-retriever searches
NEIGHBOUR_TAUS: tuple[float, ...] = (0.02, 0.05, 0.2, 1.0)  # the tau grid


@dataclass(frozen=True)
class DialogueNeighbours:
    """The train contexts with their targets, and the vote's settings.

    Attributes:
        embeddings: (n, dim) float32 L2-normalised embeddings of the train contexts (a zero row: an empty context,
            similar to nothing).
        indptr: (n + 1,) CSR offsets into `indices`: example i's targets are indices[indptr[i]:indptr[i + 1]].
        indices: (nnz,) catalog columns of the targets.
        dialogue_ids: (n,) each example's dialogue ("" when it has none).
        num_items: Catalog size (the score matrices' width).
        m: Neighbours that vote.
        tau: Similarity temperature of the vote.
    """

    embeddings: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    dialogue_ids: np.ndarray
    num_items: int
    m: int = 400
    tau: float = 0.2
    _rows_of: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)  # dialogue -> its rows

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if len(self.indptr) != n + 1 or len(self.dialogue_ids) != n:
            raise DataError(f"neighbours: {n} embeddings, {len(self.indptr) - 1} target lists and "
                            f"{len(self.dialogue_ids)} dialogue ids; rebuild train-retriever")
        if self.m < 1 or self.tau <= 0:
            raise DataError(f"neighbours: m must be >= 1 and tau > 0, got m={self.m}, tau={self.tau}")
        rows: dict[str, list[int]] = {}
        for i, d in enumerate(self.dialogue_ids.tolist()):
            if d:
                rows.setdefault(d, []).append(i)
        object.__setattr__(self, "_rows_of", {d: np.array(r, dtype=np.int64) for d, r in rows.items()})

    @classmethod
    def build(cls, embeddings: np.ndarray, targets: Sequence[Sequence[int]], dialogue_ids: Sequence[str | None],
              num_items: int, m: int = 400, tau: float = 0.2) -> DialogueNeighbours:
        """From each train example's context embedding, its targets' catalog columns and its dialogue id."""
        lengths = np.array([len(t) for t in targets], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.array([j for t in targets for j in t], dtype=np.int64)
        return cls(np.asarray(embeddings, dtype=np.float32), indptr, indices,
                   np.array([d or "" for d in dialogue_ids], dtype=str), num_items, m, tau)

    def with_settings(self, m: int, tau: float) -> DialogueNeighbours:
        """The same neighbours voting with another (m, tau)."""
        return DialogueNeighbours(self.embeddings, self.indptr, self.indices, self.dialogue_ids, self.num_items, m,
                                  tau)

    def _votes(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(catalog columns, summed votes) of one query's `m` nearest examples given its (n,) similarities
        (-inf: not a neighbour)."""
        allowed = int(np.isfinite(sims).sum())
        m = min(self.m, allowed)
        if m == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        top = np.argpartition(-sims, m - 1)[:m]  # (m,) example rows
        weight = np.exp((sims[top].astype(np.float64) - 1.0) / self.tau)  # (m,)
        starts, lengths = self.indptr[top], self.indptr[top + 1] - self.indptr[top]
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        cols = self.indices[offsets]
        votes = np.bincount(cols, np.repeat(weight, lengths), minlength=self.num_items)  # (num_items,)
        nonzero = np.flatnonzero(votes)
        return nonzero, votes[nonzero]

    def _similarities(self, vectors: np.ndarray, exclude_dialogue_ids: Sequence[str | None]) -> np.ndarray:
        """(q, n) cosines, -inf at the rows of each query's own dialogue."""
        sims = np.asarray(vectors, dtype=np.float32) @ self.embeddings.T  # (q, n)
        for q, d in enumerate(exclude_dialogue_ids):
            if d and d in self._rows_of:
                sims[q, self._rows_of[d]] = -np.inf
        return sims

    def scores(self, vectors: np.ndarray, exclude_dialogue_ids: Sequence[str | None]) -> np.ndarray:
        """(q, num_items) float64 votes for each query's (dim,) context vector (a zero vector: no votes)."""
        out = np.zeros((len(vectors), self.num_items), dtype=np.float64)
        sims = self._similarities(vectors, exclude_dialogue_ids)
        for q in range(len(vectors)):
            if vectors[q].any():
                cols, votes = self._votes(sims[q])
                out[q, cols] = votes
        return out

    def row(self, vector: np.ndarray, exclude_dialogue_id: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(sorted catalog columns, votes) of the items with a vote, for one query (the candidate path)."""
        if not vector.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return self._votes(self._similarities(vector[None, :], [exclude_dialogue_id])[0])

    def save(self, stage_dir: Path) -> int:
        """Write `neighbours.npz` atomically; returns the number of train examples."""
        with atomic_open(stage_dir / NEIGHBOURS_FILE, "wb") as f:
            np.savez(f, embeddings=self.embeddings, indptr=self.indptr, indices=self.indices,
                     dialogue_ids=self.dialogue_ids, num_items=np.int64(self.num_items), m=np.int64(self.m),
                     tau=np.float64(self.tau))
        return int(self.embeddings.shape[0])

    @classmethod
    def load(cls, stage_dir: Path, num_items: int) -> DialogueNeighbours:
        """Read `neighbours.npz`.

        Raises:
            DataError: the file is missing or was written for another catalog size.
        """
        path = stage_dir / NEIGHBOURS_FILE
        if not path.is_file():
            raise DataError(f"{path} not found, but the fusion weights use the neighbours feature; rebuild "
                            "train-retriever (train_retriever.neighbours=true writes it)")
        with np.load(path, allow_pickle=False) as z:
            if int(z["num_items"]) != num_items:
                raise DataError(f"{path} was built for {int(z['num_items'])} catalog items, the index has "
                                f"{num_items}; rebuild train-retriever")
            return cls(z["embeddings"].astype(np.float32, copy=False), z["indptr"], z["indices"],
                       z["dialogue_ids"], num_items, int(z["m"]), float(z["tau"]))
