"""A PyTorch dataset over a validated manifest, with a policy for images that turn out corrupt when read."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from panderm.data.images import load_image, load_mask
from panderm.data.manifest import Manifest
from panderm.data.sampling import SampleKey, sample_seed
from panderm.data.transforms import seed_transform, takes_boxes
from panderm.errors import ConfigError, ImageLoadError

log = logging.getLogger(__name__)

RADIOLOGY_OPTIONS = ("slice", "axis", "window")


class BadImagePolicy(StrEnum):
    """What to do with an image that fails to load: raise (naming the file) or skip it and record it."""

    error = "error"
    skip = "skip"


class BadImageLog:
    """Append-only CSV (`path,reason`) of skipped images, safe to share between DataLoader workers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def record(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        # One small O_APPEND write per record, so concurrent workers do not interleave lines.
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["path", "reason"])
            writer.writerow([str(path), reason])

    def entries(self) -> list[tuple[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return [(r["path"], r["reason"]) for r in csv.DictReader(f)]


class ManifestDataset(Dataset):
    """Samples of a manifest as dicts: `image`, `label` (-1 if none), `mask`, `boxes`, `index`, `id`.

    Without a transform `image` is (H, W, 3) uint8 and `mask` (H, W) uint8 {0, 1}; with an albumentations
    transform they are whatever it returns (CHW float tensors after ToTensorV2), and boxes move with the
    image when the transform has bbox_params. Keys are row positions or `(epoch, row)` pairs (from
    `EpochSampler`); with `seed`, the transform of each sample is seeded from (seed, epoch, row), so the
    augmentation does not depend on workers or interruptions. A mask whose size differs from its image raises
    `ImageLoadError`. With `on_bad_image="skip"` a corrupt file yields `None` (drop it with `collate`) and is
    recorded in `bad_image_log`; with "error" it raises `ImageLoadError` naming the file.
    """

    def __init__(
        self,
        manifest: Manifest,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
        bad_image_log: BadImageLog | str | os.PathLike[str] | None = None,
        with_masks: bool = True,
        seed: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.seed = seed
        self.transform = transform
        self.on_bad_image = bad_image_policy(on_bad_image)
        if bad_image_log is not None and not isinstance(bad_image_log, BadImageLog):
            bad_image_log = BadImageLog(bad_image_log)
        self.bad_image_log = bad_image_log
        self.with_masks = with_masks and "mask" in manifest.table
        self._takes_boxes = takes_boxes(transform)
        # Per-row fields are resolved once here: pandas cell access per sample costs more than decoding.
        table = manifest.table
        self._images = [manifest.image_path(i) for i in range(len(table))]
        self._masks = [manifest.mask_path(i) if self.with_masks else None for i in range(len(table))]
        self._boxes = [[list(b) for b in manifest.boxes(i)] for i in range(len(table))]
        self._ids = table["image"].astype(str).tolist()
        self._labels = (
            table["label"].fillna(-1).astype(int).tolist() if "label" in table else [-1] * len(table)
        )
        self._options = [load_options(row) for row in table.to_dict("records")]

    def __len__(self) -> int:
        return len(self.manifest)

    def load(self, i: int) -> dict[str, Any]:
        """Load row `i` without transforms; raises `ImageLoadError` naming the file."""
        image = load_image(self._images[i], **self._options[i])
        sample: dict[str, Any] = {
            "image": image,
            "label": self._labels[i],
            "boxes": [list(b) for b in self._boxes[i]],
            "index": i,
            "id": self._ids[i],
        }
        if self._masks[i] is not None:
            threshold = self.manifest.mask_threshold
            sample["mask"] = load_mask(self._masks[i], shape=image.shape[:2], threshold=threshold)
        return sample

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any] | None:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        try:
            sample = self.load(i)
        except ImageLoadError as exc:
            if self.on_bad_image is BadImagePolicy.error:
                raise
            log.warning("skipping unreadable image (row %s): %s", self.manifest.table["row"].iat[i], exc)
            if self.bad_image_log is not None:
                self.bad_image_log.record(exc.path, exc.reason)
            return None
        if self.transform is not None:
            if self.seed is not None:
                seed_transform(self.transform, sample_seed(self.seed, epoch, i))
            sample.update(apply_transform(self.transform, sample, self._takes_boxes))
        return sample


def apply_transform(
    transform: Callable[..., dict[str, Any]], sample: dict[str, Any], boxes: bool
) -> dict[str, Any]:
    """Run an albumentations pipeline on a sample: image, mask (if any) and, when `boxes`, the boxes move
    together; returns the pipeline's outputs with boxes back under `boxes` as [[x1, y1, x2, y2], ...]."""
    inputs: dict[str, Any] = {"image": sample["image"]}
    if "mask" in sample:
        inputs["mask"] = sample["mask"]
    if boxes:
        inputs["bboxes"] = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
        inputs["box_labels"] = [0] * len(sample["boxes"])
    out = transform(**inputs)
    if "bboxes" in out:
        out["boxes"] = np.asarray(out.pop("bboxes"), dtype=np.float32).reshape(-1, 4).tolist()
        out.pop("box_labels", None)
    return out


def load_options(row: dict[str, Any]) -> dict[str, Any]:
    """Radiology loader options (slice, axis, window) present in a manifest row."""
    options: dict[str, Any] = {}
    for column in RADIOLOGY_OPTIONS:
        value = row.get(column)
        if value is not None and pd.notna(value):
            key = "slice_index" if column == "slice" else column
            options[key] = int(value) if column in ("slice", "axis") else str(value)
    return options


def bad_image_policy(value: BadImagePolicy | str) -> BadImagePolicy:
    try:
        return BadImagePolicy(value)
    except ValueError:
        raise ConfigError(
            f"on_bad_image={value!r} is not one of {[p.value for p in BadImagePolicy]}"
        ) from None


def collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Batch samples, dropping skipped (None) ones; `skipped` counts the drops.

    Tensors and equal-shaped arrays are stacked, `views` stacked per view, `boxes` kept as a list of (n_i, 4)
    float tensors, ints become a tensor, anything else a list. A key that only some samples have (a mask
    for some rows) becomes a list with None where it is missing.
    """
    kept = [s for s in batch if s is not None]
    out: dict[str, Any] = {"skipped": len(batch) - len(kept)}
    keys = dict.fromkeys(key for sample in kept for key in sample)
    for key in keys:
        values = [s.get(key) for s in kept]
        if any(v is None for v in values):
            out[key] = values
        elif key == "boxes":
            out[key] = [torch.as_tensor(v, dtype=torch.float32).reshape(-1, 4) for v in values]
        elif key == "views":
            out[key] = [torch.stack(view) for view in zip(*values, strict=True)]
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], np.ndarray) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], int | np.integer):
            out[key] = torch.as_tensor(values)
        else:
            out[key] = values
    return out
