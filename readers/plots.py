"""Reader-study figures from plain tables (each returns the PNG path): the AI's ROC curve with each reader's
operating point moving from unaided to aided, paired slopes per reader, a forest plot of per-reader
differences, the gain by experience level and the answer changes with AI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from panderm.errors import DataError
from panderm.io import atomic_path


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _need(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")


def plot_roc_with_readers(
    truth: np.ndarray,
    ai_score: np.ndarray,
    points: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    before: str = "unaided",
    after: str = "ai_aided",
) -> Path:
    """The AI's ROC curve and an arrow per reader from its (1 - specificity, sensitivity) `before` to
    `after`; `points` has columns reader, condition, sensitivity, specificity."""
    _need(points, ("reader", "condition", "sensitivity", "specificity"), "reader operating points")
    fpr, tpr, _ = roc_curve(np.asarray(truth), np.asarray(ai_score))
    fig = Figure(figsize=(4.6, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, color="black", label="AI alone")
    ax.plot([0, 1], [0, 1], color="0.8", ls=":")
    wide = points.pivot(index="reader", columns="condition", values=["sensitivity", "specificity"])
    for reader in wide.index:
        x0, y0 = 1 - wide.loc[reader, ("specificity", before)], wide.loc[reader, ("sensitivity", before)]
        x1, y1 = 1 - wide.loc[reader, ("specificity", after)], wide.loc[reader, ("sensitivity", after)]
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        ax.plot([x0], [y0], "o", color="tab:orange", ms=4)
        ax.plot([x1], [y1], "o", color="tab:blue", ms=4)
    ax.plot([], [], "o", color="tab:orange", label=before)
    ax.plot([], [], "o", color="tab:blue", label=after)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_paired_slopes(
    per_reader: pd.DataFrame, path: str | os.PathLike[str], *, value: str = "accuracy"
) -> Path:
    """One line per reader joining its `value` in each condition (columns reader, condition, `value`)."""
    _need(per_reader, ("reader", "condition", value), "paired slopes")
    wide = per_reader.pivot(index="reader", columns="condition", values=value)
    wide = wide[list(dict.fromkeys(per_reader["condition"]))]  # conditions in the table's order, not sorted
    fig = Figure(figsize=(3.6 + 0.4 * len(wide.columns), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(wide.columns))
    ax.plot(x, wide.to_numpy().T, "o-", color="0.55", lw=1, ms=3)
    ax.plot(x, wide.mean().to_numpy(), "o-", color="tab:red", lw=2.5, label="mean")
    ax.set_xticks(x, [str(c) for c in wide.columns])
    ax.set(ylabel=value, xlim=(-0.3, len(x) - 0.7))
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_forest(diffs: pd.DataFrame, path: str | os.PathLike[str], *, label: str = "difference") -> Path:
    """Per-reader differences with their intervals (columns reader, difference, ci_low, ci_high), a zero line
    and, when a row's reader is "pooled", that row as a diamond at the bottom."""
    _need(diffs, ("reader", "difference", "ci_low", "ci_high"), "forest plot")
    fig = Figure(figsize=(5.0, 0.35 * len(diffs) + 1.4), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(diffs))[::-1]
    pooled = (diffs["reader"].astype(str) == "pooled").to_numpy()
    ax.errorbar(
        diffs["difference"],
        y,
        xerr=[diffs["difference"] - diffs["ci_low"], diffs["ci_high"] - diffs["difference"]],
        fmt="none",
        ecolor="0.3",
        capsize=3,
    )
    ax.scatter(diffs["difference"][~pooled], y[~pooled], marker="s", color="tab:blue", zorder=3)
    ax.scatter(diffs["difference"][pooled], y[pooled], marker="D", s=60, color="tab:red", zorder=3)
    ax.axvline(0, color="0.6", ls="--")
    ax.set_yticks(y, diffs["reader"].astype(str))
    ax.set(xlabel=label)
    return _save(fig, path)


def plot_gain_by_experience(
    gains: pd.DataFrame, path: str | os.PathLike[str], *, value: str = "gain"
) -> Path:
    """Mean gain per experience level with each reader's gain as a dot (columns experience, `value`)."""
    _need(gains, ("experience", value), "gain by experience")
    levels = list(dict.fromkeys(gains["experience"].astype(str)))
    fig = Figure(figsize=(1.2 * len(levels) + 2.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, level in enumerate(levels):
        values = gains.loc[gains["experience"].astype(str) == level, value].to_numpy(dtype=float)
        ax.bar(i, values.mean(), color="tab:blue", alpha=0.6)
        ax.plot(np.full(len(values), i), values, "o", color="black", ms=3)
    ax.axhline(0, color="0.6", lw=1)
    ax.set_xticks(range(len(levels)), levels)
    ax.set(xlabel="experience", ylabel=value)
    return _save(fig, path)


def plot_answer_changes(changes: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Stacked bars per reader of answers changed with AI: wrong to right (up) and right to wrong (down)
    (columns reader, wrong_to_right, right_to_wrong)."""
    _need(changes, ("reader", "wrong_to_right", "right_to_wrong"), "answer changes")
    fig = Figure(figsize=(0.5 * len(changes) + 2.5, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(changes))
    ax.bar(x, changes["wrong_to_right"], color="tab:green", label="wrong → right")
    ax.bar(x, -changes["right_to_wrong"], color="tab:red", label="right → wrong")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, changes["reader"].astype(str), rotation=45, ha="right", rotation_mode="anchor")
    ax.set(ylabel="answers changed with AI")
    ax.legend(fontsize="small")
    return _save(fig, path)
