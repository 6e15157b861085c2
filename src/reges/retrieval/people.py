"""People named in the dialogue: the films of the directors and stars a seeker (or recommender) names.

Why: "something funny with Jim Carrey", "I'm a big Tom Hanks fan", "Octavia Spencer is in it": a person's name
is the most precise thing a dialogue can say short of a title, and the dialogue encoder dilutes it in a whole
conversation. On INSPIRED dev 92 of 232 dialogues with a fresh target name a director or star of the catalog, and
in 24 of them a target has that person on its card, often far down the fused ranking.

The `people` fusion feature: for each catalog item, the sum over the people the context names (any turn, either
role) that its card lists as director or star, each weighted by log(1 + num_items / films of that person), so
naming a prolific star moves each of their films less. Names are matched whole (two words or more, after
`name_tokens`): "Jim Carrey" matches, "Carrey" alone does not, since a lone surname or first name is too often
another word or another person. Items no named person appears in score 0.

Files (written by train-retriever when `train_retriever.people`): `people.json`, {"names": {name: [item ids]},
"fields": [...]}, read back by `FusedRetriever.load`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from reges.errors import DataError
from reges.io import read_json, write_json
from reges.records import Item, Turn

PEOPLE_FILE = "people.json"
FIELDS: tuple[str, ...] = ("director", "star")
MAX_NAME_TOKENS = 5
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def name_tokens(text: str) -> tuple[str, ...]:
    """Lower-cased alphanumeric tokens: how names and dialogue text are compared ("J.K. Simmons" -> j, k, simmons)."""
    return tuple(t for t in _NON_ALNUM.split(text.lower()) if t)


class PeopleIndex:
    """The catalog's directors and stars, by name, with the items each appears on.

    Args:
        names: name -> item ids of the films whose card lists that person.
        item_ids: The catalog ids (the columns of `scores`).
        fields: The card fields the names came from (for the record).
    """

    def __init__(self, names: dict[str, list[str]], item_ids: Sequence[str],
                 fields: Sequence[str] = FIELDS) -> None:
        self.names = names
        self.fields = list(fields)
        self.item_ids = list(item_ids)
        column = {item_id: j for j, item_id in enumerate(self.item_ids)}
        n = max(len(self.item_ids), 1)
        # Spellings with the same tokens ("Robert Downey Jr." / "Robert Downey Jr") are one person: their films
        # are pooled under the one key the dialogue's text maps to, and the weight counts the pooled films.
        pooled: dict[tuple[str, ...], set[int]] = {}
        for name, ids in names.items():
            key = name_tokens(name)
            if 2 <= len(key) <= MAX_NAME_TOKENS:
                pooled.setdefault(key, set()).update(column[i] for i in ids if i in column)
        self._entries: dict[tuple[str, ...], tuple[np.ndarray, float]] = {
            key: (np.array(sorted(cols), dtype=np.int64), math.log1p(n / len(cols)))
            for key, cols in pooled.items() if cols
        }

    @classmethod
    def from_items(cls, items: Iterable[Item], item_ids: Sequence[str] | None = None,
                   fields: Sequence[str] = FIELDS) -> PeopleIndex:
        """Every person of two or more name tokens in the cards' `fields`; columns in `item_ids` order (default:
        the items')."""
        items = list(items)
        names: dict[str, set[str]] = {}
        for it in items:
            for field in fields:
                value = it.meta.get(field) or []
                for person in [value] if isinstance(value, str) else value:
                    if isinstance(person, str) and len(name_tokens(person)) >= 2:
                        names.setdefault(person, set()).add(it.item_id)
        ids = list(item_ids) if item_ids is not None else [it.item_id for it in items]
        return cls({k: sorted(v) for k, v in sorted(names.items())}, ids, fields)

    def save(self, folder: str | Path) -> int:
        """Write `people.json` into `folder`; returns the number of names."""
        write_json(Path(folder) / PEOPLE_FILE, {"fields": self.fields, "names": self.names})
        return len(self.names)

    @classmethod
    def load(cls, folder: str | Path, item_ids: Sequence[str]) -> PeopleIndex:
        """Read `people.json` from `folder` for a catalog of `item_ids`.

        Raises:
            DataError: The file is missing.
        """
        path = Path(folder) / PEOPLE_FILE
        if not path.is_file():
            raise DataError(f"{path} not found; the fusion weights use the people feature: redo `reges "
                            "train-retriever` with train_retriever.people=true")
        spec = read_json(path)
        return cls(spec["names"], item_ids, spec["fields"])

    def named(self, context: Sequence[Turn]) -> list[tuple[str, ...]]:
        """The people the context names, as token tuples (longest match first at each position, no overlaps)."""
        found: list[tuple[str, ...]] = []
        for turn in context:
            tokens = name_tokens(turn.content)
            i = 0
            while i < len(tokens):
                for size in range(min(MAX_NAME_TOKENS, len(tokens) - i), 1, -1):
                    key = tuple(tokens[i:i + size])
                    if key in self._entries:
                        if key not in found:
                            found.append(key)
                        i += size - 1
                        break
                i += 1
        return found

    def row(self, context: Sequence[Turn]) -> tuple[np.ndarray, np.ndarray]:
        """(sorted catalog columns with a non-zero score, their scores) for one context."""
        scores: dict[int, float] = {}
        for key in self.named(context):
            cols, weight = self._entries[key]
            for c in cols.tolist():
                scores[c] = scores.get(c, 0.0) + weight
        cols = np.array(sorted(scores), dtype=np.int64)
        return cols, np.array([scores[c] for c in cols.tolist()], dtype=np.float64)

    def scores(self, contexts: Sequence[Sequence[Turn]]) -> np.ndarray:
        """(num_contexts, num_items) the people feature."""
        out = np.zeros((len(contexts), len(self.item_ids)), dtype=np.float64)
        for q, context in enumerate(contexts):
            cols, values = self.row(context)
            out[q, cols] = values
        return out
