"""Test doubles for the Item Expert: a small catalog, examples, a run dir with data/catalog/retrieve, a canned LLM."""

from __future__ import annotations

from pathlib import Path

from reges.io import RunDir, now_iso, write_jsonl, write_trec
from reges.llm.base import Messages
from reges.records import Hit, Item, RecExample, Turn


def _item(item_id: str, title: str, year: int | None, genre: list[str]) -> Item:
    return Item(item_id, title, f"{title}. Genre: {', '.join(genre)}.", year, {"genre": genre, "plot": "A story."})


ITEMS = [
    _item("10", "Alien (1979)", 1979, ["horror", "sci-fi"]),
    _item("11", "Up (2009)", 2009, ["animation", "family"]),
    _item("12", "Heat (1995)", 1995, ["crime", "drama"]),
    _item("13", "Jaws (1975)", 1975, ["horror", "thriller"]),
    _item("14", "Titanic (1997)", 1997, ["drama", "romance"]),
    _item("15", "The Matrix (1999)", 1999, ["action", "sci-fi"]),
    _item("16", "Frozen (2010)", 2010, ["thriller"]),
    _item("17", "Frozen (2010)", 2010, ["horror"]),  # ReDial's catalog has such twins
]
BY_ID = {it.item_id: it for it in ITEMS}

# e1: two targets retrieved (ranks 3 and 2: the rank-2 one is the training target); e2: target not retrieved;
# e3: target missing from the catalog (skipped); e4: a mentioned and a novel target, both retrieved.
TRAIN = [
    RecExample("e1", "d1", [Turn("user", "I like scary movies", [])], ["13", "10"], [False, False]),
    RecExample("e2", "d1", [Turn("user", "Something for the family?")], ["11"], [False]),
    RecExample("e3", "d2", [Turn("user", "Anything")], ["999"], [False]),
    RecExample(
        "e4",
        "d3",
        [Turn("user", "I loved The Matrix (1999)", ["15"]), Turn("assistant", "Great!")],
        ["15", "12"],
        [True, False],
    ),
]
TRAIN_RUN = {
    "e1": ["14", "10", "13", "12"],
    "e2": ["12", "13", "14", "15"],
    "e3": ["10", "11", "12", "13"],
    "e4": ["15", "12", "16", "17"],
}
DEV = [
    RecExample("v1", "dv1", [Turn("user", "A shark movie at the beach please")], ["13"], [False]),
    RecExample("v2", "dv1", [Turn("user", "A shark movie"), Turn("assistant", "Jaws?")], ["10"], [False]),
    RecExample("v3", "dv2", [Turn("user", "I loved Up (2009)", ["11"])], ["11", "14"], [True, False]),
]
DEV_RUN = {
    "v1": ["13", "10", "16", "17"],
    "v2": ["11", "12", "13", "14"],
    "v3": ["14", "11", "15", "10"],
}


def _run(ids: dict[str, list[str]]) -> dict[str, list[Hit]]:
    return {q: [Hit(i, 1.0 - 0.1 * r) for r, i in enumerate(items)] for q, items in ids.items()}


def make_run_dir(path: Path, top_k: int = 4, items: list[Item] = ITEMS, dev: list[RecExample] = DEV) -> RunDir:
    """A run dir with complete data (dev: `dev`), catalog (`items`) and retrieve stages (splits train and dev)."""
    rd = RunDir(path)
    t0 = now_iso()
    out = rd.begin("data", overwrite=False)
    write_jsonl(out / "train.jsonl", TRAIN)
    write_jsonl(out / "dev.jsonl", dev)
    write_jsonl(out / "train_dialogues.jsonl", [])
    rd.finish("data", config={}, inputs={}, outputs={"train.jsonl": 4, "dev.jsonl": len(dev)}, seed=0, started=t0)
    out = rd.begin("catalog", overwrite=False)
    write_jsonl(out / "items.jsonl", items)
    rd.finish("catalog", config={}, inputs={}, outputs={"items.jsonl": len(items)}, seed=0, started=t0)
    out = rd.begin("retrieve", overwrite=False)
    write_trec(out / "train.trec", _run(TRAIN_RUN), "test")
    write_trec(out / "dev.trec", _run(DEV_RUN), "test")
    rd.finish("retrieve", config={"top_k": top_k}, inputs={}, outputs={}, seed=0, started=t0)
    return rd


class CannedLLM:
    """An `LLM` that answers `generate` with canned texts, `choose` with the last candidate, `rank` by length."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0

    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        out = self.answers[self.calls : self.calls + len(prompts)]
        self.calls += len(prompts)
        return out

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        return [c[-1] for c in candidates]

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        return [-float(len(c)) for c in candidates]
