"""Deterministic, resumable, rank-aware sampling for long training runs.

The sampler yields `(epoch, index)` keys rather than bare indices, so the dataset can seed each sample's
random augmentation (and token mask) from `(seed, epoch, index)` alone. The data a step sees then depends
only on the step, not on worker count, process count or how often the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (hashing via NumPy's SeedSequence)."""
    return int(
        np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


class EpochSampler(Sampler[SampleKey]):
    """Per-epoch order from `(seed, epoch)`: a permutation, or with `weights` a weighted draw with
    replacement (e.g. modality balance). With `world_size > 1` each rank takes every world_size-th key of
    the same order (the tail is cut so all ranks get the same count). `resume(epoch, done)` skips the first
    `done` keys of that epoch on this rank, once (Lightning calls `set_epoch` at every epoch start)."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, done: int) -> None:
        self._resume = (epoch, done)

    def __len__(self) -> int:
        return self.size // self.world_size

    def order(self, epoch: int) -> torch.Tensor:
        """The whole epoch's index order (before splitting across ranks)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[SampleKey]:
        mine = self.order(self.epoch)[: len(self) * self.world_size][self.rank :: self.world_size]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        return iter([(self.epoch, int(i)) for i in mine[start:]])
