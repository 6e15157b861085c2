"""Another dataset's dialogues as co-mention evidence and encoder pairs: title matching, the counts train-retriever
adds, and the (their dialogue, our card) examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reges.config import CrossDatasetConfig, TrainRetrieverConfig
from reges.data.cross import ID_PREFIX, cross_examples, cross_title_sets, match_title_sets
from reges.errors import ConfigError, DataError
from reges.records import Dialogue, Item, Turn
from reges.retrieval.comention import CoMention
from reges.retrieval.finetune import build_pairs
from reges.retrieval.fusion import FusedRetriever, FusionSettings
from reges.titles import title_id

FIXTURES = Path(__file__).parent / "fixtures"


def _item(title: str, item_id: str | None = None) -> Item:
    return Item(item_id or title_id(title), title, title)


CATALOG = [
    _item("The Avengers (2012)"),
    _item("Frozen (2013)"),
    _item("Frozen (2010)"),
    _item("Akira (1988)"),
    _item("Twin (2001)", "t1"),  # two items with one title and year: never guessed
    _item("Twin (2001)", "t2"),
]


def test_titles_match_exactly_then_by_a_unique_year_less_key() -> None:
    sets = [
        ("a", ["Avengers (2012)", "Frozen (2013)"]),  # spelling differs, title_id does not
        ("b", ["Akira", "Frozen"]),  # no year: Akira has one item, Frozen two -> Frozen unmatched
        ("c", ["Twin (2001)", "Unknown Film (1999)"]),  # ambiguous and absent: nothing kept
    ]
    dialogues, stats = match_title_sets(sets, CATALOG)
    assert [d.dialogue_id for d in dialogues] == ["a", "b"]
    assert dialogues[0].turns[0].item_ids == sorted(["avengers-2012", "frozen-2013"])
    assert dialogues[1].turns[0].item_ids == ["akira-1988"]
    assert stats == {"dialogues": 3, "dialogues_kept": 2, "titles": 6, "matched_exact": 2, "matched_year_less": 1,
                     "unmatched": 3}


def test_matched_dialogues_count_as_co_mentions() -> None:
    dialogues, _ = match_title_sets([(f"x{i}", ["Avengers (2012)", "Akira (1988)"]) for i in range(3)], CATALOG)
    cm = CoMention.fit(dialogues)
    scores = cm.scores([["akira-1988"]], ["avengers-2012", "frozen-2013"], "count")
    assert scores[0].tolist() == [3.0, 0.0]


def test_redial_files_become_title_sets() -> None:
    cfg = CrossDatasetConfig(
        format="redial",
        files=[str(FIXTURES / "redial" / "kgsf_valid_data.jsonl")],
        movie_names_file=str(FIXTURES / "redial" / "movies_with_mentions.csv"),
    )
    sets = cross_title_sets(cfg)
    assert sets and all(i.startswith(ID_PREFIX) and titles == sorted(set(titles)) for i, titles in sets)
    assert all("@" not in t for _, titles in sets for t in titles)  # titles, not @ids


def test_bad_cross_dataset_settings_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cross_dataset.files"):
        CrossDatasetConfig(format="inspired")
    with pytest.raises(ConfigError, match="movie_names_file"):
        CrossDatasetConfig(format="redial", files=["x.jsonl"])
    cfg = CrossDatasetConfig(format="inspired", files=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(DataError, match="missing.jsonl"):
        cross_title_sets(cfg)


def test_popularity_counts_only_this_datasets_dialogues() -> None:
    """Cross-dataset dialogues feed the co-mention prior, not popularity (another population's taste)."""
    own = [Dialogue(f"d{i}", [Turn("user", "", ["akira-1988"])]) for i in range(2)]
    cross, _ = match_title_sets([(f"{ID_PREFIX}{i}", ["Avengers (2012)", "Akira (1988)"]) for i in range(5)],
                                CATALOG)
    counts = CoMention.fit(own + cross)
    ids = ["akira-1988", "avengers-2012", "frozen-2013"]
    retriever = FusedRetriever(None, None, ids, counts, {"no_query": {"popularity": 1.0}}, FusionSettings())
    assert retriever.popularity([None])[0].tolist() == pytest.approx([np.log1p(2), 0.0, 0.0])
    assert retriever.popularity(["d0"])[0].tolist() == pytest.approx([np.log1p(1), 0.0, 0.0])  # leave-one-out
    assert counts.scores([["akira-1988"]], ids, "count")[0].tolist() == [0.0, 5.0, 0.0]


def _custom_file(tmp_path: Path) -> Path:
    """Two dialogues of another dataset keyed by "Title (Year)" (custom format: an id stands for its title)."""
    rows = [
        {"dialogue_id": "r1", "turns": [
            {"role": "user", "content": "I loved Akira, any other anime?", "item_ids": ["Akira (1988)"]},
            {"role": "assistant", "content": "Try Ghost in the Shell (1995).",
             "item_ids": ["Ghost in the Shell (1995)"]},
            {"role": "user", "content": "Seen it. Something with superheroes?", "item_ids": []},
            {"role": "assistant", "content": "The Avengers (2012) or Akira again!",
             "item_ids": ["Avengers (2012)", "Akira (1988)"]}]},
        {"dialogue_id": "r2", "turns": [
            {"role": "user", "content": "A film about twins?", "item_ids": []},
            {"role": "assistant", "content": "Twin (2001).", "item_ids": ["Twin (2001)"]}]},
    ]
    path = tmp_path / "other.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cross_examples_keep_their_text_and_target_our_items(tmp_path: Path) -> None:
    cfg = CrossDatasetConfig(format="custom", files=[str(_custom_file(tmp_path))])
    examples, stats = cross_examples(cfg, CATALOG)
    # r1's first recommendation (Ghost in the Shell) is not in the catalog, r2's (Twin) is ambiguous: both dropped
    assert [ex.example_id for ex in examples] == [f"{ID_PREFIX}r1_3"]
    ex = examples[0]
    assert ex.dialogue_id == f"{ID_PREFIX}r1"
    assert ex.target_item_ids == ["avengers-2012", "akira-1988"]
    assert ex.target_mentioned == [False, True]
    assert [t.content for t in ex.context] == ["I loved Akira, any other anime?", "Try Ghost in the Shell (1995).",
                                               "Seen it. Something with superheroes?"]
    assert [t.item_ids for t in ex.context] == [["akira-1988"], [], []]  # unmatched mentions stay in the text only
    assert stats == {"examples": 3, "examples_kept": 1, "targets": 4, "targets_matched": 2,
                     "titles": 4, "matched_exact": 2, "matched_year_less": 0, "unmatched": 2}
    # as encoder pairs: one per matched target, marked as another dataset's, context items never negatives
    pairs = build_pairs(examples, {it.item_id: it for it in CATALOG}, "full", 1000, source="cross")
    assert [(p.positive_id, p.source) for p in pairs] == [("avengers-2012", "cross"), ("akira-1988", "cross")]
    assert all("Seen it." in p.anchor and "akira-1988" in p.excluded_ids for p in pairs)


def test_cross_pairs_need_cross_dataset_and_finetuning(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cross_pairs=true.*cross_dataset is null"):
        TrainRetrieverConfig(cross_pairs=True)
    other = CrossDatasetConfig(format="custom", files=[str(_custom_file(tmp_path))])
    with pytest.raises(ConfigError, match="finetune is false"):
        TrainRetrieverConfig(cross_pairs=True, cross_dataset=other, finetune=False)
    assert TrainRetrieverConfig(cross_pairs=True, cross_dataset=other).cross_pairs
