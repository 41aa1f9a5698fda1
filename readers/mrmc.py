"""Multi-reader multi-case (MRMC) analysis: Obuchowski-Rockette (OR) with Hillis' denominator df, and
Dorfman-Berbaum-Metz (DBM) on jackknife pseudovalues as a cross-check.

The OR model treats the figure of merit (FOM) of reader j in condition i as
``theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij`` with error covariances Cov1 (same reader, different
conditions), Cov2 (different readers, same condition) and Cov3 (different both), estimated over cases by the
jackknife, DeLong's method (AUC only) or the bootstrap. Three analyses are reported, as the Iowa OR-DBM MRMC
program does: random readers and cases (``rrrc``), fixed readers (``frrc``) and fixed cases (``rrfc``).
Written by hand because no maintained Python library implements OR/DBM (the references are R and Java).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from panderm.errors import ConfigError, DataError
from panderm.stats import delong_cov
from readers.auc import FOMS, bootstrap_cov, fom_and_jackknife, fom_values, jackknife_cov
from readers.schema import ReaderStudy

CovMethod = Literal["jackknife", "delong", "bootstrap"]
COV_METHODS: tuple[str, ...] = ("jackknife", "delong", "bootstrap")


@dataclass(frozen=True)
class StudyArray:
    """Ratings (or 0/1 calls) as an array (conditions, readers, cases), negatives first, and its labels."""

    x: np.ndarray
    n0: int
    conditions: list
    readers: list
    cases: list


def study_array(
    study: ReaderStudy,
    fom: str = "auc",
    *,
    threshold: float | None = None,
    positive: object = 1,
    conditions: list | None = None,
) -> tuple[StudyArray, float | None]:
    """The fully crossed array an MRMC analysis needs, and the threshold to apply to it.

    AUC uses `rating`. Binary FOMs use `rating >= threshold` when a threshold is given, else the class in
    `response` (called positive when it equals `positive`). Accuracy on a study whose truth is not binary
    scores `response == truth` over all cases (one stratum). Raises `DataError` naming the missing column,
    non-binary truth, or the first reader x condition x case cells that are missing.
    """
    if fom not in FOMS:
        raise ConfigError(f"fom: unknown figure of merit {fom!r}; expected one of {FOMS}")
    data = study.data
    conditions = list(conditions) if conditions is not None else study.conditions
    unknown = [c for c in conditions if c not in study.conditions]
    if unknown:
        raise DataError(f"{study.source}: condition(s) {unknown} not in the study ({study.conditions})")
    data = data[data["condition"].isin(conditions)]
    truth = study.truth
    binary = set(truth.unique()) <= {0, 1, positive} and len(truth.unique()) == 2
    multiclass_accuracy = fom == "accuracy" and not binary and threshold is None
    if multiclass_accuracy:
        if not study.has("response"):
            raise DataError(f"{study.source}: fom=accuracy needs a `response` column")
        value = (data["response"] == data["truth"]).astype(float)
        cut: float | None = 0.5
        order = list(truth.index)
        n0 = 0
    else:
        if not binary:
            raise DataError(
                f"{study.source}: fom={fom!r} needs a binary truth (0/1 or positive={positive!r}); "
                f"found {sorted(map(str, truth.unique()))}"
            )
        is_pos = truth == positive if positive in set(truth.unique()) else truth == 1
        if fom == "auc" or threshold is not None:
            if not study.has("rating"):
                raise DataError(f"{study.source}: fom={fom!r} needs a `rating` column")
            value, cut = data["rating"].astype(float), threshold
        else:
            if not study.has("response"):
                raise DataError(
                    f"{study.source}: fom={fom!r} needs a `response` column or a rating `threshold`"
                )
            value, cut = (data["response"] == positive).astype(float), 0.5
        order = list(truth.index[~is_pos.to_numpy()]) + list(truth.index[is_pos.to_numpy()])
        n0 = int((~is_pos).sum())
        if n0 < 2 or len(order) - n0 < 2:
            raise DataError(
                f"{study.source}: need at least 2 negative and 2 positive cases, got {n0} and "
                f"{len(order) - n0}"
            )
    readers = [r for r in study.readers if r in set(data["reader"])]
    table = pd.Series(value.to_numpy(), index=pd.MultiIndex.from_frame(data[["condition", "reader", "case"]]))
    full = pd.MultiIndex.from_product([conditions, readers, order], names=["condition", "reader", "case"])
    arranged = table.reindex(full)
    if arranged.isna().any():
        holes = arranged[arranged.isna()].index[:5].tolist()
        raise DataError(
            f"{study.source}: MRMC needs every reader to read every case in every condition; "
            f"{int(arranged.isna().sum())} reader x condition x case cells are missing or empty, e.g. {holes}"
        )
    x = arranged.to_numpy().reshape(len(conditions), len(readers), len(order))
    return StudyArray(x, n0, conditions, readers, order), cut


def fom_covariance(
    x: np.ndarray,
    n0: int,
    fom: str = "auc",
    *,
    threshold: float | None = None,
    cov: str = "jackknife",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """FOMs of shape (conditions, readers), their error covariance over cases, (C*R, C*R) in C order, and
    with the jackknife its leave-one-case-out FOMs (shape ``x.shape``; DBM's input), else None."""
    if cov not in COV_METHODS:
        raise ConfigError(f"cov: unknown covariance method {cov!r}; expected one of {COV_METHODS}")
    if cov == "delong" and fom != "auc":
        raise ConfigError(f"cov: DeLong's method is for fom='auc' only, not {fom!r}")
    if cov == "jackknife":
        foms, loo = fom_and_jackknife(x, n0, fom, threshold)
        return foms, jackknife_cov(loo), loo
    foms = fom_values(x, n0, fom, threshold)
    if cov == "delong":
        return foms, delong_cov(x, n0), None
    return foms, bootstrap_cov(x, n0, fom, threshold, n_boot=n_boot, seed=seed), None


@dataclass(frozen=True)
class ORComponents:
    """OR error variance and covariances; per condition (Var_E_i, Cov2_i) and per reader (Var_E_j, Cov1_j)."""

    var_error: float
    cov1: float
    cov2: float
    cov3: float
    var_error_condition: np.ndarray
    cov2_condition: np.ndarray
    var_error_reader: np.ndarray
    cov1_reader: np.ndarray


def or_components(cov: np.ndarray, n_conditions: int, n_readers: int) -> ORComponents:
    """Average the (C*R, C*R) covariance matrix into the OR components (each mean over its index pairs)."""
    t, r = n_conditions, n_readers
    c = cov.reshape(t, r, t, r)
    same_i = np.eye(t, dtype=bool)[:, None, :, None]
    same_j = np.eye(r, dtype=bool)[None, :, None, :]
    diag = np.einsum("ijij->ij", c)  # Var of each FOM, (t, r)

    def mean_where(mask: np.ndarray) -> float:
        mask = np.broadcast_to(mask, c.shape)
        return float(c[mask].mean()) if mask.any() else float("nan")

    cov2_i = np.array([c[i, :, i, :][~np.eye(r, dtype=bool)].mean() if r > 1 else np.nan for i in range(t)])
    cov1_j = np.array([c[:, j, :, j][~np.eye(t, dtype=bool)].mean() if t > 1 else np.nan for j in range(r)])
    return ORComponents(
        var_error=float(diag.mean()),
        cov1=mean_where(~same_i & same_j),
        cov2=mean_where(same_i & ~same_j),
        cov3=mean_where(~same_i & ~same_j),
        var_error_condition=diag.mean(axis=1),
        cov2_condition=cov2_i,
        var_error_reader=diag.mean(axis=0),
        cov1_reader=cov1_j,
    )


def mean_squares(foms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MS_T, MS_R and MS_TR of the condition x reader ANOVA of FOMs (..., conditions, readers), batched over
    any leading axes (MS_T and MS_TR are NaN for one condition)."""
    t, r = foms.shape[-2:]
    grand = foms.mean(axis=(-2, -1), keepdims=True)
    cond, read = foms.mean(axis=-1, keepdims=True), foms.mean(axis=-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ms_t = r * ((cond - grand) ** 2).sum(axis=(-2, -1)) / (t - 1)
        ms_r = t * ((read - grand) ** 2).sum(axis=(-2, -1)) / (r - 1)
        ms_tr = ((foms - cond - read + grand) ** 2).sum(axis=(-2, -1)) / ((t - 1) * (r - 1))
    return ms_t, ms_r, ms_tr


def error_terms(
    ms_tr: np.ndarray,
    var_error: np.ndarray,
    cov1: np.ndarray,
    cov2: np.ndarray,
    cov3: np.ndarray,
    t: int,
    r: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OR error terms (arrays broadcast): the RRRC denominator MS_TR + r max(Cov2 - Cov3, 0) with Hillis'
    (2007) ddf, and the FRRC denominator Var_E - Cov1 + (r - 1) max(Cov2 - Cov3, 0)."""
    excess = np.maximum(cov2 - cov3, 0.0)
    den = ms_tr + r * excess
    with np.errstate(divide="ignore", invalid="ignore"):
        ddf = den**2 / (ms_tr**2 / ((t - 1) * (r - 1)))
    return den, ddf, var_error - cov1 + (r - 1) * excess


def _plain(label: object) -> object:
    """A numpy scalar label as its Python value, so that results are JSON-ready."""
    return label.item() if isinstance(label, np.generic) else label


def _ratio(num: float, den: float) -> float:
    """num / den, with a zero denominator (e.g. readers with identical FOMs) giving inf, or NaN for 0/0."""
    if den > 0:
        return float(num / den)
    return float("inf") if num > 0 else float("nan")


def _diffs(foms: np.ndarray, conditions: list, se: float, dist: stats.rv_continuous, alpha: float) -> list:
    """Every pairwise condition difference (mean FOM a - b) with its test and CI, for a common `se`."""
    means = foms.mean(axis=1)
    q = float(dist.ppf(1 - alpha / 2))
    rows = []
    for a, b in combinations(range(len(conditions)), 2):
        d = float(means[a] - means[b])
        stat = d / se if se > 0 else float("nan")
        rows.append(
            {
                "conditions": [conditions[a], conditions[b]],
                "difference": d,
                "se": float(se),
                "statistic": stat,
                "p": float(2 * dist.sf(abs(stat))),
                "ci95": [d - q * se, d + q * se],
            }
        )
    return rows


def or_analysis(
    foms: np.ndarray,
    cov: np.ndarray,
    conditions: list | None = None,
    readers: list | None = None,
    alpha: float = 0.05,
) -> dict:
    """OR analyses of FOMs (conditions, readers) with error covariance `cov` (C*R, C*R): ``rrrc`` (F with
    Hillis' ddf), ``frrc`` (chi-square), ``rrfc`` (F on the reader ANOVA), each with pairwise differences and
    single-condition CIs; plus variance components. Needs at least 2 readers; the test needs 2 conditions.
    """
    t, r = foms.shape
    if r < 2:
        raise DataError(f"MRMC needs at least 2 readers, got {r}")
    conditions = list(range(t)) if conditions is None else [_plain(c) for c in conditions]
    readers = list(range(r)) if readers is None else [_plain(c) for c in readers]
    oc = or_components(cov, t, r)
    ms_t, ms_r, ms_tr = map(float, mean_squares(foms))
    ms_r_i = mean_squares(foms[:, None, :])[1]  # MS_R of each condition alone
    means = foms.mean(axis=1)
    var_tr = ms_tr - oc.var_error + oc.cov1 + oc.cov2 - oc.cov3 if t > 1 else 0.0
    var_r = (ms_r - var_tr - oc.var_error - (t - 1) * oc.cov1 + oc.cov2 + (t - 1) * oc.cov3) / t
    out: dict = {
        "fom": {
            str(c): dict(zip(map(str, readers), map(float, foms[i]), strict=True))
            for i, c in enumerate(conditions)
        },
        "condition_means": {str(c): float(m) for c, m in zip(conditions, means, strict=True)},
        "anova": {"MS_T": ms_t, "MS_R": ms_r, "MS_TR": ms_tr, "MS_R_per_condition": ms_r_i.tolist()},
        "variance_components": {
            "var_r": float(var_r),
            "var_tr": float(var_tr) if t > 1 else float("nan"),
            "cov1": oc.cov1,
            "cov2": oc.cov2,
            "cov3": oc.cov3,
            "var_error": oc.var_error,
        },
    }
    q_z = float(stats.norm.ppf(1 - alpha / 2))
    # Single-condition CIs use only that condition's reader ANOVA and Cov2 (Hillis 2007).
    single_rrrc, single_frrc, single_rrfc = [], [], []
    for i, c in enumerate(conditions):
        cov2_i = max(float(oc.cov2_condition[i]), 0.0)
        denom = ms_r_i[i] + r * cov2_i
        se = float(np.sqrt(denom / r))
        df = float(denom**2 / (ms_r_i[i] ** 2 / (r - 1))) if ms_r_i[i] > 0 else float("inf")
        q = float(stats.t.ppf(1 - alpha / 2, df))
        single_rrrc.append(
            {
                "condition": c,
                "fom": float(means[i]),
                "se": se,
                "df": df,
                "ci95": [means[i] - q * se, means[i] + q * se],
                "cov2": float(oc.cov2_condition[i]),
            }
        )
        se_f = float(np.sqrt((oc.var_error_condition[i] + (r - 1) * cov2_i) / r))
        single_frrc.append(
            {
                "condition": c,
                "fom": float(means[i]),
                "se": se_f,
                "ci95": [means[i] - q_z * se_f, means[i] + q_z * se_f],
                "var_error": float(oc.var_error_condition[i]),
                "cov2": float(oc.cov2_condition[i]),
            }
        )
        se_c = float(np.sqrt(ms_r_i[i] / r))
        q_c = float(stats.t.ppf(1 - alpha / 2, r - 1))
        single_rrfc.append(
            {
                "condition": c,
                "fom": float(means[i]),
                "se": se_c,
                "df": r - 1,
                "ci95": [means[i] - q_c * se_c, means[i] + q_c * se_c],
            }
        )
    if t < 2:
        out["rrrc"] = {"single_condition": single_rrrc}
        out["frrc"] = {"single_condition": single_frrc}
        out["rrfc"] = {"single_condition": single_rrfc}
        return out

    df1 = t - 1
    # RRRC: Hillis (2007) denominator, MS_TR + r * max(Cov2 - Cov3, 0), with ddf_H.
    den, ddf, den_f = map(float, error_terms(ms_tr, oc.var_error, oc.cov1, oc.cov2, oc.cov3, t, r))
    f = _ratio(ms_t, den)
    out["rrrc"] = {
        "statistic": "F",
        "value": float(f),
        "df1": df1,
        "df2": float(ddf),
        "p": float(stats.f.sf(f, df1, ddf)),
        "differences": _diffs(foms, conditions, float(np.sqrt(2 / r * den)), stats.t(ddf), alpha),
        "single_condition": single_rrrc,
    }
    # FRRC: chi-square with the fixed-reader error term.
    x2 = _ratio(df1 * ms_t, den_f)
    per_reader = []
    for j, rd in enumerate(readers):
        se_j = float(np.sqrt(2 * (oc.var_error_reader[j] - oc.cov1_reader[j])))
        for row in _diffs(foms[:, j : j + 1], conditions, se_j, stats.norm, alpha):
            per_reader.append(
                {
                    "reader": rd,
                    **row,
                    "var_error": float(oc.var_error_reader[j]),
                    "cov1": float(oc.cov1_reader[j]),
                }
            )
    out["frrc"] = {
        "statistic": "X2",
        "value": float(x2),
        "df1": df1,
        "df2": None,
        "p": float(stats.chi2.sf(x2, df1)),
        "differences": _diffs(foms, conditions, float(np.sqrt(2 / r * den_f)), stats.norm, alpha),
        "single_condition": single_frrc,
        "single_reader": per_reader,
    }
    # RRFC: cases fixed, so Cov1 = Cov2 = Cov3 = 0: the conventional condition x reader ANOVA.
    ddf_c = (t - 1) * (r - 1)
    f_c = _ratio(ms_t, ms_tr)
    out["rrfc"] = {
        "statistic": "F",
        "value": float(f_c),
        "df1": df1,
        "df2": ddf_c,
        "p": float(stats.f.sf(f_c, df1, ddf_c)),
        "differences": _diffs(foms, conditions, float(np.sqrt(2 / r * ms_tr)), stats.t(ddf_c), alpha),
        "single_condition": single_rrfc,
    }
    return out


def dbm_analysis(loo: np.ndarray, foms: np.ndarray) -> dict:
    """DBM: condition x reader x case ANOVA of jackknife pseudovalues ``K*theta - (K-1)*theta_(k)`` with
    Hillis' ddf. ``loo`` is (conditions, readers, cases). With the jackknife its F and ddf equal OR's."""
    t, r, k = loo.shape
    y = k * foms[..., None] - (k - 1) * loo
    g = y.mean()
    m_t, m_r, m_c = y.mean(axis=(1, 2)), y.mean(axis=(0, 2)), y.mean(axis=(0, 1))
    m_tr, m_tc, m_rc = y.mean(axis=2), y.mean(axis=1), y.mean(axis=0)
    ms = {
        "T": r * k * ((m_t - g) ** 2).sum() / (t - 1),
        "R": t * k * ((m_r - g) ** 2).sum() / (r - 1),
        "C": t * r * ((m_c - g) ** 2).sum() / (k - 1),
        "TR": k * ((m_tr - m_t[:, None] - m_r[None, :] + g) ** 2).sum() / ((t - 1) * (r - 1)),
        "TC": r * ((m_tc - m_t[:, None] - m_c[None, :] + g) ** 2).sum() / ((t - 1) * (k - 1)),
        "RC": t * ((m_rc - m_r[:, None] - m_c[None, :] + g) ** 2).sum() / ((r - 1) * (k - 1)),
    }
    resid = (
        y
        - m_tr[..., None]
        - m_tc[:, None, :]
        - m_rc[None]
        + m_t[:, None, None]
        + m_r[None, :, None]
        + m_c[None, None, :]
        - g
    )
    ms["TRC"] = (resid**2).sum() / ((t - 1) * (r - 1) * (k - 1))
    ms = {key: float(v) for key, v in ms.items()}
    den = ms["TR"] + max(ms["TC"] - ms["TRC"], 0.0)
    f = _ratio(ms["T"], den)
    ddf = _ratio(den**2, ms["TR"] ** 2 / ((t - 1) * (r - 1)))
    return {
        "mean_squares": ms,
        "variance_components": {
            "var_r": (ms["R"] - ms["TR"] - ms["RC"] + ms["TRC"]) / (t * k),
            "var_c": (ms["C"] - ms["TC"] - ms["RC"] + ms["TRC"]) / (t * r),
            "var_tr": (ms["TR"] - ms["TRC"]) / k,
            "var_tc": (ms["TC"] - ms["TRC"]) / r,
            "var_rc": (ms["RC"] - ms["TRC"]) / t,
            "var_trc_error": ms["TRC"],
        },
        "rrrc": {
            "statistic": "F",
            "value": f,
            "df1": t - 1,
            "df2": ddf,
            "p": float(stats.f.sf(f, t - 1, ddf)),
        },
    }


def mrmc(
    study: ReaderStudy,
    fom: str = "auc",
    cov: str = "jackknife",
    *,
    threshold: float | None = None,
    positive: object = 1,
    conditions: list | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    dbm: bool = True,
) -> dict:
    """OR analysis of a reader study (JSON-ready dict), with DBM as a cross-check when `dbm` and the
    covariance is the jackknife. See `study_array` for how each FOM is read from the table."""
    arr, cut = study_array(study, fom, threshold=threshold, positive=positive, conditions=conditions)
    foms, c, loo = fom_covariance(arr.x, arr.n0, fom, threshold=cut, cov=cov, n_boot=n_boot, seed=seed)
    out = {
        "source": study.source,
        "fom_name": fom,
        "covariance": cov,
        "threshold": threshold,
        "n_readers": len(arr.readers),
        "n_cases": len(arr.cases),
        "n_negative": arr.n0,
        "n_positive": len(arr.cases) - arr.n0,
        **or_analysis(foms, c, arr.conditions, arr.readers, alpha),
    }
    if cov == "bootstrap":
        out["n_boot"], out["seed"] = n_boot, seed
    if dbm and loo is not None and len(arr.conditions) > 1:
        out["dbm"] = dbm_analysis(loo, foms)
    return out
