"""The global random generators, seeded for one training call and given back to the caller after it.

Library code draws its own randomness from local generators (`np.random.default_rng(seed)`, `random.Random(seed)`).
Two draws cannot be moved off torch's global generator: the dropout masks and the parameter inits inside torch
modules (a module takes no generator of its own). So training seeds the global generators, inside `fork_seeded`,
which gives the caller's states back when the block ends: a library call leaves no trace on the process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def fork_seeded(seed: int) -> Iterator[None]:
    """Seed torch's, Python's and numpy's global generators with `seed` for the block; restore the caller's after.

    CUDA: when CUDA is already in use, the current device's generator is given back too. When it is not, the CUDA
    generators are seeded (torch does that lazily, so a block that starts CUDA, as under torchrun, is seeded too) but
    not given back: forking them would start CUDA on devices the block may never use (other ranks' GPUs).

    Args:
        seed: The seed (a run's `run.seed`). Code inside may reseed (per-rank seeds, a checkpoint's saved states).

    Example:
        >>> with fork_seeded(0):
        ...     model = get_peft_model(base, lora_config)  # LoRA init and dropout draw from the seeded generators
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
