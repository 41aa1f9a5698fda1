"""The pretraining DataModule: manifest splits through the dataset and transforms, optional
modality-balanced sampling, and a labelled validation loader for the online probe."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from panderm.data.dataset import BadImagePolicy, ManifestDataset, collate
from panderm.data.manifest import Manifest
from panderm.data.sources import SKIPPED_IMAGES
from panderm.data.transforms import eval_transform, train_transform
from panderm.errors import ConfigError


def modality_weights(manifest: Manifest) -> np.ndarray:
    """Per-row sampling weights that give every modality the same expected share of each epoch."""
    if "modality" not in manifest.table:
        return np.ones(len(manifest))
    modality = manifest.table["modality"].astype("string").fillna("(none)")
    counts = modality.map(modality.value_counts())
    return (1.0 / counts.to_numpy(dtype=float)) * len(manifest) / modality.nunique()


class PretrainDataModule(L.LightningDataModule):
    """Train loader over `train_splits` (augmented), val loader over `val_split` (evaluation transform)."""

    def __init__(
        self,
        manifest: Manifest,
        run_dir: str | os.PathLike[str],
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
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.crop_scale = crop_scale
        self.balance_modalities = balance_modalities
        self.bad_image_log = Path(run_dir) / SKIPPED_IMAGES
        self.on_bad_image = on_bad_image
        self.seed = seed

    def _dataset(self, manifest: Manifest, train: bool) -> ManifestDataset:
        size = self.image_size
        transform = train_transform(size, scale=self.crop_scale) if train else eval_transform(size)
        return ManifestDataset(
            manifest,
            transform,
            on_bad_image=self.on_bad_image,
            bad_image_log=self.bad_image_log,
            with_masks=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_manifest, train=True)
        sampler = None
        if self.balance_modalities:
            generator = torch.Generator().manual_seed(self.seed)
            weights = torch.as_tensor(modality_weights(self.train_manifest))
            sampler = WeightedRandomSampler(weights, num_samples=len(dataset), generator=generator)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=len(dataset) >= self.batch_size,
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
