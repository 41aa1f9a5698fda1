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
import torch
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


class EncodedDataset(Dataset):
    """Samples of `base` (an evaluation-transformed `ManifestDataset`) with the frozen encoder's maps
    computed once: `image`, `mask` and `maps` ((blocks, D, h, w) per sample); unreadable rows stay None
    (dropped from the batch). Keys may be `(epoch, index)`, as the epoch sampler gives them; every epoch sees
    the same sample."""

    def __init__(
        self,
        base: Dataset,
        encode: Callable[[torch.Tensor], list[torch.Tensor]],
        *,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.samples: list[dict[str, Any] | None] = [None] * len(base)
        with torch.no_grad():
            for start in range(0, len(base), batch_size):
                indices = range(start, min(start + batch_size, len(base)))
                kept = [(i, s) for i in indices if (s := base[i]) is not None]
                if not kept:
                    continue
                images = torch.stack([torch.as_tensor(s["image"]) for _, s in kept])
                maps = torch.stack(encode(images.to(device)), dim=1).cpu()
                for (i, sample), m in zip(kept, maps, strict=True):
                    self.samples[i] = {"image": sample["image"], "mask": sample["mask"], "maps": m}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        return self.samples[key[1] if isinstance(key, tuple) else key]


class SegmentationDataModule(ResumableDataModule):
    """Train loader over the masked `train` rows (`segmentation_train_transform`, seeded per sample from
    (seed, epoch, row), resumable on the next batch), val loader over the masked `val` rows at the training
    size (`segmentation_eval_transform`). Raises `DataError` when no training row has a mask.

    With `encode` (a frozen model's `encode`), both loaders serve `EncodedDataset`s instead: every image at
    the evaluation transform, its encoder maps computed once on the trainer's device (no augmentation, as in
    eva's embeddings-then-head protocol), so an epoch costs only the head; memory: images x blocks x D x h x
    w floats."""

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
        encode: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
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
        self.encode = encode
        self._encoded: dict[str, EncodedDataset] = {}

    def _dataset(self, manifest: Manifest, transform: Callable[..., dict[str, Any]], train: bool) -> Dataset:
        return ManifestDataset(
            manifest,
            transform,
            on_bad_image=self.on_bad_image,
            bad_image_log=self.bad_image_log,
            seed=self.seed if train else None,
        )

    def _encoded_dataset(self, split: str) -> EncodedDataset:
        """The split's `EncodedDataset`, encoded on first use (a resumed or refitted run encodes again)."""
        if split not in self._encoded:
            assert self.encode is not None
            manifest = self.train_manifest if split == "train" else self.val_manifest
            transform = segmentation_eval_transform(self.image_size, mean=self.mean, std=self.std)
            base = self._dataset(manifest, transform, train=False)
            log.info("encoding %d %s images once (frozen encoder, no augmentation)", len(base), split)
            # on the trainer's device (the model is there once the loaders are asked for)
            device = self.trainer.lightning_module.device if self.trainer is not None else torch.device("cpu")
            self._encoded[split] = EncodedDataset(
                base, self.encode, batch_size=self.batch_size, device=device
            )
        return self._encoded[split]

    def train_dataloader(self) -> DataLoader:
        if self.encode is not None:  # in memory: no workers needed to load it
            encoded = self._encoded_dataset("train")
            return self.epoch_loader(encoded, batch_size=self.batch_size, num_workers=0, seed=self.seed)
        transform = segmentation_train_transform(self.image_size, mean=self.mean, std=self.std)
        dataset = self._dataset(self.train_manifest, transform, train=True)
        return self.epoch_loader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_manifest) == 0:
            return []
        if self.encode is not None:
            return DataLoader(self._encoded_dataset("val"), batch_size=self.batch_size, collate_fn=collate)
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
