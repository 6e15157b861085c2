"""INSPIRED loaders (original TSV and UniCRS jsonl) on real fixture dialogues, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.data.examples import build_examples
from reges.data.inspired import load_inspired, load_inspired_tsv, load_inspired_unicrs
from reges.errors import DataError


@pytest.fixture(scope="module")
def tsv(fixtures_dir: Path):
    return load_inspired(fixtures_dir / "inspired" / "dev.tsv")


@pytest.fixture(scope="module")
def unicrs(fixtures_dir: Path):
    return load_inspired(fixtures_dir / "inspired" / "train_data_dbpedia.jsonl")


def _by_id(f, dialogue_id):
    return next(d for d in f.dialogues if d.dialogue_id == dialogue_id)


def test_tsv_dialogues_in_file_order(tsv):
    assert tsv.variant == "inspired-tsv"
    assert [d.dialogue_id for d in tsv.dialogues] == [
        "20191202-103716_425_live.pkl", "20191202-032309_51_live.pkl", "20191126-112828_788_live.pkl",
        "20200220-115345_593_live.pkl", "20191202-105103_525_live.pkl",
    ]


def test_tsv_rows_merged_and_roles(tsv):
    d = _by_id(tsv, "20191202-103716_425_live.pkl")
    assert len(d.turns) == 20  # from 25 rows
    assert d.turns[0].role == "assistant"  # RECOMMENDER opens
    assert d.turns[1].role == "user"
    # Rows 6 and 7 are both SEEKER.
    assert d.turns[5].content == "A Clockwork Orange, I think. Can you recommend a movie like that?"
    assert d.turns[12].content == "Full Metal Jacket"
    assert d.turns[12].item_ids == ["fullmetaljacket-1987"]  # title_id: compact matching key + year
    assert tsv.titles["fullmetaljacket-1987"] == "Full Metal Jacket (1987)"


def test_tsv_text_cleanup_and_multi_movie_cells(tsv):
    d = _by_id(tsv, "20191126-112828_788_live.pkl")
    assert d.turns[19].content.startswith('I will watch the trailer and I do "Accept" your recommendation')
    assert d.turns[19].item_ids == ["fordvsferrari-2019", "accept-2016"]  # "Ford v Ferrari (2019); Accept (2016)"
    d = _by_id(tsv, "20200220-115345_593_live.pkl")
    assert "but I think Ill watch the Joker first." in d.turns[17].content  # U+FFFD dropped
    assert d.turns[17].item_ids == ["joker-2019", "birdsofprey-1973"]
    d = _by_id(tsv, "20191202-105103_525_live.pkl")
    assert '"Get Out" was a great watch' in d.turns[6].content  # a bare quote survives QUOTE_NONE parsing


def test_tsv_examples(tsv):
    ex = build_examples(_by_id(tsv, "20191202-032309_51_live.pkl"), tsv.titles)
    assert [(e.example_id, e.target_item_ids, e.target_mentioned) for e in ex] == [
        ("20191202-032309_51_live.pkl_8", ["pokemon-1999"], [False]),
        ("20191202-032309_51_live.pkl_10", ["pokemon-1999"], [True]),
        ("20191202-032309_51_live.pkl_12", ["despicableme2-2013"], [False]),
    ]
    ex = build_examples(_by_id(tsv, "20200220-115345_593_live.pkl"), tsv.titles)
    assert ex[0].example_id == "20200220-115345_593_live.pkl_0" and ex[0].context == []


def test_unicrs_ids_turns_and_examples(unicrs):
    assert unicrs.variant == "inspired-unicrs"
    assert [d.dialogue_id for d in unicrs.dialogues] == [f"train-00000{i}" for i in range(1, 6)]
    d = unicrs.dialogues[0]
    assert len(d.turns) == 22
    assert d.turns[0].role == "assistant" and d.turns[1].role == "user"
    assert d.turns[2].item_ids == ["knivesout-2019"]
    assert d.turns[7].item_ids == ["iammichael-2015"]  # the UniCRS linker's error, kept as published
    ex = build_examples(d, unicrs.titles)
    assert [e.example_id for e in ex] == [f"train-000001_{i}" for i in (2, 8, 10, 16, 20)]
    assert ex[-1].target_item_ids == ["knivesout-2019", "given-2017", "action-1980"]
    assert ex[-1].target_mentioned == [True, False, False]
    assert ex[-1].target_titles == ["Knives Out (2019)", "Given (2017)", "Action (1980)"]
    assert build_examples(unicrs.dialogues[2], unicrs.titles) == []  # no recommender mention


def test_spellings_of_one_film_share_an_id(tmp_path):
    """INSPIRED writes one film several ways; title_id gives them one id, so either spelling hits the target."""
    dialogue = [
        {"role": "SEEKER", "text": "I loved The Avengers and Frozen II.", "movie": ["The Avengers (2012)",
                                                                                    "Frozen II (2019)"]},
        {"role": "RECOMMENDER", "text": "Then Avengers again, or Frozen 2!", "movie": ["Avengers (2012)",
                                                                                       "Frozen 2 (2019)"]},
        {"role": "SEEKER", "text": "And Spiderman?", "movie": ["Spiderman (2002)"]},
        {"role": "RECOMMENDER", "text": "Spider-Man, yes.", "movie": ["Spider-Man (2002)"]},
    ]
    f = load_inspired_unicrs(_write(tmp_path, json.dumps(dialogue) + "\n", "train_x.jsonl"))
    turns = f.dialogues[0].turns
    assert turns[0].item_ids == turns[1].item_ids == ["avengers-2012", "frozen2-2019"]
    assert turns[2].item_ids == turns[3].item_ids == ["spiderman-2002"]
    assert f.titles == {"avengers-2012": "The Avengers (2012)", "frozen2-2019": "Frozen II (2019)",
                        "spiderman-2002": "Spiderman (2002)"}  # the first spelling seen names the item
    ex = build_examples(f.dialogues[0], f.titles)
    assert [e.target_mentioned for e in ex] == [[True, True], [True]]  # the same films, already mentioned


def test_unicrs_id_prefix(fixtures_dir):
    f = load_inspired_unicrs(fixtures_dir / "inspired" / "train_data_dbpedia.jsonl", id_prefix="x")
    assert f.dialogues[0].dialogue_id == "x-000001"


def _write(tmp_path: Path, text: str, name: str = "f.tsv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _tsv_lines(fixtures_dir: Path) -> list[str]:
    return (fixtures_dir / "inspired" / "dev.tsv").read_text(encoding="utf-8").splitlines()


def test_tsv_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"f\.tsv:1: the header lacks columns \['movies'\]"):
        load_inspired_tsv(_write(tmp_path, "dialog_id\tspeaker\ttext\n1\tSEEKER\thi\n"))


def test_tsv_wrong_field_count(fixtures_dir, tmp_path):
    lines = _tsv_lines(fixtures_dir)[:4]
    lines[3] = lines[3].rsplit("\t", 1)[0]
    with pytest.raises(DataError, match=r"f\.tsv:4: expected 19 tab-separated fields, got 18"):
        load_inspired_tsv(_write(tmp_path, "\n".join(lines) + "\n"))


def test_tsv_unknown_speaker(fixtures_dir, tmp_path):
    lines = _tsv_lines(fixtures_dir)[:3]
    lines[2] = lines[2].replace("\tSEEKER\t", "\tBOT\t", 1)
    with pytest.raises(DataError, match=r"f\.tsv:3: speaker 'BOT'"):
        load_inspired_tsv(_write(tmp_path, "\n".join(lines) + "\n"))


def test_tsv_dialogue_split_in_two_places(fixtures_dir, tmp_path):
    lines = _tsv_lines(fixtures_dir)
    other = next(i for i, line in enumerate(lines) if line.startswith("20191202-032309_51"))
    with pytest.raises(DataError, match="not contiguous"):
        load_inspired_tsv(_write(tmp_path, "\n".join(lines[:3] + [lines[other]] + lines[3:5]) + "\n"))


def test_unicrs_bad_lines(tmp_path):
    with pytest.raises(DataError, match=r"x\.jsonl:2: dialogue has no utterances"):
        load_inspired_unicrs(_write(tmp_path, '[{"role": "SEEKER", "text": "hi", "movie": []}]\n[]\n', "x.jsonl"))
    with pytest.raises(DataError, match=r"x\.jsonl:1: malformed JSON"):
        load_inspired_unicrs(_write(tmp_path, "[{\n", "x.jsonl"))
    with pytest.raises(DataError, match=r"x\.jsonl:1: each utterance needs role, text and movie"):
        load_inspired_unicrs(_write(tmp_path, json.dumps([{"role": "SEEKER", "text": "hi"}]) + "\n", "x.jsonl"))
    with pytest.raises(DataError, match="speaker 'HUMAN'"):
        load_inspired_unicrs(_write(tmp_path, json.dumps([{"role": "HUMAN", "text": "", "movie": []}]), "x.jsonl"))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="INSPIRED file not found"):
        load_inspired(tmp_path / "nope.tsv")
