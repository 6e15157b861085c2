"""Test doubles for retrieval: an exact keyword encoder and a tiny real SentenceTransformer folder."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from reges.retrieval.encoder import l2_normalize


class KeywordEncoder:
    """Fake `Encoder`: one dimension per keyword, a text's vector counts the keywords it contains (L2-normalised)."""

    def __init__(self, keywords: list[str]) -> None:
        self.keywords = keywords

    def encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), len(self.keywords)), dtype=np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for j, keyword in enumerate(self.keywords):
                out[i, j] = words.count(keyword)
        return l2_normalize(out)


class SeededTextEncoder:
    """Fake `Encoder`: each text's vector is a seeded Gaussian draw keyed by the text (L2-normalised), so any number
    of distinct texts get distinct, reproducible embeddings."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        return l2_normalize(np.array(rows, dtype=np.float32).reshape(len(texts), self.dim))


def build_tiny_sentence_transformer(path: Path, texts: list[str]) -> Path:
    """A random 16-dim StaticEmbedding model over a WordLevel vocabulary of `texts`, saved as a model folder."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    torch.manual_seed(0)
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=16)]).save(str(path))
    return path


def build_tiny_bert_sentence_transformer(path: Path, texts: list[str]) -> Path:
    """A random 2-layer, 32-dim BERT with mean pooling over a WordLevel vocabulary of `texts`, saved as a model
    folder: the same module names as MiniLM (query, key, value, dense), so LoRA adapts it as it does the real one."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[CLS]",
                                                                                   "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    base = path.parent / f"{path.name}-bert"
    bert.save_pretrained(str(base))
    fast.save_pretrained(str(base))
    transformer = Transformer(str(base), max_seq_length=64)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean")]).save(str(path))
    return path
