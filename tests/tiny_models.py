"""Tiny, random-weight chat LLMs built on the fly so LLM code runs in tests without any download.

`build_tiny_llama(path)` writes an HF model folder (a 2-layer Llama with hidden size 16 and a tokenizer
with a ChatML chat template like SmolLM2's) that `AutoModelForCausalLM.from_pretrained(path)` and
`reges.llm.models.load_hf` load like any real model. The weights are random (seed 0), so the text it
writes is gibberish, but it is deterministic: greedy decoding gives the same tokens on every run.

Two tokenizers are available:
- WordLevel (default): one token per word or punctuation run; simple to reason about in tests.
- byte-level BPE (`byte_level=True`): GPT-2 style, as SmolLM2 uses, where a word after a space is a
  different token ("Ġthe") than at the start of a text ("the"). Tests of trie decoding use it to check
  that candidates are tokenized as they appear after the generation prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-135M-Instruct's chat template (from its GGUF metadata), verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words the tests use: chat roles, the default system prompt, movie titles, dialogue words.
TRAINING_TEXT = """\
system user assistant
You are a helpful AI assistant named SmolLM, trained by Hugging Face.
You are a movie recommender. Pick one movie from the candidates. Answer with the title only.
Hello! I like scary movies and science fiction. Can you recommend a movie for tonight?
I loved The Matrix (1999) and Alien (1979). Have you seen Aliens (1986) or The Thing (1982)?
The Matrix Reloaded (2003), The Matrix Revolutions (2003), Titanic (1997), Jaws (1975), Heat (1995).
Star Wars (1977), The Shining (1980), The Godfather (1972), Toy Story (1995), Up (2009), Her (2013).
Candidates: 1. The Matrix 2. Titanic 3. Jaws. Which one do you recommend? yes no maybe ok thanks
the a an and or of in on to is it was that this what which who how why with for from by at as
good great bad funny sad comedy horror drama action romance thriller animated family classic
0 1 2 3 4 5 6 7 8 9 10 11 12 . , ! ? : ; ( ) - ' " *
"""


def _train_tokenizer(text: str, byte_level: bool) -> Tokenizer:
    """Train a small tokenizer on `text`; special tokens get the first ids (0..3)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if byte_level:
        tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def build_tiny_llama(path: Path, byte_level: bool = False, extra_text: str = "", seed: int = 0) -> Path:
    """Write a tiny random Llama chat model and its tokenizer to `path` (an HF model folder).

    Args:
        path: Folder to write (created if missing).
        byte_level: Use a GPT-2 style byte-level BPE tokenizer (leading-space tokens) instead of WordLevel.
        extra_text: More text to train the tokenizer on (words a test needs in the vocabulary).
        seed: Seed for the random weights.

    Returns:
        `path`, for chaining into `from_pretrained`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(TRAINING_TEXT + extra_text, byte_level)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    return path


def _permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k projection rows -> llama.cpp's rotary layout (as llama.cpp's convert_hf_to_gguf.py does)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def build_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the tiny byte-level Llama of `build_tiny_llama(byte_level=True)` as an F32 GGUF file.

    Both llama.cpp and transformers (`gguf_file=`) load it, and its weights are exact (F32, no quantization), so
    the two backends must agree to float precision on it: fast tests of GGUF loading, dequantization caching and
    the llama.cpp backend without the 98 MB SmolLM2.

    Args:
        path: The .gguf file to write; the HF folder it is made from goes next to it (`<stem>-hf`).
        seed: Seed for the random weights.

    Returns:
        `path`.
    """
    import json

    import gguf

    path = Path(path)
    folder = build_tiny_llama(path.parent / f"{path.stem}-hf", byte_level=True, seed=seed)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    cfg = model.config
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    token_types = [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<unk>"])
    writer.add_pad_token_id(vocab["<pad>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", _permute_qk(state[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", _permute_qk(state[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        )
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
