"""Paired comparisons of two models scored on the same cases: DeLong's test of two correlated AUROCs, the
paired (stratified) bootstrap of any metric difference, and Holm's multiplicity correction.

Pure numpy/scipy (statsmodels for Holm). One implementation shared by `readers` (MRMC covariances) and
`probes.bench` (leaderboard tests); neither package is imported here.

DeLong arrays follow the readers' layout: ratings ``x`` of shape (..., cases) ordered negatives first,
``x[..., :n0]`` the truth-0 cases and ``x[..., n0:]`` the truth-1 cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from statsmodels.stats.multitest import multipletests

from panderm.errors import ConfigError

__all__ = [
    "DeLongResult",
    "PairedBootstrapResult",
    "bootstrap_indices",
    "bootstrap_p_value",
    "delong_cov",
    "delong_test",
    "holm",
    "paired_bootstrap",
    "paired_bootstrap_values",
    "resampled_values",
    "structural_components",
]


# ------------------------------------------------------------------------------------------------ DeLong


def structural_components(x: np.ndarray, n0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong structural components of the empirical AUC (ties count 1/2), via mid-ranks.

    Returns ``(auc, v10, v01)``: ``auc`` of shape ``x.shape[:-1]``; ``v10[..., j]`` = mean over negatives of
    psi(positive j, negative); ``v01[..., i]`` = mean over positives of psi(positive, negative i).
    """
    n1 = x.shape[-1] - n0
    r_all = rankdata(x, axis=-1)
    r_neg = rankdata(x[..., :n0], axis=-1)
    r_pos = rankdata(x[..., n0:], axis=-1)
    v10 = (r_all[..., n0:] - r_pos) / n0  # (# negatives below + ties / 2) / n0
    v01 = 1.0 - (r_all[..., :n0] - r_neg) / n1  # (# positives above + ties / 2) / n1
    return v10.mean(axis=-1), v10, v01


def delong_cov(x: np.ndarray, n0: int) -> np.ndarray:
    """DeLong et al. (1988) covariance of the empirical AUCs (flattened leading axes): S10/n1 + S01/n0."""
    _, v10, v01 = structural_components(x, n0)
    n1 = x.shape[-1] - n0
    p10 = v10.reshape(-1, n1)
    p01 = v01.reshape(-1, n0)
    return (
        np.cov(p10) / n1 + np.cov(p01) / n0
        if p10.shape[0] > 1
        else np.atleast_2d(p10.var(ddof=1) / n1 + p01.var(ddof=1) / n0)
    )


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's test of AUROC(a) - AUROC(b) on the same cases: the two AUROCs, their difference, its
    standard error, z, the two-sided p-value and the normal `level` interval of the difference."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def delong_test(y_true: Any, score_a: Any, score_b: Any, *, level: float = 0.95) -> DeLongResult:
    """DeLong's paired test of two binary AUROCs: `y_true` (N,) 0/1 truth, `score_a`/`score_b` (N,) scores of
    class 1 from two models on the same N cases. Raises `ConfigError` when a class is missing or the shapes
    differ. When both models rank every pair alike (zero variance of the difference) z is 0 and p is 1 if the
    AUROCs are equal, else z is +-inf and p is 0."""
    y = np.asarray(y_true).reshape(-1).astype(int)
    a, b = np.asarray(score_a, dtype=float).reshape(-1), np.asarray(score_b, dtype=float).reshape(-1)
    if not len(y) == len(a) == len(b):
        raise ConfigError(f"delong_test: truth and scores differ in length ({len(y)}, {len(a)}, {len(b)})")
    if not set(np.unique(y)) <= {0, 1} or y.min(initial=1) == y.max(initial=0):
        raise ConfigError("delong_test: y_true must hold both classes 0 and 1 (and nothing else)")
    order = np.argsort(y, kind="stable")  # negatives first, as structural_components expects
    x = np.stack([a[order], b[order]])
    n0 = int((y == 0).sum())
    auc, _, _ = structural_components(x, n0)
    cov = delong_cov(x, n0)
    variance = max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0)
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(variance))
    z = diff / se if se > 0 else 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return DeLongResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        difference=diff,
        se=se,
        z=float(z),
        p_value=float(2 * norm.sf(abs(z))),
        low=diff - half,
        high=diff + half,
    )


# --------------------------------------------------------------------------------------------- bootstrap


def bootstrap_indices(strata: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """Case indices of `n_boot` bootstrap samples, drawn with replacement within each stratum (sorted stratum
    values, one ``rng.integers`` call each); shape (n_boot, n_cases), each row keeps the stratum sizes.
    Pass one stratum (e.g. ``np.zeros(n)``) for the plain bootstrap."""
    if n_boot < 2:
        raise ConfigError(f"n_boot: need at least 2 bootstrap samples, got {n_boot}")
    # Not scipy.stats.bootstrap: it resamples each sample alone, while here cases are shared by every
    # model (reader, condition) and resampled within strata.
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    blocks = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        blocks.append(members[rng.integers(0, len(members), (n_boot, len(members)))])
    return np.concatenate(blocks, axis=1)


def resampled_values(statistic: Callable[[np.ndarray], float], indices: np.ndarray) -> np.ndarray:
    """`statistic(rows)` for each row of `indices` (n_boot, n); NaN where it raises `ValueError` (e.g. an
    AUROC on a resample with one class)."""
    out = np.empty(len(indices))
    for i, rows in enumerate(indices):
        try:
            out[i] = float(statistic(rows))
        except ValueError:
            out[i] = np.nan
    return out


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": twice the smaller share of resampled differences on
    either side of 0 (each share counted as (1 + k) / (1 + B), so it is never 0), capped at 1."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan")
    below, above = (1 + (d <= 0).sum()) / (1 + d.size), (1 + (d >= 0).sum()) / (1 + d.size)
    return float(min(1.0, 2 * min(below, above)))


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Paired bootstrap of metric(a) - metric(b): the point difference, the percentile `level` interval, the
    two-sided p-value (`bootstrap_p_value`) and how many resamples had both metrics defined."""

    difference: float
    low: float
    high: float
    p_value: float
    n_used: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_bootstrap_values(
    point_a: float, point_b: float, values_a: np.ndarray, values_b: np.ndarray, *, level: float = 0.95
) -> PairedBootstrapResult:
    """The paired bootstrap result from each model's metric on the same resamples (`values_a`, `values_b`,
    one value per resample, NaN where undefined) and on the full data (`point_a`, `point_b`)."""
    if not 0 < level < 1:
        raise ConfigError(f"level must lie strictly between 0 and 1, got {level}")
    d = np.asarray(values_a, dtype=float) - np.asarray(values_b, dtype=float)
    d = d[np.isfinite(d)]
    tail = 100 * (1 - level) / 2
    low, high = (float(v) for v in np.percentile(d, [tail, 100 - tail])) if d.size else (np.nan, np.nan)
    return PairedBootstrapResult(
        difference=float(point_a - point_b),
        low=low,
        high=high,
        p_value=bootstrap_p_value(d),
        n_used=int(d.size),
    )


def paired_bootstrap(
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    strata: Any = None,
    level: float = 0.95,
) -> PairedBootstrapResult:
    """Paired bootstrap of statistic_a - statistic_b over the same `n` cases: each resample draws the case
    indices once (within `strata`, e.g. the class labels, when given) and both statistics are computed on
    that draw, so what the cases share cancels. `statistic_x(rows)` gets an index array into the cases."""
    indices = bootstrap_indices(np.zeros(n) if strata is None else np.asarray(strata), n_boot, seed)
    everything = np.arange(n)
    return paired_bootstrap_values(
        statistic_a(everything),
        statistic_b(everything),
        resampled_values(statistic_a, indices),
        resampled_values(statistic_b, indices),
        level=level,
    )


# ----------------------------------------------------------------------------------------- multiplicity


def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (statsmodels `multipletests(method="holm")`); NaN entries stay NaN
    and are not counted among the tests."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out
