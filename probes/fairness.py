"""Fairness report of a probe run per subgroup column (Fitzpatrick type, sex, age band, anatomic site, ...).

`subgroup_report` is what `panderm probe ... subgroups=[...]` shows per column:

- groups: a numeric column with more than `MAX_LEVELS` distinct values (age) is cut into fixed 15-year bands
  ``<30, 30-44, 45-59, 60-74, 75+`` (`AGE_BAND_EDGES`; band ``a-b`` holds a <= value < b + 1). Fixed bands
  rather than quantiles so that the same band means the same ages in every run and data set. Other columns
  are used as they are; samples without a value form the group ``(missing)``.
- per subgroup: n, every metric of `probes.metrics.subgroup_metrics` (ECE included) with a stratified
  bootstrap interval from `bootstrap_ci` on that subgroup's rows alone (``<metric>_low``/``<metric>_high``).
- gaps: best minus worst subgroup per metric (`subgroup_gaps`; for ECE worst minus best, so gaps are >= 0).
  The interval comes from resampling the whole test set within every group x class cell and scoring the
  pair that is best/worst on the full data on each resample. The pair stays fixed because the max - min gap
  of every resample is biased upward (it is never below 0, even when the groups do not differ).
- equalised odds on the predicted (arg-max) class: per subgroup the true- and false-positive rate; binary:
  of class 1 (fairlearn's `MetricFrame` with `true_positive_rate`/`false_positive_rate`); multi-class: one
  vs rest per class, averaged over the classes (macro). The equalised-odds difference is the larger of
  (max - min over subgroups) of TPR and of FPR. A rate without its denominator in a subgroup (no positives
  for TPR, no negatives for FPR) is undefined there and left out (fairlearn would count it as 0).
- demographic parity difference: per class, max - min over subgroups of the share predicted as that class,
  averaged over classes; for two classes this is fairlearn's `demographic_parity_difference` of class 1.
  Both differences get percentile intervals from the same group x class resamples as the gaps.
  Samples without a value count as one more group, ``(missing)``, in the gaps and differences too (as in
  `subgroup_gaps`); a tiny group has wide intervals, which is why every gap comes with its interval.
- calibration: the per-subgroup ECE (15 top-label bins) and a reliability figure with one curve per group.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    false_positive_rate,
    true_positive_rate,
)

from panderm.errors import ProbeError
from panderm.io import write_csv
from panderm.report import Report
from panderm.stats import bootstrap_indices, paired_bootstrap_values

# The vectorised weighted scorer of `bootstrap_ci` scores every resample at once; one sklearn call per
# resample, group and metric would take minutes at 1000 resamples.
from probes.metrics import (
    LOWER_IS_BETTER,
    WeightedScorer,
    bootstrap_ci,
    check_probabilities,
    metric_names,
    reliability_bins,
    subgroup_gaps,
    subgroup_metrics,
)
from probes.plots import new_figure, save_figure

__all__ = ["AGE_BAND_EDGES", "MAX_LEVELS", "MISSING", "band_values", "fairness_rates", "subgroup_report"]

AGE_BAND_EDGES = (30, 45, 60, 75)
MAX_LEVELS = 8  # a numeric column with more distinct values than this is banded
MISSING = "(missing)"
LEVEL = 0.95
RATE_COLUMNS = ("tpr", "fpr", "selection_rate")


# -------------------------------------------------------------------------------------------------- groups


def _band_labels(edges: Sequence[int]) -> list[str]:
    inner = [f"{lo}-{hi - 1}" for lo, hi in pairwise(edges)]
    return [f"<{edges[0]}", *inner, f"{edges[-1]}+"]


def band_values(
    values: Any, *, edges: Sequence[int] = AGE_BAND_EDGES, max_levels: int = MAX_LEVELS
) -> tuple[np.ndarray, list[str] | None]:
    """Subgroup labels (object array, None where missing) for the values of one column, and the band labels
    in order when the column was banded (else None).

    A column whose non-missing values are all numeric with more than `max_levels` distinct values is cut
    into bands at the integer `edges` (``<e0``, ``e0-(e1-1)``, ..., ``ek+``); a numeric column with few
    levels keeps its values (integer-valued floats, as pandas reads an integer column with gaps, become
    ints); any other column is returned as it is."""
    raw = pd.Series(np.asarray(values, dtype=object) if np.ndim(values) else values, dtype=object)
    present = raw.notna()
    numbers = pd.to_numeric(raw[present], errors="coerce")
    labels = np.array(raw.where(present, None), dtype=object)
    if not present.any() or numbers.isna().any() or isinstance(raw[present].iloc[0], (bool, np.bool_)):
        return labels, None
    if numbers.nunique() > max_levels:
        names = _band_labels(list(edges))
        index = np.searchsorted(np.asarray(edges, dtype=float), numbers.to_numpy(float), side="right")
        labels[present.to_numpy()] = np.asarray(names, dtype=object)[index]
        return labels, names
    if (numbers == np.round(numbers)).all():
        labels[present.to_numpy()] = [int(v) for v in numbers]
    return labels, None


def _order(frame: pd.DataFrame, column: str, bands: list[str] | None) -> pd.DataFrame:
    """Bands in age order, other groups as `subgroup_metrics` sorted them, "(missing)" last."""
    keys = list(frame[column])
    if bands is not None:
        keys = [b for b in bands if b in keys] + [k for k in keys if k not in bands]
    keys = [k for k in keys if k != MISSING] + [k for k in keys if k == MISSING]
    position = {k: i for i, k in enumerate(frame[column])}
    out = frame.iloc[[position[k] for k in keys]].reset_index(drop=True)
    out.attrs.update(frame.attrs)
    return out


# --------------------------------------------------------------------------------------------- resampling


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """Multiplicity of each of the n samples in each resample (rows of `indices`), float64 (B, n)."""
    flat = (np.arange(len(indices))[:, None] * n + indices).ravel()
    return np.bincount(flat, minlength=len(indices) * n).reshape(len(indices), n).astype(np.float64)


def _chunks(indices: np.ndarray, n: int) -> Any:
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, len(indices), step):
        yield _counts(indices[start : start + step], n)


def fairness_rates(
    weights: np.ndarray, y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int, n_classes: int
) -> dict[str, np.ndarray]:
    """One-vs-rest TPR, FPR and selection rate per (weighting, group, class), each (B, G, C), NaN where the
    denominator is 0; `weights` (B, N) are sample multiplicities (ones for the data as they are), `codes`
    the group index of each sample in [0, G)."""
    member = np.eye(n_groups)[codes]  # (N, G)
    classes = np.arange(n_classes)
    positive = (y[:, None] == classes).astype(np.float64)  # (N, C)
    chosen = (pred[:, None] == classes).astype(np.float64)

    def cell_sums(indicator: np.ndarray) -> np.ndarray:
        return (weights @ (member[:, :, None] * indicator[:, None, :]).reshape(len(y), -1)).reshape(
            len(weights), n_groups, n_classes
        )

    size = (weights @ member)[:, :, None]
    pos, sel, tp = cell_sums(positive), cell_sums(chosen), cell_sums(positive * chosen)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "tpr": np.where(pos > 0, tp / pos, np.nan),
            "fpr": np.where(size - pos > 0, (sel - tp) / (size - pos), np.nan),
            "selection_rate": np.where(size > 0, sel / size, np.nan),
        }


def _spread(values: np.ndarray) -> np.ndarray:
    """max - min over groups (axis -1), ignoring NaN; NaN where no group is defined."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        high = np.where(finite, values, -np.inf).max(axis=-1)
        low = np.where(finite, values, np.inf).min(axis=-1)
        return np.where(finite.any(axis=-1), high - low, np.nan)


def _odds_summary(rates: dict[str, np.ndarray], binary: bool) -> dict[str, np.ndarray]:
    """Per group TPR and FPR ((B, G): class 1, or the macro mean over classes), the equalised-odds and
    demographic-parity differences (B,)."""
    if binary:
        tpr, fpr = rates["tpr"][..., 1], rates["fpr"][..., 1]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN slice: group undefined
            tpr, fpr = np.nanmean(rates["tpr"], axis=2), np.nanmean(rates["fpr"], axis=2)
    odds = np.fmax(_spread(tpr), _spread(fpr))
    parity = _spread(np.moveaxis(rates["selection_rate"], 2, 1)).mean(axis=1)
    return {"tpr": tpr, "fpr": fpr, "equalised_odds": odds, "demographic_parity": parity}


def _binary_rates(y: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """fairlearn's per-group TPR and FPR of class 1, with rates whose denominator is 0 set to NaN."""
    frame = MetricFrame(
        metrics={
            "tpr": partial(true_positive_rate, pos_label=1),
            "fpr": partial(false_positive_rate, pos_label=1),
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=pd.Series(labels, name="group"),
    ).by_group
    positives = pd.Series(y == 1).groupby(labels).sum()
    size = pd.Series(labels).value_counts()
    frame.loc[positives.index[positives == 0], "tpr"] = np.nan
    frame.loc[positives.index[(size[positives.index] - positives) == 0], "fpr"] = np.nan
    return frame.astype(float)


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None, None
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _number(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


# ------------------------------------------------------------------------------------------------- figure


def plot_fairness(
    frame: pd.DataFrame,
    column: str,
    metric: str,
    curves: dict[str, Any],
    path: str | os.PathLike[str],
) -> Path:
    """Left: `metric` per subgroup with its bootstrap interval (n in the tick labels); right: one reliability
    curve (accuracy against mean confidence of the filled bins) per subgroup. Returns `path`."""
    fig = new_figure(11.0, 4.5)
    left, right = fig.subplots(1, 2)
    x = np.arange(len(frame))
    value = frame[metric].to_numpy(float)
    low = frame.get(f"{metric}_low", pd.Series(np.nan, index=frame.index)).to_numpy(float)
    high = frame.get(f"{metric}_high", pd.Series(np.nan, index=frame.index)).to_numpy(float)
    error = np.vstack([value - low, high - value])
    left.errorbar(x, value, yerr=np.where(np.isfinite(error), error, 0), fmt="o", capsize=4)
    ticks = [
        f"{g}\n(n={n})" + ("" if np.isfinite(v) else "\nn/a")
        for g, n, v in zip(frame[column], frame["n"], value, strict=True)
    ]
    left.set_xticks(x, ticks, fontsize="small")
    left.set(ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} by {column} (95% CI)")
    for group, bins in curves.items():
        filled = bins.count > 0
        right.plot(
            bins.confidence[filled], bins.accuracy[filled], "o-", ms=3, label=f"{group} (ECE {bins.ece:.3f})"
        )
    right.plot([0, 1], [0, 1], color="grey", ls=":", lw=1.0)
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (top-class probability)", ylabel="Accuracy")
    right.set_title(f"Reliability by {column}")
    right.legend(loc="upper left", fontsize="small")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------- report


def _with_intervals(
    frame: pd.DataFrame, y: np.ndarray, p: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int
) -> pd.DataFrame:
    """`frame` with ``<metric>_low``/``<metric>_high`` after every metric: `bootstrap_ci` on each group."""
    column = frame.attrs["column"]
    names = metric_names(p.shape[1])
    bounds: dict[str, list[float]] = {f"{m}_{side}": [] for m in names for side in ("low", "high")}
    for group in frame[column]:
        mask = labels == group
        ci = bootstrap_ci(y[mask], p[mask], n_resamples=n_resamples, seed=seed) if n_resamples >= 2 else {}
        for m in names:
            lo, hi = ci.get(m, (np.nan, np.nan))
            bounds[f"{m}_low"].append(lo)
            bounds[f"{m}_high"].append(hi)
    order = [column, "n"] + [c for m in names for c in (m, f"{m}_low", f"{m}_high")]
    out = frame.assign(**bounds)[[*order, *[c for c in frame.columns if c not in order]]]
    out.attrs.update(frame.attrs)
    return out


def _resampled(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    groups: list[Any],
    metrics: dict[str, list[str]],
    n_resamples: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Resample the test set within every group x class cell: each group's `metrics[group]` per resample
    ({group/metric: (B,)}) and the equalised-odds / demographic-parity differences ({name: (B,)})."""
    n, c = p.shape
    indices = bootstrap_indices(codes * c + y, n_resamples, seed)
    scorers = {g: WeightedScorer(y[codes == k], p[codes == k], metrics[g]) for k, g in enumerate(groups)}
    values: dict[str, list[np.ndarray]] = {}
    odds: dict[str, list[np.ndarray]] = {"equalised_odds": [], "demographic_parity": []}
    pred = p.argmax(axis=1)
    for weights in _chunks(indices, n):
        for k, g in enumerate(groups):
            for m, v in scorers[g](weights[:, codes == k]).items():
                values.setdefault(f"{g}/{m}", []).append(v)
        summary = _odds_summary(fairness_rates(weights, y, pred, codes, len(groups), c), c == 2)
        for name in odds:
            odds[name].append(summary[name])
    return {k: np.concatenate(v) for k, v in values.items()}, {k: np.concatenate(v) for k, v in odds.items()}


def _gaps(
    frame: pd.DataFrame, draws: dict[str, np.ndarray] | None, keys: dict[Any, str]
) -> dict[str, dict[str, Any]]:
    """`subgroup_gaps` with the interval and p-value of the fixed best - worst pair's paired difference."""
    gaps: dict[str, dict[str, Any]] = {}
    for metric, gap in subgroup_gaps(frame).items():
        best, worst = keys[gap["best"]], keys[gap["worst"]]
        entry: dict[str, Any] = {
            "best": best,
            "worst": worst,
            "gap": float(gap["gap"]),
            "low": None,
            "high": None,
        }
        if draws is not None and f"{best}/{metric}" in draws and f"{worst}/{metric}" in draws:
            a, b = draws[f"{best}/{metric}"], draws[f"{worst}/{metric}"]
            if metric in LOWER_IS_BETTER:
                a, b = b, a
            paired = paired_bootstrap_values(0.0, 0.0, a, b, level=LEVEL)
            entry.update(low=_number(paired.low), high=_number(paired.high), p_value=_number(paired.p_value))
        gaps[metric] = entry
    return gaps


def _fmt(value: Any, low: Any = None, high: Any = None) -> str:
    if value is None or not np.isfinite(value):
        return ""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _odds_point(
    y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int, class_names: list[str]
) -> tuple[dict[str, np.ndarray], float, float]:
    """Per-group columns (tpr, fpr, selection rates) and the equalised-odds and demographic-parity
    differences of the data as they are; fairlearn for two classes, `fairness_rates` otherwise."""
    if len(class_names) == 2:
        rates = _binary_rates(y, pred, codes).reindex(range(n_groups))
        tpr, fpr = rates["tpr"].to_numpy(), rates["fpr"].to_numpy()
        selection = pd.Series(pred == 1).groupby(codes).mean().reindex(range(n_groups)).to_numpy()
        parity = float(demographic_parity_difference(y, pred, sensitive_features=codes))
        columns = {"tpr": tpr, "fpr": fpr, "selection_rate": selection}
        return columns, float(np.fmax(_spread(tpr), _spread(fpr))), parity
    rates = fairness_rates(np.ones((1, len(y))), y, pred, codes, n_groups, len(class_names))
    point = _odds_summary(rates, binary=False)
    columns = {"tpr": point["tpr"][0], "fpr": point["fpr"][0]}
    for k, name in enumerate(class_names):
        columns[f"selection_rate:{name}"] = rates["selection_rate"][0][:, k]
    return columns, float(point["equalised_odds"][0]), float(point["demographic_parity"][0])


def _report(report: Report, frame: pd.DataFrame, result: dict[str, Any], binary: bool) -> None:
    column = result["column"]
    report.heading(f"Fairness by `{column}`", level=3)
    if result["bands"]:
        report.text(f"`{column}` is cut into fixed bands: {', '.join(result['bands'])}.")
    shown = pd.DataFrame({column: frame[column].astype(str), "n": frame["n"]})
    for m in metric_names(2 if binary else 3):
        shown[m] = [_fmt(*row) for row in frame[[m, f"{m}_low", f"{m}_high"]].itertuples(index=False)]
    shown["missing"] = frame["missing"]
    report.table(shown, f"Metrics per {column} (95% bootstrap CI within each subgroup)")
    gaps = pd.DataFrame(
        [
            {"metric": m, "best": g["best"], "worst": g["worst"], "gap": _fmt(g["gap"], g["low"], g["high"])}
            for m, g in result["gaps"].items()
        ]
    )
    if not gaps.empty:
        report.table(gaps, f"Gap best - worst {column} (95% CI: the same pair on group x class resamples)")
    rates = [c for c in frame.columns if c in ("tpr", "fpr") or c.startswith("selection_rate")]
    kind = "class 1" if binary else "one-vs-rest, macro over classes"
    report.table(frame[[column, "n", *rates]], f"Equalised odds per {column} (predicted class, {kind})")
    eo, dp = result["equalised_odds"], result["demographic_parity"]
    report.text(
        f"Equalised-odds difference {_fmt(eo['difference'], eo['low'], eo['high'])}; "
        f"demographic-parity difference {_fmt(dp['difference'], dp['low'], dp['high'])} (95% CI)."
    )


def _groups(y: np.ndarray, groups: Any, column: str) -> tuple[np.ndarray, list[str] | None]:
    """Subgroup label per sample (bands for a many-valued numeric column, MISSING where empty)."""
    if np.ndim(groups) != 1 or len(groups) != len(y):
        raise ProbeError(f"subgroups: column {column!r} must hold one value per test sample ({len(y)})")
    if column.startswith(RATE_COLUMNS):
        raise ProbeError(f"subgroups: column name {column!r} clashes with the rate columns {RATE_COLUMNS}")
    labels, bands = band_values(groups)
    return np.array([MISSING if v is None else v for v in labels], dtype=object), bands


def subgroup_report(
    y_true: Any,
    proba: Any,
    groups: Any,
    *,
    column: str,
    classes: Sequence[Any] | None = None,
    run_dir: str | os.PathLike[str],
    report: Report,
    n_resamples: int = 1000,
    seed: int = 0,
    plots: bool = True,
) -> dict[str, Any]:
    """The fairness report of one subgroup `column` (definitions in the module docstring).

    Writes ``subgroups_<column>.csv`` in `run_dir` (per group: n, metrics with ``_low``/``_high`` bounds,
    tpr, fpr, selection rate(s), missing) and, when `plots`, ``figures/fairness_<column>.png``; adds tables,
    text and the figure to `report`. `n_resamples` < 2 leaves every interval out (None). Returns a JSON-ready
    dict: column, table, bands, n, primary_metric, gaps {metric: best, worst, gap, low, high, p_value},
    equalised_odds {difference, low, high, tpr, fpr}, demographic_parity {difference, low, high (,
    selection_rate for two classes)}, calibration {group: ece}, bootstrap settings and figure.
    Raises `ProbeError` on invalid inputs.
    """
    y, p = check_probabilities(y_true, proba, classes=classes)
    labels, bands = _groups(y, groups, column)
    base = _order(subgroup_metrics(y, p, labels, column=column), column, bands)
    order = list(base[column])
    keys = [str(g) for g in order]
    codes = pd.Series(labels).map({g: k for k, g in enumerate(order)}).to_numpy(np.int64)
    class_names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(p.shape[1])]
    binary = len(class_names) == 2
    rates, odds, parity = _odds_point(y, p.argmax(axis=1), codes, len(order), class_names)
    frame = _with_intervals(base, y, p, labels, n_resamples, seed)
    frame = frame.assign(**rates)[[*[c for c in frame.columns if c != "missing"], *rates, "missing"]]
    draws: dict[str, np.ndarray] | None = None
    odds_draws: dict[str, np.ndarray] = {}
    if n_resamples >= 2:
        names = metric_names(p.shape[1])
        defined = {keys[i]: [m for m in names if np.isfinite(frame.loc[i, m])] for i in range(len(order))}
        draws, odds_draws = _resampled(y, p, codes, keys, defined, n_resamples, seed)
    table = f"subgroups_{column}.csv"
    write_csv(Path(run_dir) / table, frame)
    eo_low, eo_high = _interval(odds_draws.get("equalised_odds", np.array([])))
    dp_low, dp_high = _interval(odds_draws.get("demographic_parity", np.array([])))
    result: dict[str, Any] = {
        "column": column,
        "table": table,
        "bands": bands,
        "n": dict(zip(keys, map(int, frame["n"]), strict=True)),
        "primary_metric": "auroc" if binary else "balanced_accuracy",
        "gaps": _gaps(base, draws, dict(zip(order, keys, strict=True))),
        "equalised_odds": {
            "difference": _number(odds),
            "low": eo_low,
            "high": eo_high,
            "tpr": dict(zip(keys, map(_number, rates["tpr"]), strict=True)),
            "fpr": dict(zip(keys, map(_number, rates["fpr"]), strict=True)),
        },
        "demographic_parity": {"difference": _number(parity), "low": dp_low, "high": dp_high},
        "calibration": dict(zip(keys, map(_number, frame["ece"]), strict=True)),
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "level": LEVEL},
    }
    if binary:
        result["demographic_parity"]["selection_rate"] = dict(
            zip(keys, map(_number, rates["selection_rate"]), strict=True)
        )
    _report(report, frame, result, binary)
    if plots:
        curves = {keys[k]: reliability_bins(y[codes == k], p[codes == k]) for k in range(len(order))}
        path = Path(run_dir) / "figures" / f"fairness_{column}.png"
        plot_fairness(frame, column, result["primary_metric"], curves, path)
        report.figure(path, f"{result['primary_metric']} and reliability by {column}", relative_to=run_dir)
        result["figure"] = f"figures/fairness_{column}.png"
    return result
