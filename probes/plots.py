"""Figures for probe results: confusion matrix, ROC curves, reliability diagram and a UMAP of features.

Figures are built with matplotlib's object API (`Figure` + Agg canvas), never pyplot's global state, so
they work headless and from threads; each function saves a PNG atomically and returns its path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.metrics import ConfusionMatrixDisplay, auc, confusion_matrix, roc_curve

from panderm.errors import ProbeError
from panderm.io import atomic_write
from probes.metrics import ECE_BINS, check_probabilities, reliability_bins

__all__ = ["plot_confusion", "plot_curve", "plot_overlay_grid", "plot_reliability", "plot_roc", "plot_umap"]

log = logging.getLogger(__name__)

UMAP_MIN_SAMPLES = 10


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display, thread-safe: pyplot is not used)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """`fig` laid out and written as a PNG at `path` atomically; the figure is cleared afterwards."""
    try:
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()


def _names(classes: Sequence[Any], n: int) -> list[str]:
    if len(classes) != n:
        raise ProbeError(f"classes has {len(classes)} names but the data have {n} classes")
    return [str(c) for c in classes]


def plot_confusion(
    y_true: Any,
    y_pred: Any,
    classes: Sequence[Any],
    path: str | os.PathLike[str],
    normalize: bool = True,
) -> Path:
    """Confusion matrix of integer labels `y_true` vs `y_pred` (N,) over `classes`; rows are normalised to
    recall when `normalize`. Returns `path`. Raises `ProbeError` on mismatched lengths or labels out of
    range."""
    y, yp = np.asarray(y_true), np.asarray(y_pred)
    n_classes = len(classes)
    if y.shape != yp.shape or y.ndim != 1:
        raise ProbeError(f"y_true {y.shape} and y_pred {yp.shape} must be 1-D and of equal length")
    for name, arr in (("y_true", y), ("y_pred", yp)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ProbeError(f"{name} has labels outside [0, {n_classes}) for {n_classes} classes")
    matrix = confusion_matrix(y, yp, labels=np.arange(n_classes), normalize="true" if normalize else None)
    side = max(4.0, 0.6 * n_classes + 2.5)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=_names(classes, n_classes))
    display.plot(ax=ax, cmap="Blues", values_format=".2f" if normalize else "d", xticks_rotation=45)
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    return save_figure(fig, path)


def plot_roc(y_true: Any, proba: Any, classes: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """ROC curves: for two classes one curve (class 1 positive); otherwise one one-vs-rest curve per class
    plus the macro average (true-positive rates averaged on a common false-positive grid). Classes absent
    from `y_true` have no curve and are left out with a logged warning. Returns `path`."""
    y, p = check_probabilities(y_true, proba, classes=classes)
    names = _names(classes, p.shape[1])
    fig = new_figure(6.0, 5.5)
    ax = fig.add_subplot()
    targets = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    grid = np.linspace(0.0, 1.0, 201)
    curves = []
    for k in targets:
        positive = y == k
        if positive.all() or not positive.any():
            log.warning(
                "ROC: class %r has %s; no curve drawn",
                names[k],
                "every sample" if positive.all() else "no sample",
            )
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, k])
        curves.append(np.interp(grid, fpr, tpr))
        label = f"{names[k]} (AUC {auc(fpr, tpr):.3f})"
        ax.plot(fpr, tpr, lw=1.5 if len(targets) == 1 else 1.0, label=label)
    if len(targets) > 1 and curves:
        macro = np.mean(curves, axis=0)
        macro[0] = 0.0
        ax.plot(grid, macro, color="black", lw=2.0, ls="--", label=f"macro (AUC {auc(grid, macro):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_title("ROC" + (" (one-vs-rest)" if len(targets) > 1 else ""))
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def plot_reliability(y_true: Any, proba: Any, path: str | os.PathLike[str], n_bins: int = ECE_BINS) -> Path:
    """Reliability diagram of top-label confidence in `n_bins` equal-width bins (accuracy per bin against the
    diagonal, sample counts below), titled with the ECE of `probes.metrics`. Returns `path`."""
    bins = reliability_bins(y_true, proba, n_bins=n_bins)
    width = np.diff(bins.edges)
    left = bins.edges[:-1]
    filled = bins.count > 0
    fig = new_figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        left[filled],
        bins.accuracy[filled],
        width=width[filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    centre = left[filled] + width[filled] / 2
    top.vlines(centre, bins.accuracy[filled], bins.confidence[filled], color="tab:red", lw=2, label="gap")
    top.plot(centre, bins.confidence[filled], "o", color="tab:red", ms=4, label="mean confidence")
    top.plot([0, 1], [0, 1], color="grey", ls=":", lw=1.0)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy", title=f"Reliability (ECE {bins.ece:.3f})")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(left, bins.count, width=width, align="edge", color="grey", edgecolor="black")
    bottom.set(xlabel="Confidence (top-class probability)", ylabel="Samples")
    return save_figure(fig, path)


def _embed(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    n = features.shape[0]
    if n < UMAP_MIN_SAMPLES:
        log.warning(
            "UMAP needs at least %d samples, got %d: plotting a PCA projection instead", UMAP_MIN_SAMPLES, n
        )
    else:
        try:
            import umap  # imported here: umap-learn's numba start-up costs seconds
        except ImportError:
            log.warning("umap-learn is not installed (pip install umap-learn): plotting a PCA projection")
        else:
            reducer = umap.UMAP(n_neighbors=min(15, n - 1), n_components=2, random_state=seed, n_jobs=1)
            return np.asarray(reducer.fit_transform(features)), "UMAP"
    components = min(2, n, features.shape[1])
    xy = PCA(n_components=components, random_state=seed).fit_transform(features)
    if components < 2:
        xy = np.column_stack([xy, np.zeros((n, 2 - components))])
    return xy, "PCA"


def plot_umap(
    features: Any, labels: Any, classes: Sequence[Any], path: str | os.PathLike[str], seed: int = 0
) -> Path:
    """2-D UMAP of `features` (N, D) coloured by integer `labels` (N,) in [0, len(classes)).

    Uses umap-learn with `n_neighbors = min(15, N - 1)`; with fewer than 10 samples (or without umap-learn)
    it falls back to PCA with a logged warning, and the title says which was used. Returns `path`.
    Raises `ProbeError` on mismatched shapes, non-finite features, labels out of range or N < 2.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ProbeError(f"features {x.shape} must be (N, D) and labels {y.shape} (N,)")
    if len(x) < 2:
        raise ProbeError(f"a 2-D embedding needs at least 2 samples, got {len(x)}")
    if not np.isfinite(x).all():
        raise ProbeError("features have NaN or infinite values")
    names = [str(c) for c in classes]
    if y.min() < 0 or y.max() >= len(names):
        raise ProbeError(f"labels outside [0, {len(names)}) for {len(names)} classes")
    xy, method = _embed(x, seed)
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    cmap = "tab10" if len(names) <= 10 else "tab20"
    palette = matplotlib.colormaps[cmap]
    for k, name in enumerate(names):
        mask = y == k
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, color=palette(k % palette.N), label=name, alpha=0.8)
    ax.set(xlabel=f"{method} 1", ylabel=f"{method} 2", title=f"{method} of features (n={len(x)})")
    ax.legend(loc="best", fontsize="small", markerscale=2)
    return save_figure(fig, path)


def plot_curve(frame: Any, x: str, metric: str, path: str | os.PathLike[str], *, log_x: bool = False) -> Path:
    """Mean ± std of `metric` (columns ``<metric>_mean``/``<metric>_std`` of a few-shot or label-efficiency
    table) against column `x`, one line per value of the ``fit`` column. Returns `path`."""
    fig = new_figure(5.5, 4.0)
    ax = fig.subplots()
    for fit, part in frame.groupby("fit", sort=False):
        part = part.sort_values(x)
        mean, std = part[f"{metric}_mean"].to_numpy(), part[f"{metric}_std"].fillna(0).to_numpy()
        ax.plot(part[x], mean, "o-", label=str(fit))
        ax.fill_between(part[x], mean - std, mean + std, alpha=0.2)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} (mean ± std)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_overlay_grid(
    rows: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | os.PathLike[str]
) -> Path:
    """Images with the true (green) and predicted (red) mask outlines, one row per group.

    `rows` is [(row title, [{"image": (H, W, 3) uint8, "mask": (H, W) or None, "pred": (H, W), "title"}])],
    e.g. the best, median and worst cases by Dice.
    """
    columns = max((len(items) for _, items in rows), default=1)
    fig = new_figure(2.2 * columns, 2.4 * len(rows))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, items) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            item = items[c]
            ax.imshow(item["image"])
            if item.get("mask") is not None and item["mask"].any():
                ax.contour(item["mask"], levels=[0.5], colors="lime", linewidths=1.0)
            if item["pred"].any():
                ax.contour(item["pred"], levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(f"{label}: {item['title']}" if c == 0 else item["title"], fontsize=7)
    fig.suptitle("true outline green, predicted red", fontsize=8)
    return save_figure(fig, path)
