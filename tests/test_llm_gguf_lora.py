"""PEFT LoRA -> GGUF LoRA conversion: llama.cpp's layout, the q/k permutation (llama only), refusals, and llama.cpp
itself with both real models (SmolLM2: llama, Qwen2.5-Coder: qwen2)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import load_file
from tiny_models import build_tiny_gguf, build_tiny_llama
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from reges.errors import ModelError
from reges.llm.gguf_lora import convert_lora_to_gguf, permute_qk_rows

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_base_gguf(model, path: Path, arch: str = "llama", skip: tuple[str, ...] = ()) -> Path:
    """A GGUF of the tiny model's tensors under llama.cpp's names: the converter reads only metadata and shapes."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight",))
        if gguf_name not in skip:
            writer.add_tensor(gguf_name, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else value[0].item()


def model_like(folder: Path, **changes):
    """The tiny model's architecture with some config values changed, randomly initialised (seed 0)."""
    config = AutoConfig.from_pretrained(folder)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama with 4 query heads and 2 key/value heads, its base GGUF, and a random LoRA adapter on it."""
    root = tmp_path_factory.mktemp("gguf_lora")
    folder = build_tiny_llama(root / "model")
    model = model_like(folder, num_attention_heads=4, num_key_value_heads=2, head_dim=4)  # grouped-query attention
    base = write_base_gguf(model, root / "base.gguf")
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so every converted value is checked (B starts at 0 otherwise)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")
    return {"root": root, "folder": folder, "base": base, "adapter": root / "adapter"}


def test_permutation_is_undone_by_the_transformers_gguf_loader() -> None:
    # transformers reverses llama.cpp's q/k permutation when it loads a GGUF; ours must be its exact inverse.
    rng = np.random.default_rng(0)
    for n_head, head_dim in [(9, 64), (3, 64), (2, 8)]:
        w = rng.standard_normal((n_head * head_dim, 5)).astype(np.float32)
        permuted = permute_qk_rows(w, n_head)
        assert not np.array_equal(permuted, w)
        back = LlamaTensorProcessor()._reverse_permute_weights(permuted, n_head, n_head)
        np.testing.assert_array_equal(back, w)
    # by hand, one head of size 4: rows (0, 1 | 2, 3) -> (0, 2, 1, 3): the halves interleave
    np.testing.assert_array_equal(permute_qk_rows(np.arange(4.0)[:, None], 1)[:, 0], [0.0, 2.0, 1.0, 3.0])


def test_convert_writes_llama_cpp_names_shapes_and_metadata(tiny: dict[str, Path]) -> None:
    out = convert_lora_to_gguf(tiny["adapter"], tiny["base"], tiny["root"] / "adapter.gguf")
    reader = gguf.GGUFReader(str(out))
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "adapter.lora.alpha") == 8.0

    peft = load_file(str(tiny["adapter"] / "adapter_model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    gguf_names = {
        "q_proj": "attn_q",
        "k_proj": "attn_k",
        "v_proj": "attn_v",
        "o_proj": "attn_output",
        "gate_proj": "ffn_gate",
        "up_proj": "ffn_up",
        "down_proj": "ffn_down",
    }
    assert len(tensors) == 2 * 2 * len(TARGETS)  # 2 layers, A and B each
    for layer in range(2):
        for module, short in gguf_names.items():
            part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{module}"
            a, b = peft[f"{prefix}.lora_A.weight"], peft[f"{prefix}.lora_B.weight"]
            ga, gb = tensors[f"blk.{layer}.{short}.weight.lora_a"], tensors[f"blk.{layer}.{short}.weight.lora_b"]
            # ggml order: a.ne = [in, rank], b.ne = [rank, out] (what llama.cpp's loader checks)
            assert tuple(ga.shape) == (a.shape[1], a.shape[0]) and tuple(gb.shape) == (b.shape[1], b.shape[0])
            np.testing.assert_array_equal(np.asarray(ga.data).reshape(a.shape), a)
            expected_b = {"q_proj": permute_qk_rows(b, 4), "k_proj": permute_qk_rows(b, 2)}.get(module, b)
            np.testing.assert_array_equal(np.asarray(gb.data).reshape(b.shape), expected_b)


def test_qwen2_keeps_q_and_k_rows_as_they_are(tiny: dict[str, Path], tmp_path: Path) -> None:
    # llama.cpp converts Qwen2's q/k weights unpermuted (it runs them with NEOX RoPE, as HF does): so must we.
    model = model_like(tiny["folder"], num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    qwen = write_base_gguf(model, tmp_path / "qwen.gguf", arch="qwen2")
    reader = gguf.GGUFReader(str(convert_lora_to_gguf(tiny["adapter"], qwen, tmp_path / "a.gguf")))
    assert field(reader, "general.architecture") == "qwen2"
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(str(tiny["adapter"] / "adapter_model.safetensors"))
    for module, short in (("q_proj", "attn_q"), ("k_proj", "attn_k")):
        b = peft[f"base_model.model.model.layers.1.self_attn.{module}.lora_B.weight"]
        np.testing.assert_array_equal(np.asarray(tensors[f"blk.1.{short}.weight.lora_b"].data).reshape(b.shape), b)


def test_rslora_alpha_is_rescaled(tiny: dict[str, Path], tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes((tiny["adapter"] / "adapter_model.safetensors").read_bytes())
    config = json.loads((tiny["adapter"] / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    out = convert_lora_to_gguf(adapter, tiny["base"], tmp_path / "a.gguf")
    # PEFT scales rsLoRA by alpha / sqrt(r) = 8 / 2; llama.cpp by alpha' / r, so alpha' = 16
    assert field(gguf.GGUFReader(str(out)), "adapter.lora.alpha") == pytest.approx(16.0)


def test_refuses_what_llama_cpp_cannot_apply(tiny: dict[str, Path], tmp_path: Path) -> None:
    def adapter_with(**changes) -> Path:
        d = tmp_path / f"adapter{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes((tiny["adapter"] / "adapter_model.safetensors").read_bytes())
        config = json.loads((tiny["adapter"] / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**config, **changes}))
        return d

    with pytest.raises(ModelError, match="use_dora"):
        convert_lora_to_gguf(adapter_with(use_dora=True), tiny["base"], tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        convert_lora_to_gguf(tmp_path, tiny["base"], tmp_path / "x.gguf")
    model = model_like(tiny["folder"], num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    gpt2 = write_base_gguf(model, tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ModelError, match="'gpt2' model; GGUF LoRA conversion supports llama, qwen2"):
        convert_lora_to_gguf(tiny["adapter"], gpt2, tmp_path / "x.gguf")
    no_q = write_base_gguf(model, tmp_path / "no_q.gguf", skip=("blk.0.attn_q.weight",))
    with pytest.raises(ModelError, match="no tensor blk.0.attn_q.weight"):
        convert_lora_to_gguf(tiny["adapter"], no_q, tmp_path / "x.gguf")
    other = model_like(tiny["folder"], hidden_size=24, num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    bigger = write_base_gguf(other, tmp_path / "bigger.gguf")
    with pytest.raises(ModelError, match="trained on this base model"):
        convert_lora_to_gguf(tiny["adapter"], bigger, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_llama_cpp_applies_the_converted_adapter_like_peft(tmp_path: Path) -> None:
    """The tiny F32 GGUF has exact weights, so llama.cpp with the converted adapter must match PEFT's logits closely;
    a wrong q/k permutation, transposition or scale would not."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from reges.llm.llamacpp import extra_buffer_types

    base_gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-hf", dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=[*TARGETS, "lm_head"], init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    adapter_gguf = convert_lora_to_gguf(tmp_path / "adapter", base_gguf, tmp_path / "adapter.gguf")

    token_ids = list(range(5, 45))
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([token_ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            base = peft_model(input_ids=torch.tensor([token_ids])).logits[0].numpy()
    with extra_buffer_types(False):
        llm = llama_cpp.Llama(
            model_path=str(base_gguf),
            lora_path=str(adapter_gguf),
            n_ctx=128,
            logits_all=True,
            type_k=0,  # GGML_TYPE_F32: llama.cpp's default f16 KV cache alone moves these logits by ~1e-2
            type_v=0,
            verbose=False,
        )
    llm.eval(token_ids)
    got = np.array(llm.scores[: len(token_ids)])
    # The adapter moves the logits by up to ~6; llama.cpp reproduces PEFT to ~1e-5 (measured). Without the q/k
    # permutation the difference measured 8.2.
    assert np.abs(expected - base).max() > 1.0
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "dtype"),
    [("smollm2-135m-instruct", "float32"),
     pytest.param("qwen2.5-coder-1.5b-instruct", "bfloat16", marks=pytest.mark.qwen)],  # bf16: what its configs train
)
def test_real_gguf_adapter_matches_peft_greedy_output(tmp_path: Path, name: str, dtype: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from reges.config import LLMConfig
    from reges.llm.llamacpp import extra_buffer_types
    from reges.llm.lora import LoraTrainConfig, train_lora
    from reges.llm.models import load_hf, resolve_model

    model, tokenizer = load_hf(LLMConfig(model=name, device="cpu", dtype=dtype))
    questions = [
        "Hello!",
        "Can you recommend a movie?",
        "I like scary movies.",
        "What is good tonight?",
        "I loved Alien (1979).",
        "Any comedy?",
        "Something for the family?",
        "A classic, please.",
    ]
    examples = [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": "Jaws (1975)"}]}
        for q in questions
    ]
    cfg = LoraTrainConfig(
        lr=3e-3,
        warmup_ratio=0.0,
        dropout=0.0,
        max_steps=10,
        batch_size=4,
        save_every_steps=0,
        device="cpu",
        log_every=0,
        dtype=dtype,
    )
    result = train_lora(model, tokenizer, examples, cfg, tmp_path, False)

    base_gguf = Path(resolve_model(name).location)
    adapter_gguf = convert_lora_to_gguf(result.adapter_dir, base_gguf, tmp_path / "adapter.gguf")
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Any good shark movie?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    # Logits are compared on a longer text than the short trained answer: the prompt and a free reply.
    probe_ids = prompt_ids + tokenizer("I recommend The Shining (1980), a classic horror movie.")["input_ids"]
    with torch.no_grad():
        hf_ids = result.model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False)
        hf_lora = result.model(input_ids=torch.tensor([probe_ids])).logits[0].float().numpy()
        with result.model.disable_adapter():
            hf_base = result.model(input_ids=torch.tensor([probe_ids])).logits[0].float().numpy()
    hf_text = tokenizer.decode(hf_ids[0, len(prompt_ids) :], skip_special_tokens=True)

    def run_llama_cpp(lora_path: Path | None) -> tuple[str, np.ndarray]:
        kwargs = {"lora_path": str(lora_path)} if lora_path else {}
        with extra_buffer_types(False):  # AMX matmuls crash on our VMs (see reges.llm.llamacpp)
            llm = llama_cpp.Llama(
                model_path=str(base_gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **kwargs
            )
        text = llm.create_completion(prompt=prompt_ids, max_tokens=12, temperature=0.0)["choices"][0]["text"]
        llm.reset()
        llm.eval(probe_ids)
        return text, np.array(llm.scores[: len(probe_ids)])

    cpp_text, cpp_lora = run_llama_cpp(adapter_gguf)
    cpp_base_text, cpp_base = run_llama_cpp(None)
    assert "Jaws" in hf_text, hf_text
    assert cpp_text.strip() == hf_text.strip(), (cpp_text, hf_text)
    assert cpp_base_text.strip() != hf_text.strip()  # the adapter, not the base model, gives the answer
    # The adapter's effect on the logits agrees between PEFT and llama.cpp (llama.cpp's Q4_1 base computes with
    # 8-bit activations, so not to the last digit). With a random q/k-only adapter, the right permutation measured
    # cosine 0.99, none 0.53 and the inverse one 0.32.
    hf_delta, cpp_delta = (hf_lora - hf_base).ravel(), (cpp_lora - cpp_base).ravel()
    cosine = float(hf_delta @ cpp_delta / np.linalg.norm(hf_delta) / np.linalg.norm(cpp_delta))
    assert cosine > 0.95, cosine
    assert (hf_lora.argmax(-1) == cpp_lora.argmax(-1)).mean() > 0.9
