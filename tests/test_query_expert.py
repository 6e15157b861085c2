"""Query Expert, in memory: the grounding filter and leak check, the grounded and LLM teachers, retrieval feedback,
the student prompt and `rewrite_queries`."""

from __future__ import annotations

import numpy as np
import pytest
from retrieval_fakes import KeywordEncoder

from reges.config import DistillConfig, IndexConfig
from reges.errors import ConfigError
from reges.query_expert.distill import distill_examples, target_ranks
from reges.query_expert.prompts import MAX_DIALOGUE_CHARS, NO_DIALOGUE, item_hint, query_prompt, teacher_prompt
from reges.query_expert.rewrite import clean_query, rewrite_queries, rewrite_queries_timed
from reges.query_expert.teacher import (
    GroundedTeacher,
    LLMTeacher,
    dialogue_vocabulary,
    ground_query,
    stem,
    words,
)
from reges.records import Item, RecExample, Turn
from reges.retrieval.index import ItemIndex


def item(item_id: str, title: str, genre: list[str], people: list[str], plot: str, year: int | None = None) -> Item:
    text = f"{title}. Genre: {', '.join(genre)}. Stars: {', '.join(people)}. Plot: {plot}"
    return Item(item_id, title, text, year, {"genre": genre, "star": people, "plot": plot})


ITEMS = [
    item("alien", "Alien (1979)", ["horror", "sci-fi"], ["Sigourney Weaver"], "a space crew meets a deadly alien",
         1979),
    item("aliens", "Aliens (1986)", ["action", "sci-fi"], ["Sigourney Weaver"], "marines fight aliens in space", 1986),
    item("thing", "The Thing (1982)", ["horror", "sci-fi"], ["Kurt Russell"], "an alien hides among researchers",
         1982),
    item("up", "Up (2009)", ["animation", "family"], ["Ed Asner"], "an old man flies his house with balloons", 2009),
    item("jaws", "Jaws (1975)", ["horror", "thriller"], ["Roy Scheider"], "a shark attacks a beach town", 1975),
    item("heat", "Heat (1995)", ["crime", "drama"], ["Al Pacino", "Robert De Niro"], "a detective hunts a thief",
         1995),
    item("dh", "Daddy's Home (2015)", ["comedy"], ["Will Ferrell"], "a stepdad and a dad compete", 2015),
    item("dh2", "Daddy's Home 2 (2017)", ["comedy"], ["Will Ferrell"], "the dads host their own fathers", 2017),
]
BY_ID = {it.item_id: it for it in ITEMS}


def example(context: list[Turn], targets: list[str], example_id: str = "d1_3") -> RecExample:
    return RecExample(example_id, example_id.split("_")[0], context, targets, [False] * len(targets))


SPACE_DIALOGUE = [
    Turn("assistant", "Hi! What do you feel like watching?"),
    Turn("user", "Something scary set in space. I loved Alien (1979) and I like Sigourney Weaver.", ["alien"]),
    Turn("assistant", "Have you seen Jaws (1975)?", ["jaws"]),
    Turn("user", "Yes, I hated Jaws (1975), it was boring. No comedies please.", ["jaws"]),
]


# ---------------------------------------------------------------------------------------------------------------
# Grounding filter and leak check


def test_stem_makes_inflections_agree() -> None:
    assert stem("Movies") == stem("movie") and stem("comedies") == stem("comedy")
    assert stem("loved") == stem("loving") == stem("love")
    assert stem("1979") == "1979" and words("sci-fi, Pan's") == ["sci", "fi", "Pan", "s"]


def test_vocabulary_holds_dialogue_words_mentioned_titles_and_synonym_genres() -> None:
    context = [Turn("user", "Any scary sci fi? Like the one with the crew", ["alien"]), Turn("assistant", "Sure")]
    vocab = dialogue_vocabulary(context, BY_ID)
    assert {stem("scary"), "sci", "fi", stem("crew"), stem("sure")} <= vocab
    assert stem("horror") in vocab  # "scary" grounds the genre word
    assert {stem("alien"), "1979"} <= vocab  # the title of an item the turn mentions
    assert stem("shark") not in vocab and stem("comedy") not in vocab


def test_ground_query_removes_ungrounded_words_and_counts_them() -> None:
    vocab = dialogue_vocabulary(SPACE_DIALOGUE, BY_ID)
    report = ground_query("horror in space, like Alien (1979). Kurt Russell, marines", vocab, ["The Thing (1982)"], 32)
    assert report.query == "horror in space, like Alien (1979)"
    assert report.ungrounded_words == ("Kurt", "Russell", "marines")
    assert not report.title_leak


def test_ground_query_removes_title_leaks() -> None:
    vocab = dialogue_vocabulary(SPACE_DIALOGUE, BY_ID) | {stem("aliens"), "1986", "sci", "fi"}
    report = ground_query("sci-fi horror, Aliens (1986), Sigourney Weaver", vocab, ["Aliens (1986)"], 32)
    assert report.title_leak and report.query == "sci-fi horror, Sigourney Weaver" and not report.ungrounded_words
    # A different film whose title contains the answer's ("Daddy's Home 2 (2017)" vs "Daddy's Home (2015)") is no leak.
    vocab = frozenset(stem(w) for w in words("Daddy's Home 2 (2017) comedy"))
    assert not ground_query("comedy, Daddy's Home 2 (2017)", vocab, ["Daddy's Home (2015)"], 32).title_leak
    assert ground_query("comedy, The Daddy's Home", vocab, ["Daddy's Home (2015)"], 32).query == "comedy"
    # A title made of function words leaks only with its year: "up" is a word, "Up (2009)" the film.
    vocab = frozenset({"up", "2009", stem("movies")})
    assert not ground_query("movies up", vocab, ["Up (2009)"], 32).title_leak
    assert ground_query("movies, Up (2009)", vocab, ["Up (2009)"], 32).query == "movies"


def test_ground_query_cuts_to_max_words_and_keeps_the_first_line() -> None:
    vocab = frozenset(stem(w) for w in "scary space movies crew".split())
    report = ground_query('"scary space movies, crew"\nsecond line', vocab, [], 3)
    assert report.query == "scary space movies"
    # Nothing but function words left: no query.
    assert ground_query("- Genre: with the", vocab, [], 32).query == ""


# ---------------------------------------------------------------------------------------------------------------
# Grounded teacher


def test_grounded_teacher_uses_only_dialogue_words_and_never_the_title() -> None:
    teacher = GroundedTeacher(ITEMS, num_queries=4, max_query_words=32, min_genre_share=0.0)
    ex = example(SPACE_DIALOGUE, ["thing"])
    facets = teacher.facets(ex, BY_ID)
    assert facets.genres[0] == "horror"  # from "scary", and it fits the true item
    assert "comedy" not in facets.genres  # "No comedies"
    assert facets.references == ["Alien (1979)"]  # Jaws was disliked
    assert facets.people == ["Sigourney Weaver"]
    assert any("space" in p for p in facets.phrases)
    candidates = teacher.write([ex], BY_ID)[0]
    assert 1 <= len(candidates) <= 4 and len(set(candidates)) == len(candidates)
    vocab = dialogue_vocabulary(ex.context, BY_ID)
    for q in candidates:
        report = ground_query(q, vocab, ["The Thing (1982)"], 32)
        assert report.query == q and not report.title_leak and not report.ungrounded_words, q
        assert "Jaws" not in q and "Thing" not in q


def test_grounded_teacher_orders_by_the_true_item() -> None:
    context = [Turn("user", "I like scary movies and action. Loved Jaws (1975), Heat (1995) and Alien (1979).",
                    ["jaws", "heat", "alien"])]
    # Embeddings where Alien is closest to the answer (The Thing), Heat farthest.
    ids = [it.item_id for it in ITEMS]
    emb = np.eye(len(ids), dtype=np.float32)
    emb[ids.index("alien")] = emb[ids.index("thing")] * 0.9 + emb[ids.index("alien")] * 0.1
    emb[ids.index("jaws")] = emb[ids.index("thing")] * 0.5 + emb[ids.index("jaws")] * 0.5
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    teacher = GroundedTeacher(ITEMS, 4, 32, emb, ids, min_genre_share=0.0)
    facets = teacher.facets(example(context, ["thing"]), BY_ID)
    assert facets.references == ["Alien (1979)", "Jaws (1975)", "Heat (1995)"]
    assert facets.genres == ["horror", "action"]  # the true item's genre first
    assert facets.fit["genres"] == 1 and facets.fit["references"] == 1
    # Without embeddings: shared genres and people decide.
    facets = GroundedTeacher(ITEMS, 4, 32, min_genre_share=0.0).facets(example(context, ["thing"]), BY_ID)
    assert facets.references[0] == "Alien (1979)"


def test_grounded_teacher_leaves_out_a_mentioned_true_item() -> None:
    context = [Turn("user", "I loved Alien (1979) and Aliens (1986)", ["alien", "aliens"])]
    teacher = GroundedTeacher(ITEMS, 4, 32, min_genre_share=0.0)
    assert teacher.facets(example(context, ["aliens"]), BY_ID).references == ["Alien (1979)"]


def test_grounded_teacher_writes_nothing_for_chit_chat() -> None:
    teacher = GroundedTeacher(ITEMS, 4, 32, min_genre_share=0.0)
    assert teacher.write([example([Turn("user", "Hi! How are you?")], ["up"]), example([], ["up"])], BY_ID) == [[], []]


def test_grounded_teacher_checks_its_settings() -> None:
    with pytest.raises(ConfigError, match="num_queries must be >= 1"):
        GroundedTeacher(ITEMS, 0, 32)
    with pytest.raises(ConfigError, match="together"):
        GroundedTeacher(ITEMS, 4, 32, item_embeddings=np.zeros((8, 2), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Retrieval feedback


class FakeTeacher:
    """Returns canned candidates per example id."""

    def __init__(self, canned: dict[str, list[str]]) -> None:
        self.canned = canned

    def write(self, examples, items):  # noqa: ANN001, ANN201 - the Teacher protocol's shape
        return [list(self.canned.get(ex.example_id, [])) for ex in examples]


def _keyword_index() -> tuple[ItemIndex, KeywordEncoder]:
    encoder = KeywordEncoder(["horror", "space", "alien", "shark", "crime", "family", "comedy", "thief"])
    emb = encoder.encode([it.text for it in ITEMS], 8, False)
    return ItemIndex.from_embeddings(emb, [it.item_id for it in ITEMS], IndexConfig(), seed=0), encoder


def test_target_ranks_are_the_retrieval_positions() -> None:
    index, encoder = _keyword_index()
    ranks = target_ranks(["shark", "crime thief", ""], [["jaws"], ["heat", "jaws"], ["up"]], index, encoder, 3, 2)
    assert ranks[0] == (1,) and ranks[1] == (1, None) and ranks[2] == (None,)


def test_feedback_keeps_the_best_ranked_candidate_ties_shorter() -> None:
    index, encoder = _keyword_index()
    context = [Turn("user", "I want horror in space with an alien, or a shark, a crime, a thief, family fun")]
    canned = {
        # best rank for "jaws": the shark query; the leaking and ungrounded parts are filtered out first
        "a_1": ["horror family", "shark horror Jaws (1975)", "horror shark Roy Scheider"],
        # no candidate finds "heat" in the top 3: all tie, so the shortest wins
        "b_1": ["family family family", "family", "horror alien space"],
        "c_1": ["nothing grounded here"],  # every content word ungrounded -> no candidate -> skipped
    }
    examples = [example(context, ["jaws"], "a_1"), example(context, ["heat"], "b_1"), example(context, ["up"], "c_1")]
    examples.append(example(context, ["not-in-catalog"], "d_1"))
    cfg = DistillConfig(num_queries=3, feedback_top_k=3, batch_size=4)
    results, stats = distill_examples(examples, FakeTeacher(canned), BY_ID, index, encoder, cfg)
    by_id = {d.example.example_id: d for d in results}
    assert sorted(by_id) == ["a_1", "b_1"]
    a = by_id["a_1"]
    assert a.kept.query == "shark horror" and a.kept.best_rank == 1 and a.kept.title_leak
    assert [c.query for c in a.candidates] == ["horror family", "shark horror", "horror shark"]
    assert a.to_row()["candidates"][1] == {"query": "shark horror", "rank": 1}
    assert by_id["b_1"].kept.query == "family" and by_id["b_1"].kept.best_rank is None
    row = a.to_row()
    assert row["completion"] == [{"role": "assistant", "content": "shark horror"}]
    assert row["prompt"] == query_prompt(context) and row["title_leak"] is True and row["ungrounded_words"] == 0
    assert stats["examples"] == 4 and stats["written"] == 2
    assert stats["skipped_no_catalog_target"] == 1 and stats["skipped_no_grounded_candidate"] == 1
    assert stats["candidates_with_title_leak"] == 1
    assert stats["candidates_with_ungrounded_words"] == 2 and stats["ungrounded_words_removed"] == 4
    assert stats["kept_with_title_leak"] == 0 and stats["kept_ungrounded_words"] == 0
    assert stats["kept"]["recall@10"] == 0.5 and stats["kept"]["mean_best_rank"] == 2.5  # ranks 1 and cap 4
    assert set(stats["raw_dialogue"]) == set(stats["kept"]) == set(stats["teacher_first"])


def test_llm_teacher_samples_candidates_and_the_filter_judges_them() -> None:
    class CannedLLM:
        def __init__(self) -> None:
            self.calls: list[tuple[int, float]] = []

        def generate(self, prompts, max_new_tokens, temperature=0.0, stop=None):  # noqa: ANN001, ANN201
            self.calls.append((len(prompts), temperature))
            assert "Alien (1979)" not in prompts[0][1]["content"].split("hint only")[1]  # the title is hidden
            return ["horror in space, Alien (1979) vibes" if temperature == 0 else "Aliens (1986) with marines"] * len(
                prompts
            )

    llm = CannedLLM()
    teacher = LLMTeacher(llm, num_queries=3, max_query_words=16, temperature=0.7, batch_size=2)
    examples = [example(SPACE_DIALOGUE, ["alien"], "a_1"), example(SPACE_DIALOGUE, ["nope"], "b_1")]
    out = teacher.write(examples, BY_ID)
    assert out[0] == ["horror in space, Alien (1979) vibes"] + ["Aliens (1986) with marines"] * 2 and out[1] == []
    assert llm.calls == [(1, 0.0), (1, 0.7), (1, 0.7)]
    vocab = dialogue_vocabulary(SPACE_DIALOGUE, BY_ID)
    report = ground_query(out[0][0], vocab, ["Alien (1979)"], 16)
    assert report.title_leak and report.query == "horror in space" and report.ungrounded_words == ("vibes",)
    with pytest.raises(ConfigError, match="teacher_temperature must be > 0"):
        LLMTeacher(llm, num_queries=2, max_query_words=16, temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Prompts and rewriting


def test_query_prompt_is_domain_neutral_and_cut_from_the_left() -> None:
    messages = query_prompt(SPACE_DIALOGUE)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "movie" not in messages[0]["content"].lower() and "search query" in messages[0]["content"]
    assert messages[1]["content"].splitlines()[1].startswith("User: Something scary set in space.")
    long = [Turn("user", "old " * 400), Turn("assistant", "recent answer"), Turn("user", "latest wish")]
    content = query_prompt(long)[1]["content"]
    assert content == "Assistant: recent answer\nUser: latest wish" and len(content) <= MAX_DIALOGUE_CHARS
    assert query_prompt([])[1]["content"] == NO_DIALOGUE


def test_teacher_prompt_hides_the_title() -> None:
    assert item_hint(BY_ID["alien"]).startswith("Genre: horror, sci-fi.")
    content = teacher_prompt(SPACE_DIALOGUE, [BY_ID["thing"]], 20)[1]["content"]
    assert "The Thing" not in content and "an alien hides among researchers" in content and "20 words" in content


def test_rewrite_queries_batches_and_cleans() -> None:
    class EchoLLM:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def generate(self, prompts, max_new_tokens, temperature=0.0, stop=None):  # noqa: ANN001, ANN201
            assert temperature == 0.0 and stop == ["\n"]
            self.batches.append(len(prompts))
            return [f'  "query {p[1]["content"].split()[-1]}"  \nextra' for p in prompts]

    llm = EchoLLM()
    contexts = [[Turn("user", f"want {i}")] for i in range(5)]
    assert rewrite_queries(llm, contexts, batch_size=2, max_new_tokens=8) == [f"query {i}" for i in range(5)]
    assert llm.batches == [2, 2, 1]
    queries, latencies = rewrite_queries_timed(llm, contexts, 4, 8)
    assert len(queries) == len(latencies) == 5 and latencies[0] == latencies[3] and all(t >= 0 for t in latencies)
    assert clean_query("\n\n  `a   b`  ") == "a b" and clean_query("") == ""
    with pytest.raises(ConfigError, match="rewrite.batch_size"):
        rewrite_queries(llm, contexts, 0, 8)
