"""LoRA training loop: masking, batching, learning, accumulation, resume after a kill, adapter save/load/merge."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from reges.errors import ConfigError, DataError, ModelError
from reges.llm import lora
from reges.llm.lora import (
    IGNORE_INDEX,
    LoraTrainConfig,
    TokenizedExample,
    collate,
    load_adapter,
    merge_adapter,
    plan_epoch,
    tokenize_example,
    train_lora,
)

QUESTIONS = [
    "Hello !",
    "Can you recommend a movie ?",
    "I like scary movies",
    "What is good ?",
    "I loved Alien (1979)",
    "Which one do you recommend ?",
    "thanks",
    "I like comedy and romance",
    "Have you seen Heat (1995) ?",
    "a funny family movie",
]


def chat(question: str, answer: str = "Jaws") -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
    }


EXAMPLES = [chat(q) for q in QUESTIONS]

# The tiny model's hidden size is 16 and its lm_head is random with std 0.02, so without an adapter on lm_head the
# logits cannot move far enough to learn a fixed answer (RMSNorm bounds the hidden state).
FAST = LoraTrainConfig(
    r=4,
    alpha=8.0,
    dropout=0.0,
    target_modules=("q_proj", "v_proj", "o_proj", "lm_head"),
    lr=3e-2,
    warmup_ratio=0.1,
    max_steps=12,
    batch_size=4,
    save_every_steps=0,
    device="cpu",
    log_every=0,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture()
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


def fresh_model(tiny_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_tokenize_masks_exactly_the_prompt(tokenizer) -> None:
    ex = tokenize_example(tokenizer, chat("Hello !"), max_prompt_tokens=100, max_completion_tokens=100)
    prompt_tokens = (
        ["<|im_start|>", "system", "You", "are", "a", "helpful", "AI", "assistant", "named", "SmolLM", ","]
        + ["trained", "by", "Hugging", "Face", "<|im_end|>"]
        + ["<|im_start|>", "user", "Hello", "!", "<|im_end|>", "<|im_start|>", "assistant"]
    )
    completion_tokens = ["Jaws", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(ex.input_ids) == prompt_tokens + completion_tokens
    jaws, end = tokenizer.convert_tokens_to_ids(completion_tokens)
    assert ex.labels == [IGNORE_INDEX] * len(prompt_tokens) + [jaws, end]


def test_tokenize_truncates_prompt_left_and_completion_right(tokenizer) -> None:
    ex = tokenize_example(tokenizer, chat("Hello !", "The Matrix"), max_prompt_tokens=3, max_completion_tokens=2)
    assert tokenizer.convert_ids_to_tokens(ex.input_ids) == [
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
        "The",
        "Matrix",
    ]
    assert ex.labels[:3] == [IGNORE_INDEX] * 3
    assert ex.labels[3:] == tokenizer.convert_tokens_to_ids(["The", "Matrix"])


def test_tokenize_rejects_malformed_examples(tokenizer) -> None:
    with pytest.raises(DataError, match="'prompt' and 'completion'"):
        tokenize_example(tokenizer, {"prompt": "hi"}, 10, 10)
    with pytest.raises(DataError, match="role"):
        tokenize_example(
            tokenizer, {"prompt": [{"content": "hi"}], "completion": [{"role": "a", "content": "b"}]}, 9, 9
        )


def test_collate_pads_right_with_ignored_labels() -> None:
    batch = collate([TokenizedExample([5, 6, 7], [-100, 6, 7]), TokenizedExample([8], [8])], pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_plan_epoch_is_a_seeded_length_grouped_permutation() -> None:
    lengths = [3, 9, 1, 7, 5, 2, 8, 4, 6, 10, 11]
    plan = plan_epoch(lengths, step_size=4, epoch=0, seed=0)
    assert sorted(i for step in plan for i in step) == list(range(len(lengths)))
    assert sorted(len(step) for step in plan) == [3, 4, 4]
    for step in plan:  # longest first inside a step, so micro-batches hold similar lengths
        assert [lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True)
    assert plan == plan_epoch(lengths, step_size=4, epoch=0, seed=0)
    # inside one window of LENGTH_GROUP_STEPS steps, neighbours in length share a step: the longest four together
    assert sorted(max(plan, key=lambda s: max(lengths[i] for i in s))) == [1, 6, 9, 10]
    # past one window, epochs get different steps
    many = [i % 37 for i in range(500)]
    assert plan_epoch(many, 2, epoch=0, seed=0) != plan_epoch(many, 2, epoch=1, seed=0)
    assert plan_epoch(many, 2, epoch=0, seed=0) != plan_epoch(many, 2, epoch=0, seed=1)


def test_training_learns_a_fixed_answer(tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    model = fresh_model(tiny_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_lora(model, tokenizer, EXAMPLES, FAST, tmp_path, show_progress=False)

    assert result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < 0.25 * result.losses[0], result.losses
    # base weights frozen, LoRA weights trained (lora_B starts at zero)
    for name, p in result.model.named_parameters():
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if "lora_" in name:
            assert p.requires_grad
        else:
            assert torch.equal(p, before[base_name]), name
    saved = adapter_weights(result.adapter_dir)
    assert any("lora_B" in k for k in saved) and all(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)

    # the model now answers the fixed word to an unseen question
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "I like drama"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = result.model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.convert_ids_to_tokens(out[0, ids.shape[1] :].tolist()) == ["Jaws", "<|im_end|>"]

    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["steps"] == 12 and state["losses"] == result.losses
    assert state["tokens_per_s"] > 0 and state["peak_rss_mb"] > 0 and state["wall_time_s"] > 0
    assert not (tmp_path / "checkpoints").exists()


def test_gradient_accumulation_matches_a_big_batch(tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    # Completions of different lengths, so a per-micro-batch mean would differ from the per-step mean.
    answers = ["Jaws", "The Matrix (1999)", "Up", "Heat (1995) or Her"]
    examples = [chat(q, answers[i % len(answers)]) for i, q in enumerate(QUESTIONS)]
    cfg = replace(FAST, max_steps=5, batch_size=4, grad_accum=1)
    big = train_lora(fresh_model(tiny_dir), tokenizer, examples, cfg, tmp_path / "big", False)
    cfg = replace(FAST, max_steps=5, batch_size=2, grad_accum=2)
    accum = train_lora(fresh_model(tiny_dir), tokenizer, examples, cfg, tmp_path / "accum", False)
    assert big.losses == pytest.approx(accum.losses, rel=1e-5)
    a, b = adapter_weights(big.adapter_dir), adapter_weights(accum.adapter_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


class Killed(Exception):
    """Stands in for SIGKILL: the process state is lost, only what is on disk stays."""


def test_resume_after_kill_ends_with_the_same_weights(
    tiny_dir: Path, tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dropout on: the resumed run must also restore the RNG to draw the same dropout masks
    cfg = replace(FAST, dropout=0.1, max_steps=9, batch_size=2, save_every_steps=2)
    whole = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, tmp_path / "whole", False)

    out = tmp_path / "killed"
    real_collate = lora.collate
    calls = {"n": 0}

    def collate_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # during step 7: after the step-6 checkpoint, before the next one
            raise Killed
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(lora, "collate", collate_then_die)
    with pytest.raises(Killed):
        train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, out, False)
    monkeypatch.setattr(lora, "collate", real_collate)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]  # keeps the last 2
    assert not (out / "adapter").exists()
    (out / "checkpoints" / ".tmp-step-8" / "adapter").mkdir(parents=True)  # a kill in the middle of a save

    changed = replace(cfg, lr=1e-3)
    with pytest.raises(ConfigError, match="lr: 0.03 -> 0.001"):
        train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, changed, out, False)
    with pytest.raises(DataError, match="examples differ"):
        train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES[:-1], cfg, out, False)

    resumed = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, out, False)
    assert resumed.resumed_from_step == 6
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    a, b = adapter_weights(whole.adapter_dir), adapter_weights(resumed.adapter_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert not (out / "checkpoints").exists()


def test_training_leaves_the_global_generators_alone_and_repeats_for_a_seed(
    tiny_dir: Path, tokenizer, tmp_path: Path, rng_states
) -> None:
    # dropout on: the LoRA init and the masks draw from torch's global generator, seeded for the call only
    cfg = replace(FAST, dropout=0.1, max_steps=3)
    torch.manual_seed(123)
    before = rng_states()
    first = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, tmp_path / "first", False)
    assert rng_states() == before
    torch.rand(3)  # the caller draws in between: the next run must not notice
    second = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, tmp_path / "second", False)
    assert first.losses == second.losses
    a, b = adapter_weights(first.adapter_dir), adapter_weights(second.adapter_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, replace(cfg, seed=1), tmp_path / "other", False)
    assert other.losses != first.losses


@pytest.fixture(scope="module")
def trained(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    return train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, FAST, tmp_path_factory.mktemp("run"), False)


def sample_batch(tokenizer) -> dict[str, torch.Tensor]:
    rows = [tokenize_example(tokenizer, chat(q, "Titanic"), 64, 8) for q in QUESTIONS[:3]]
    return collate(rows, tokenizer.pad_token_id)


def test_saved_adapter_reloads_to_identical_logits(trained, tiny_dir: Path, tokenizer) -> None:
    batch = sample_batch(tokenizer)
    with torch.no_grad():
        expected = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = fresh_model(tiny_dir)
        base_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reloaded = load_adapter(base, trained.adapter_dir)
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(base_logits, expected, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_merge_gives_the_same_logits(trained, tiny_dir: Path, tokenizer, recwarn: pytest.WarningsRecorder) -> None:
    batch = sample_batch(tokenizer)
    with_adapter = load_adapter(fresh_model(tiny_dir), trained.adapter_dir)
    # peft's read of a deprecated transformers attribute stays out of the user's terminal
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
    with torch.no_grad():
        expected = with_adapter(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged = merge_adapter(with_adapter)
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_hfllm_serves_the_adapter_merged(trained, tiny_dir: Path, tokenizer) -> None:
    from reges.config import LLMConfig
    from reges.llm.hf import HFLLM

    batch = sample_batch(tokenizer)
    llm = HFLLM.from_config(LLMConfig(model=str(tiny_dir), device="cpu", dtype="float32"), str(trained.adapter_dir))
    assert not any("lora_" in name for name, _ in llm.model.named_parameters())
    with torch.no_grad():
        expected = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = llm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem(trained, tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="needs a model with a LoRA adapter"):
        merge_adapter(fresh_model(tiny_dir))
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_adapter(fresh_model(tiny_dir), tmp_path)
    with pytest.raises(ModelError, match="already has a LoRA adapter"):
        train_lora(
            load_adapter(fresh_model(tiny_dir), trained.adapter_dir), tokenizer, EXAMPLES, FAST, tmp_path, False
        )
    with pytest.raises(DataError, match="training example 1"):
        train_lora(fresh_model(tiny_dir), tokenizer, [EXAMPLES[0], {"prompt": []}], FAST, tmp_path, False)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, LoraTrainConfig(batch_size=0), tmp_path, False)
    with pytest.raises(ConfigError, match="does not fit the model"):
        cfg = replace(FAST, target_modules=("nope",))
        train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, tmp_path, False)


@pytest.mark.slow
def test_smollm2_adapter_reloads_to_the_same_greedy_output(tmp_path: Path) -> None:
    from reges.config import LLMConfig
    from reges.llm.models import load_hf

    llm = LLMConfig(device="cpu", dtype="float32")
    model, tokenizer = load_hf(llm)
    examples = [chat(q, "Jaws (1975)") for q in QUESTIONS]
    cfg = LoraTrainConfig(
        lr=3e-3,
        warmup_ratio=0.0,
        dropout=0.0,
        max_steps=10,
        batch_size=4,
        save_every_steps=0,
        device="cpu",
        log_every=0,
    )
    result = train_lora(model, tokenizer, examples, cfg, tmp_path, False)
    assert result.losses[-1] < result.losses[0]

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Any good shark movie?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        expected = result.model.generate(**prompt, max_new_tokens=12, do_sample=False)
        base, _ = load_hf(llm)
        got = load_adapter(base, result.adapter_dir).generate(**prompt, max_new_tokens=12, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Jaws" in tokenizer.decode(got[0, prompt["input_ids"].shape[1] :])


# --- listwise objective --------------------------------------------------------------------------------------------

CANDIDATES = ["Jaws", "Alien", "Heat"]


def listwise(question: str, answer: str = "Heat", order: tuple[int, ...] = (0, 1, 2)) -> dict:
    return {**chat(question, answer), "candidates": [CANDIDATES[i] for i in order]}


def test_listwise_scores_are_what_rank_computes(tiny_dir: Path, tokenizer) -> None:
    from reges.llm.hf import HFLLM

    model = fresh_model(tiny_dir).eval()
    example = lora.tokenize_listwise_example(tokenizer, listwise("I like scary movies"), 512, 16)
    assert example.target == 2 and all(a[-1] == tokenizer.eos_token_id for a in example.candidates)
    with torch.no_grad():
        sums = [float(r.sum()) for r in lora.listwise_token_logprobs(model, example, torch.device("cpu"))]
    ranked = HFLLM(model, tokenizer, n_ctx=2048, batch_size=4).rank(
        [{"role": "user", "content": "I like scary movies"}], CANDIDATES
    )
    assert sums == pytest.approx(ranked, abs=1e-4)


def test_listwise_training_learns_to_choose(tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    from reges.llm.hf import HFLLM

    orders = [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1)]
    examples = [listwise(q, order=orders[i % len(orders)]) for i, q in enumerate(QUESTIONS)]
    cfg = replace(FAST, objective="listwise", max_steps=10)
    result = train_lora(fresh_model(tiny_dir), tokenizer, examples, cfg, tmp_path, show_progress=False)
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    llm = HFLLM(result.model, tokenizer, n_ctx=2048, batch_size=4)
    scores = llm.rank([{"role": "user", "content": "I like drama"}], ["Alien", "Heat", "Jaws"])
    assert max(range(3), key=lambda i: scores[i]) == 1  # an unseen question: the trained choice
    with pytest.raises(DataError, match="not one of the example's candidates"):
        lora.tokenize_listwise_example(tokenizer, listwise("hi", answer="Up"), 512, 16)
    with pytest.raises(DataError, match="distinct"):
        lora.tokenize_listwise_example(tokenizer, {**chat("hi"), "candidates": ["Jaws", "Jaws"]}, 512, 16)
    with pytest.raises(ConfigError, match="objective"):
        train_lora(fresh_model(tiny_dir), tokenizer, examples, replace(cfg, objective="pairwise"), tmp_path / "x",
                   show_progress=False)


def test_gradient_checkpointing_gives_the_same_training(tiny_dir: Path, tokenizer, tmp_path: Path) -> None:
    # dropout on: recomputation must replay the masks of the first forward pass
    cfg = replace(FAST, max_steps=4, batch_size=2, grad_accum=2, dropout=0.1)
    plain = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, cfg, tmp_path / "plain", False)
    ckpt = train_lora(fresh_model(tiny_dir), tokenizer, EXAMPLES, replace(cfg, gradient_checkpointing=True),
                      tmp_path / "ckpt", False)
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-6)
    a, b = adapter_weights(plain.adapter_dir), adapter_weights(ckpt.adapter_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert not ckpt.model.is_activation_checkpointing  # switched off again for inference
