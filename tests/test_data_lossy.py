"""Lossy ReDial file: reading the zip, the merge decoder, known-order recovery, matching and exclusion.

Fixtures (tests/fixtures/lossy/README.md): 17 real entries of the lossy file, the true-order copies of 14 of them
(12 KGSF, 2 iEvaLM) and the movie names they need. Model fitting here uses those 12-14 dialogues only (< 1 s).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from reges.data.lossy import (
    MEMBER,
    MISSING_TITLE,
    KnownOrder,
    OrderModel,
    alternate,
    concatenate,
    first_speaker_role,
    fit_order_model,
    interleave,
    known_order,
    known_orders,
    load_lossy,
    lossy_dialogues,
    match_dialogues,
    reconstruct,
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


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory: pytest.TempPathFactory, sample: list[dict]) -> Path:
    path = tmp_path_factory.mktemp("lossy") / "precessed.json.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(MEMBER, json.dumps(sample, ensure_ascii=False))
    return path


@pytest.fixture(scope="module")
def kgsf(lossy_dir: Path, names: dict[str, str]) -> list[Dialogue]:
    return load_redial(lossy_dir / "kgsf_valid_sample.jsonl", names).dialogues


@pytest.fixture(scope="module")
def ievalm(lossy_dir: Path, names: dict[str, str]) -> list[Dialogue]:
    return load_redial(lossy_dir / "ievalm_valid_sample.jsonl", names).dialogues


def _hand_model() -> OrderModel:
    """Switch logit = 1 + 5 * (previous message has "?") - 5 * (same speaker's next starts lowercase); the first
    speaker is the seeker with probability sigmoid(-2) (so: the recommender)."""
    return OrderModel(order_weights={"prev_question": 5.0, "same_lower": -5.0}, order_bias=1.0,
                      role_weights={"spoke_first": -2.0})


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
# Decoding


def test_baselines() -> None:
    assert alternate(3, 2) == [0, 1, 0, 1, 0]
    assert alternate(1, 3) == [0, 1, 1, 1]
    assert concatenate(2, 1) == [0, 0, 1]


def test_interleave_and_reconstruct_hand_made_dialogue() -> None:
    # Hand-checked with _hand_model: after "...like?" the logit is 1 + 5 = 6 (switch); after "I like comedies."
    # it is 1 (switch); after "Have you seen @111" the same speaker goes on in lowercase: 1 - 5 = -4 (stay);
    # then the recommender has no message left. Any other path loses at least 1 nat (vs 0.33 for this one).
    questions = ["Hi! What kind of movies do you like?", "Have you seen @111", "it's a classic!"]
    answers = ["I like comedies.", "No, I have not.", "Is it &quot;funny&quot;?"]
    model = _hand_model()
    assert interleave(questions, answers, model) == [0, 1, 0, 0, 1, 1]
    role, p_user = first_speaker_role(questions, answers, model)
    assert role == "assistant"
    assert p_user == pytest.approx(1 / (1 + math.exp(2)))
    assert reconstruct(questions, answers, model) == [
        Turn("assistant", "Hi! What kind of movies do you like?", []),
        Turn("user", "I like comedies.", []),
        Turn("assistant", "Have you seen @111 it's a classic!", ["111"]),
        Turn("user", 'No, I have not. Is it "funny"?', []),
    ]


def test_interleave_one_sided_dialogue() -> None:
    assert interleave(["Hello, whats your favorite type of movies?"], [], _hand_model()) == [0]
    assert interleave(["a", "b"], [], _hand_model()) == [0, 0]


def test_order_model_round_trips_through_json() -> None:
    model = _hand_model()
    assert OrderModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


# ---------------------------------------------------------------------------------------------------------------
# Known order: matching and alignment


def test_known_order_cuts_turns_back_into_messages() -> None:
    entry = {"context": "", "questions": ["Hi", "any comedies?", "I loved @1"], "answers": ["Hello!", "Try @1", "ok"]}
    dialogue = Dialogue("d", [Turn("user", "Hi any comedies?"), Turn("assistant", "Hello! Try Heat (1995)", ["1"]),
                              Turn("user", "I loved Heat (1995)", ["1"]), Turn("assistant", "ok")])
    assert known_order(entry, dialogue, "user", {"1": "Heat  (1995)"}) == KnownOrder(
        questions=entry["questions"], answers=entry["answers"], sides=[0, 0, 1, 1, 0, 1], first_role="user")
    # The dialogue must open with the entry's first speaker, and no speaker can have more turns than messages.
    assert known_order(entry, dialogue, "assistant", {"1": "Heat (1995)"}) is None
    three_user_turns = Dialogue("d", [Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "any comedies?"),
                                      Turn("assistant", "Try"), Turn("user", "x"), Turn("assistant", "ok"),
                                      Turn("user", "y"), Turn("assistant", "z")])
    assert known_order(entry, three_user_turns, "user", {}) is None


def test_match_and_recover_true_order(sample: list[dict], names: dict[str, str], kgsf: list[Dialogue],
                                      ievalm: list[Dialogue], lossy_dir: Path) -> None:
    matched, unmatched = match_dialogues(sample, kgsf + ievalm, names)
    assert unmatched == 0
    assert len(matched) == 14
    assert set(range(17)) - set(matched) == set(UNKNOWN_POSITIONS)
    assert all(m.exact for m in matched.values())
    orders = known_orders(sample, matched, names)
    assert len(orders) == 14
    # KGSF keeps one entry per chat message: its sender sequence is the truth, independently of the loader.
    by_id = {m.dialogue.dialogue_id: i for i, m in matched.items()}
    for line in (lossy_dir / "kgsf_valid_sample.jsonl").read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        first = raw["messages"][0]["senderWorkerId"]
        k = orders[by_id[str(raw["conversationId"])]]
        assert k.sides == [int(m["senderWorkerId"] != first) for m in raw["messages"]]
        assert k.first_role == ("user" if first == raw["initiatorWorkerId"] else "assistant")


def test_fuzzy_match_survives_small_edits(sample: list[dict], names: dict[str, str], kgsf: list[Dialogue]) -> None:
    d = kgsf[0]
    # One typo per turn: letters differ, so only the fuzzy rule can match it.
    edited = Dialogue(d.dialogue_id, [Turn(t.role, t.content.replace("e", "a", 1), t.item_ids) for t in d.turns])
    exact, _ = match_dialogues(sample, [d], names)
    fuzzy, unmatched = match_dialogues(sample, [edited], names)
    assert unmatched == 0 and set(fuzzy) == set(exact)
    assert [m.exact for m in fuzzy.values()] == [False]
    # A different mention set is a different dialogue, however similar the text.
    other_ids = Dialogue(d.dialogue_id, [Turn(t.role, t.content, t.item_ids + ["999999"]) for t in d.turns])
    assert match_dialogues(sample, [other_ids], names) == ({}, 1)


# ---------------------------------------------------------------------------------------------------------------
# Fitting and the corpus


def test_fit_needs_enough_known_dialogues() -> None:
    k = KnownOrder(questions=["Hi?", "ok"], answers=["Hello"], sides=[0, 1, 0], first_role="user")
    with pytest.raises(DataError, match="at least 10"):
        fit_order_model([k] * 3)
    with pytest.raises(DataError, match="do not fit"):
        fit_order_model([KnownOrder(["a"], ["b"], [1, 0], "user")] * 10)


def test_fit_and_reconstruct_real_dialogues(sample: list[dict], names: dict[str, str], kgsf: list[Dialogue],
                                            ievalm: list[Dialogue]) -> None:
    matched, _ = match_dialogues(sample, kgsf + ievalm, names)
    orders = known_orders(sample, matched, names)
    model = fit_order_model(list(orders.values()))
    assert model.fitted_on == 14
    assert model.order_weights and model.role_weights
    for entry in sample:
        turns = reconstruct(entry["questions"], entry["answers"], model)
        # Every message is used once: each speaker's turns re-join into that speaker's messages.
        roles = [t.role for t in turns]
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
        first = turns[0].role
        by_role = {r: " ".join(" ".join(t.content for t in turns if t.role == r).split()) for r in ROLES}
        second = "user" if first == "assistant" else "assistant"
        assert by_role[first] == " ".join(html.unescape(" ".join(entry["questions"])).split())
        assert by_role[second] == " ".join(html.unescape(" ".join(entry["answers"])).split())


def test_lossy_dialogues_excludes_and_skips_known(zip_path: Path, names: dict[str, str], kgsf: list[Dialogue],
                                                  ievalm: list[Dialogue], caplog: pytest.LogCaptureFixture) -> None:
    # Held out: one KGSF and one iEvaLM dialogue (whitespace changed, which the match ignores), plus a dialogue
    # that is not in the file at all, like a test dialogue.
    spaced = Dialogue(kgsf[0].dialogue_id, [Turn(t.role, "  " + t.content.replace(" ", "  "), t.item_ids)
                                            for t in kgsf[0].turns])
    not_in_file = Dialogue("test-1", [Turn("user", "I like horror"), Turn("assistant", "Try Heat", ["76636"])])
    # kgsf[1] is both known and excluded: exclusion wins and it is not used for fitting.
    exclude = [spaced, ievalm[0], not_in_file, kgsf[1]]
    known = kgsf[1:] + ievalm[1:]
    with caplog.at_level(logging.INFO, logger="reges.data.lossy"):
        out = lossy_dialogues(zip_path, exclude, names, known=known)
    assert [d.dialogue_id for d in out] == [f"lossy-{i:05d}" for i in UNKNOWN_POSITIONS]
    assert "3 entries match excluded dialogues" in caplog.text
    assert "1 of the 4 excluded dialogues are not in the file" in caplog.text
    assert "turn-order model fitted on 11 dialogues" in caplog.text
    assert "1 known dialogues are also excluded" in caplog.text
    # The returned dialogues have titles in place of @ids, and the ids as items.
    by_id = {d.dialogue_id: d for d in out}
    first = by_id["lossy-00001"]
    assert {i for t in first.turns for i in t.item_ids} == {"188192", "100030"}
    text = " ".join(t.content for t in first.turns)
    assert "@" not in text
    assert names["188192"].split("  ")[0] in text
    assert [t.role for t in by_id["lossy-00004"].turns] in (["user"], ["assistant"])


def test_lossy_dialogues_counts_missing_titles(zip_path: Path, names: dict[str, str], kgsf: list[Dialogue],
                                              caplog: pytest.LogCaptureFixture) -> None:
    partial = {k: v for k, v in names.items() if k != "112719"}
    with caplog.at_level(logging.WARNING, logger="reges.data.lossy"):
        out = lossy_dialogues(zip_path, [], partial, known=kgsf)
    d = next(d for d in out if d.dialogue_id == "lossy-00002")
    turn = next(t for t in d.turns if "112719" in t.item_ids)
    assert turn.content.endswith(f"Maybe something like {MISSING_TITLE}")
    assert "1 mentions of 1 movie ids have no title" in caplog.text


def test_lossy_dialogues_needs_known(zip_path: Path, names: dict[str, str], kgsf: list[Dialogue]) -> None:
    with pytest.raises(DataError, match="at least 10 lossy dialogues of known order, got 3"):
        lossy_dialogues(zip_path, [], names, known=kgsf[:3])


# ---------------------------------------------------------------------------------------------------------------
# Real data (slow: the whole 10,006-dialogue file)


@pytest.mark.slow
def test_real_file_matches_known_and_beats_baselines(shared_data: Path) -> None:
    from reges.data.examples import combine_files, split_dev
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
    orders = known_orders(entries, matched, names)
    train, dev = split_dev(dialogues, 0.16)
    dev_ids = {d.dialogue_id for d in dev}
    model = fit_order_model([k for i, k in orders.items() if matched[i].dialogue.dialogue_id not in dev_ids])
    held = [k for i, k in orders.items() if matched[i].dialogue.dialogue_id in dev_ids]
    role_ok = sum(first_speaker_role(k.questions, k.answers, model)[0] == k.first_role for k in held) / len(held)
    def positions(sides: list[int]) -> list[tuple[int, int]]:
        """(side, index within side) of the message at each position."""
        count = [0, 0]
        out = []
        for side in sides:
            out.append((side, count[side]))
            count[side] += 1
        return out

    def position_accuracy(order: Callable[[KnownOrder], list[int]]) -> float:
        hits = sum(a == b for k in held for a, b in zip(positions(order(k)), positions(k.sides), strict=True))
        return hits / sum(len(k.sides) for k in held)

    learned = position_accuracy(lambda k: interleave(k.questions, k.answers, model))
    baseline = position_accuracy(lambda k: alternate(len(k.questions), len(k.answers)))
    # Cross-validated on all 1,813 (docs/results/lossy_reconstruction.md): roles 96.5 %, messages at their true
    # position 47.1 % vs 32.4 % for strict alternation.
    assert role_ok > 0.9
    assert learned > baseline + 0.05
    out = lossy_dialogues(path, dev, names, known=train)
    assert len(out) == 10_006 - len(dialogues)

    # Each speaker's messages keep their order, so the two per-speaker texts identify a dialogue however its
    # turns were interleaved: none of the returned dialogues may be a dev dialogue.
    def speaker_texts(d: Dialogue) -> frozenset[str]:
        return frozenset(re.sub(r"[\W_]+", "", " ".join(t.content for t in d.turns if t.role == r).lower())
                         for r in ROLES)

    dev_keys = {speaker_texts(d) for d in dev}
    assert not [d.dialogue_id for d in out if speaker_texts(d) in dev_keys]
    assert len({speaker_texts(d) for d in train} & {speaker_texts(d) for d in out}) == 0
