"""How candidate answers are tokenized and packed after a prompt to be scored by their likelihood.

`HFLLM.rank` (`reges.llm.hf`, inference) and the listwise LoRA loss (`reges.llm.lora`, training) both use these, so
training optimises exactly what rank mode scores. They live here, apart from both, so that neither module imports
the other for them (`hf` imports `lora` for adapters; `lora` needs no transformers generation code).
"""

from __future__ import annotations

from typing import Any

import torch


def answer_token_ids(tokenizer: Any, prompt: str, answers: list[str]) -> list[list[int]]:
    """Token ids of each answer as the tokenizer produces them right after the rendered `prompt`.

    Why not `encode(answer)`: byte-level BPE tokenizers encode a word differently at the start of a text and
    after other text ("Matrix" vs "ĠMatrix"); the model sees answers after the generation prompt, so that is
    where they are tokenized. When the prompt's own tokens change at the junction (a merge across it), the
    answer is tokenized alone. `HFLLM.rank` and the listwise LoRA objective (`reges.llm.lora`) both tokenize
    candidates with it, so training scores what `rank` scores.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    out = []
    for answer, ids in zip(answers, tokenizer([prompt + a for a in answers], add_special_tokens=False)["input_ids"],
                           strict=True):
        out.append(ids[n:] if ids[:n] == prompt_ids else tokenizer(answer, add_special_tokens=False)["input_ids"])
    return out


def packed_answers(n_prompt: int, answers: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
    """Attention and positions for `answers` packed into one sequence after an `n_prompt`-token prompt.

    Returns the (width, n_prompt + width) boolean mask of what each packed token may attend to (the whole prompt,
    and the tokens before it in its own answer) and each token's position id (restarting at the prompt's end for
    every answer), so each answer is scored as if it followed the prompt alone. `HFLLM.rank` and the listwise
    LoRA loss share it: training optimises exactly what rank mode scores.
    """
    width = sum(len(a) for a in answers)
    allowed = torch.zeros((width, n_prompt + width), dtype=torch.bool)
    allowed[:, :n_prompt] = True
    positions: list[int] = []
    offset = 0
    for a in answers:
        block = torch.ones((len(a), len(a)), dtype=torch.bool).tril()
        allowed[offset : offset + len(a), n_prompt + offset : n_prompt + offset + len(a)] = block
        positions += range(n_prompt, n_prompt + len(a))
        offset += len(a)
    return allowed, positions
