"""Per-batch RNG seeding: the randomness of training batch k is a function of (seed, k, rank).

This is how resume stays exact without saving RNG states: the training step's draws (t, eps,
segment index, prompt dropout) come from the global torch RNG, which is reseeded before every
batch from the run's seed, the batch counter (restored by Lightning with the loop state) and the
rank (so DDP ranks draw different noise). It also keeps runs reproducible whatever happened
before a batch (validation, rollouts, a different number of prefetching workers).
"""

import os

import numpy as np
import torch


def step_seed(base_seed: int, batch_index: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one (seed, batch, rank): neighbours give unrelated streams."""
    state = np.random.SeedSequence([base_seed & 0xFFFFFFFF, batch_index, rank]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def seed_batch(batch_index: int, rank: int) -> None:
    """Reseed torch's global CPU and CUDA generators for training batch `batch_index`."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by `seed_everything` (the CLI's seed)
    torch.manual_seed(step_seed(base, batch_index, rank))
