"""Data for segmentation: the manifest rows that have masks, augmented training batches (image and mask move
together), resumable mid-epoch, and evaluation samples that keep the mask at the image's original size."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from torch.utils.data import DataLoader, Dataset

from panderm.data.dataset import BadImagePolicy, ManifestDataset, collate
from panderm.data.loaders import ResumableDataModule
from panderm.data.manifest import Manifest
from panderm.data.sources import SKIPPED_IMAGES
from panderm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from panderm.errors import DataError

log = logging.getLogger(__name__)


def with_masks(manifest: Manifest, split: str | None = None) -> Manifest:
    """The rows (of `split`, when given) that name a mask file; rows without one cannot be trained on or
    scored, so they are left out (`masked_counts` reports how many)."""
    has_mask = np.array([manifest.mask_path(i) is not None for i in range(len(manifest))], dtype=bool)
    if split is not None:
        has_mask &= (manifest.table["split"] == split).to_numpy()
    return manifest.subset(rows=has_mask)


def masked_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """{split: {"images": n, "with_mask": m}} for a manifest."""
    masked = with_masks(manifest)
    out = {}
    for split, rows in manifest.table.groupby("split", sort=True):
        out[str(split)] = {"images": len(rows), "with_mask": int((masked.table["split"] == split).sum())}
    return out


class SegmentationDataModule(ResumableDataModule):
    """Train loader over the masked `train` rows (`segmentation_train_transform`, seeded per sample from
    (seed, epoch, row), resumable on the next batch), val loader over the masked `val` rows at the training
    size (`segmentation_eval_transform`). Raises `DataError` when no training row has a mask."""

    def __init__(
        self,
        manifest: Manifest,
        run_dir: str | os.PathLike[str],
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_manifest = with_masks(manifest, "train")
        if len(self.train_manifest) == 0:
            raise DataError(
                f"{manifest.source}: no train row has a mask; segmentation needs a 'mask' column with files "
                "for the train split"
            )
        self.val_manifest = with_masks(manifest, "val")
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.on_bad_image = on_bad_image
        self.bad_image_log = Path(run_dir) / SKIPPED_IMAGES
        self.seed = seed

    def _dataset(self, manifest: Manifest, transform: Callable[..., dict[str, Any]], train: bool) -> Dataset:
        return ManifestDataset(
            manifest,
            transform,
            on_bad_image=self.on_bad_image,
            bad_image_log=self.bad_image_log,
            seed=self.seed if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        transform = segmentation_train_transform(self.image_size, mean=self.mean, std=self.std)
        dataset = self._dataset(self.train_manifest, transform, train=True)
        return self.epoch_loader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_manifest) == 0:
            return []
        transform = segmentation_eval_transform(self.image_size, mean=self.mean, std=self.std)
        return DataLoader(
            self._dataset(self.val_manifest, transform, train=False),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )


class PredictionDataset(Dataset):
    """Evaluation samples: `image` (the model's input, from `transform`), `mask` (the original-size
    (H, W) uint8 {0, 1} mask, or absent), `size` (H, W), `id` and `index`. Unreadable files follow the
    manifest dataset's `on_bad_image` policy (None when skipped)."""

    def __init__(self, base: ManifestDataset, transform: A.Compose) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        sample = self.base[i]
        if sample is None:
            return None
        image = sample["image"]
        out = {
            "image": self.transform(image=image)["image"],
            "size": tuple(image.shape[:2]),
            "id": sample["id"],
            "index": i,
        }
        if "mask" in sample:
            out["mask"] = sample["mask"]
        return out
