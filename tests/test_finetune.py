"""Encoder fine-tuning: false negatives, hard-negative mining, the masked loss, training and exact resume."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from retrieval_fakes import KeywordEncoder, build_tiny_sentence_transformer
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Dense, Dropout

from reges.config import TrainRetrieverConfig
from reges.records import Item, RecExample, Turn
from reges.retrieval import finetune
from reges.retrieval.finetune import (
    Pair,
    build_pairs,
    contrastive_loss,
    false_negative_ids,
    finetune_encoder,
    mine_hard_negatives,
)

ITEMS = {
    "10": Item("10", "Alien (1979)", "Alien (1979). horror space monster"),
    "11": Item("11", "Up (2009)", "Up (2009). family animation balloons"),
    "12": Item("12", "Heat (1995)", "Heat (1995). crime heist city"),
    "13": Item("13", "Jaws (1975)", "Jaws (1975). horror shark beach"),
    "14": Item("14", "Alien", "Alien. horror space monster (a duplicate id of the same film)"),
    "15": Item("15", "Notting Hill (1999)", "Notting Hill (1999). romance comedy london"),
    "16": Item("16", "Toy Story (1995)", "Toy Story (1995). family animation toys"),
    "17": Item("17", "Ronin (1998)", "Ronin (1998). crime heist cars"),
}
EXAMPLES = [
    RecExample("d1_1", "d1", [Turn("user", "I want something scary like Jaws", ["13"])], ["10", "12"], [False, False]),
    RecExample("d2_1", "d2", [Turn("user", "a film for my kids")], ["11"], [False]),
    RecExample("d3_1", "d3", [Turn("user", "a clever heist")], ["17"], [False]),
    RecExample("d4_1", "d4", [Turn("user", "a funny love story")], ["15"], [False]),
    RecExample("d5_1", "d5", [Turn("user", "animated toys for children")], ["16"], [False]),
    RecExample("d6_1", "d6", [], ["11"], [False]),  # no context: no dialogue pair
    RecExample("d7_1", "d7", [Turn("user", "hi")], ["missing"], [False]),  # target outside the catalog
]


def test_false_negatives_and_pairs() -> None:
    keys = {i: finetune.title_key(it.title) for i, it in ITEMS.items()}
    # targets, the mentioned item, and "Alien" under its second id
    assert false_negative_ids(EXAMPLES[0], keys) == {"10", "12", "13", "14"}
    pairs = build_pairs(EXAMPLES, ITEMS, "full", 1000, distill_queries={"d2_1": "children animation", "d6_1": " "})
    assert [(p.positive_id, p.source) for p in pairs] == [
        ("10", "dialogue"), ("12", "dialogue"), ("11", "dialogue"), ("17", "dialogue"), ("15", "dialogue"),
        ("16", "dialogue"), ("11", "distill"),
    ]
    assert pairs[0].anchor == "User: I want something scary like Jaws"
    assert pairs[-1].anchor == "children animation"


def test_mined_negatives_skip_false_negatives() -> None:
    encoder = KeywordEncoder(["horror", "space", "shark", "family", "crime", "romance"])
    ids = list(ITEMS)
    emb = encoder.encode([ITEMS[i].text for i in ids], 8, False)
    pairs = build_pairs(EXAMPLES[:2], ITEMS, "full", 1000)
    negs = mine_hard_negatives(pairs, encoder, emb, ids, num_negatives=3, seed=0)
    assert [len(n) for n in negs] == [3, 3, 3]
    for p, n in zip(pairs, negs, strict=True):
        assert not set(n) & (p.excluded_ids | {p.positive_id})
        assert len(set(n)) == 3
    assert negs == mine_hard_negatives(pairs, encoder, emb, ids, num_negatives=3, seed=0)
    assert mine_hard_negatives(pairs, encoder, emb, ids, num_negatives=0, seed=0) == [[], [], []]


def test_loss_equals_mnrl_without_mask_and_drops_masked_columns() -> None:
    torch.manual_seed(0)
    anchors, positives, negatives = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    docs = torch.cat([positives, negatives])
    mnrl = MultipleNegativesRankingLoss(SentenceTransformer(modules=[torch.nn.Identity()]))
    want = mnrl.compute_loss_from_embeddings([anchors, positives, negatives], None)
    got = contrastive_loss(anchors, docs, torch.zeros(4, 8, dtype=torch.bool))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # masking column 5 for row 0 equals removing it from row 0's candidates
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, 5] = True
    mask[1, 1] = True  # a positive is never masked for its own anchor
    keep = [j for j in range(8) if j != 5]
    unit = torch.nn.functional.normalize
    logits0 = 20 * unit(anchors[:1], dim=-1) @ unit(docs[keep], dim=-1).T
    reordered = torch.cat([docs[1:4], docs[:1], docs[4:]])  # rows 1-3 with their positives first
    rest = contrastive_loss(anchors[1:], reordered, torch.zeros(3, 8, dtype=torch.bool))
    want_masked = (torch.nn.functional.cross_entropy(logits0, torch.tensor([0])) + 3 * rest) / 4
    assert float(contrastive_loss(anchors, docs, mask)) == pytest.approx(float(want_masked), rel=1e-5)


def _tiny_model(tmp_path: Path) -> SentenceTransformer:
    texts = [it.text for it in ITEMS.values()] + [t.content for ex in EXAMPLES for t in ex.context] + ["User:"]
    path = build_tiny_sentence_transformer(tmp_path / "st", texts)
    return SentenceTransformer(str(path), device="cpu")


def _mean_loss(model: SentenceTransformer, pairs: list[Pair]) -> float:
    with torch.no_grad():
        a = model.encode([p.anchor for p in pairs], convert_to_tensor=True)
        d = model.encode([ITEMS[p.positive_id].text for p in pairs], convert_to_tensor=True)
        mask = finetune._batch_mask(pairs, [p.positive_id for p in pairs])
        return float(contrastive_loss(a, d, mask))


CFG = TrainRetrieverConfig(epochs=8, batch_size=3, lr=0.05, warmup_ratio=0.0, save_every_steps=0, chunk_size=2)


def test_finetune_lowers_the_loss_and_changes_the_weights(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path)
    before = copy.deepcopy(model.state_dict())
    pairs = build_pairs(EXAMPLES, ITEMS, "full", 1000)
    negatives = [["12"] if p.positive_id != "12" and "12" not in p.excluded_ids else ["15"] for p in pairs]
    loss_before = _mean_loss(model, pairs)
    result = finetune_encoder(model, pairs, negatives, ITEMS, CFG, seed=0)
    assert result.steps == 8 * 2 and result.pairs == 6 and result.pairs_per_s > 0
    assert np.isfinite(result.loss_end) and result.loss_end < result.loss_start
    assert _mean_loss(model, pairs) < loss_before
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_finetune_leaves_the_global_generators_alone_and_repeats_for_a_seed(tmp_path: Path, rng_states) -> None:
    pairs = build_pairs(EXAMPLES, ITEMS, "full", 1000)
    cfg = dataclasses.replace(CFG, epochs=2)

    def train(seed: int) -> dict[str, torch.Tensor]:
        # a Dropout module, so the masks (torch's global generator) decide the weights
        model = SentenceTransformer(modules=[*_tiny_model(tmp_path), Dropout(0.5)], device="cpu")
        torch.manual_seed(123)  # (building the tiny model seeds torch itself)
        before = rng_states()
        finetune_encoder(model, pairs, [[] for _ in pairs], ITEMS, cfg, seed=seed)
        assert rng_states() == before
        return model.state_dict()

    first = train(0)
    second = train(0)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train(1)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtype_sets_the_compute_dtype_and_keeps_float32_weights(tmp_path: Path, dtype: str) -> None:
    """bfloat16 is mixed precision: the layers compute in bf16, the weights (and AdamW) stay float32."""
    static = _tiny_model(tmp_path)
    model = SentenceTransformer(modules=[*static, Dense(16, 16)], device="cpu")  # a Linear for autocast to act on
    seen: set[torch.dtype] = set()
    model[1].linear.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    pairs = build_pairs(EXAMPLES, ITEMS, "full", 1000)
    cfg = dataclasses.replace(CFG, dtype=dtype)
    result = finetune_encoder(model, pairs, [[] for _ in pairs], ITEMS, cfg, seed=0)
    assert seen == {getattr(torch, dtype)} and result.dtype == dtype
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert np.isfinite(result.loss_end) and result.loss_end < result.loss_start


def test_resume_after_a_kill_gives_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = build_pairs(EXAMPLES, ITEMS, "full", 1000)
    negatives = [[] for _ in pairs]
    cfg = TrainRetrieverConfig(epochs=2, batch_size=2, lr=0.05, warmup_ratio=0.2, save_every_steps=2, chunk_size=0)
    reference = _tiny_model(tmp_path)
    finetune_encoder(reference, pairs, negatives, ITEMS, cfg, seed=1)

    real_save = finetune._save_checkpoint

    def save_then_die(root: Path, step: int, *args: object, **kwargs: object) -> None:
        real_save(root, step, *args, **kwargs)  # type: ignore[arg-type]
        if step == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    monkeypatch.setattr(finetune, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune_encoder(_tiny_model(tmp_path), pairs, negatives, ITEMS, cfg, seed=1, checkpoint_dir=ckpt)
    monkeypatch.setattr(finetune, "_save_checkpoint", real_save)
    assert [p.name for p in finetune._checkpoints(ckpt)] == ["step-4"]
    resumed = _tiny_model(tmp_path)
    result = finetune_encoder(resumed, pairs, negatives, ITEMS, cfg, seed=1, checkpoint_dir=ckpt)
    assert result.resumed_from_step == 4
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
    other = TrainRetrieverConfig(epochs=3, batch_size=2, lr=0.05, save_every_steps=2)
    with pytest.raises(finetune.DataError, match="cannot resume"):
        finetune_encoder(_tiny_model(tmp_path), pairs, negatives, ITEMS, other, seed=1, checkpoint_dir=ckpt)
