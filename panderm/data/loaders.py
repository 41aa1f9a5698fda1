"""Resumable training loaders: a DataModule that records its position in the epoch in every checkpoint and
builds a rank-aware, seeded `EpochSampler` loader that a resumed run starts on the very next batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from panderm.data.dataset import collate
from panderm.data.sampling import EpochSampler


class DeferredLoader(DataLoader):
    """A DataLoader whose iteration starts when the first batch is asked for, calling `on_iter()` (if given)
    first.

    Lightning creates the train iterator while it sets up, before a resumed run has restored its epoch, and
    uses that iterator for the first epoch; with workers a DataLoader would hand them the dataset and draw the
    sampler's first indices right there, from epoch 0. Deferred, the sampler's `set_epoch` (Lightning's, at
    the epoch start) and `on_iter` (the epoch for a stream, whose loader has no sampler) come first.
    """

    def __init__(self, *args: Any, on_iter: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_iter = on_iter

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        if self.on_iter is not None:
            self.on_iter()
        yield from super().__iter__()


class ResumableDataModule(L.LightningDataModule):
    """The position in the epoch that checkpoints record (`state_dict`) and a resumed run starts from
    (`_resume`), plus `epoch_loader`, the train loader that honours it. Build the Trainer with
    `use_distributed_sampler=False`: the sampler splits the data across ranks itself."""

    def __init__(self) -> None:
        super().__init__()
        self._resume: dict[str, int] | None = None
        self.sampler: EpochSampler | None = None

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands (saved in every checkpoint): batches already trained on in this epoch."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        # A full count is the previous epoch's (saved at the epoch end): the current one has not started.
        if done >= self.trainer.num_training_batches:
            done = 0
        return {"epoch": self.trainer.current_epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state) if state else None

    def epoch_loader(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        weights: Sequence[float] | None = None,
    ) -> DeferredLoader:
        """Train loader over `dataset` (which takes `(epoch, index)` keys): a seeded permutation per epoch (or
        a weighted draw), this rank's share of it, minus the batches a resumed run already trained on."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.sampler = EpochSampler(len(dataset), seed=seed, weights=weights, rank=rank, world_size=world)
        if self._resume is not None:
            self.sampler.resume(self._resume["epoch"], self._resume["batches"] * batch_size)
            self._resume = None
        return DeferredLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate,
            drop_last=len(self.sampler) >= batch_size,
            persistent_workers=num_workers > 0,
        )
