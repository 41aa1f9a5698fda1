"""The leaderboard of a bench run, computed from its cells' `metrics.json` and predictions (never by running
them again): per task column the primary metric (mean over seeds) with its interval, encoder ranks per column
and by mean rank, pairwise tests between encoders on the same test images (paired bootstrap of the metric
difference; DeLong for binary AUROC; multi-label cells: paired bootstrap of macro AUROC over images) with
Holm's correction across a column's pairs, subgroup gaps, a heatmap and a rank plot, written as
`leaderboard.csv`, `pairwise.csv`, `leaderboard.md` and `leaderboard.html`.

A cell record (one row of the run's `cells.csv`) has `task`, `column` (the task, or ``task/probe`` when a
task has several probes), `type`, `probe`, `encoder`, `seed`, `folder`, `status` (done, failed), `error`,
`metric`, `higher_is_better`, `eval_split` (segmentation) and `curve_point` (curves; empty: the mean over
the curve).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from panderm.errors import ProbeError
from panderm.io import atomic_write_text, read_csv, write_csv
from panderm.report import Report
from panderm.stats import (
    bootstrap_indices,
    delong_test,
    holm,
    paired_bootstrap_values,
    resampled_values,
)
from probes.bench.plots import plot_heatmap, plot_ranks
from probes.metrics import classification_metrics
from probes.predictions import multilabel_probability_columns, prediction_proba, read_predictions

log = logging.getLogger(__name__)

__all__ = [
    "LEADERBOARD",
    "PAIRWISE",
    "CellPredictions",
    "cell_value",
    "leaderboard_tables",
    "pairwise_tests",
    "rank_table",
    "read_cell_predictions",
    "resampled_metric",
    "write_leaderboard",
]

LEADERBOARD = "leaderboard.csv"
PAIRWISE = "pairwise.csv"
SUBGROUPS = "subgroups.csv"
CLASSIFICATION_TYPES = ("classification", "multilabel")
CURVE_TYPES = ("fewshot", "label_efficiency")
CURVE_AXIS = {"fewshot": "shot", "label_efficiency": "fraction"}  # the x column of a curve in metrics.json
# other spellings a multi-label probe may use for its macro AUROC
METRIC_ALIASES = {"auroc_macro": ("auroc_macro", "macro_auroc", "auroc_macro_ovr")}
MULTILABEL_METRICS = ("auroc_macro", "macro_auroc")  # what the pairwise tests compute for multi-label cells
MULTILABEL_NOTE = "multi-label: macro AUROC, whole images resampled; DeLong not applicable"


# ------------------------------------------------------------------------------------------- cell values


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ProbeError(f"{path}: cannot read the cell's metrics ({error})") from error


def curve_point_of(record: dict[str, Any]) -> float | None:
    """The record's `curve_point` as a float, None when unset (empty in cells.csv, or an older run's)."""
    point = record.get("curve_point")
    if point is None or point == "" or (isinstance(point, float) and math.isnan(point)):
        return None
    return float(point)


def cell_value(metrics: dict[str, Any], record: dict[str, Any]) -> tuple[float, float, float]:
    """The primary metric of one cell and its interval (NaN where the cell has none), from its
    metrics.json: classification ``test.values``/``test.ci95`` (multi-label: ``auroc_macro`` and its CI),
    segmentation ``eval.<split>.raw``, curves ``<metric>_mean`` at the record's `curve_point` (shots per
    class for fewshot, the training fraction for label_efficiency), else its mean over the curve's points.
    Raises `ProbeError` naming the task and the curve's points when the cell has no such point."""
    metric, kind = str(record["metric"]), str(record["type"])
    nan = (math.nan, math.nan, math.nan)
    if kind == "segmentation":
        raw = metrics.get("eval", {}).get(str(record["eval_split"]), {}).get("raw", {})
        return (float(raw.get(metric, math.nan)), math.nan, math.nan)
    if kind in CURVE_TYPES:
        curve = pd.DataFrame(metrics.get("curve", []))
        column, axis, point = f"{metric}_mean", CURVE_AXIS[kind], curve_point_of(record)
        if column not in curve:
            return nan
        if point is None:
            return (float(curve[column].mean()), math.nan, math.nan)
        at = np.isclose(curve[axis].to_numpy(dtype=float), point) if axis in curve else np.zeros(0, bool)
        if not at.any():
            points = sorted(curve[axis].tolist()) if axis in curve else []
            raise ProbeError(
                f"task {record['task']!r}: curve_point={point:g} is not a {axis} of the cell "
                f"{record['folder']} (its {axis}s: {points})"
            )
        return (float(curve.loc[at, column].iloc[0]), math.nan, math.nan)
    test = metrics.get("test", {})
    values, intervals = test.get("values", {}), test.get("ci95", {}).get("intervals", {})
    for name in METRIC_ALIASES.get(metric, (metric,)):
        if name in values:
            low, high = intervals.get(name, (math.nan, math.nan))
            return (float(values[name]), float(low), float(high))
    return nan


def _subgroup_gaps(metrics: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    out = []
    for column, entry in metrics.get("test", {}).get("subgroups", {}).items():
        gap = entry.get("gaps", {}).get(metric)
        if gap:
            out.append({"subgroup": column, "best": gap["best"], "worst": gap["worst"], "gap": gap["gap"]})
    return out


def _summary(record: Any) -> str:
    """How a column's value comes from its cells: "" or, for a curve, "shot=4" / "mean over the curve"."""
    if str(record["type"]) not in CURVE_TYPES:
        return ""
    point = curve_point_of(dict(record))
    return "mean over the curve" if point is None else f"{CURVE_AXIS[str(record['type'])]}={point:g}"


def rank_table(values: pd.DataFrame, higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """Ranks (1 = best, ties share their mean rank) of the encoders (index) within each column of `values`;
    NaN entries (failed or missing cells) get no rank and do not count."""
    ranks = pd.DataFrame(index=values.index, columns=values.columns, dtype=float)
    for column in values.columns:
        col = values[column].to_numpy(dtype=float)
        ok = np.isfinite(col)
        if ok.any():
            sign = -1.0 if higher_is_better.get(column, True) else 1.0
            ranks.loc[values.index[ok], column] = rankdata(sign * col[ok], method="average")
    return ranks


def leaderboard_tables(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """From cell records: (long table: one row per column x encoder with mean, std over seeds, mean interval,
    seeds, rank and errors; values: encoders x columns; ranks: encoders x columns; subgroup gaps)."""
    rows, gaps = [], []
    for (column, encoder), group in cells.groupby(["column", "encoder"], sort=False):
        first = group.iloc[0]
        found, errors = [], []
        for record in group.to_dict("records"):
            if record["status"] != "done":
                errors.append(f"seed {record['seed']}: {record.get('error') or record['status']}")
                continue
            metrics = _read_json(Path(record["folder"]) / "metrics.json")
            try:
                value = cell_value(metrics, record)
            except ProbeError as error:  # a curve point the cell lacks: shown with the entry, not fatal
                errors.append(f"seed {record['seed']}: {error}")
                continue
            if not np.isfinite(value[0]):
                errors.append(f"seed {record['seed']}: metric {record['metric']!r} not in metrics.json")
                continue
            found.append(value)
            for gap in _subgroup_gaps(metrics, str(record["metric"])):
                gaps.append({"column": column, "encoder": encoder, "seed": record["seed"], **gap})
        values = np.array(found, dtype=float).reshape(-1, 3)
        rows.append(
            {
                "column": column,
                "task": first["task"],
                "type": first["type"],
                "probe": first["probe"],
                "metric": first["metric"],
                "summary": _summary(first),
                "encoder": encoder,
                "value": float(values[:, 0].mean()) if len(values) else math.nan,
                "std": float(values[:, 0].std(ddof=1)) if len(values) > 1 else math.nan,
                "ci_low": float(np.nanmean(values[:, 1])) if np.isfinite(values[:, 1]).any() else math.nan,
                "ci_high": float(np.nanmean(values[:, 2])) if np.isfinite(values[:, 2]).any() else math.nan,
                "seeds": len(values),
                "error": "; ".join(errors),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(gaps)
    columns = list(dict.fromkeys(table["column"]))
    encoders = list(dict.fromkeys(table["encoder"]))
    values = table.pivot(index="encoder", columns="column", values="value").reindex(
        index=encoders, columns=columns
    )
    better = {c: bool(cells.loc[cells["column"] == c, "higher_is_better"].iloc[0]) for c in columns}
    ranks = rank_table(values, better)
    table["rank"] = [ranks.loc[e, c] for e, c in zip(table["encoder"], table["column"], strict=True)]
    return table, values, ranks, pd.DataFrame(gaps)


# ------------------------------------------------------------------------------------ pairwise tests


class CellPredictions:
    """One cell's per-image test outputs, sorted by image id: classification `y` (N,) and `proba` (N, C);
    multi-label `y` (N, L) of 1/0/NaN (unknown) and `proba` (N, L); segmentation per-image `score` (N,) of
    the metric (e.g. Dice)."""

    def __init__(
        self, ids: np.ndarray, y: np.ndarray | None, proba: np.ndarray | None, score: np.ndarray | None
    ):
        self.ids, self.y, self.proba, self.score = ids, y, proba, score


def read_cell_predictions(record: dict[str, Any]) -> CellPredictions | None:
    """The per-image outputs of a finished cell (None for curve tasks, which keep none, and for predictions
    of another shape). A multi-label probe's predictions.csv (`label_set`, `uncertain_set`,
    `probability_<label>`) is read with the label names of the cell's metrics.json `classes`."""
    folder, kind = Path(record["folder"]), str(record["type"])
    if kind == "segmentation":
        frame = pd.read_csv(folder / "per_image.csv", dtype={"id": str})
        frame = frame[(frame["split"] == record["eval_split"]) & frame[record["metric"]].notna()]
        frame = frame.sort_values("id", kind="stable")
        return CellPredictions(frame["id"].to_numpy(), None, None, frame[record["metric"]].to_numpy(float))
    path = folder / "predictions.csv"
    if kind not in CLASSIFICATION_TYPES or not path.is_file():
        return None
    frame = read_predictions(path)
    if "label_set" in frame:
        return _multilabel_predictions(path, folder)
    if "true_label" not in frame or not any(str(c).startswith("probability_class_") for c in frame):
        return None
    try:
        y = frame["true_label"].to_numpy().astype(np.int64)
    except (TypeError, ValueError):
        return None
    return CellPredictions(frame["filename"].to_numpy(), y, prediction_proba(frame), None)


def _multilabel_predictions(path: Path, folder: Path) -> CellPredictions | None:
    """Targets (N, L) of 1/0/NaN and probabilities (N, L) from a multi-label predictions.csv (test rows,
    sorted by filename as `read_predictions` sorts them)."""
    frame = read_csv(path, text=("filename", "split", "label_set", "uncertain_set"))
    if "split" in frame:
        frame = frame[frame["split"] == "test"]
    frame = frame.sort_values("filename", kind="stable").reset_index(drop=True)
    classes = [str(c) for c in _read_json(folder / "metrics.json").get("classes") or []]
    columns = multilabel_probability_columns(classes)
    if not classes or any(c not in frame for c in columns):
        return None
    index = {name: k for k, name in enumerate(classes)}
    y = np.zeros((len(frame), len(classes)))
    for value, cells in ((1.0, frame["label_set"]), (math.nan, frame.get("uncertain_set"))):
        for row, cell in enumerate([] if cells is None else cells):
            for name in filter(None, cell.split("|")):
                if name not in index:
                    return None
                y[row, index[name]] = value
    ids = frame["filename"].to_numpy()
    return CellPredictions(ids, y, frame[columns].to_numpy(dtype=np.float64), None)


def _auroc(
    y: np.ndarray, score: np.ndarray, indices: np.ndarray, known: np.ndarray | None = None
) -> np.ndarray:
    """AUROC of `score` for positives `y` on each resample (rows of `indices`), NaN when a resample lacks a
    class; rows where `known` is False (a multi-label target that is unknown) are left out. Hand-written
    Mann-Whitney over mid-ranks, vectorised over resamples: scikit-learn's roc_auc_score is one call per
    resample."""
    x, pos = score[indices].astype(float), y[indices].astype(bool)
    kept = np.ones_like(pos) if known is None else known[indices]
    pos &= kept
    x[~kept] = -np.inf  # below every known score: each known rank shifts by the resample's unknown count
    ranks = rankdata(x, axis=1)
    n1 = pos.sum(axis=1).astype(float)
    unknown = (~kept).sum(axis=1)
    n0 = indices.shape[1] - unknown - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(axis=1) - n1 * unknown - n1 * (n1 + 1) / 2) / (n0 * n1)
    auc[(n0 == 0) | (n1 == 0)] = np.nan
    return auc


def _auroc_macro(pred: CellPredictions, indices: np.ndarray) -> np.ndarray:
    """Multi-label macro AUROC per resample: the mean over the labels whose AUROC is defined on all the
    cell's images (as `probes.metrics.multilabel_metrics` scores them), NaN on a resample where one of those
    labels lacks a class (as `multilabel_bootstrap_ci` drops it)."""
    y, known = pred.y, ~np.isnan(pred.y)
    positive = np.where(known, y, 0).astype(bool)
    defined = [
        k
        for k in range(y.shape[1])
        if (positive[:, k] & known[:, k]).any() and (~positive[:, k] & known[:, k]).any()
    ]
    if not defined:
        return np.full(len(indices), np.nan)
    return np.mean([_auroc(positive[:, k], pred.proba[:, k], indices, known[:, k]) for k in defined], axis=0)


def resampled_metric(metric: str, pred: CellPredictions, indices: np.ndarray) -> np.ndarray:
    """The metric of one cell on each resample (rows of `indices` into its images): vectorised for
    `auroc`, `auroc_macro_ovr`, `balanced_accuracy`, `accuracy`, per-image means (segmentation) and the
    macro AUROC of multi-label cells (`auroc_macro`; other metrics raise `ValueError` for those); any other
    `classification_metrics` name is computed resample by resample."""
    if pred.score is not None:
        return pred.score[indices].mean(axis=1)
    y, proba = pred.y, pred.proba
    if y.ndim == 2:
        if metric not in MULTILABEL_METRICS:
            raise ValueError(f"metric {metric!r}: multi-label cells are compared on {MULTILABEL_METRICS[0]}")
        return _auroc_macro(pred, indices)
    if metric == "auroc" and proba.shape[1] == 2:
        return _auroc(y == 1, proba[:, 1], indices)
    if metric == "auroc_macro_ovr":
        return np.mean([_auroc(y == k, proba[:, k], indices) for k in range(proba.shape[1])], axis=0)
    correct = (proba.argmax(axis=1) == y)[indices]
    if metric == "accuracy":
        return correct.mean(axis=1)
    if metric == "balanced_accuracy":
        yb = y[indices]
        recalls = []
        for k in np.unique(y):
            members = yb == k
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append((correct & members).sum(axis=1) / members.sum(axis=1))
        return np.nanmean(np.stack(recalls), axis=0)

    def one(rows: np.ndarray) -> float:
        values = classification_metrics(y[rows], proba[rows]).values
        if metric not in values:
            raise ValueError(metric)
        return values[metric]

    return resampled_values(one, indices)


def _aligned(a: CellPredictions, b: CellPredictions) -> bool:
    same = len(a.ids) == len(b.ids) and bool((a.ids == b.ids).all())
    if a.y is None or b.y is None:
        return same and a.y is b.y
    return same and a.y.shape == b.y.shape and bool(np.array_equal(a.y, b.y, equal_nan=True))


def pairwise_tests(
    cells: pd.DataFrame, values: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Every pair of encoders of each column, compared on the same test images of their first common seed:
    paired bootstrap of the primary metric difference (resampled within classes for single-label
    classification; multi-label cells: macro AUROC with images resampled as a whole, the same draws for both
    encoders; seeded), DeLong's test for binary AUROC only (it compares two AUROCs of one binary outcome, so
    not a multi-label macro mean), each with Holm-adjusted p-values across the column's pairs. Pairs whose
    predictions are missing, unreadable or on different images get a note instead."""
    rows: list[dict[str, Any]] = []
    done = cells[cells["status"] == "done"]
    for column, group in done.groupby("column", sort=False):
        if str(group.iloc[0]["type"]) in CURVE_TYPES:
            continue
        finite = values[column].notna() if column in values else pd.Series(dtype=bool)
        encoders = [e for e in values.index if e in set(group["encoder"]) and bool(finite.get(e, False))]
        block = _column_pairs(group, encoders, n_boot=n_boot, seed=seed, level=level)
        for name in ("p_bootstrap", "p_delong"):
            present = [r.get(name, math.nan) for r in block]
            for row, value in zip(block, holm(present), strict=True):
                if name in row:
                    row[f"{name}_holm"] = float(value)
        rows += block
    return pd.DataFrame(rows)


def _column_pairs(
    group: pd.DataFrame, encoders: list[str], *, n_boot: int, seed: int, level: float
) -> list[dict[str, Any]]:
    """The pairwise tests of one column (its finished cell records in `group`)."""
    first = group.iloc[0]
    column, metric, higher = first["column"], str(first["metric"]), bool(first["higher_is_better"])
    loaded: dict[tuple[str, Any], CellPredictions | None] = {}
    draws: dict[Any, np.ndarray] = {}
    resampled: dict[tuple[str, Any], np.ndarray] = {}

    def load(encoder: str, s: Any) -> CellPredictions | None:
        if (encoder, s) not in loaded:
            record = group[(group["encoder"] == encoder) & (group["seed"] == s)].iloc[0].to_dict()
            loaded[(encoder, s)] = read_cell_predictions(record)
        return loaded[(encoder, s)]

    rows = []
    for a, b in combinations(encoders, 2):
        common = set(group.loc[group["encoder"] == a, "seed"]) & set(group.loc[group["encoder"] == b, "seed"])
        row: dict[str, Any] = {"column": column, "metric": metric, "encoder_a": a, "encoder_b": b}
        if not common:
            rows.append({**row, "note": "no common seed"})
            continue
        s = sorted(common)[0]
        pa, pb = load(a, s), load(b, s)
        row["seed"] = s
        if pa is None or pb is None:
            rows.append({**row, "note": "no single-label per-image predictions to pair"})
            continue
        if not _aligned(pa, pb):
            rows.append({**row, "note": "the two cells scored different test images"})
            continue
        if s not in draws:  # within classes for one label per image; multi-label: whole images
            single = pa.y is not None and pa.y.ndim == 1
            draws[s] = bootstrap_indices(pa.y if single else np.zeros(len(pa.ids)), n_boot, seed)
        try:
            for encoder, pred in ((a, pa), (b, pb)):
                if (encoder, s) not in resampled:
                    resampled[(encoder, s)] = resampled_metric(metric, pred, draws[s])
        except ValueError as error:
            rows.append({**row, "note": str(error)})
            continue
        everything = np.arange(len(pa.ids))[None, :]
        point_a = float(resampled_metric(metric, pa, everything)[0])
        point_b = float(resampled_metric(metric, pb, everything)[0])
        result = paired_bootstrap_values(point_a, point_b, resampled[(a, s)], resampled[(b, s)], level=level)
        row.update(
            n_images=len(pa.ids),
            value_a=point_a,
            value_b=point_b,
            difference=result.difference,
            low=result.low,
            high=result.high,
            p_bootstrap=result.p_value,
            better=(a if (result.difference > 0) == higher else b) if result.difference != 0 else "",
        )
        if pa.y is not None and pa.y.ndim == 2:
            row["note"] = MULTILABEL_NOTE
        binary = pa.y is not None and pa.y.ndim == 1 and len(np.unique(pa.y)) == 2
        if binary and pa.proba.shape[1] == 2:
            test = delong_test(pa.y, pa.proba[:, 1], pb.proba[:, 1], level=level)
            row.update(auroc_difference=test.difference, p_delong=test.p_value)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------- writing


def _fmt(value: float, low: float = math.nan, high: float = math.nan) -> str:
    if not np.isfinite(value):
        return "n/a"
    return (
        f"{value:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(low) and np.isfinite(high) else f"{value:.3f}"
    )


def _shown(part: pd.DataFrame, encoder: str, rank: float) -> str:
    """One leaderboard entry: value [interval] #rank, "failed", or "n/a" (no cell of this encoder)."""
    if encoder not in part.index:
        return "n/a"
    row = part.loc[encoder]
    if np.isfinite(row["value"]):
        return _fmt(row["value"], row["ci_low"], row["ci_high"]) + f" #{rank:g}"
    return "failed" if row["error"] else "n/a"


def write_leaderboard(
    cells: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "Leaderboard",
    notes: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    plots: bool = True,
    describe: Callable[[Report], None] | None = None,
) -> dict[str, Any]:
    """Compute and write the leaderboard of `cells` (cell records) into `out_dir`: leaderboard.csv (one row
    per column x encoder), pairwise.csv, subgroups.csv (when any probe reported subgroup gaps), figures
    (heatmap.png, ranks.png) and leaderboard.md/.html. `notes` (e.g. skipped tasks) go at the top of the
    report. Returns a summary: mean ranks, the files written and the number of failed cells."""
    out_dir = Path(out_dir)
    table, values, ranks, gaps = leaderboard_tables(cells)
    report = Report(title)
    for note in notes or []:
        report.text(f"- {note}")
    if describe is not None:
        describe(report)
    summary: dict[str, Any] = {"files": {}, "failed_cells": int((cells["status"] == "failed").sum())}
    if table.empty:
        report.text("No finished cell yet.")
        paths = report.write(out_dir)
        summary["files"]["leaderboard.md"] = str(_rename(paths, out_dir))
        return summary
    pairs = pairwise_tests(cells, values, n_boot=n_boot, seed=seed)
    write_csv(out_dir / LEADERBOARD, table)
    summary["files"][LEADERBOARD] = str(out_dir / LEADERBOARD)
    if not pairs.empty:
        write_csv(out_dir / PAIRWISE, pairs)
        summary["files"][PAIRWISE] = str(out_dir / PAIRWISE)
    mean_rank = ranks.mean(axis=1, skipna=True).sort_values()
    summary["mean_rank"] = {str(k): float(v) for k, v in mean_rank.items()}

    shown = pd.DataFrame({"encoder": mean_rank.index, "mean rank": mean_rank.to_numpy()})
    for column in values.columns:
        part = table[table["column"] == column].set_index("encoder")
        metric = part["metric"].iloc[0] + (f", {part['summary'].iloc[0]}" if part["summary"].iloc[0] else "")
        shown[f"{column} ({metric})"] = [_shown(part, e, ranks.loc[e, column]) for e in mean_rank.index]
    report.heading("Encoders by mean rank")
    report.text(
        "Each cell: the primary metric (mean over seeds) [its 95% bootstrap interval on the test images, "
        "mean over seeds, where the probe computed one] #rank within the task (1 = best; ties share their "
        "mean rank)."
    )
    report.table(shown)
    if plots and values.shape[1] and values.notna().any().any():
        figures = out_dir / "figures"
        heatmap = plot_heatmap(values, figures / "heatmap.png")
        rank_plot = plot_ranks(ranks, figures / "ranks.png")
        report.figure(heatmap, "primary metric per task (encoders x tasks)", relative_to=out_dir)
        report.figure(rank_plot, "rank of each encoder per task and mean rank", relative_to=out_dir)
        summary["files"]["figures"] = [str(heatmap), str(rank_plot)]
    if not pairs.empty:
        report.heading("Pairwise tests")
        report.text(
            f"Paired bootstrap ({n_boot} resamples of the test images, within classes for classification, "
            f"seed {seed}) of the difference a - b of the primary metric, 95% percentile interval; DeLong's "
            "test of the AUROC difference for binary tasks; p-values Holm-adjusted across the pairs of each "
            "task."
        )
        if "note" in pairs and pairs["note"].fillna("").str.startswith(MULTILABEL_NOTE).any():
            report.text(
                "Multi-label tasks: paired bootstrap of macro AUROC, resampling whole test images (the same "
                "resamples for both encoders, no strata); DeLong's test is for one binary outcome and is not "
                "computed for them."
            )
        keep = [
            c
            for c in (
                "column",
                "encoder_a",
                "encoder_b",
                "difference",
                "low",
                "high",
                "p_bootstrap_holm",
                "p_delong_holm",
                "note",
            )
            if c in pairs
        ]
        report.table(pairs[keep])
    if not gaps.empty:
        write_csv(out_dir / SUBGROUPS, gaps)
        summary["files"][SUBGROUPS] = str(out_dir / SUBGROUPS)
        report.heading("Subgroup gaps of the primary metric")
        report.table(gaps)
    failed = table[table["error"] != ""]
    if not failed.empty:
        report.heading("Failed or incomplete cells")
        report.table(failed[["column", "encoder", "error"]])
    paths = report.write(out_dir)
    summary["files"]["leaderboard.md"] = str(_rename(paths, out_dir))
    return summary


def _rename(paths: tuple[Path, Path], out_dir: Path) -> Path:
    """report.md/.html become leaderboard.md/.html (the report of a bench run is its leaderboard)."""
    md, html = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    paths[0].replace(md)
    paths[1].replace(html)
    atomic_write_text(out_dir / "report.md", "See [leaderboard.md](leaderboard.md).\n")
    return md
