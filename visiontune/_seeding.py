"""Seeds derived from the run's seed, so randomness is a pure function of where it is drawn.

Each training epoch reseeds the process from ``(seed, epoch)`` and each training image is
augmented under a seed of its own, ``(seed, epoch, index)``. An epoch therefore draws the same
numbers however it is reached: straight through, re-run after ``--resume``, with any number of
loader workers, or split across DistributedDataParallel ranks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["derive_seed", "isolated_rng", "sample_seeds", "seed_all"]

_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (``SeedSequence``, so nearby keys do not
    collide)."""
    words = np.random.SeedSequence([k & _MASK64 for k in keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & ((1 << 63) - 1)


def sample_seeds(seed: int, epoch: int, count: int) -> np.ndarray:
    """One seed per dataset index for ``epoch``: ``count`` 63-bit integers."""
    state = np.random.SeedSequence([seed & _MASK64, epoch, 0x5EED]).generate_state(count, np.uint64)
    return state >> np.uint64(1)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the body under ``seed_all(seed)``, then put the global generators back as they were.

    Used per image when decoding in the main process (``--workers 0``), so an image's
    augmentation neither depends on nor disturbs the training step's draws (dropout, mixup).
    """
    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)  # CPU only: transforms run on the CPU
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
