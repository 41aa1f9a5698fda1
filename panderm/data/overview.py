"""Data overview: counts per split and per column, and a grid of sample images with masks and boxes drawn."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from torch.utils.data import DataLoader

from panderm.data.dataset import BadImagePolicy, ManifestDataset, collate
from panderm.data.manifest import SPLITS, Manifest
from panderm.io import atomic_write
from panderm.report import Report


def count_table(manifest: Manifest, column: str) -> pd.DataFrame:
    """Images per value of `column` (rows) and split (columns), with totals; labels shown as class names."""
    table = (
        manifest.table.assign(label=manifest.label_names()) if "label" in manifest.table else manifest.table
    )
    counts = pd.crosstab(table[column].astype("string").fillna("(none)"), table["split"])
    counts = counts.reindex(columns=[s for s in SPLITS if s in counts.columns], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    return counts.rename_axis(column).reset_index()


def split_table(manifest: Manifest) -> pd.DataFrame:
    """Images (and patients, when known) per split."""
    table = manifest.table
    frame = table.groupby("split").size().rename("images").to_frame()
    if "patient_id" in table:
        frame["patients"] = table.groupby("split")["patient_id"].nunique()
    frame = frame.reindex([s for s in SPLITS if s in frame.index])
    return frame.rename_axis("split").reset_index()


def sample_rows(manifest: Manifest, n: int, seed: int = 0) -> list[int]:
    """Up to `n` row positions drawn round-robin over classes (unlabeled rows count as one class)."""
    rng = np.random.default_rng(seed)
    labels = (
        manifest.table["label"].fillna(-1).to_numpy()
        if "label" in manifest.table
        else np.zeros(len(manifest))
    )
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return picked


def plot_sample_grid(
    manifest: Manifest,
    path: str | os.PathLike[str],
    *,
    n: int = 16,
    seed: int = 0,
    caption_columns: Sequence[str] = ("modality",),
    on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
) -> Path:
    """Save a PNG grid of `n` samples (class-balanced) with mask outlines (cyan) and boxes (red).

    An unreadable image raises `ImageLoadError`, or with `on_bad_image="skip"` is shown as an empty tile.
    """
    dataset = ManifestDataset(manifest, on_bad_image=on_bad_image)
    rows = sample_rows(manifest, n, seed)
    cols = min(len(rows), 8) or 1
    grid_rows = -(-len(rows) // cols) or 1
    fig, axes = plt.subplots(grid_rows, cols, figsize=(1.9 * cols, 2.1 * grid_rows), squeeze=False)
    names = manifest.label_names() if "label" in manifest.table else None
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, rows, strict=False):
        sample = dataset[i]
        if sample is None:
            ax.set_title(f"unreadable:\n{manifest.table['image'].iat[i]}", fontsize=6, color="red")
            continue
        ax.imshow(sample["image"])
        if "mask" in sample and sample["mask"].any():
            ax.contour(sample["mask"], levels=[0.5], colors="cyan", linewidths=0.8)
        for x1, y1, x2, y2 in sample["boxes"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=0.8))
        title = [] if names is None else [str(names.iat[i]) if pd.notna(names.iat[i]) else "(unlabeled)"]
        title += [str(manifest.table[c].iat[i]) for c in caption_columns if c in manifest.table]
        ax.set_title("\n".join(title), fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def add_overview(
    report: Report,
    manifest: Manifest,
    name: str,
    figures_dir: str | os.PathLike[str],
    *,
    n_samples: int = 16,
    columns: Sequence[str] = ("label", "modality", "fitzpatrick"),
    seed: int = 0,
    on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
) -> dict[str, object]:
    """Append a data-overview section (split/column counts, sample grid) to `report`; return its metrics."""
    figures_dir = Path(figures_dir)
    report.heading(f"Data: {name}")
    classes = ", ".join(manifest.classes or ()) or "(unlabeled)"
    report.text(f"{len(manifest)} images under `{manifest.root}`; classes: {classes}.")
    report.table(split_table(manifest), "Images per split")
    for column in columns:
        if column in manifest.table:
            report.table(count_table(manifest, column), f"Images per {column} and split")
    grid = plot_sample_grid(
        manifest, figures_dir / f"{name}_samples.png", n=n_samples, seed=seed, on_bad_image=on_bad_image
    )
    report.figure(
        grid,
        f"{name}: samples per class, mask outlines in cyan, boxes in red",
        relative_to=figures_dir.parent,
    )
    return {
        "images": len(manifest),
        "classes": list(manifest.classes or ()),
        "per_split": split_table(manifest).set_index("split")["images"].to_dict(),
    }


def loading_check(
    dataset: ManifestDataset, *, batch_size: int = 64, num_workers: int = 0
) -> dict[str, float]:
    """Decode every sample through the dataset's transform once; count loaded and skipped images and time it.

    Raises `ImageLoadError` naming the first bad file unless the dataset's policy is to skip.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    start = time.perf_counter()
    loaded = skipped = 0
    for batch in loader:
        skipped += batch["skipped"]
        loaded += len(batch.get("index", ()))
    seconds = time.perf_counter() - start
    return {"loaded": loaded, "skipped": skipped, "images_per_s": round(loaded / max(seconds, 1e-9), 1)}
