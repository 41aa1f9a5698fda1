"""Per reader x condition metrics of a reader study, with Wilson or case-bootstrap CIs, and answer changes.

Every metric is the mean over cases of a per-row value (1 = success, 0 = failure; the Likert score for
`confidence`) and comes in a tidy table ``reader, condition, metric, value, ci_low, ci_high, n``. A metric
that cannot be computed (no positives, no rows) is NaN with a logged reason, never 0.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from panderm.errors import ConfigError, DataError
from readers.auc import bootstrap_indices
from readers.schema import ReaderStudy, conditions_pair

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "top_k_accuracy", "confidence")
COLUMNS: tuple[str, ...] = ("reader", "condition", "metric", "value", "ci_low", "ci_high", "n")


def _need(study: ReaderStudy, column: str, why: str) -> None:
    if not study.has(column):
        raise DataError(f"{study.source}: {why} needs a {column!r} column, which is missing or empty")


def _positive(study: ReaderStudy, positive: object | None) -> object:
    pos = 1 if positive is None else positive
    if pos not in set(study.truth):
        classes = sorted(map(str, set(study.truth)))
        raise ConfigError(
            f"positive={pos!r} is not a truth class of {study.source} ({classes}); name one with "
            "--positive (positive= in Python)"
        )
    return pos


def calls(study: ReaderStudy, *, positive: object | None = None, threshold: float | None = None) -> pd.Series:
    """Binary call per row of `study.data` (1.0 = called `positive`, NaN = no answer).

    With `threshold`, ``rating >= threshold`` is a positive call; otherwise ``response == positive``
    (`positive` defaults to 1). Raises `DataError` naming a missing column, `ConfigError` for a `positive`
    that is not a truth class.
    """
    data = study.data
    if threshold is not None:
        _need(study, "rating", "threshold=")
        return (data["rating"] >= threshold).astype(float).where(data["rating"].notna())
    _need(study, "response", "a binary call without threshold=")
    pos = _positive(study, positive)
    return (data["response"] == pos).astype(float).where(data["response"].notna())


def correct(
    study: ReaderStudy, *, positive: object | None = None, threshold: float | None = None
) -> pd.Series:
    """Correctness per row of `study.data` (1.0 right, 0.0 wrong, NaN no answer).

    ``response == truth`` by default; with `threshold`, the binary call ``rating >= threshold`` against
    ``truth == positive`` (`positive` defaults to 1). Raises `DataError` naming a missing column.
    """
    data = study.data
    if threshold is None:
        _need(study, "response", "correctness (or --threshold / threshold= to call ratings)")
        return (data["response"] == data["truth"]).astype(float).where(data["response"].notna())
    call = calls(study, positive=positive, threshold=threshold)
    truth_pos = (data["truth"] == _positive(study, positive)).astype(float)
    return (call == truth_pos).astype(float).where(call.notna())


def top_k_hits(study: ReaderStudy, k: int | None = None) -> pd.Series:
    """1.0 where the truth is among the first `k` entries of `top_k` (all entries when k is None), NaN where
    `top_k` is missing. Labels are compared as text, since "a|b|c" strings parse to text labels."""
    if k is not None and k < 1:
        raise ConfigError(f"k: top-k accuracy needs k >= 1, got {k}")
    _need(study, "top_k", "top-k accuracy")
    data = study.data
    hits = [
        np.nan if lst is None else float(str(t) in {str(v) for v in lst[:k]})
        for lst, t in zip(data["top_k"], data["truth"], strict=True)
    ]
    return pd.Series(hits, index=data.index, dtype=float)


def _available(study: ReaderStudy, positive: object | None, threshold: float | None) -> list[str]:
    binary = threshold is not None and study.has("rating")
    binary |= study.has("response") and (positive is not None or study.truth.nunique() == 2)
    out = []
    if study.has("response") or (threshold is not None and study.has("rating")):
        out.append("accuracy")
    if binary:
        out += ["sensitivity", "specificity"]
    if study.has("top_k"):
        out.append("top_k_accuracy")
    if study.has("confidence"):
        out.append("confidence")
    return out


def row_values(
    study: ReaderStudy,
    metric: str,
    *,
    positive: object | None = None,
    threshold: float | None = None,
    k: int | None = None,
) -> pd.Series:
    """The per-row value whose mean over a reader's cases is `metric` (NaN = the row does not count)."""
    if metric == "accuracy":
        return correct(study, positive=positive, threshold=threshold)
    if metric in ("sensitivity", "specificity"):
        call = calls(study, positive=positive, threshold=threshold)
        is_pos = study.data["truth"] == _positive(study, positive)
        return call.where(is_pos) if metric == "sensitivity" else (1.0 - call).where(~is_pos)
    if metric == "top_k_accuracy":
        return top_k_hits(study, k)
    if metric == "confidence":
        _need(study, "confidence", "mean confidence")
        return study.data["confidence"].astype(float)
    raise ConfigError(f"metric: unknown metric {metric!r}; expected one of {METRICS}")


def _matrix(study: ReaderStudy, values: pd.Series) -> tuple[pd.MultiIndex, np.ndarray]:
    """(reader, condition) x case matrix of `values` (NaN where absent), groups and cases in study order."""
    frame = study.data[["reader", "condition", "case"]].assign(_v=values.to_numpy())
    mat = frame.set_index(["reader", "condition", "case"])["_v"].unstack("case")
    groups = pd.MultiIndex.from_frame(frame[["reader", "condition"]].drop_duplicates())
    return groups, mat.reindex(index=groups, columns=study.cases).to_numpy(dtype=float)


def bootstrap_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """NaN-ignoring mean of each row of `values` (groups x cases) on each resample in `idx` (n_boot x cases);
    shape (n_boot, groups), NaN where a resample holds no counted case."""
    n_boot, n = idx.shape
    # Resample multiplicities turn every resample's mean into one matrix product (no loop per resample).
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    w = counts.reshape(n_boot, n).astype(float)
    counted = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ np.where(counted, values, 0.0).T) / (w @ counted.T)


def _interval(
    mat: np.ndarray,
    value: np.ndarray,
    n: np.ndarray,
    metric: str,
    ci: str | None,
    alpha: float,
    idx: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper CI bounds per group (NaN where undefined)."""
    lo, hi = np.full(len(n), np.nan), np.full(len(n), np.nan)
    if ci == "bootstrap":
        boot = bootstrap_means(mat, idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a group with no counted case
            return tuple(np.nanpercentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0))
    if ci == "wilson" and metric != "confidence":
        ok = n > 0
        lo[ok], hi[ok] = proportion_confint(np.nansum(mat, axis=1)[ok], n[ok], alpha, method="wilson")
    elif ci == "wilson":
        ok = n > 1
        sem = np.nanstd(mat[ok], axis=1, ddof=1) / np.sqrt(n[ok])
        lo[ok], hi[ok] = stats.t.interval(1 - alpha, n[ok] - 1, loc=value[ok], scale=sem)
    return lo, hi


def reader_metrics(
    study: ReaderStudy,
    metrics: Sequence[str] | None = None,
    *,
    ci: Literal["wilson", "bootstrap"] | None = "wilson",
    alpha: float = 0.05,
    positive: object | None = None,
    threshold: float | None = None,
    k: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics per reader and condition as a table ``reader, condition, metric, value, ci_low, ci_high, n``.

    `metrics` (default: every one the columns allow) from ``accuracy`` (response == truth, or the rating call
    with `threshold`), ``sensitivity``/``specificity`` (positive class `positive`, default 1; ``rating >=
    threshold`` is positive when `threshold` is given), ``top_k_accuracy`` (truth in the first `k` of
    `top_k`) and ``confidence`` (mean Likert score). ``ci="wilson"``: Wilson score interval for proportions
    and a t interval for the mean confidence; ``ci="bootstrap"``: percentile interval over `n_boot` case
    resamples (within truth classes, the same resamples for every reader and condition, seeded by `seed`);
    ``ci=None``: no interval. `n` counts the cases that enter the metric. Raises `DataError` naming a missing
    column and `ConfigError` for unknown metrics or options.
    """
    if ci not in ("wilson", "bootstrap", None):
        raise ConfigError(f"ci: expected 'wilson', 'bootstrap' or None, got {ci!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: must be in (0, 1), got {alpha}")
    if metrics is None:
        metrics = _available(study, positive, threshold)
        if not metrics:
            raise DataError(
                f"{study.source}: no metric can be computed; need a response, top_k or confidence column, "
                "or a rating column with threshold="
            )
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown metric(s) {unknown}; expected any of {METRICS}")
    idx = None
    if ci == "bootstrap":
        idx = bootstrap_indices(study.truth.reindex(study.cases).astype(str).to_numpy(), n_boot, seed)
    tables = []
    for metric in metrics:
        groups, mat = _matrix(study, row_values(study, metric, positive=positive, threshold=threshold, k=k))
        n = (~np.isnan(mat)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.nansum(mat, axis=1) / n
        lo, hi = _interval(mat, value, n, metric, ci, alpha, idx)
        for (reader, condition), count in zip(groups, n, strict=True):
            if count == 0:
                what = {"sensitivity": "positive", "specificity": "negative"}.get(metric, "answered")
                log.warning(
                    "%s: %s is NaN for reader %r, condition %r: no %s cases",
                    study.source,
                    metric,
                    reader,
                    condition,
                    what,
                )
        table = groups.to_frame(index=False).assign(metric=metric, value=value, ci_low=lo, ci_high=hi, n=n)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[list(COLUMNS)]


def answer_changes(
    study: ReaderStudy,
    before: object = "unaided",
    after: object = "ai_aided",
    *,
    positive: object | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Per reader counts of answer changes from condition `before` to `after`, plus a ``total`` row.

    Columns: reader, n (cases answered in both), right_to_right, right_to_wrong, wrong_to_right,
    wrong_to_wrong, net_gain (= wrong_to_right - right_to_wrong), change_ratio (= wrong_to_right /
    right_to_wrong: ``inf`` when only wrong-to-right changes occur, NaN with a logged reason when neither
    occurs). Correctness as in `correct`. Raises `DataError` for a condition not in the study or a missing
    column.
    """
    conditions_pair(study, before, after)
    data = study.data.assign(_correct=correct(study, positive=positive, threshold=threshold).to_numpy())
    data = data[data["condition"].isin([before, after])]
    wide = data.pivot(index=["reader", "case"], columns="condition", values="_correct").dropna()
    b, a = wide[before].to_numpy(bool), wide[after].to_numpy(bool)
    cells = pd.DataFrame(
        {
            "reader": wide.index.get_level_values("reader"),
            "n": 1,
            "right_to_right": b & a,
            "right_to_wrong": b & ~a,
            "wrong_to_right": ~b & a,
            "wrong_to_wrong": ~b & ~a,
        }
    )
    counts = cells.groupby("reader", sort=False).sum().reindex(study.readers).fillna(0).astype(int)
    counts.loc["total"] = counts.sum()
    counts["net_gain"] = counts["wrong_to_right"] - counts["right_to_wrong"]
    w2r, r2w = counts["wrong_to_right"].to_numpy(float), counts["right_to_wrong"].to_numpy(float)
    ratio = np.full(len(w2r), np.nan)
    np.divide(w2r, r2w, out=ratio, where=r2w > 0)
    ratio[(r2w == 0) & (w2r > 0)] = np.inf
    counts["change_ratio"] = ratio
    for reader in counts.index[(w2r == 0) & (r2w == 0)]:
        log.warning(
            "%s: change ratio NaN for reader %r: no answer changed between %r and %r",
            study.source,
            reader,
            before,
            after,
        )
    return counts.rename_axis("reader").reset_index()


__all__: Sequence[str] = (
    "METRICS",
    "answer_changes",
    "bootstrap_means",
    "calls",
    "correct",
    "reader_metrics",
    "row_values",
    "top_k_hits",
)
