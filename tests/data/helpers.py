"""Small generated fixtures for data tests: image folders, truncated JPEGs, manifests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (32, 24), seed: int = 0, mode: str = "RGB") -> Path:
    """A random image of `size` (W, H) saved by suffix (PNG/JPEG)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_mask(
    path: Path, size: tuple[int, int] = (32, 24), box: tuple[int, int, int, int] = (4, 5, 20, 15)
) -> Path:
    """A {0,255} PNG mask of `size` (W, H) whose foreground is `box` (x1, y1, x2, y2 exclusive)."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def write_truncated_jpeg(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A JPEG whose header is intact but whose data stops half way (opens, fails to decode)."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def small_folder(root: Path, n: int = 6) -> pd.DataFrame:
    """`n` images with masks under `root` and a clean manifest table for them (2 classes, 3 patients)."""
    rows = []
    splits = ["train", "train", "val", "val", "test", "test"]
    for i in range(n):
        write_image(root / "images" / f"img{i}.png", seed=i)
        write_mask(root / "masks" / f"img{i}_mask.png")
        rows.append(
            {
                "image": f"images/img{i}.png",
                "split": splits[i % len(splits)],
                "label": ["nevus", "melanoma"][i % 2],
                "patient_id": f"P{i // 2}",
                "modality": "dermoscopy",
                "mask": f"masks/img{i}_mask.png",
                "bbox": "4,5,20,15",
            }
        )
    return pd.DataFrame(rows)
