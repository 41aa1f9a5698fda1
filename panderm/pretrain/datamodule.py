"""The pretraining DataModule: manifest splits through the dataset and transforms, per-sample token masks,
optional modality-balanced sampling, a labelled validation loader for the online probe, and an exact
position in the epoch saved in checkpoints so a killed run resumes on the very next batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from panderm.data.dataset import BadImagePolicy, ManifestDataset, collate
from panderm.data.manifest import Manifest
from panderm.data.sampling import EpochSampler, SampleKey, sample_seed
from panderm.data.sources import SKIPPED_IMAGES
from panderm.data.transforms import eval_transform, train_transform
from panderm.errors import ConfigError
from panderm.models.masking import MaskGenerator


def modality_weights(manifest: Manifest) -> np.ndarray:
    """Per-row sampling weights that give every modality the same expected share of each epoch."""
    if "modality" not in manifest.table:
        return np.ones(len(manifest))
    modality = manifest.table["modality"].astype("string").fillna("(none)")
    counts = modality.map(modality.value_counts())
    return (1.0 / counts.to_numpy(dtype=float)) * len(manifest) / modality.nunique()


class MaskedDataset(Dataset):
    """Adds `token_mask` ((N,) bool, True = masked) to each sample, drawn from (seed, epoch, row), so the
    masks of a sample do not depend on batch composition, process count or resumption."""

    def __init__(self, dataset: ManifestDataset, masks: MaskGenerator, seed: int) -> None:
        self.dataset, self.masks, self.seed = dataset, masks, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict | None:
        sample = self.dataset[key]
        if sample is not None:
            epoch, i = key
            # offset so the mask stream is not the augmentation stream of the same sample
            generator = torch.Generator().manual_seed(sample_seed(self.seed + 1, epoch, i))
            sample["token_mask"] = self.masks(1, generator=generator)[0]
        return sample


class PretrainDataModule(L.LightningDataModule):
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
    ) -> None:
        super().__init__()
        train = manifest.subset(rows=manifest.table["split"].isin(list(train_splits)).to_numpy())
        if len(train) == 0:
            raise ConfigError(
                f"no images in the splits {list(train_splits)} of {manifest.source} to pretrain on"
            )
        self.train_manifest = train
        self.val_manifest = manifest.subset(val_split) if val_split else None
        self.masks = masks
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.crop_scale = crop_scale
        self.balance_modalities = balance_modalities
        self.bad_image_log = Path(run_dir) / SKIPPED_IMAGES
        self.on_bad_image = on_bad_image
        self.seed = seed
        self.sampler: EpochSampler | None = None
        self._resume: dict[str, int] | None = None

    def _dataset(self, manifest: Manifest, train: bool) -> ManifestDataset:
        size = self.image_size
        transform = train_transform(size, scale=self.crop_scale) if train else eval_transform(size)
        return ManifestDataset(
            manifest,
            transform,
            on_bad_image=self.on_bad_image,
            bad_image_log=self.bad_image_log,
            with_masks=False,
            seed=self.seed if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = MaskedDataset(self._dataset(self.train_manifest, train=True), self.masks, self.seed)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        weights = modality_weights(self.train_manifest) if self.balance_modalities else None
        self.sampler = EpochSampler(
            len(dataset), seed=self.seed, weights=weights, rank=rank, world_size=world
        )
        if self._resume is not None:
            self.sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=len(self.sampler) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_manifest is None or len(self.val_manifest) == 0:
            return []
        return DataLoader(
            self._dataset(self.val_manifest, train=False),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

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
