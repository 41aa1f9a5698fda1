"""Leaderboard figures: a heatmap of the primary metric (encoders x task columns) and a rank plot (mean rank
per encoder with each task's rank). matplotlib's object API (no pyplot state), saved atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from panderm.io import atomic_write

__all__ = ["plot_heatmap", "plot_ranks"]


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def _short(name: str, width: int = 28) -> str:
    """A label that fits an axis: the last path component of a file spec, cut to `width` characters."""
    tail = name.rstrip("/").split("/")[-1] if os.sep in name or "/" in name else name
    if ":" in name and tail != name:
        tail = f"{name.split(':', 1)[0]}:{tail}"
    return tail if len(tail) <= width else tail[: width - 1] + "…"


def plot_heatmap(values: pd.DataFrame, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """`values` (encoders as index, task columns, NaN where a cell failed or is missing) as an annotated
    heatmap, one colour scale per column (each task's own range), so columns of different metrics compare."""
    data = values.to_numpy(dtype=float)
    shown = np.full_like(data, np.nan)
    for j in range(data.shape[1]):
        col = data[:, j]
        if np.isfinite(col).any():
            lo, hi = np.nanmin(col), np.nanmax(col)
            shown[:, j] = 0.5 if hi == lo else (col - lo) / (hi - lo)
    fig = Figure(figsize=(1.3 + 1.25 * data.shape[1], 1.0 + 0.5 * data.shape[0]))
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(shown), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            text = "n/a" if not np.isfinite(data[i, j]) else f"{data[i, j]:.3f}"
            colour = "white" if np.isfinite(shown[i, j]) and shown[i, j] < 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(data.shape[1]), [str(c) for c in values.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(data.shape[0]), [_short(str(e)) for e in values.index], fontsize=8)
    ax.set_title(title or "primary metric per task (colour: rank within the column)", fontsize=9)
    return _save(fig, path)


def plot_ranks(ranks: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """`ranks` (encoders as index, task columns of ranks, 1 = best) as the mean rank per encoder (bar, best
    at the top) with each task's rank as a dot."""
    mean = ranks.mean(axis=1, skipna=True).sort_values(ascending=False)
    fig = Figure(figsize=(6.0, 1.2 + 0.45 * len(mean)))
    ax = fig.subplots()
    y = np.arange(len(mean))
    ax.barh(y, mean.to_numpy(), color="#9ecae1", label="mean rank")
    for i, encoder in enumerate(mean.index):
        row = ranks.loc[encoder].dropna()
        jitter = np.linspace(-0.2, 0.2, len(row)) if len(row) > 1 else np.zeros(len(row))
        ax.plot(row.to_numpy(), i + jitter, "o", color="#08519c", markersize=4)
    ax.set_yticks(y, [_short(str(e)) for e in mean.index], fontsize=8)
    ax.set_xlabel("rank (1 = best); bar: mean over tasks, dots: each task")
    ax.set_xlim(0, max(1.0, float(np.nanmax(ranks.to_numpy(dtype=float)))) + 0.5)
    return _save(fig, path)
