"""The pretraining DataModules: a manifest's splits (`PretrainDataModule`) or WebDataset shards streamed from
the folder `panderm shard` writes (`ShardPretrainDataModule`), through the same transforms, with per-sample
token masks, a labelled validation loader for the online probe, and an exact position in the epoch saved in
checkpoints so a killed run resumes on the very next batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from panderm.data.dataset import BadImagePolicy, ManifestDataset, collate
from panderm.data.loaders import DeferredLoader, ResumableDataModule
from panderm.data.manifest import Manifest
from panderm.data.sampling import SampleKey, sample_seed
from panderm.data.shards import INDEX_NAME, ShardDataset, read_index
from panderm.data.sources import SKIPPED_IMAGES
from panderm.data.transforms import MultiView, eval_transform, train_transform
from panderm.errors import ConfigError, DataError
from panderm.models.masking import MaskGenerator

log = logging.getLogger(__name__)


def modality_weights(manifest: Manifest) -> np.ndarray:
    """Per-row sampling weights that give every modality the same expected share of each epoch."""
    if "modality" not in manifest.table:
        return np.ones(len(manifest))
    modality = manifest.table["modality"].astype("string").fillna("(none)")
    counts = modality.map(modality.value_counts())
    return (1.0 / counts.to_numpy(dtype=float)) * len(manifest) / modality.nunique()


def add_token_mask(
    sample: dict[str, Any], masks: MaskGenerator, seed: int, epoch: int, index: int, count: int = 1
) -> None:
    """Set `token_mask` ((N,) bool, True = masked; (count, N) for several views) drawn from (seed + 1, epoch,
    index) alone, so the masks of a sample do not depend on batch composition, process count, data source or
    resumption. `count` 0 sets nothing."""
    if count < 1:
        return
    # offset so the mask stream is not the augmentation stream of the same sample
    generator = torch.Generator().manual_seed(sample_seed(seed + 1, epoch, index))
    drawn = masks(count, generator=generator)
    sample["token_mask"] = drawn[0] if count == 1 else drawn


class MaskedDataset(Dataset):
    """Adds `token_mask` to each sample (see `add_token_mask`), drawn from (seed, epoch, row)."""

    def __init__(self, dataset: ManifestDataset, masks: MaskGenerator, seed: int, count: int = 1) -> None:
        self.dataset, self.masks, self.seed, self.count = dataset, masks, seed, count

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict | None:
        sample = self.dataset[key]
        if sample is not None:
            epoch, i = key
            add_token_mask(sample, self.masks, self.seed, epoch, i, self.count)
        return sample


class _PretrainData(ResumableDataModule):
    """What both pretraining DataModules share: settings, transforms, and the position in the epoch that
    checkpoints record (`state_dict`) and a resumed run starts from (`_resume`, read by the train loader)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        masks: MaskGenerator,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int,
        crop_scale: tuple[float, float],
        on_bad_image: BadImagePolicy | str,
        seed: int,
        views: MultiView | None = None,
        num_masks: int = 1,
    ) -> None:
        super().__init__()
        self.masks = masks
        self.views, self.num_masks = views, num_masks
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.crop_scale = crop_scale
        self.bad_image_log = Path(run_dir) / SKIPPED_IMAGES
        self.on_bad_image = on_bad_image
        self.seed = seed

    @property
    def num_train_images(self) -> int:
        """Images in the training splits (one epoch's worth before splitting across ranks)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        """Classes of the labels, for the online probe; None when the data has no labels."""
        raise NotImplementedError

    def _transform(self, train: bool) -> Callable[..., dict[str, Any]]:
        """Training: the method's views when it has them, else one augmented image; else evaluation."""
        size = self.image_size
        if not train:
            return eval_transform(size)
        return self.views if self.views is not None else train_transform(size, scale=self.crop_scale)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )


class PretrainDataModule(_PretrainData):
    """Train loader over `train_splits` (augmented, masked), val loader over `val_split` (evaluation
    transform). The sampler is rank-aware: build the Trainer with `use_distributed_sampler=False`."""

    def __init__(
        self,
        manifest: Manifest,
        run_dir: str | os.PathLike[str],
        masks: MaskGenerator,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        train_splits: Sequence[str] = ("train",),
        val_split: str | None = "val",
        crop_scale: tuple[float, float] = (0.35, 1.0),
        balance_modalities: bool = False,
        on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
        seed: int = 0,
        views: MultiView | None = None,
        num_masks: int = 1,
    ) -> None:
        super().__init__(
            run_dir,
            masks,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_scale=crop_scale,
            on_bad_image=on_bad_image,
            seed=seed,
            views=views,
            num_masks=num_masks,
        )
        train = manifest.subset(rows=manifest.table["split"].isin(list(train_splits)).to_numpy())
        if len(train) == 0:
            raise ConfigError(
                f"no images in the splits {list(train_splits)} of {manifest.source} to pretrain on"
            )
        self.train_manifest = train
        self.val_manifest = manifest.subset(val_split) if val_split else None
        self._num_classes = manifest.num_classes if manifest.has_labels else None
        self.balance_modalities = balance_modalities

    @property
    def num_train_images(self) -> int:
        return len(self.train_manifest)

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def _dataset(self, manifest: Manifest, train: bool) -> ManifestDataset:
        return ManifestDataset(
            manifest,
            self._transform(train),
            on_bad_image=self.on_bad_image,
            bad_image_log=self.bad_image_log,
            with_masks=False,
            seed=self.seed if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = MaskedDataset(
            self._dataset(self.train_manifest, train=True), self.masks, self.seed, self.num_masks
        )
        weights = modality_weights(self.train_manifest) if self.balance_modalities else None
        return self.epoch_loader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed, weights=weights
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_manifest is None or len(self.val_manifest) == 0:
            return []
        return self._eval_loader(self._dataset(self.val_manifest, train=False))


class ShardStream(IterableDataset):
    """One rank's share of each epoch of shards, as whole batches of samples with token masks, resumable
    mid-epoch on the very next batch.

    Every rank yields the same `batches` per epoch, so DDP ranks stay in step: (images // world_size) //
    batch_size of `batch_size` samples (one batch of all of its share when a rank's share is smaller). A
    DataLoader's workers hand over batches in turn (batch j comes from worker j % workers), so each worker is
    a reader of its own part of the shards (`ShardDataset.reader_part`, one reader per rank x worker) and
    yields exactly the samples of its batches. `start(epoch, done)` sets the epoch of the next iteration and
    how many of its batches were already trained on: each reader passes over its share of those without
    decoding them and, since a fresh DataLoader starts with worker 0, worker w plays reader (w + done) %
    workers, so every batch holds the samples it held in an uninterrupted run. Augmentations (seeded in
    `ShardDataset` with `augment_seed`) and `token_mask` come from (seed, epoch, index) alone.
    """

    def __init__(
        self,
        shards: ShardDataset,
        masks: MaskGenerator,
        *,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_masks: int = 1,
    ) -> None:
        super().__init__()
        self.num_masks = num_masks
        per_rank = len(shards) // world_size
        if per_rank == 0:
            raise ConfigError(f"{len(shards)} training images cannot be shared by {world_size} ranks")
        self.shards, self.masks, self.seed = shards, masks, seed
        self.batch_size = min(batch_size, per_rank)
        self.batches = per_rank // self.batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self.done = 0, 0

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        return self.batches * self.batch_size

    def start(self, epoch: int, done: int = 0) -> None:
        """The next iteration is epoch `epoch`, of which the first `done` batches were already trained on."""
        self.epoch, self.done = epoch, min(max(done, 0), self.batches)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lane = (worker + self.done) % workers  # the worker that made batch `done` in the first place
        before = len(range(lane, self.done, workers))
        mine = len(range(lane, self.batches, workers))
        samples = self.shards.reader_samples(
            self.epoch,
            self.rank * workers + lane,
            self.world_size * workers,
            count=(mine - before) * self.batch_size,
            skip=before * self.batch_size,
        )
        for sample in samples:
            if sample is not None:
                add_token_mask(sample, self.masks, self.seed, self.epoch, sample["index"], self.num_masks)
            yield sample


class ShardPretrainDataModule(_PretrainData):
    """Pretraining on the WebDataset shards `panderm shard` / `write_shards` writes under `root`: one folder
    per split holding the shards and ``index.json``.

    The train stream (`ShardStream`) reads the shards of `train_splits` together, each sample augmented and
    masked from (seed, epoch, index), `index` being its position in those splits; its length and the
    probe's classes come from the indexes. The val loader reads ``root/<val_split>`` when that folder exists
    (no shuffle, evaluation transform). Modality balancing does not apply to a stream (it is logged and
    ignored). Build the Trainer with `use_distributed_sampler=False`: the stream splits the data itself.

    Resuming mid-epoch is exact (the same batches, augmentations and masks as an uninterrupted run) when the
    resumed run uses the same shards, number of ranks, `num_workers` and `batch_size`: checkpoints record
    (epoch, batches done) and the stream skips what was trained on. With another number of ranks or
    workers the resumed epoch still skips as many batches and ends on time, but those are not exactly the
    samples it skipped. Train workers are not persistent (each epoch's workers copy the stream as that epoch
    starts).

    Each rank x worker reads its own shards (or its slice of shards it shares when there are fewer shards
    than readers) and yields a fixed count, so where shard sizes are uneven a reader rereads some of its
    samples or leaves a few out in an epoch; shards of equal size, many more than ranks x workers, avoid both.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        masks: MaskGenerator,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        train_splits: Sequence[str] = ("train",),
        val_split: str | None = "val",
        crop_scale: tuple[float, float] = (0.35, 1.0),
        balance_modalities: bool = False,
        shuffle_buffer: int = 1000,
        on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
        seed: int = 0,
        views: MultiView | None = None,
        num_masks: int = 1,
    ) -> None:
        super().__init__(
            run_dir,
            masks,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            crop_scale=crop_scale,
            on_bad_image=on_bad_image,
            seed=seed,
            views=views,
            num_masks=num_masks,
        )
        self.root = Path(root)
        if not train_splits:
            raise ConfigError("train_splits is empty: name the splits to pretrain on")
        folders = [self._split_folder(split) for split in train_splits]
        classes = read_index(folders[0]).get("classes")  # DataError naming the index when it is missing
        self._num_classes = len(classes) if classes else None
        self.train_shards = ShardDataset(
            folders,
            self._transform(train=True),
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            with_masks=False,
            on_bad_image=on_bad_image,
            bad_image_log=self.bad_image_log,
            augment_seed=seed,
        )
        self.val_shards = None
        if val_split and (self.root / val_split).is_dir():
            self.val_shards = ShardDataset(
                self.root / val_split,
                self._transform(train=False),
                shuffle_buffer=0,
                with_masks=False,
                on_bad_image=on_bad_image,
                bad_image_log=self.bad_image_log,
            )
        if balance_modalities:
            log.info("balance_modalities does not apply to streamed shards: every image is drawn uniformly")
        self.stream: ShardStream | None = None
        self._iterations = 0

    def _split_folder(self, split: str) -> Path:
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: no such shard folder (data.path); write one with `panderm shard MANIFEST "
                f"{self.root}`"
            )
        folder = self.root / split
        if not folder.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if (p / INDEX_NAME).is_file())
            raise DataError(
                f"{self.root}: no shards of split {split!r} (no folder {folder}); splits with shards there: "
                f"{found or 'none'} (is it the folder `panderm shard` wrote?)"
            )
        return folder

    @property
    def num_train_images(self) -> int:
        return len(self.train_shards)

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.stream = ShardStream(
            self.train_shards,
            self.masks,
            seed=self.seed,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world,
            num_masks=self.num_masks,
        )
        return DeferredLoader(
            self.stream,
            batch_size=self.stream.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=True,  # never drops: every worker yields whole batches
            persistent_workers=False,
            on_iter=self._start_epoch,
        )

    def _start_epoch(self) -> None:
        """Tell the stream the epoch about to be iterated and, on resume, the batches of it already done."""
        assert self.stream is not None
        # The epoch Lightning gives samplers' set_epoch (manifest path), read when the first batch is due.
        trainer = self.trainer
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else self._iterations
        self._iterations += 1
        done = 0
        if self._resume is not None:
            if self._resume.get("epoch") == epoch:
                done = self._resume["batches"]
            self._resume = None
        self.stream.start(epoch, done)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_shards is None else self._eval_loader(self.val_shards)
