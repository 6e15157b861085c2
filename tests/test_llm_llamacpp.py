"""llama.cpp backend: GBNF grammars, and agreement with the transformers backend on the same weights.

Fast tests use a tiny F32 GGUF (exact weights, so both backends agree to float precision). Slow tests use the
bundled SmolLM2 Q4_1 GGUF, where llama.cpp computes with quantized activations and transformers with the dequantized
weights in fp32: they agree closely, not exactly (see docs/results/llm.md).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from reges.config import LLMConfig
from reges.errors import ModelError
from reges.llm.base import gbnf_choice
from reges.llm.hf import HFLLM

llama_cpp = pytest.importorskip("llama_cpp")
REPO = Path(__file__).resolve().parents[1]

from reges.llm.llamacpp import LlamaCppLLM, SequenceScorer  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "I loved The Matrix"}],
    [
        {"role": "system", "content": "You are a movie recommender."},
        {"role": "user", "content": "Hello! I like scary movies and science fiction. Can you recommend a movie?"},
    ],
]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_cpp(tiny_gguf: Path) -> LlamaCppLLM:
    return LlamaCppLLM(str(tiny_gguf), n_ctx=256, threads=1)  # a tiny model gains nothing from more threads


@pytest.fixture(scope="session")
def tiny_hf(tiny_gguf: Path) -> HFLLM:
    folder = tiny_gguf.parent / "tiny-hf"  # the HF model the GGUF was written from
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return HFLLM(model, AutoTokenizer.from_pretrained(folder), n_ctx=256)


# --- grammar -------------------------------------------------------------------------------------------------------
def test_gbnf_escapes_quotes_backslashes_and_control_characters() -> None:
    grammar = gbnf_choice(['Say "Hi"', "back\\slash", "two\nlines", "Amélie (2001)", 'Say "Hi"'])
    assert grammar == 'root ::= "Say \\"Hi\\"" | "back\\\\slash" | "two\\nlines" | "Amélie (2001)"\n'
    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp parses it


# --- tiny F32 GGUF: the two backends agree -------------------------------------------------------------------------
def test_renders_and_tokenizes_like_transformers(tiny_cpp: LlamaCppLLM, tiny_hf: HFLLM) -> None:
    for messages in PROMPTS:
        assert tiny_cpp.render(messages) == tiny_hf.render(messages)
        assert tiny_cpp.encode(tiny_cpp.render(messages)) == tiny_hf.encode(tiny_hf.render(messages))


def test_greedy_generation_matches_transformers(tiny_cpp: LlamaCppLLM, tiny_hf: HFLLM) -> None:
    ours = tiny_cpp.generate(PROMPTS, max_new_tokens=10)
    theirs = tiny_hf.generate(PROMPTS, max_new_tokens=10)
    # The random model emits stray byte tokens: transformers writes U+FFFD for invalid UTF-8, llama.cpp drops it.
    assert ours == [t.replace("\ufffd", "") for t in theirs]


def test_rank_matches_transformers(tiny_cpp: LlamaCppLLM, tiny_hf: HFLLM) -> None:
    candidates = ["The Matrix", "The Matrix Reloaded", "Jaws", "Amélie (2001)"]
    for messages in PROMPTS:
        assert tiny_cpp.rank(messages, candidates) == pytest.approx(tiny_hf.rank(messages, candidates), abs=1e-3)
        assert tiny_cpp.rank(messages, candidates, length_normalized=True) == pytest.approx(
            tiny_hf.rank(messages, candidates, length_normalized=True), abs=1e-3
        )



def test_rank_scores_alike_in_one_batch_and_in_groups(tiny_gguf: Path, tiny_cpp: LlamaCppLLM) -> None:
    # All candidates in one decode (the default), one candidate per decode (2 sequences: the prompt and one), and
    # groups cut by a small batch: the same scores (F32 weights, so to float precision).
    candidates = ["The Matrix", "The Matrix Reloaded", "Jaws", "Amélie (2001)", "Heat", "Alien"]
    together = tiny_cpp.rank(PROMPTS[1], candidates)
    one_by_one = LlamaCppLLM(str(tiny_gguf), n_ctx=256, threads=1)
    one_by_one._scorer = SequenceScorer(one_by_one.llm, max_seqs=2)
    assert one_by_one.rank(PROMPTS[1], candidates) == pytest.approx(together, abs=1e-4)
    # Batches of 12 tokens: the prompt goes through in chunks, the candidates' 22 tokens in groups of <= 12.
    small = LlamaCppLLM(str(tiny_gguf), n_ctx=256, threads=1)
    small._scorer = SequenceScorer(small.llm)
    small._scorer.n_batch = 12
    groups: list[list[int]] = []
    score_group = small._scorer._score_group
    small._scorer._score_group = lambda group, *rest: (groups.append(list(group)), score_group(group, *rest))[1]
    assert small.rank(PROMPTS[1], candidates) == pytest.approx(together, abs=1e-4)
    assert len(groups) >= 2 and sorted(sum(groups, [])) == list(range(len(candidates)))
    with pytest.raises(ModelError, match="max_seqs must be >= 2"):
        SequenceScorer(tiny_cpp.llm, max_seqs=1)



def test_rank_equals_the_one_decode_per_candidate_reference(tiny_cpp: LlamaCppLLM) -> None:
    # benchmarks/rank_batching.py times the procedure rank used before against rank: on F32 weights they agree
    spec = importlib.util.spec_from_file_location("rank_batching", REPO / "benchmarks" / "rank_batching.py")
    assert spec is not None and spec.loader is not None
    rank_batching = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rank_batching)
    candidates = ["The Matrix", "The Matrix Reloaded", "Jaws", "Amélie (2001)"]
    reference = rank_batching.SequentialRank(tiny_cpp)
    for messages in PROMPTS:
        assert reference.rank(messages, candidates) == pytest.approx(tiny_cpp.rank(messages, candidates), abs=1e-4)


def test_choose_returns_candidates_verbatim(tiny_cpp: LlamaCppLLM, tiny_hf: HFLLM) -> None:
    candidate_lists = [['Say "Hi"', "back\\slash", "Amélie (2001)"], ["The Matrix", "The Matrix Reloaded", "Jaws"]]
    chosen = tiny_cpp.choose(PROMPTS, candidate_lists)
    assert [c in cands for c, cands in zip(chosen, candidate_lists, strict=True)] == [True, True]
    # Greedy under a grammar and greedy under a trie take the same path when the tokenization is the canonical one.
    assert chosen[1] == tiny_hf.choose(PROMPTS[1:], candidate_lists[1:])[0]


def test_stop_strings_and_errors(tiny_cpp: LlamaCppLLM) -> None:
    free = tiny_cpp.generate(PROMPTS[:1], max_new_tokens=10)[0]
    stop = free.split()[1]
    assert tiny_cpp.generate(PROMPTS[:1], max_new_tokens=10, stop=[stop])[0] == free[: free.index(stop)]
    with pytest.raises(ModelError, match="empty candidate list"):
        tiny_cpp.choose(PROMPTS[:1], [[]])
    with pytest.raises(ModelError, match="empty candidate list"):
        tiny_cpp.rank(PROMPTS[0], [])


def test_long_prompt_is_cut_from_the_left(tiny_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    llm = LlamaCppLLM(str(tiny_gguf), n_ctx=64, threads=1)
    long = [{"role": "system", "content": "You are a movie recommender."}] + [
        {"role": "user", "content": "I loved The Matrix and Alien. " * 30 + "Which one?"}
    ]
    with caplog.at_level(logging.WARNING, logger="reges.llm.base"):
        answers = llm.generate([long], max_new_tokens=8)
        chosen = llm.choose([long], [["Jaws", "Heat"]])
    assert "cut from the left" in caplog.text
    assert len(answers) == 1 and chosen[0] in {"Jaws", "Heat"}


def test_bad_inputs_are_model_errors(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="LoRA adapter in GGUF form"):
        LlamaCppLLM(str(tiny_gguf), lora_path=str(tmp_path / "adapter"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:3000])
    with pytest.raises(ModelError, match="llama.cpp cannot load"):
        LlamaCppLLM(str(broken))


# --- real SmolLM2 --------------------------------------------------------------------------------------------------
SMOL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a movie recommender."},
        {"role": "user", "content": "I loved The Matrix and Alien. Recommend one movie, title only."},
    ],
    [{"role": "user", "content": "List three colours."}],
    [{"role": "user", "content": "Say hello."}],
]


@pytest.fixture(scope="module")
def smol() -> Iterator[tuple[HFLLM, LlamaCppLLM]]:
    # fp32: the dequantized weights exactly. One thread: on a shared 2-core machine more threads wait on each other.
    cfg = LLMConfig(model="smollm2-135m-instruct", n_ctx=1024, dtype="float32")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `run.threads=1` would (llama.cpp takes torch's count when it loads)
    cpp = LlamaCppLLM.from_config(cfg)
    assert cpp.threads == 1
    yield HFLLM.from_config(cfg), cpp
    torch.set_num_threads(torch_threads)


@pytest.mark.slow
def test_smollm2_backends_agree(smol: tuple[HFLLM, LlamaCppLLM], caplog: pytest.LogCaptureFixture) -> None:
    hf, cpp = smol
    # Teacher-forced: next-token distributions over a real conversation nearly coincide.
    text = hf.render(SMOL_PROMPTS[1]) + "I recommend Aliens (1986), the sequel directed by James Cameron."
    ids = hf.encode(text)
    assert ids == cpp.encode(text)
    with torch.no_grad():
        hf_logprobs = torch.log_softmax(hf.model(torch.tensor([ids])).logits[0].float(), -1).numpy()
    scorer = cpp._load(logits_all=True)
    scorer.eval(ids)
    cpp_logits = scorer.scores[: len(ids)].astype(np.float64)
    cpp_logprobs = cpp_logits - cpp_logits.max(1, keepdims=True)
    cpp_logprobs -= np.log(np.exp(cpp_logprobs).sum(1, keepdims=True))
    agreement = float((hf_logprobs.argmax(1) == cpp_logprobs.argmax(1)).mean())
    kl = float((np.exp(hf_logprobs) * (hf_logprobs - cpp_logprobs)).sum(1).mean())
    assert agreement >= 0.9 and kl < 0.05

    # Greedy text: Q4_1 with 8-bit activations (llama.cpp) vs its fp32 dequantization (transformers) flips
    # near-ties, after which the texts part. Report how far they agree; require the shared start to be real text.
    hf_text = hf.generate(SMOL_PROMPTS, max_new_tokens=16)
    cpp_text = cpp.generate(SMOL_PROMPTS, max_new_tokens=16)
    identical = sum(a == b for a, b in zip(hf_text, cpp_text, strict=True))
    logging.getLogger(__name__).warning(
        "greedy texts identical for %d/%d prompts: %s vs %s", identical, len(SMOL_PROMPTS), hf_text, cpp_text
    )
    assert all(t.strip() for t in hf_text + cpp_text)

    # Ranking: totals within a fraction of a nat, same best candidate.
    candidates = ["Aliens", "Titanic", "The Matrix Reloaded", "Toy Story", "Blade Runner"]
    hf_scores = hf.rank(SMOL_PROMPTS[1], candidates)
    cpp_scores = cpp.rank(SMOL_PROMPTS[1], candidates)
    assert np.abs(np.array(hf_scores) - np.array(cpp_scores)).max() < 1.0
    assert int(np.argmax(hf_scores)) == int(np.argmax(cpp_scores))


@pytest.mark.slow
def test_smollm2_choose_on_both_backends(smol: tuple[HFLLM, LlamaCppLLM]) -> None:
    hf, cpp = smol
    question = [{"role": "user", "content": "What is the capital of France? Answer with the city name."}]
    candidates = [["Paris", "Lyon", "Marseille", "Berlin"], ["Alien", "Aliens", "The Matrix", "The Matrix Reloaded"]]
    prompts = [question, SMOL_PROMPTS[1]]
    hf_choice = hf.choose(prompts, candidates)
    cpp_choice = cpp.choose(prompts, candidates)
    assert hf_choice[0] == cpp_choice[0] == "Paris"
    assert cpp_choice[1] in candidates[1] and hf_choice[1] in candidates[1]
