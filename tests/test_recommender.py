"""The in-memory recommender (frozen path exactly, with a keyword encoder), its input rules, and the CLI commands."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from retrieval_fakes import KeywordEncoder
from serving_helpers import catalog_titles, served_order

from reges.cli import main
from reges.config import IndexConfig, PipelineConfig
from reges.errors import CatalogError, ConfigError, DataError, StageNotReadyError
from reges.llm.base import Messages
from reges.recommender import (
    ASK_FOR_PREFERENCES,
    CONSTRAINT_DEPTH,
    Candidate,
    PipelineRecommender,
    check_context,
    parse_messages,
    reply_text,
    wants_recommendation,
)
from reges.records import Hit, Item, Turn
from reges.retrieval.index import ItemIndex

ITEMS = [
    Item("10", "Alien (1979)", "Alien. Genre: horror, space. A crew meets an alien.", 1979),
    Item("11", "Up (2009)", "Up. Genre: family. An old man flies his house.", 2009),
    Item("12", "Heat (1995)", "Heat. Genre: crime. A detective hunts a thief.", 1995),
    Item("13", "Jaws (1975)", "Jaws. Genre: horror, shark. A beach town is attacked.", 1975),
]
KEYWORDS = ["horror", "family", "crime", "shark", "space"]


def _recommender(items: list[Item] = ITEMS) -> PipelineRecommender:
    encoder = KeywordEncoder(KEYWORDS)
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    index = ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], IndexConfig(), seed=0)
    return PipelineRecommender(PipelineConfig(), items, index, encoder)


def test_frozen_path_is_dense_retrieval_of_the_dialogue_with_top1_pick() -> None:
    rec = _recommender().recommend([Turn("user", "Any horror with a shark?")], top_k=3)
    # query (horror, shark) / sqrt(2): Jaws = (horror+shark)/sqrt(2) -> 1.0; Alien = (horror+space)/sqrt(2) -> 0.5
    assert [c.item_id for c in rec.candidates] == ["13", "10", "11"]
    assert rec.candidates[0] == Candidate("13", "Jaws (1975)", pytest.approx(1.0))
    assert rec.candidates[1].score == pytest.approx(0.5)
    assert (rec.item_id, rec.title, rec.query) == ("13", "Jaws (1975)", "")
    assert set(rec.latency_ms) == {"retrieve", "pick", "total"}  # no Query Expert: no query stage
    assert rec.latency_ms["total"] >= rec.latency_ms["retrieve"] >= 0
    assert rec.reply == "I'd recommend Jaws (1975). Also worth a look: Alien (1979) or Up (2009)."
    assert json.loads(json.dumps(rec.to_dict()))["candidates"][0] == {
        "item_id": "13",
        "title": "Jaws (1975)",
        "score": pytest.approx(1.0),
    }


def test_recommend_many_equals_one_by_one_and_skips_earlier_picks() -> None:
    recommender = _recommender()
    contexts = [
        [Turn("user", "something for the family")],
        [Turn("user", "a crime film like Heat", ["12"])],  # named by the user: not recommended back
        [
            Turn("user", "horror and shark"),
            Turn("assistant", "I'd recommend Jaws (1975).", ["13"]),
            Turn("user", "seen it"),
        ],
    ]
    batch = recommender.recommend_many(contexts, top_k=2)
    # Heat (named by the user) and Jaws (recommended already) are skipped: the next best is picked instead.
    assert [r.item_id for r in batch] == ["11", "10", "10"]
    for context, got in zip(contexts, batch, strict=True):
        one = recommender.recommend(context, top_k=2)
        assert (one.item_id, one.candidates) == (got.item_id, got.candidates)
    assert "13" not in [c.item_id for c in batch[2].candidates]
    assert recommender.recommend_many([], top_k=2) == []


def test_recommender_refuses_bad_input_and_inconsistent_parts() -> None:
    recommender = _recommender()
    with pytest.raises(ConfigError, match="top_k must be >= 1, got 0"):
        recommender.recommend([Turn("user", "horror")], top_k=0)
    with pytest.raises(DataError, match="no user message with text"):
        recommender.recommend([Turn("assistant", "What do you like?")], top_k=2)
    with pytest.raises(CatalogError, match="not in the catalog"):
        _recommender(items=ITEMS[:2])
    with pytest.raises(DataError, match="already mentioned in this dialogue"):
        every = [Turn("user", "horror"), Turn("assistant", "these", [it.item_id for it in ITEMS])]
        recommender.recommend(every, top_k=2)


class FakeFused:
    """Stands in for the tuned retriever: records what it is asked and returns a fixed ranking."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str | None], int]] = []

    def search(self, contexts: list[list[Turn]], queries: list[str | None], top_k: int) -> list[list[Hit]]:
        self.calls.append((len(contexts), queries, top_k))
        return [[Hit("12", 0.9), Hit("11", 0.5)][:top_k] for _ in contexts]


def test_fused_retriever_replaces_the_frozen_path() -> None:
    encoder = KeywordEncoder(KEYWORDS)
    index = ItemIndex.from_embeddings(
        encoder.encode([it.text for it in ITEMS], 8, False), ["10", "11", "12", "13"], IndexConfig(), seed=0
    )
    fused = FakeFused()
    recommender = PipelineRecommender(PipelineConfig(), ITEMS, index, encoder=None, fused=fused)
    recs = recommender.recommend_many([[Turn("user", "horror")], [Turn("user", "shark")]], top_k=2)
    assert [r.item_id for r in recs] == ["12", "12"]
    # one batched call; no Query Expert -> no queries; "horror" states a genre, so constraints retrieve deeper
    assert fused.calls == [(2, [None, None], CONSTRAINT_DEPTH)]
    recommender.recommend_many([[Turn("user", "Anything good?")]], top_k=2)
    assert fused.calls[-1] == (1, [None], 2)  # no constraint: only as deep as needed
    assert recommender.stages == {
        "query": "none (dialogue text)",
        "retrieve": "fused retriever",
        "linking": "catalog titles in typed turns",
        "constraints": "stated genres and audience re-order candidates",
        "pick": "retriever top-1",
    }
    with pytest.raises(ConfigError, match="needs the index and its encoder, or a fused retriever"):
        PipelineRecommender(PipelineConfig(), ITEMS, index, encoder=None)


class ScriptedLLM:
    """Fake `LLM`: `generate` answers every prompt with `answer`; `choose` takes the last candidate."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[Messages] = []

    def generate(
        self, prompts: list[Messages], max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> list[str]:
        self.prompts.extend(prompts)
        return [self.answer] * len(prompts)

    def choose(self, prompts: list[Messages], candidates: list[list[str]]) -> list[str]:
        self.prompts.extend(prompts)
        return [c[-1] for c in candidates]

    def rank(self, prompt: Messages, candidates: list[str], length_normalized: bool = False) -> list[float]:
        return [0.0] * (len(candidates) - 1) + [5.0]  # likes the last candidate best


def test_query_expert_and_item_expert_compose() -> None:
    """The trained path with scripted LLMs: the query drives retrieval, the Item Expert picks among generate.top_k."""
    encoder = KeywordEncoder(KEYWORDS)
    index = ItemIndex.from_embeddings(
        encoder.encode([it.text for it in ITEMS], 8, False), ["10", "11", "12", "13"], IndexConfig(), seed=0
    )
    cfg = dataclasses.replace(PipelineConfig(), generate=dataclasses.replace(PipelineConfig().generate, top_k=3))
    query_llm, item_llm = ScriptedLLM("a horror film with a shark"), ScriptedLLM("unused")
    recommender = PipelineRecommender(
        cfg, ITEMS, index, encoder, query_llm=query_llm, item_llm=item_llm, item_sees_query=True
    )
    rec = recommender.recommend([Turn("user", "Something for a summer night?")], top_k=2)
    assert rec.query == "a horror film with a shark"  # the dialogue alone has no keyword: retrieval used the query
    assert [c.item_id for c in rec.candidates] == ["13", "10"]
    assert rec.item_id == "11"  # the Item Expert saw 3 candidates (Jaws, Alien, Up) and took the last
    assert set(rec.latency_ms) == {"query", "retrieve", "pick", "total"}
    assert "Request: a horror film with a shark" in item_llm.prompts[0][-1]["content"]
    assert recommender.stages == {
        "query": "query expert",
        "retrieve": f"frozen {index.encoder or 'encoder'}",
        "linking": "catalog titles in typed turns",
        "constraints": "stated genres and audience re-order candidates",
        "pick": "item expert (constrained)",
    }


@pytest.mark.parametrize(("alpha", "picked"), [(0.0, "13"), (1.0, "11")])
def test_rank_mode_fuses_the_expert_with_the_retriever(alpha: float, picked: str) -> None:
    encoder = KeywordEncoder(KEYWORDS)
    index = ItemIndex.from_embeddings(
        encoder.encode([it.text for it in ITEMS], 8, False), ["10", "11", "12", "13"], IndexConfig(), seed=0
    )
    generate = dataclasses.replace(PipelineConfig().generate, top_k=3, mode="rank", fusion_alpha=alpha)
    recommender = PipelineRecommender(
        dataclasses.replace(PipelineConfig(), generate=generate), ITEMS, index, encoder, item_llm=ScriptedLLM("")
    )
    rec = recommender.recommend([Turn("user", "A horror film with a shark")], top_k=3)
    assert [c.item_id for c in rec.candidates] == ["13", "10", "11"]
    assert rec.item_id == picked  # alpha 0: the retriever's top-1; alpha 1: the expert's favourite (the last)


def test_messages_roles_and_the_preference_rule() -> None:
    turns = parse_messages(
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "  I loved Alien  "},
            {"role": "assistant", "content": "Try Jaws.", "item_ids": ["13"]},
            {"role": "user", "content": "   "},
        ]
    )
    assert turns == [Turn("user", "I loved Alien"), Turn("assistant", "Try Jaws.", ["13"])]
    with pytest.raises(DataError, match="message 0 has role 'tool'; use 'user' or 'assistant'"):
        parse_messages([{"role": "tool", "content": "x"}])
    with pytest.raises(DataError, match="content must be a string, got int"):
        parse_messages([{"role": "user", "content": 3}])
    with pytest.raises(DataError, match="no user message with text"):
        check_context([])

    assert not wants_recommendation([Turn("user", "hi there!")])
    assert not wants_recommendation([Turn("user", "Hello, can you recommend something?")])
    assert not wants_recommendation([Turn("assistant", "I love horror films")])  # only the user's words count
    assert wants_recommendation([Turn("user", "hey"), Turn("user", "I loved Alien")])
    assert wants_recommendation([Turn("user", "something scary")])
    assert reply_text("Up", "a family film.", []) == "I'd recommend Up. You seem to be after: a family film."


# --- From a run directory, and through the CLI -------------------------------------------------------------------


def test_from_run_dir_loads_the_frozen_path(serving_run: Path, tmp_path: Path) -> None:
    recommender = PipelineRecommender.from_run_dir(serving_run)
    assert recommender.stages["query"] == "none (dialogue text)"
    assert recommender.stages["pick"] == "retriever top-1"
    rec = recommender.recommend([Turn("user", "I loved The Hobbit, any epic fantasy?")], top_k=5)
    titles = catalog_titles(serving_run)
    assert len(rec.candidates) == 5 and rec.item_id == rec.candidates[0].item_id
    assert all(titles[c.item_id] == c.title for c in rec.candidates)
    order = served_order(serving_run, "I loved The Hobbit, any epic fantasy?",
                         [(c.item_id, c.score) for c in rec.candidates])
    assert [c.item_id for c in rec.candidates] == order

    with pytest.raises(ConfigError, match="config.yaml not found"):
        PipelineRecommender.from_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text((serving_run / "config.yaml").read_text())
    with pytest.raises(StageNotReadyError, match="catalog/ has no manifest.json"):
        PipelineRecommender.from_run_dir(tmp_path)


def test_cli_recommend(serving_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--run-dir", str(serving_run), "I loved The Hobbit, any epic fantasy?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pick:       ") and "query:      - (no Query Expert" in out
    assert out.count("  [") == 1 + 5 and "latency:    retrieve " in out  # the pick + 5 candidates

    dialogue = tmp_path / "d.jsonl"
    dialogue.write_text(
        '{"role": "user", "content": "Any classic dystopia?"}\n'
        '{"role": "assistant", "content": "Have you read Brave New World?"}\n'
    )
    assert (
        main(
            [
                "recommend",
                "--run-dir",
                str(serving_run),
                "--dialogue",
                str(dialogue),
                "--top-k",
                "3",
                "--json",
                "Yes, something else please",
            ]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out)
    assert len(rec["candidates"]) == 3 and rec["item_id"] in catalog_titles(serving_run)

    assert main(["recommend", "--run-dir", str(serving_run)]) == 2
    assert "nothing to recommend from" in capsys.readouterr().err
    dialogue.write_text('{"role": "robot", "content": "beep"}\n')
    assert main(["recommend", "--run-dir", str(serving_run), "--dialogue", str(dialogue)]) == 2
    assert "has role 'robot'" in capsys.readouterr().err


def test_cli_chat_keeps_the_dialogue(
    serving_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        "hi",
        "I loved The Hobbit, any epic fantasy?",
        "Read it already, another one?",
        "/oops",
        "/reset",
        "hello",
        "/quit",
        "never read",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", "--run-dir", str(serving_run), "--top-k", "3"]) == 0
    replies = [line for line in capsys.readouterr().out.splitlines() if "reges> " in line]
    assert replies[0].endswith(ASK_FOR_PREFERENCES)  # "hi" says nothing about taste
    first, second = replies[1], replies[2]
    assert first.startswith("you> reges> I'd recommend") and second.startswith("you> reges> I'd recommend")
    picked = [
        next(t for t in catalog_titles(serving_run).values() if r.split("recommend ", 1)[1].startswith(t + "."))
        for r in (first, second)
    ]
    assert picked[0] != picked[1]  # the history was kept: the first pick is not repeated
    assert "unknown command '/oops'" in replies[3]
    assert "(dialogue cleared)" in replies[4]
    assert replies[5].endswith(ASK_FOR_PREFERENCES)  # after /reset, "hello" starts from nothing again
    assert len(replies) == 6  # /quit stopped the loop before "never read"


def test_a_folded_dataset_id_a_client_sends_is_its_item_and_never_recommended_back() -> None:
    """With a cleaned catalog, Jaws (13) carries the folded dataset id 13b: a dialogue that names it by that id
    (a dataset file, a client sending ids) has named Jaws."""
    items = [dataclasses.replace(it, meta={"alias_ids": ["13b"]}) if it.item_id == "13" else it for it in ITEMS]
    recommender = _recommender(items)
    turns = [Turn("user", "I loved that one, more horror with a shark please", ["13b"])]
    assert recommender.link_titles(turns)[0].item_ids == ["13"]
    assert "13" not in [c.item_id for c in recommender.recommend(turns, top_k=3).candidates]


def test_typed_titles_are_linked_and_never_recommended_back() -> None:
    recommender = _recommender()
    turns = [Turn("user", "I loved Jaws, more horror with a shark please")]
    assert recommender.link_titles(turns)[0].item_ids == ["13"]
    rec = recommender.recommend(turns, top_k=3)
    # Jaws is the best match for (horror, shark) but the user named it: the pick is the next one.
    assert "13" not in [c.item_id for c in rec.candidates] and rec.item_id == "10"


def test_stated_constraints_reorder_the_candidates_and_can_be_switched_off() -> None:
    """A refused genre goes last (bag-of-words similarity reads "no horror" as a wish for horror)."""
    genres = {"10": ["Horror", "Sci-Fi"], "11": ["Animation", "Family"], "12": ["Crime"], "13": ["Horror"]}
    items = [dataclasses.replace(it, meta={"genre": genres[it.item_id]}) for it in ITEMS]
    context = [Turn("user", "No horror please, and nothing with a shark")]
    plain = _recommender(items)
    plain.constraints = False
    assert [c.item_id for c in plain.recommend(context, top_k=4).candidates][:2] == ["13", "10"]
    rec = _recommender(items).recommend(context, top_k=4)
    assert [c.item_id for c in rec.candidates][2:] == ["13", "10"] and rec.item_id in {"11", "12"}
    kids = _recommender(items).recommend([Turn("user", "Something with a shark for my kids?")], top_k=4)
    assert kids.item_id == "11" and [c.item_id for c in kids.candidates][-2:] == ["13", "10"]
