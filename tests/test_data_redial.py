"""ReDial loader on real fixture dialogues (expectations checked by hand against the raw lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reges.data.examples import build_examples
from reges.data.redial import load_redial, read_movie_names
from reges.errors import DataError


@pytest.fixture(scope="module")
def names(fixtures_dir: Path) -> dict[str, str]:
    return read_movie_names(fixtures_dir / "redial" / "movies_with_mentions.csv")


@pytest.fixture(scope="module")
def kgsf(fixtures_dir: Path, names: dict[str, str]):
    return load_redial(fixtures_dir / "redial" / "kgsf_valid_data.jsonl", names)


@pytest.fixture(scope="module")
def ievalm(fixtures_dir: Path, names: dict[str, str]):
    return load_redial(fixtures_dir / "redial" / "ievalm_valid_data.jsonl", names)


def _by_id(f, dialogue_id):
    return next(d for d in f.dialogues if d.dialogue_id == dialogue_id)


def _lines(fixtures_dir: Path, name: str) -> list[str]:
    return (fixtures_dir / "redial" / name).read_text(encoding="utf-8").splitlines()


def test_movie_names_normalised(names):
    assert len(names) == 41
    assert names["142710"] == "Cosmos (2015)"  # the CSV writes "Cosmos  (2015)"
    assert names["115908"] == "50 First Dates (2004)"


def test_variants_detected(kgsf, ievalm):
    assert kgsf.variant == "redial-original"
    assert ievalm.variant == "redial-ievalm"
    assert [d.dialogue_id for d in kgsf.dialogues] == ["6712", "19020", "16108", "16494", "1698"]
    # 16494 and 1698 have `[]` instead of `{}` for both *Questions; 12153 for respondentQuestions.
    assert [d.dialogue_id for d in ievalm.dialogues] == ["16162", "1382", "12327", "12153", "16108"]


def test_consecutive_messages_merged_and_roles(kgsf, fixtures_dir):
    raw = json.loads(_lines(fixtures_dir, "kgsf_valid_data.jsonl")[0])
    d = _by_id(kgsf, "6712")
    assert len(raw["messages"]) == 25
    assert len(d.turns) == 14
    # The initiator (368) says "Hello" first: the seeker is the user.
    assert raw["initiatorWorkerId"] == 368 and raw["messages"][0]["senderWorkerId"] == 368
    assert [t.role for t in d.turns] == ["user", "assistant"] * 7
    assert d.turns[2].content == "Im looking for a great documentary do you have any suggestions"
    assert d.turns[7].content == ("The Queen of Versailles (2012) was pretty good to, but vietnam war series on PBS "
                                  "was the best I have seen lately")
    assert d.turns[7].item_ids == ["89034"]


def test_mentions_resolved_to_normalised_titles(kgsf, ievalm):
    d = _by_id(kgsf, "6712")
    assert d.turns[10].item_ids == ["142710"]
    assert "I loved the documentary Cosmos (2015) It was" in d.turns[10].content  # movieMentions: "Cosmos  (2015)"
    assert kgsf.titles["142710"] == "Cosmos (2015)"
    for f in (kgsf, ievalm):
        assert not any("@" in t.content for d in f.dialogues for t in d.turns)


def test_id_missing_from_movie_mentions_comes_from_csv(ievalm):
    d = _by_id(ievalm, "1382")  # its movieMentions lacks 115908 and has a null title for 50
    assert d.turns[3].content == "I really liked 50 First Dates (2004)"
    assert d.turns[3].item_ids == ["115908"]


def test_shared_dialogue_parses_identically_in_both_variants(kgsf, ievalm):
    a, b = _by_id(kgsf, "16108"), _by_id(ievalm, "16108")
    assert a == b
    assert a.turns[0].content == "hi there what type of movies do u like>"  # original writes "&gt;"


def test_examples_targets_and_mentioned(kgsf, ievalm):
    ex = build_examples(_by_id(kgsf, "6712"), kgsf.titles)
    assert [e.example_id for e in ex] == ["6712_3", "6712_5", "6712_7", "6712_11"]
    assert [e.target_item_ids for e in ex] == [["191911"], ["199451"], ["89034"], ["204883"]]
    assert ex[0].target_titles == ["Man on Wire (2008)"]
    assert len(ex[1].context) == 5 and ex[1].context[-1].role == "user"

    ex = build_examples(_by_id(ievalm, "12153"), ievalm.titles)
    # Scarface and Pulp Fiction were named by the user first; Goodfellas and Dog Day Afternoon are new.
    assert [(e.example_id, e.target_item_ids, e.target_mentioned) for e in ex] == [
        ("12153_2", ["196336", "143198"], [True, False]),
        ("12153_4", ["91332", "178278"], [True, False]),
    ]
    assert ex[1].novel_target_ids() == ["178278"]


def test_recommender_opening_gives_empty_context_example(kgsf):
    ex = build_examples(_by_id(kgsf, "19020"), kgsf.titles)
    assert ex[0].example_id == "19020_0"
    assert ex[0].context == []
    assert ex[0].target_titles == ["Green Lantern (2011)"]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "data.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_unknown_id_names_file_line_and_fix(fixtures_dir, names, tmp_path):
    p = _write(tmp_path, _lines(fixtures_dir, "ievalm_valid_data.jsonl")[:2])
    with pytest.raises(DataError, match=r"data\.jsonl:2 .*@115908.*data\.movie_names_file"):
        load_redial(p, {})
    without = {k: v for k, v in names.items() if k != "115908"}
    with pytest.raises(DataError, match=r"@115908.*add it to movies_with_mentions\.csv"):
        load_redial(p, without)


def test_malformed_line(fixtures_dir, names, tmp_path):
    p = _write(tmp_path, [_lines(fixtures_dir, "kgsf_valid_data.jsonl")[0], '{"movieMentions": '])
    with pytest.raises(DataError, match=r"data\.jsonl:2: malformed JSON"):
        load_redial(p, names)


def test_missing_file(tmp_path, names):
    with pytest.raises(DataError, match="not found"):
        load_redial(tmp_path / "nope.jsonl", names)
    with pytest.raises(DataError, match="data.movie_names_file"):
        read_movie_names(tmp_path / "nope.csv")


def test_empty_dialogue(fixtures_dir, names, tmp_path):
    raw = json.loads(_lines(fixtures_dir, "kgsf_valid_data.jsonl")[1])
    raw["messages"] = []
    with pytest.raises(DataError, match=r"data\.jsonl:1 \(conversationId 19020\): dialogue has no messages"):
        load_redial(_write(tmp_path, [json.dumps(raw)]), names)


def test_unknown_sender(fixtures_dir, names, tmp_path):
    raw = json.loads(_lines(fixtures_dir, "kgsf_valid_data.jsonl")[1])
    raw["messages"][1]["senderWorkerId"] = 999999
    with pytest.raises(DataError, match="999999 is neither the initiator"):
        load_redial(_write(tmp_path, [json.dumps(raw)]), names)


def test_mixed_variants_in_one_file(fixtures_dir, names, tmp_path):
    lines = [_lines(fixtures_dir, "kgsf_valid_data.jsonl")[0], _lines(fixtures_dir, "ievalm_valid_data.jsonl")[0]]
    with pytest.raises(DataError, match=r"data\.jsonl:2: .*redial-ievalm.*redial-original"):
        load_redial(_write(tmp_path, lines), names)


def test_not_a_redial_file(tmp_path, names):
    with pytest.raises(DataError, match="lacks"):
        load_redial(_write(tmp_path, ['{"dialogue_id": "x", "turns": []}']), names)


def test_bad_names_header(tmp_path):
    p = tmp_path / "names.csv"
    p.write_text("id,title\n1,X\n", encoding="utf-8")
    with pytest.raises(DataError, match="movieId and movieName"):
        read_movie_names(p)
