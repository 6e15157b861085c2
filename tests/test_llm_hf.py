"""transformers backend on tiny random Llamas: generation, left truncation, trie-constrained choice, ranking."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from reges.errors import ModelError
from reges.llm.base import truncate_left
from reges.llm.hf import HFLLM, _row_major

PROMPTS = [
    [{"role": "user", "content": "I loved The Matrix"}],
    [
        {"role": "system", "content": "You are a movie recommender."},
        {"role": "user", "content": "Hello! I like scary movies and science fiction. Can you recommend a movie?"},
    ],
    [{"role": "user", "content": "Jaws"}],
]


@pytest.fixture(scope="session")
def word_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_word"))


@pytest.fixture(scope="session")
def byte_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_byte"), byte_level=True)


def make_llm(folder: Path, n_ctx: int = 512, prompt_lookup_tokens: int = 0, seed: int = 0) -> HFLLM:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return HFLLM(model, tokenizer, n_ctx=n_ctx, batch_size=8, prompt_lookup_tokens=prompt_lookup_tokens, seed=seed)


@pytest.fixture
def word_llm(word_folder: Path) -> HFLLM:
    return make_llm(word_folder)


@pytest.fixture
def byte_llm(byte_folder: Path) -> HFLLM:
    return make_llm(byte_folder)


def biased(llm: HFLLM, token: str, amount: float = 50.0, prompt_lookup_tokens: int = 0) -> HFLLM:
    """A copy of `llm` whose output layer adds `amount` to one token's logit: the model then wants that token."""
    model = copy.deepcopy(llm.model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[llm.tokenizer.convert_tokens_to_ids(token)] = amount
    model.lm_head = head
    return HFLLM(
        model, llm.tokenizer, n_ctx=llm.n_ctx, batch_size=llm.batch_size, prompt_lookup_tokens=prompt_lookup_tokens
    )


def count_forwards(llm: HFLLM) -> list[int]:
    """A one-element list that counts the model's forward passes from now on."""
    calls = [0]
    llm.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def manual_logprob(llm: HFLLM, messages: list[dict[str, str]], answer: str) -> tuple[float, int]:
    """log p(answer + EOS | prompt) from one plain forward pass over the whole tokenized conversation."""
    prompt = llm.render(messages)
    prompt_len = len(llm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = llm.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"] + [llm.tokenizer.eos_token_id]
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    total = sum(logprobs[pos - 1, ids[pos]].item() for pos in range(prompt_len, len(ids)))
    return total, len(ids) - prompt_len


# --- generate ------------------------------------------------------------------------------------------------------
def test_generate_returns_one_answer_per_prompt_within_the_token_budget(word_llm: HFLLM) -> None:
    answers = word_llm.generate(PROMPTS, max_new_tokens=5)
    assert len(answers) == len(PROMPTS)
    for a in answers:
        assert 0 < len(word_llm.tokenizer(a, add_special_tokens=False)["input_ids"]) <= 5
        assert "<|im_end|>" not in a and "<pad>" not in a


def test_batched_greedy_equals_unbatched(word_llm: HFLLM, byte_llm: HFLLM) -> None:
    for llm in (word_llm, byte_llm):
        batched = llm.generate(PROMPTS, max_new_tokens=12)
        single = [llm.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
        assert batched == single
        assert len(set(batched)) > 1  # the prompts (of different lengths) do lead to different answers


def test_stop_string_cuts_the_answer(word_llm: HFLLM) -> None:
    free = word_llm.generate(PROMPTS[:1], max_new_tokens=12)[0]
    words = free.split()
    stop = words[len(words) // 2]
    cut = word_llm.generate(PROMPTS[:1], max_new_tokens=12, stop=[stop])[0]
    assert cut == free[: free.index(stop)]


@pytest.mark.parametrize("folder", ["word", "byte"])
def test_prompt_lookup_decoding_writes_what_greedy_writes(folder: str, word_folder: Path, byte_folder: Path) -> None:
    path = word_folder if folder == "word" else byte_folder
    plain, lookup = make_llm(path), make_llm(path, prompt_lookup_tokens=10)
    for prompt in PROMPTS:
        for stop in (None, ["a"]):
            assert lookup.generate([prompt], 12, stop=stop) == plain.generate([prompt], 12, stop=stop)


def test_prompt_lookup_checks_copied_tokens_in_fewer_passes(word_llm: HFLLM) -> None:
    # A model that always says "Matrix", asked about a prompt that says it many times: lookup finds "Matrix Matrix"
    # in the prompt and drafts the rest, so the 12 tokens take far fewer than 12 decoding passes.
    prompt = [{"role": "user", "content": "Matrix " * 20}]
    plain = biased(word_llm, "Matrix")
    lookup = biased(word_llm, "Matrix", prompt_lookup_tokens=10)
    plain_calls, lookup_calls = count_forwards(plain), count_forwards(lookup)
    expected = plain.generate([prompt], 12)
    assert expected == [" ".join(["Matrix"] * 12)]
    assert lookup.generate([prompt], 12) == expected
    assert plain_calls[0] == 12 and lookup_calls[0] <= 4


def test_prompt_lookup_is_off_for_batches_and_sampling(word_llm: HFLLM) -> None:
    lookup = biased(word_llm, "Matrix", prompt_lookup_tokens=10)
    calls = count_forwards(lookup)
    prompt = [{"role": "user", "content": "Matrix " * 20}]
    lookup.generate([prompt, prompt], 6)
    assert calls[0] == 6
    lookup.generate([prompt], 6, temperature=0.7)
    assert calls[0] == 12


def test_prompt_lookup_rejects_a_negative_length(word_folder: Path) -> None:
    with pytest.raises(ModelError, match="prompt_lookup_tokens"):
        make_llm(word_folder, prompt_lookup_tokens=-1)


def test_sampling_draws_from_the_models_own_seeded_stream(word_folder: Path, rng_states) -> None:
    # transformers samples from torch's global generator; each HFLLM lends it its own stream (llama.cpp's `seed`)
    first_llm, second_llm = make_llm(word_folder), make_llm(word_folder)
    torch.manual_seed(123)
    before = rng_states()
    first = first_llm.generate(PROMPTS, 8, temperature=1.0)
    assert rng_states() == before  # the caller's generator is as it was
    torch.rand(3)  # and what the caller draws does not move the model's stream
    assert second_llm.generate(PROMPTS, 8, temperature=1.0) == first  # the same seed, the same samples
    assert first_llm.generate(PROMPTS, 8, temperature=1.0) == second_llm.generate(PROMPTS, 8, temperature=1.0)
    assert make_llm(word_folder, seed=1).generate(PROMPTS, 8, temperature=1.0) != first


def test_output_head_gets_row_major_input(byte_llm: HFLLM) -> None:
    # The last-position slice that logits_to_keep=1 hands the head has batch stride T*H; the hook re-lays it out
    # (otherwise torch takes a bmm that copies the whole head weight per call on CPU).
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    head = byte_llm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append((tuple(args[0].shape), args[0].stride())))
    try:
        byte_llm.generate(PROMPTS[1:2], max_new_tokens=2)
        byte_llm.rank(PROMPTS[0], ["Alien", "Jaws"])
    finally:
        handle.remove()
    hidden = byte_llm.model.config.hidden_size
    assert seen[0] == ((1, 1, hidden), (hidden, hidden, 1))  # the generation prefill's last position
    assert all(stride == _row_major(shape) for shape, stride in seen)


def test_generate_rejects_a_zero_budget(word_llm: HFLLM) -> None:
    with pytest.raises(ModelError, match="max_new_tokens"):
        word_llm.generate(PROMPTS, max_new_tokens=0)


# --- left truncation -----------------------------------------------------------------------------------------------
def test_truncate_left_keeps_system_and_the_most_recent_text(caplog: pytest.LogCaptureFixture) -> None:
    def words(messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages)

    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three four five"},
        {"role": "assistant", "content": "six seven"},
        {"role": "user", "content": "eight nine ten eleven twelve"},
    ]
    assert truncate_left(chat, words, 100) is chat
    with caplog.at_level(logging.WARNING, logger="reges.llm.base"):
        out = truncate_left(chat, words, 10)
    assert out[0] == chat[0]
    assert words(out) <= 10
    assert out[-1]["content"].endswith("ten eleven twelve")
    assert "cut from the left" in caplog.text


def test_truncate_left_fails_when_nothing_fits() -> None:
    with pytest.raises(ModelError, match="n_ctx"):
        truncate_left([{"role": "user", "content": "a b c"}], lambda m: 50 + len(m[0]["content"]), 10)


def test_long_prompt_is_cut_from_the_left_with_a_warning(word_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    llm = make_llm(word_folder, n_ctx=60)
    dialogue = " ".join(["I loved The Matrix and Alien ."] * 20) + " Which one do you recommend ?"
    messages = [{"role": "system", "content": "You are a movie recommender."}, {"role": "user", "content": dialogue}]
    with caplog.at_level(logging.WARNING, logger="reges.llm.base"):
        text = llm.prompt_text(messages, answer_tokens=10)
        answers = llm.generate([messages], max_new_tokens=10)
    assert "cut from the left" in caplog.text
    assert len(llm.encode(text)) <= 50
    assert "You are a movie recommender." in text  # the system message survives
    assert "Which one do you recommend ?" in text  # the end of the dialogue survives
    assert len(answers) == 1


# --- choose --------------------------------------------------------------------------------------------------------
def test_trie_blocks_the_token_the_model_wants(word_llm: HFLLM) -> None:
    llm = biased(word_llm, "Titanic")
    assert llm.generate(PROMPTS[:1], max_new_tokens=3)[0] == "Titanic Titanic Titanic"  # unconstrained, it says it
    candidates = ["The Matrix", "Jaws", "Heat"]
    chosen = llm.choose(PROMPTS, [candidates] * len(PROMPTS))
    assert all(c in candidates for c in chosen)


def test_candidate_that_is_a_prefix_of_another(word_llm: HFLLM) -> None:
    candidates = ["The Matrix Reloaded", "The Matrix", "Jaws"]
    # A model that wants to end its answer stops right after the shorter title...
    assert biased(word_llm, "<|im_end|>").choose(PROMPTS[:1], [candidates]) == ["The Matrix"]
    # ... one that wants "Reloaded" goes on to the longer one.
    assert biased(word_llm, "Reloaded").choose(PROMPTS[:1], [candidates]) == ["The Matrix Reloaded"]
    # One that wants "Matrix" gets a Matrix title, not Jaws.
    assert biased(word_llm, "Matrix").choose(PROMPTS[:1], [candidates])[0].startswith("The Matrix")


def test_choose_batches_prompts_with_different_candidate_lists(byte_llm: HFLLM) -> None:
    candidate_lists = [["The Matrix", "Jaws"], ["Heat", "Toy Story (1995)", "Up"], ["Her"]]
    chosen = byte_llm.choose(PROMPTS, candidate_lists)
    assert [c in cands for c, cands in zip(chosen, candidate_lists, strict=True)] == [True, True, True]
    assert chosen[2] == "Her"
    assert chosen == [byte_llm.choose([p], [c])[0] for p, c in zip(PROMPTS, candidate_lists, strict=True)]


def test_trie_uses_the_tokens_that_follow_the_generation_prompt(byte_llm: HFLLM) -> None:
    """Byte-level BPE spells a word differently after a space: the trie must hold the in-context tokens."""
    prompt = byte_llm.render(PROMPTS[0])
    prompt_ids = byte_llm.encode(prompt)
    title = "The Matrix"
    in_context = byte_llm.encode(prompt + title)[len(prompt_ids) :]
    assert byte_llm.answer_ids(prompt, [title]) == [in_context]
    assert in_context != byte_llm.encode(" " + title)  # "ĠThe" is a different token from "The"
    # The model wants the leading-space spelling, which is not how the answer is tokenized: still a candidate.
    llm = biased(byte_llm, "ĠThe")
    assert llm.generate(PROMPTS[:1], max_new_tokens=2)[0] == " The The"
    assert llm.choose(PROMPTS[:1], [[title, "Jaws"]])[0] in {title, "Jaws"}


def test_choose_needs_candidates(word_llm: HFLLM) -> None:
    with pytest.raises(ModelError, match="empty candidate list for prompt 1"):
        word_llm.choose(PROMPTS[:2], [["Jaws"], []])
    with pytest.raises(ModelError, match="one list per prompt"):
        word_llm.choose(PROMPTS[:2], [["Jaws"]])
    with pytest.raises(ModelError, match="non-empty string"):
        word_llm.choose(PROMPTS[:1], [["Jaws", "  "]])


# --- rank ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["word", "byte"])
def test_rank_equals_a_manual_log_softmax(which: str, word_llm: HFLLM, byte_llm: HFLLM) -> None:
    llm = word_llm if which == "word" else byte_llm
    candidates = ["The Matrix", "The Matrix Reloaded", "Jaws", "Toy Story (1995)"]
    for messages in PROMPTS:
        scores = llm.rank(messages, candidates)
        means = llm.rank(messages, candidates, length_normalized=True)
        for c, score, mean in zip(candidates, scores, means, strict=True):
            total, n_tokens = manual_logprob(llm, messages, c)
            assert score == pytest.approx(total, abs=1e-4)
            assert mean == pytest.approx(total / n_tokens, abs=1e-4)


def test_rank_scores_many_candidates_in_chunks(word_llm: HFLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = ["The Matrix", "Jaws", "Heat", "Up", "Her", "Titanic", "Alien"]
    whole = word_llm.rank(PROMPTS[1], candidates)
    monkeypatch.setattr("reges.llm.hf.RANK_CHUNK_TOKENS", 5)  # several packs, one title per pack at most
    assert word_llm.rank(PROMPTS[1], candidates) == pytest.approx(whole, abs=1e-5)


def test_rank_needs_candidates(word_llm: HFLLM) -> None:
    with pytest.raises(ModelError, match="empty candidate list"):
        word_llm.rank(PROMPTS[0], [])
