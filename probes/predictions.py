"""Prediction and summary tables in PanDerm's CSV layout, written atomically.

Per-sample predictions: `filename,true_label,predicted_label,probability_class_0,...,probability_class_{C-1}`
(integer labels; optional `split` and extra columns follow). Per-dataset summary: `Dataset,W_F1,AUROC,BACC,
ACC,AUPR` as fractions in [0, 1]; a metric that could not be computed is an empty cell (its reason is in the
metrics JSON), never 0.

Multi-label predictions (`write_multilabel_predictions`): `filename,label_set,uncertain_set,
probability_<label>...` (one independent probability per label, in class order; the sets are the true
positive and unknown labels joined by ``|``, as in the manifest), then `split`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.errors import ProbeError
from panderm.io import read_csv, write_csv
from probes.metrics import MetricResult, check_probabilities, paired_bootstrap_difference

__all__ = [
    "PREDICTION_COLUMNS",
    "SUMMARY_COLUMNS",
    "multilabel_probability_columns",
    "paired_difference_table",
    "prediction_proba",
    "probability_columns",
    "read_predictions",
    "summary_row",
    "write_multilabel_predictions",
    "write_predictions",
    "write_summary",
]

PREDICTION_COLUMNS = ("filename", "true_label", "predicted_label")
SUMMARY_COLUMNS = ("Dataset", "W_F1", "AUROC", "BACC", "ACC", "AUPR")


def probability_columns(n_classes: int) -> list[str]:
    """PanDerm's probability column names: `probability_class_0` ... `probability_class_{n_classes-1}`."""
    return [f"probability_class_{i}" for i in range(n_classes)]


def write_predictions(
    path: str | os.PathLike[str],
    ids: Sequence[Any],
    y_true: Any,
    proba: Any,
    classes: Sequence[Any],
    *,
    split: str | Sequence[Any] | None = None,
    extra: Mapping[str, Sequence[Any]] | pd.DataFrame | None = None,
) -> Path:
    """Write one row per sample in PanDerm's column order and return `path`.

    `ids` (N,) become `filename`; `y_true` (N,) integer labels; `proba` (N, C) probabilities, the predicted
    label being the arg-max; `classes` (C names) must match the width of `proba` (labels stay integers, as in
    PanDerm). `split` (one value or N values) adds a `split` column, `extra` (name -> N values) adds more
    columns after it. Raises `ProbeError` on invalid probabilities, length mismatches or clashing names.
    """
    y, p = check_probabilities(y_true, proba, classes=classes)
    n, n_classes = p.shape
    ids = list(ids)
    if len(ids) != n:
        raise ProbeError(f"ids has {len(ids)} entries but proba has {n} rows")
    table = pd.DataFrame({"filename": ids, "true_label": y, "predicted_label": p.argmax(axis=1)})
    # The unnormalised input is written, not check_probabilities' renormalised copy: the file keeps what
    # the probe produced.
    raw = np.asarray(proba, dtype=np.float64)
    for i, name in enumerate(probability_columns(n_classes)):
        table[name] = raw[:, i]
    if split is not None:
        if not isinstance(split, str) and len(split) != n:
            raise ProbeError(f"split has {len(split)} entries but there are {n} samples")
        table["split"] = split
    if extra is not None:
        for name in extra:
            if name in table.columns:
                raise ProbeError(f"extra column {name!r} clashes with a prediction column; rename it")
            values = extra[name]
            if len(values) != n:
                raise ProbeError(f"extra column {name!r} has {len(values)} entries but there are {n} samples")
            table[name] = np.asarray(values)
    return write_csv(path, table)


def multilabel_probability_columns(classes: Sequence[Any]) -> list[str]:
    """Column names of per-label probabilities: `probability_<label name>`."""
    return [f"probability_{name}" for name in classes]


def write_multilabel_predictions(
    path: str | os.PathLike[str],
    ids: Sequence[Any],
    targets: Any,
    proba: Any,
    classes: Sequence[Any],
    *,
    split: str | None = None,
) -> Path:
    """Write one row per image: `filename`, the true `label_set` and `uncertain_set` (from `targets` (N, C)
    of 1/0/NaN), one `probability_<label>` column per class, and `split` when given. Raises `ProbeError` on
    invalid inputs (`probes.metrics.check_multilabel`) or a length mismatch."""
    from probes.metrics import check_multilabel  # the module imports only what single-label files need

    y, p = check_multilabel(targets, proba, classes=classes)
    ids = list(ids)
    if len(ids) != len(p):
        raise ProbeError(f"ids has {len(ids)} entries but proba has {len(p)} rows")
    names = np.asarray([str(c) for c in classes], dtype=object)

    def joined(mask: np.ndarray) -> list[str]:
        return ["|".join(names[row]) for row in mask]

    table = pd.DataFrame({"filename": ids, "label_set": joined(y == 1), "uncertain_set": joined(np.isnan(y))})
    for i, column in enumerate(multilabel_probability_columns(names)):
        table[column] = p[:, i]
    if split is not None:
        table["split"] = split
    return write_csv(path, table)


def read_predictions(path: str | os.PathLike[str], split: str | None = "test") -> pd.DataFrame:
    """A predictions CSV (from `write_predictions`) sorted by `filename`, the rows of `split` only when the
    file has a `split` column; `prediction_proba(frame)` gives its (N, C) probabilities. `filename` and
    `split` read back as the text written (an id such as "0012" stays "0012")."""
    frame = read_csv(path, text=("filename", "split"))
    if split is not None and "split" in frame:
        frame = frame[frame["split"] == split]
    return frame.sort_values("filename", kind="stable").reset_index(drop=True)


def prediction_proba(frame: pd.DataFrame) -> np.ndarray:
    """The (N, C) probability columns of a predictions table, in class order."""
    n = sum(str(c).startswith("probability_class_") for c in frame.columns)
    return frame[probability_columns(n)].to_numpy(dtype=np.float64)


def paired_difference_table(
    pretrained: str | os.PathLike[str],
    baseline: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, dict[str, Any]]:
    """`probes.metrics.paired_bootstrap_difference` of two probe runs' test predictions (files of the same
    test images; a mismatch raises `ProbeError`)."""
    a, b = read_predictions(pretrained), read_predictions(baseline)
    if a["filename"].tolist() != b["filename"].tolist() or not (a["true_label"] == b["true_label"]).all():
        raise ProbeError(f"{pretrained} and {baseline} do not hold predictions for the same test images")
    return paired_bootstrap_difference(
        a["true_label"].to_numpy(),
        prediction_proba(a),
        prediction_proba(b),
        seed=seed,
        n_resamples=n_resamples,
    )


def _metric(metrics: MetricResult, *names: str) -> float:
    for name in names:
        if name in metrics.values:
            return float(metrics.values[name])
    return math.nan


def summary_row(metrics: MetricResult, dataset_name: str) -> dict[str, Any]:
    """PanDerm's summary row for one dataset: Dataset, W_F1, AUROC (binary AUROC, or macro one-vs-rest for
    more classes), BACC, ACC, AUPR (macro average precision). Missing metrics are NaN."""
    return {
        "Dataset": dataset_name,
        "W_F1": _metric(metrics, "f1_weighted"),
        "AUROC": _metric(metrics, "auroc", "auroc_macro_ovr"),
        "BACC": _metric(metrics, "balanced_accuracy"),
        "ACC": _metric(metrics, "accuracy"),
        "AUPR": _metric(metrics, "aupr_macro"),
    }


def write_summary(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write summary rows (from `summary_row`) as CSV with PanDerm's columns first; returns `path`.

    Keys beyond PanDerm's columns follow them; NaN is written as an empty cell. Raises `ProbeError` when a
    row lacks one of PanDerm's columns.
    """
    for i, row in enumerate(rows):
        lacking = [c for c in SUMMARY_COLUMNS if c not in row]
        if lacking:
            raise ProbeError(f"summary row {i} lacks column(s) {lacking}; build rows with summary_row()")
    columns = list(SUMMARY_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    table = pd.DataFrame.from_records([dict(r) for r in rows], columns=columns)
    return write_csv(path, table)
