"""Lossy ReDial file: reading the zip, matching entries to known dialogues, exclusion, the mention sets kept.

Fixtures (tests/fixtures/lossy/README.md): 17 real entries of the lossy file, the true-order copies of 14 of them
(12 KGSF, 2 iEvaLM) and the movie names they need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from pathlib import Path

import pytest

from reges.data.examples import build_examples
from reges.data.lossy import (
    FIRST_SPEAKER_ROLE,
    MEMBER,
    MISSING_TITLE,
    TitleResolver,
    context_agreement,
    interleave,
    interleaved_dialogue,
    interleaved_dialogues,
    load_lossy,
    lossy_dialogues,
    lossy_examples,
    match_dialogues,
    order_agreement,
    seeker_turn,
    two_turn_dialogue,
)
from reges.data.redial import load_redial
from reges.errors import DataError
from reges.records import ROLES, Dialogue, Turn

# Sample positions of the entries that are in no known-order fixture file (see the fixture README).
UNKNOWN_POSITIONS = (1, 2, 4)


@pytest.fixture(scope="module")
def lossy_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lossy"


@pytest.fixture(scope="module")
def sample(lossy_dir: Path) -> list[dict]:
    return json.loads((lossy_dir / "precessed_sample.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def names(lossy_dir: Path) -> dict[str, str]:
    return json.loads((lossy_dir / "movie_names.json").read_text(encoding="utf-8"))


def _zip(path: Path, entries: list[dict]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(MEMBER, json.dumps(entries, ensure_ascii=False))
    return path


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory: pytest.TempPathFactory, sample: list[dict]) -> Path:
    return _zip(tmp_path_factory.mktemp("lossy") / "precessed.json.zip", sample)


@pytest.fixture(scope="module")
def kgsf(lossy_dir: Path, names: dict[str, str]) -> list[Dialogue]:
    return load_redial(lossy_dir / "kgsf_valid_sample.jsonl", names).dialogues


@pytest.fixture(scope="module")
def ievalm(lossy_dir: Path, names: dict[str, str]) -> list[Dialogue]:
    return load_redial(lossy_dir / "ievalm_valid_sample.jsonl", names).dialogues


def _spaced(d: Dialogue) -> Dialogue:
    """The same dialogue with its whitespace changed, which matching ignores."""
    return Dialogue(d.dialogue_id, [Turn(t.role, "  " + t.content.replace(" ", "  "), t.item_ids) for t in d.turns])


def _mention_sets(dialogues: list[Dialogue]) -> dict[str, list[str]]:
    return {d.dialogue_id: sorted({i for t in d.turns for i in t.item_ids}) for d in dialogues}


# ---------------------------------------------------------------------------------------------------------------
# Reading


def test_load_lossy_reads_the_zip(zip_path: Path, sample: list[dict]) -> None:
    entries = load_lossy(zip_path)
    assert len(entries) == 17
    assert entries == sample
    assert entries[1]["questions"] == ["Hello", "What genre are you into"]
    assert entries[4]["answers"] == []


def test_load_lossy_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_lossy(tmp_path / "missing.zip")
    (tmp_path / "plain.zip").write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="not a zip"):
        load_lossy(tmp_path / "plain.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("other.json", "[]")
    with pytest.raises(DataError, match="no member 'precessed.json'"):
        load_lossy(tmp_path / "other.zip")
    with zipfile.ZipFile(tmp_path / "shape.zip", "w") as z:
        z.writestr(MEMBER, json.dumps([{"questions": ["hi"], "answers": []}]))
    with pytest.raises(DataError, match=r"\[0\]: expected \{context, questions, answers\}"):
        load_lossy(tmp_path / "shape.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr(MEMBER, json.dumps([{"context": "", "questions": [], "answers": ["hi"]}]))
    with pytest.raises(DataError, match="no questions"):
        load_lossy(tmp_path / "empty.zip")


# ---------------------------------------------------------------------------------------------------------------
# Matching


def test_every_known_fixture_dialogue_matches_its_entry_exactly(sample: list[dict], names: dict[str, str],
                                                                 kgsf: list[Dialogue], ievalm: list[Dialogue]) -> None:
    matched, unmatched = match_dialogues(sample, kgsf + ievalm, names)
    assert unmatched == 0
    assert len(matched) == 14
    assert set(range(17)) - set(matched) == set(UNKNOWN_POSITIONS)
    assert all(m.exact for m in matched.values())


def test_fuzzy_match_survives_small_edits(sample: list[dict], names: dict[str, str], kgsf: list[Dialogue]) -> None:
    d = kgsf[0]
    # One typo per turn: letters differ, so only the fuzzy rule can match it.
    edited = Dialogue(d.dialogue_id, [Turn(t.role, t.content.replace("e", "a", 1), t.item_ids) for t in d.turns])
    exact, _ = match_dialogues(sample, [d], names)
    fuzzy, unmatched = match_dialogues(sample, [edited], names)
    assert unmatched == 0 and set(fuzzy) == set(exact)
    assert [m.exact for m in fuzzy.values()] == [False]
    # Swapping the roles does not hide a dialogue: the entry's first speaker may be either role.
    swapped = Dialogue(d.dialogue_id, [Turn("user" if t.role == "assistant" else "assistant", t.content, t.item_ids)
                                       for t in edited.turns])
    assert set(match_dialogues(sample, [swapped], names)[0]) == set(exact)
    # A different mention set is a different dialogue, however similar the text.
    other_ids = Dialogue(d.dialogue_id, [Turn(t.role, t.content, t.item_ids + ["999999"]) for t in d.turns])
    assert match_dialogues(sample, [other_ids], names) == ({}, 1)


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def test_lossy_dialogues_excludes_and_skips_known(zip_path: Path, names: dict[str, str], kgsf: list[Dialogue],
                                                  ievalm: list[Dialogue], caplog: pytest.LogCaptureFixture) -> None:
    # Held out: one KGSF and one iEvaLM dialogue (whitespace changed), plus a dialogue that is not in the file at
    # all, like a test dialogue. kgsf[1] is both known and excluded: it is dropped either way.
    not_in_file = Dialogue("test-1", [Turn("user", "I like horror"), Turn("assistant", "Try Heat", ["76636"])])
    exclude = [_spaced(kgsf[0]), ievalm[0], not_in_file, kgsf[1]]
    with caplog.at_level(logging.INFO, logger="reges.data.lossy"):
        out = lossy_dialogues(zip_path, exclude, names, known=kgsf[1:] + ievalm[1:])
    assert [d.dialogue_id for d in out] == [f"lossy-{i:05d}" for i in UNKNOWN_POSITIONS]
    assert "3 entries match excluded dialogues" in caplog.text
    assert "1 of the 4 excluded dialogues are not in the file" in caplog.text
    assert "12 entries match known dialogues" in caplog.text
    assert "3 dialogues kept (3 excluded, 11 known)" in caplog.text


def test_lossy_dialogues_keep_the_mention_sets_of_the_learned_reconstruction(
    zip_path: Path, names: dict[str, str], kgsf: list[Dialogue], ievalm: list[Dialogue]
) -> None:
    """The co-mention prior reads only each dialogue's item set: these must not change.

    The expected sets were obtained by running `lossy_dialogues` of commit 1ecc0b1 (the learned role and order
    reconstruction, since removed) on the same inputs and reducing each returned dialogue to its sorted item set;
    they were pinned from that run before the reconstruction was deleted, not computed by the code under test.
    """
    not_in_file = Dialogue("test-1", [Turn("user", "I like horror"), Turn("assistant", "Try Heat", ["76636"])])
    unknown = {"lossy-00001": ["100030", "188192"], "lossy-00002": ["112719"], "lossy-00004": []}
    cases = [
        ([_spaced(kgsf[0]), ievalm[0], not_in_file, kgsf[1]], kgsf[1:] + ievalm[1:], unknown),
        ([], kgsf, {**unknown, "lossy-00005": ["76012", "84036", "85612", "94056", "99244"],
                    "lossy-00010": ["169419", "183121", "204974", "78418"]}),
        (ievalm + kgsf[:2], kgsf[2:], unknown),
    ]
    for exclude, known, expected in cases:
        assert _mention_sets(lossy_dialogues(zip_path, exclude, names, known)) == expected


def test_lossy_dialogues_hold_one_turn_per_speaker_with_titles(zip_path: Path, names: dict[str, str],
                                                               sample: list[dict]) -> None:
    out = {d.dialogue_id: d for d in lossy_dialogues(zip_path, [], names, known=[])}
    assert len(out) == 17
    first = out["lossy-00001"]
    assert [t.role for t in first.turns] == [FIRST_SPEAKER_ROLE, "user"]
    # Each turn is one speaker's messages in file order, HTML escapes undone, `@id`s replaced by titles.
    assert first.turns[0].content.startswith("Hello What genre are you into")
    assert "@" not in " ".join(t.content for t in first.turns)
    assert names["188192"].split("  ")[0] in " ".join(t.content for t in first.turns)
    for i, entry in enumerate(sample):
        d = out[f"lossy-{i:05d}"]
        assert len(d.turns) == (2 if entry["answers"] else 1)
        assert {t.role for t in d.turns} <= set(ROLES)
        for turn, key in zip(d.turns, ("questions", "answers"), strict=False):
            assert turn.item_ids == list(dict.fromkeys(re.findall(r"@(\d+)", " ".join(entry[key]))))


def test_known_dialogue_is_skipped_whatever_its_turn_structure(tmp_path: Path) -> None:
    # The dialogue opens with the entry's second speaker, so the removed reconstruction could not align it and
    # returned its entry again (counted twice next to the train copy); matching alone now skips it.
    path = _zip(tmp_path / "p.zip", [{"context": "", "questions": ["Hi", "@1 is great"], "answers": ["Hello"]},
                                     {"context": "", "questions": ["Any comedies?"], "answers": ["Try @1"]}])
    known = Dialogue("k", [Turn("assistant", "Hello"), Turn("user", "Hi Heat (1995) is great", ["1"])])
    out = lossy_dialogues(path, [], {"1": "Heat (1995)"}, known=[known])
    assert [d.dialogue_id for d in out] == ["lossy-00001"]
    assert out[0].turns == [Turn(FIRST_SPEAKER_ROLE, "Any comedies?"), Turn("user", "Try Heat (1995)", ["1"])]


def test_lossy_dialogues_counts_missing_titles(zip_path: Path, names: dict[str, str], kgsf: list[Dialogue],
                                              caplog: pytest.LogCaptureFixture) -> None:
    partial = {k: v for k, v in names.items() if k != "112719"}
    with caplog.at_level(logging.WARNING, logger="reges.data.lossy"):
        out = lossy_dialogues(zip_path, [], partial, known=kgsf)
    d = next(d for d in out if d.dialogue_id == "lossy-00002")
    turn = next(t for t in d.turns if "112719" in t.item_ids)
    assert f"Maybe something like {MISSING_TITLE}" in turn.content
    assert "1 mentions of 1 movie ids have no title" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Real data (slow: the whole 10,006-dialogue file)

# Pinned from `reges data --config configs/redial.yaml` with the learned reconstruction (commit 1ecc0b1), on
# 2026-12-06: its data/lossy_dialogues.jsonl, each dialogue reduced to the line "<dialogue_id> <sorted item ids>"
# (space-separated), lines sorted, joined with "\n", sha256. 8,193 dialogues, 43,336 (dialogue, item) pairs,
# 5,722 distinct items. The split below is that config's (dev_fraction 0.16, tune_fraction 0.1).
REAL_MENTION_SETS_SHA256 = "8d6de94a515a8603b9a19a68a8401e88cf1946f546cba32e11e9da7f84bdc5bc"


@pytest.mark.slow
def test_real_file_keeps_the_mention_sets_and_drops_tune_and_dev(shared_data: Path) -> None:
    from reges.data.examples import combine_files, split_dev, split_tune
    from reges.data.redial import read_movie_names

    redial = shared_data / "redial"
    names = read_movie_names(redial / "Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv")
    dialogues, _ = combine_files([load_redial(redial / "Lancelot39__KGSF/data/valid_data.jsonl", names),
                                  load_redial(redial / "txy77__iEvaLM-CRS/data/redial/valid_data.jsonl", names)])
    path = redial / "MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip"
    entries = load_lossy(path)
    assert len(entries) == 10_006
    matched, unmatched = match_dialogues(entries, dialogues, names)
    assert (len(matched), unmatched) == (1_813, 0)
    train, dev = split_dev(dialogues, 0.16)
    train, tune = split_tune(train, 0.1)
    assert (len(train), len(tune), len(dev)) == (1_361, 161, 291)
    out = lossy_dialogues(path, tune + dev, names, known=train)
    assert len(out) == 10_006 - len(dialogues)
    lines = sorted(f"{d.dialogue_id} {' '.join(ids)}" for d in out for ids in [sorted({i for t in d.turns
                                                                                        for i in t.item_ids})])
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == REAL_MENTION_SETS_SHA256

    # Each speaker's messages keep their order, so the two per-speaker texts identify a dialogue however its
    # turns were interleaved: none of the returned dialogues may be a train, tune or dev dialogue.
    def speaker_texts(d: Dialogue) -> frozenset[str]:
        return frozenset(re.sub(r"[\W_]+", "", " ".join(t.content for t in d.turns if t.role == r).lower())
                         for r in ROLES)

    held = {speaker_texts(d) for d in dialogues}
    assert not [d.dialogue_id for d in out if speaker_texts(d) in held]


def _sides(d: Dialogue) -> Dialogue:
    """A true-order dialogue as the lossy file stores it: the recommender's messages as one turn, then the seeker's
    (roles are what `seeker_turn` must find, so both turns get the first speaker's label)."""
    return Dialogue(d.dialogue_id, [Turn(FIRST_SPEAKER_ROLE, " ".join(t.content for t in d.turns if t.role == role),
                                         [i for t in d.turns if t.role == role for i in t.item_ids])
                                    for role in ("assistant", "user")])


def test_the_seeker_is_told_by_cues_then_by_who_names_more_films() -> None:
    recommender = Turn("assistant", "You might like Heat (1995). Have you seen Ronin (1998)?", ["1", "2"])
    seeker = Turn("assistant", "I'm looking for a heist movie. I love The Town (2010)", ["3"])
    assert seeker_turn(Dialogue("d", [recommender, seeker])) == 1
    assert seeker_turn(Dialogue("d", [seeker, recommender])) == 0
    plain = [Turn("assistant", "hello", ["1", "2"]), Turn("assistant", "hi", ["1"])]  # no cue: more films: recommender
    assert seeker_turn(Dialogue("d", plain)) == 1
    tie = [Turn("assistant", "hello", ["1"]), Turn("assistant", "hi", ["2"])]  # nothing tells
    assert seeker_turn(Dialogue("d", tie)) is None
    assert seeker_turn(Dialogue("d", [seeker])) is None

    examples, counts = lossy_examples([Dialogue("lossy-00001", [recommender, seeker]),
                                       Dialogue("lossy-00002", tie),
                                       Dialogue("lossy-00003", [Turn("assistant", "I love Heat (1995)", ["1"]),
                                                                Turn("assistant", "Heat (1995) is great", ["1"])])],
                                      max_chars=30)
    assert counts == {"dialogues": 3, "undecided": 1, "no_new_film": 1, "examples": 1}
    (ex,) = examples
    assert (ex.example_id, ex.target_item_ids, ex.target_mentioned) == ("lossy-00001_0", ["1", "2"], [False, False])
    assert [(t.role, t.content, t.item_ids) for t in ex.context] == [("user", "I'm looking for a heist", ["3"])]


def test_the_seeker_rule_on_the_fixture_dialogues(kgsf: list[Dialogue], ievalm: list[Dialogue]) -> None:
    """On the 14 true-order fixture dialogues, each stored recommender-first as the lossy file might."""
    found = [seeker_turn(_sides(d)) for d in kgsf + ievalm]
    assert found.count(1) >= 12 and found.count(0) <= 1, found


def test_the_seeker_rule_on_the_real_train_dialogues(shared_data: Path) -> None:
    """The numbers `reges.data.lossy` quotes: on the 1,361 clean train dialogues (configs/redial.yaml's split) the
    rule finds the seeker in 1,259 (92.5 %), the recommender in 81, neither in 21."""
    from reges.data.examples import combine_files, split_dev, split_tune
    from reges.data.redial import read_movie_names

    redial = shared_data / "redial"
    names = read_movie_names(redial / "Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv")
    dialogues, _ = combine_files([load_redial(redial / "Lancelot39__KGSF/data/valid_data.jsonl", names),
                                  load_redial(redial / "txy77__iEvaLM-CRS/data/redial/valid_data.jsonl", names)])
    train, _ = split_tune(split_dev(dialogues, 0.16)[0], 0.1)
    found = [seeker_turn(_sides(d)) for d in train]
    assert (len(found), found.count(1), found.count(0), found.count(None)) == (1_361, 1_259, 81, 21)


# ---------------------------------------------------------------------------------------------------------------
# A guessed speaking order (train_retriever.lossy_pairs_from: interleaved)


def test_interleave_alternates_equal_sides_and_spreads_the_smaller_one() -> None:
    assert interleave(3, 3) == [0, 1, 0, 1, 0, 1]
    assert interleave(2, 4) == [0, 1, 1, 0, 1, 1]
    assert interleave(4, 1) == [0, 0, 0, 1, 0]  # a tie goes to the first speaker
    assert interleave(1, 0) == [0] and interleave(0, 2) == [1, 1]


SEEKER_FIRST = {  # strict alternation, so the guess is the true order
    "context": "",
    "questions": ["Hi! I love family films like @11", "Oh I haven't seen @16, I will watch it", "bye"],
    "answers": ["hello! you might like @16", "great. Also @12 if you like crime", "bye!"],
}
RECOMMENDER_FIRST = {
    "context": "",
    "questions": ["Hello, what kind of movies?", "you might like @16", "great. Also @12 if you like crime"],
    "answers": ["Hi! I love family films like @11", "Oh I haven't seen @16, I will watch it", "bye"],
}
NAMES = {"11": "Up (2009)", "12": "Heat (1995)", "16": "Toy Story (1995)"}


@pytest.mark.parametrize(("entry", "roles"), [(SEEKER_FIRST, ["user", "assistant"] * 3),
                                              (RECOMMENDER_FIRST, ["assistant", "user"] * 3)])
def test_interleaved_dialogue_cuts_each_recommendation_before_the_seekers_reaction(entry: dict,
                                                                                    roles: list[str]) -> None:
    dialogue = interleaved_dialogue("lossy-00007", entry, TitleResolver(NAMES))
    assert dialogue is not None
    assert [t.role for t in dialogue.turns] == roles
    examples = build_examples(dialogue, {})
    first = next(ex for ex in examples if ex.target_item_ids == ["16"])
    seeker_said = " ".join(t.content for t in first.context if t.role == "user")
    assert "family films like Up (2009)" in seeker_said and "haven't seen" not in seeker_said
    # The order-free form pairs the same film with the seeker's whole side, reaction included.
    order_free, _ = lossy_examples([two_turn_dialogue("lossy-00007", entry, TitleResolver(NAMES))], 1000)
    assert "haven't seen Toy Story (1995)" in order_free[0].context[0].content
    no_titles = {**entry, "questions": ["hi"], "answers": ["hello"]}
    assert interleaved_dialogue("x", no_titles, TitleResolver(NAMES)) is None


def test_interleaved_dialogues_reads_the_entries_the_data_stage_kept(zip_path: Path, names: dict[str, str],
                                                                      sample: list[dict]) -> None:
    ids = [f"lossy-{i:05d}" for i in UNKNOWN_POSITIONS]
    dialogues, counts = interleaved_dialogues(zip_path, names, ids)
    assert counts["dialogues"] == 3 and counts["kept"] + counts["undecided"] == 3 and counts["kept"] > 0
    for d in dialogues:
        entry = sample[int(d.dialogue_id.removeprefix("lossy-"))]
        assert len(d.turns) > 2  # message boundaries back, not one turn per speaker
        mentioned = {i for t in entry["questions"] + entry["answers"] for i in re.findall(r"@(\d+)", t)}
        assert {i for t in d.turns for i in t.item_ids} == mentioned
    with pytest.raises(DataError, match="lossy-99999.*names no entry.*rerun `reges data`"):
        interleaved_dialogues(zip_path, names, ["lossy-99999"])
    with pytest.raises(DataError, match="'t1' names no entry"):
        interleaved_dialogues(zip_path, names, ["t1"])


def test_the_guessed_order_on_the_fixture_dialogues(sample: list[dict], names: dict[str, str],
                                                    kgsf: list[Dialogue], ievalm: list[Dialogue]) -> None:
    """On the 14 true-order fixtures, the guessed examples hold more of the true seeker context and less of what the
    seeker said after the recommendation than the order-free ones (the real-file numbers: the next test)."""
    rows, _ = order_agreement(sample, match_dialogues(sample, kgsf + ievalm, names)[0], names)
    mean = {name: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for name, rs in rows.items()}
    assert len(rows["interleaved"]) == len(rows["seeker_side"]) > 20
    assert mean["interleaved"]["future"] < mean["seeker_side"]["future"] / 2
    assert mean["interleaved"]["exact"] > 0.2 > mean["seeker_side"]["exact"]


def test_context_agreement_scores_found_exact_kept_and_future() -> None:
    truth = build_examples(Dialogue("d", [Turn("user", "I like Up", ["11"]), Turn("assistant", "Toy Story", ["16"]),
                                          Turn("user", "seen it", []), Turn("assistant", "Heat", ["12"])]), {})
    early = build_examples(Dialogue("d", [Turn("user", "I like Up", ["11"]), Turn("assistant", "Toy Story", ["16"]),
                                          Turn("assistant", "Heat", ["12"]), Turn("user", "seen it", [])]), {})
    rows = context_agreement(truth, early)
    assert rows[0] == {"found": 1.0, "exact": 1.0, "kept": 1.0, "future": 0.0}
    assert rows[1]["exact"] == 0.0 and 0.5 < rows[1]["kept"] < 1.0 and rows[1]["future"] == 0.0
    late = build_examples(Dialogue("d", [Turn("user", "I like Up seen it", ["11"]),
                                         Turn("assistant", "Toy Story Heat", ["16", "12"])]), {})
    assert context_agreement(truth, late)[0]["future"] > 0.0
    assert context_agreement(truth, [])[0]["found"] == 0.0


def test_the_guessed_order_on_the_real_train_dialogues(shared_data: Path) -> None:
    """The numbers docs/results/lossy_order.md quotes, on the 1,361 clean train dialogues (configs/redial.yaml's
    split): the guessed examples find 95 % of the fresh targets, with 84 % of the true seeker context and 10 % of
    their seeker text from after the recommendation; the order-free pairs 77 %, 77 % and 41 %."""
    from reges.data.examples import combine_files, split_dev, split_tune
    from reges.data.redial import read_movie_names

    redial = shared_data / "redial"
    names = read_movie_names(redial / "Kim-Dong-Jun99__ReDial_RecommendationSystem/dataset/movies_with_mentions.csv")
    dialogues, _ = combine_files([load_redial(redial / "Lancelot39__KGSF/data/valid_data.jsonl", names),
                                  load_redial(redial / "txy77__iEvaLM-CRS/data/redial/valid_data.jsonl", names)])
    train, _ = split_tune(split_dev(dialogues, 0.16)[0], 0.1)
    entries = load_lossy(redial / "MarkystarkDotCO__Redial-QA-System/src/download_data/precessed.json.zip")
    matched, unmatched = match_dialogues(entries, train, names)
    assert (len(matched), unmatched) == (1_361, 0)
    rows, undecided = order_agreement(entries, matched, names)
    assert undecided == 21
    mean = {name: {k: round(sum(r[k] for r in rs) / len(rs), 3) for k in rs[0]} for name, rs in rows.items()}
    assert len(rows["interleaved"]) == 4_918
    assert mean["interleaved"] == {"found": 0.951, "exact": 0.365, "kept": 0.84, "future": 0.101}
    assert mean["seeker_side"] == {"found": 0.771, "exact": 0.009, "kept": 0.771, "future": 0.407}
