"""Item Expert in memory: prompts, unique titles, free-answer matching, pick modes, end-to-end metrics by hand."""

from __future__ import annotations

import pytest
from item_expert_fakes import BY_ID, ITEMS, CannedLLM
from tiny_models import build_tiny_llama

from reges.config import LLMConfig
from reges.errors import ConfigError, DataError, ModelError
from reges.eval.metrics import (
    PickOutcome,
    bootstrap_mean_ci,
    catalog_miss_rate,
    hallucination_rate,
    success_rate,
    summarize_picks,
)
from reges.item_expert.generate import (
    Pick,
    SplitInputs,
    clean_answer,
    fuse_scores,
    match_candidate,
    pick_items,
    pick_rows,
    tune_alpha,
)
from reges.item_expert.prompts import SYSTEM_PROMPT, PromptFormat, candidate_titles, card_line, item_prompt
from reges.records import Item, RecExample, Turn
from reges.titles import TitleMatcher


def test_titles_get_their_year_and_twins_get_their_id() -> None:
    book = Item("pride", "Pride and Prejudice", "card", 1813)
    assert candidate_titles([book, BY_ID["10"]]) == ["Pride and Prejudice (1813)", "Alien (1979)"]
    assert candidate_titles([BY_ID["16"], BY_ID["10"], BY_ID["17"]]) == [
        "Frozen (2010) [16]",
        "Alien (1979)",
        "Frozen (2010) [17]",
    ]
    # spellings that match each other are twins too; different years are not
    same = [Item("a", "The Matrix (1999)", "c"), Item("b", "Matrix, The (1999)", "c"), Item("c", "Matrix (2021)", "c")]
    assert candidate_titles(same) == ["The Matrix (1999) [a]", "Matrix, The (1999) [b]", "Matrix (2021)"]
    with pytest.raises(DataError, match="appears twice"):
        candidate_titles([BY_ID["10"], BY_ID["10"]])


def test_prompt_layout_is_compact_and_domain_neutral() -> None:
    context = [Turn("user", "Hi!"), Turn("assistant", "Hello, what do you like?"), Turn("user", "Scary stuff")]
    messages = item_prompt(context, "horror with aliens", ITEMS[:3])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT and "movie" not in SYSTEM_PROMPT.lower()
    assert messages[1]["content"] == (
        "Conversation:\nUser: Hi!\nAssistant: Hello, what do you like?\nUser: Scary stuff\n\n"
        "Request: horror with aliens\n\n"
        "Candidates:\n1. Alien (1979) | genre: horror, sci-fi\n2. Up (2009) | genre: animation, family\n"
        "3. Heat (1995) | genre: crime, drama"
    )
    no_query = item_prompt([], None, ITEMS[:1], PromptFormat(card_fields=("plot", "genre", "missing")))
    assert no_query[1]["content"] == (
        "Conversation: (none yet)\n\nCandidates:\n1. Alien (1979) | plot: A story.; genre: horror, sci-fi"
    )
    with pytest.raises(DataError, match="no candidates"):
        item_prompt(context, None, [])
    # a candidate the dialogue already named says so (unless mark_mentioned is off)
    named = [Turn("user", "I loved Up (2009)", ["11"]), Turn("assistant", "Great!")]
    marked = item_prompt(named, None, ITEMS[:2])[1]["content"]
    assert marked.endswith("1. Alien (1979) | genre: horror, sci-fi\n2. Up (2009) | genre: animation, family | "
                           "mentioned earlier")
    unmarked = item_prompt(named, None, ITEMS[:2], PromptFormat(mark_mentioned=False))[1]["content"]
    assert "mentioned" not in unmarked.split("Candidates:")[1]
    with pytest.raises(ConfigError, match="max_card_chars"):
        PromptFormat(max_card_chars=0)


def test_prompt_length_is_bounded_by_the_budgets() -> None:
    long_meta = {"genre": [f"genre{i}" for i in range(20)], "director": ["Someone With A Very Long Name" * 3]}
    items = [Item(str(i), f"A Rather Long Item Title Number {i} (2000)", "c", 2000, long_meta) for i in range(50)]
    fmt = PromptFormat(card_fields=("genre", "director"), max_card_chars=40, max_context_chars=200)
    context = [Turn("user", "word " * 500), Turn("assistant", "ok " * 500)]
    content = item_prompt(context, "q " * 400, items, fmt)[1]["content"]
    dialogue, request, candidates = content.split("\n\n")
    assert len(dialogue) <= len("Conversation:\n") + 200
    assert len(request) <= len("Request: ") + fmt.max_query_chars
    lines = candidates.splitlines()[1:]
    assert len(lines) == 50
    for i, line in enumerate(lines, 1):
        assert len(line) <= len(f"{i}. A Rather Long Item Title Number {i} (2000) | ") + 40
    wide = card_line("T", items[0], PromptFormat(card_fields=("genre",), max_card_chars=500))
    assert wide == "T | genre: genre0, genre1, genre2"  # at most 3 values per field


def test_free_answers_map_to_candidates() -> None:
    titles = ["Alien (1979)", "The Matrix (1999)", "Frozen (2010) [16]", "Frozen (2010) [17]", "Toy Story 2 (1999)"]
    assert match_candidate("Alien (1979)", titles) == 0
    assert match_candidate("  alien (1979)\nbecause it is scary", titles) == 0
    assert match_candidate("2. The Matrix (1999) | genre: action, sci-fi", titles) == 1
    assert match_candidate('"Matrix, The"', titles) == 1  # normalised, year-less
    assert match_candidate("Toy Storry 2 (1999)", titles) == 4  # fuzzy
    assert match_candidate("Frozen (2010) [17]", titles) == 3
    assert match_candidate("Frozen", titles) == 2  # twins without their id: the retriever's first
    assert match_candidate("Toy Story 3 (1999)", titles) is None  # sequels differ by their number
    # the list is closed: a listed title with a wrong year names that candidate, unless the title is ambiguous
    assert match_candidate("Alien (1990)", titles) == 0
    assert match_candidate("Alien (1990)", titles, ignore_year=False) is None
    assert match_candidate("Frozen (2013)", titles) is None  # two listed Frozens: which one is unknown
    assert match_candidate("Aliens (1986)", titles) is None
    assert match_candidate("", titles) is None
    assert clean_answer("\n\n- Heat (1995) | crime\nmore") == "Heat (1995)"


def test_pick_items_free_mode_flags_hallucinations() -> None:
    titles = [["Alien (1979)", "Up (2009)"], ["Heat (1995)", "Jaws (1975)"], ["Up (2009)", "Heat (1995)"]]
    llm = CannedLLM(["Up", "Casablanca (1942)", "heat (1995)"])
    picks = pick_items(llm, [[{"role": "user", "content": "x"}]] * 3, titles, "free", batch_size=2)
    assert [p.index for p in picks] == [1, None, 1]
    assert [p.text for p in picks] == ["Up", "Casablanca (1942)", "heat (1995)"]
    assert all(p.latency_s >= 0 and p.ranking == [] for p in picks)
    ranked = pick_items(llm, [[{"role": "user", "content": "x"}]], [["Alien (1979)", "Up (2009)"]], "rank")[0]
    assert ranked.ranking == [(1, -9.0), (0, -12.0)] and ranked.index == 1 and ranked.text == "Up (2009)"
    with pytest.raises(ConfigError, match="generate.mode"):
        pick_items(llm, [], [], "beam")
    with pytest.raises(ModelError, match="distinct"):
        pick_items(llm, [[]], [["A", "A"]], "constrained")


def test_free_rows_record_candidate_and_catalog_matches() -> None:
    examples = [RecExample(f"x{i}", "d", [], ["14"], [False]) for i in range(3)]
    inputs = SplitInputs(examples, {ex.example_id: ITEMS[:2] for ex in examples}, None)
    picks = [Pick("Up (2009)", 1, [], 0.1), Pick("Titanic (1997)", None, [], 0.2), Pick("Casablanca", None, [], 0.3)]
    catalog = TitleMatcher([(it.item_id, it.title) for it in ITEMS])
    rows = pick_rows(inputs, picks, "free", catalog)
    assert [(r["item_id"], r["in_candidates"], r["in_catalog"]) for r in rows] == [
        ("11", True, True),
        ("14", False, True),  # off the list, but a catalog item (here even the target)
        (None, False, False),  # exists nowhere: a catalog miss
    ]
    assert rows[0]["candidate_ids"] == ["10", "11"] and rows[0]["ranking"] == [] and rows[2]["latency_s"] == 0.3


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory):
    from reges.llm.hf import HFLLM

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny"), byte_level=True)
    return HFLLM.from_config(LLMConfig(model=str(folder), device="cpu", dtype="float32", batch_size=4))


def test_constrained_never_leaves_the_candidates_and_rank_scores_all(tiny_llm) -> None:
    groups = [ITEMS[0:3], ITEMS[3:8], [ITEMS[5], ITEMS[1]]]
    prompts = [item_prompt([Turn("user", "Can you recommend a movie?")], None, g) for g in groups]
    titles = [candidate_titles(g) for g in groups]
    for pick, t in zip(pick_items(tiny_llm, prompts, titles, "constrained", batch_size=2), titles, strict=True):
        assert pick.index is not None and pick.text == t[pick.index]
    for pick, t, prompt in zip(pick_items(tiny_llm, prompts, titles, "rank"), titles, prompts, strict=True):
        assert sorted(i for i, _ in pick.ranking) == list(range(len(t)))
        scores = [s for _, s in pick.ranking]
        assert scores == sorted(scores, reverse=True) and pick.index == pick.ranking[0][0]
        assert scores[0] == pytest.approx(max(tiny_llm.rank(prompt, t)), abs=1e-4)
    free = pick_items(tiny_llm, prompts, titles, "free", max_new_tokens=4)
    assert all(p.index is None or p.text.strip() for p in free)


def _outcome(example_id: str, dialogue_id: str, item_id: str | None, targets: list[str], mentioned: list[bool],
             in_candidates: bool = True, in_catalog: bool = True, candidates: tuple[str, ...] = ()) -> PickOutcome:
    return PickOutcome(example_id, dialogue_id, item_id, in_candidates, in_catalog, tuple(targets), tuple(mentioned),
                       candidates)


OUTCOMES = [
    _outcome("a", "d1", "1", ["1", "2"], [True, False], candidates=("1", "2", "3")),  # repeats a mentioned item
    _outcome("b", "d1", "5", ["5"], [False], candidates=("5", "6")),  # right
    _outcome("c", "d2", None, ["7"], [False], False, False, ("8", "9")),  # hallucinated, not even in the catalog
    _outcome("d", "d3", "4", ["9"], [False], False, True, ("9", "4")),  # off-list catalog item, target was shown
    _outcome("e", "d3", "3", [], [], candidates=("3",)),  # no target: scored by no protocol
]


def test_end_to_end_metrics_by_hand() -> None:
    assert success_rate(OUTCOMES, "all") == pytest.approx(2 / 4)  # a, b
    assert success_rate(OUTCOMES, "novel") == pytest.approx(1 / 4)  # b only: a's pick was already mentioned
    assert hallucination_rate(OUTCOMES) == pytest.approx(2 / 4)
    assert catalog_miss_rate(OUTCOMES) == pytest.approx(1 / 4)
    assert success_rate([], "all") == 0.0
    s = summarize_picks(OUTCOMES, "novel", resamples=0, seed=0)
    assert s["n_examples"] == 4 and s["n_dialogues"] == 3
    assert s["n_target_in_candidates"] == 3  # a (novel "2" shown), b, d
    assert s["success_given_candidates"]["mean"] == pytest.approx(1 / 3)
    assert s["success_rate"]["ci_low"] == s["success_rate"]["mean"] == s["success_rate"]["ci_high"] == 0.25
    with pytest.raises(ConfigError, match="protocol"):
        OUTCOMES[0].targets("some")


def test_clustered_bootstrap_keeps_dialogues_together() -> None:
    # d1: 2 of 2 flagged, d2: 0 of 2; every resample draws whole dialogues, so shares are 0, 0.5 or 1
    low, high = bootstrap_mean_ci([True, True, False, False], ["d1", "d1", "d2", "d2"], resamples=500, seed=0)
    assert low == 0.0 and high == 1.0
    assert bootstrap_mean_ci([True, False], ["x", "y"], 0, 0) == (0.5, 0.5)
    assert bootstrap_mean_ci([], [], 10, 0) == (0.0, 0.0)
    with pytest.raises(DataError):
        bootstrap_mean_ci([True], [], 10, 0)


def test_free_mode_tiny_llm_is_deterministic(tiny_llm) -> None:
    prompt = item_prompt([Turn("user", "Hello!")], None, ITEMS[:2])
    titles = candidate_titles(ITEMS[:2])
    a = pick_items(tiny_llm, [prompt], [titles], "free", max_new_tokens=3)[0]
    b = pick_items(tiny_llm, [prompt], [titles], "free", max_new_tokens=3)[0]
    assert (a.text, a.index) == (b.text, b.index)



def test_fusion_alpha_moves_from_the_retriever_order_to_the_expert() -> None:
    retriever, llm = [3.0, 2.0, 1.0], [-9.0, -1.0, -5.0]
    assert fuse_scores(retriever, llm, 0.0).argmax() == 0  # the retriever's top-1
    assert fuse_scores(retriever, llm, 1.0).argmax() == 1  # the expert's
    assert fuse_scores([1.0, 1.0], [0.0, 2.0], 0.1).argmax() == 1  # flat retriever scores: the expert decides
    with pytest.raises(ConfigError, match="fusion_alpha"):
        fuse_scores(retriever, llm, 1.5)
    with pytest.raises(ModelError, match="scores"):
        fuse_scores(retriever, llm[:2], 0.5)


def _fusion_inputs(targets: list[str]) -> SplitInputs:
    examples = [RecExample(f"x{i}", f"d{i}", [], [t], [False]) for i, t in enumerate(targets)]
    return SplitInputs(examples, {ex.example_id: ITEMS[:3] for ex in examples}, None,
                       {ex.example_id: [3.0, 2.0, 1.0] for ex in examples})


def test_tune_alpha_trusts_the_expert_only_where_it_helps() -> None:
    # the retriever always ranks item 10 first; the targets are 11, 11, 10; the expert's scores favour 11 each time
    inputs = _fusion_inputs(["11", "11", "10"])
    picks = [Pick("Up (2009)", 1, [(1, -1.0), (0, -4.0), (2, -6.0)], 0.1)] * 3
    alpha, table = tune_alpha(inputs, picks)
    assert [r["alpha"] for r in table][0] == 0.0 and table[-1]["alpha"] == 1.0 and len(table) == 21
    assert table[0]["success_all"] == pytest.approx(1 / 3) and table[-1]["success_all"] == pytest.approx(2 / 3)
    assert 0.0 < alpha <= 1.0 and next(r for r in table if r["alpha"] == alpha)["success_all"] == pytest.approx(2 / 3)
    rows = pick_rows(inputs, picks, "rank", None, alpha)
    assert [r["item_id"] for r in rows] == ["11", "11", "11"]
    assert rows[0]["llm_scores"] == [-4.0, -1.0, -6.0] and rows[0]["ranking"][0][0] == "11"
    assert [r["item_id"] for r in pick_rows(inputs, picks, "rank", None, 0.0)] == ["10", "10", "10"]
    # an expert that is always wrong gets alpha 0: the retriever's order (ties go to the smaller alpha)
    assert tune_alpha(_fusion_inputs(["10", "10", "12"]), picks)[0] == 0.0
    with pytest.raises(ModelError, match="rank-mode"):
        tune_alpha(inputs, [Pick("Up (2009)", 1, [], 0.1)] * 3)
