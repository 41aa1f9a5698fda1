"""Power of an MRMC reader study by simulation: Roe & Metz studies analysed with Obuchowski-Rockette.

Each simulated study is drawn by `readers.simulate.roe_metz` and tested with the OR method on the empirical
AUC with the jackknife covariance, exactly as `readers.mrmc.or_analysis` does it (a test checks the p-values
agree), but for many studies at once: the studies are stacked on a leading axis, the AUCs and their
leave-one-case-out values come from the closed forms in `readers.auc`, and the OR statistics are computed as
array expressions instead of one `or_analysis` call per study.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from panderm.errors import ConfigError
from readers.auc import fom_and_jackknife
from readers.mrmc import error_terms, mean_squares
from readers.simulate import RoeMetzComponents, as_generator, positive_int, roe_metz

Analysis = Literal["rrrc", "frrc", "rrfc"]
ANALYSES: tuple[str, ...] = ("rrrc", "frrc", "rrfc")
_CHUNK_ELEMENTS = 2_000_000  # ratings per batch of simulated studies (bounds memory, keeps numpy busy)


def or_pvalues(foms: np.ndarray, loo: np.ndarray, analysis: str = "rrrc") -> np.ndarray:
    """OR test p-values of a batch of studies: `foms` (..., conditions, readers) and their jackknife
    leave-one-case-out values `loo` (..., conditions, readers, cases); returns shape ``foms.shape[:-2]``.

    Same statistics as `readers.mrmc.or_analysis` with a jackknife covariance: ``rrrc`` (F with Hillis'
    denominator MS_TR + R max(Cov2 - Cov3, 0) and ddf), ``frrc`` (chi-square) and ``rrfc`` (F on the
    condition x reader ANOVA). The OR covariances are averages of the jackknife covariance matrix over index
    pairs, obtained here from sums of the centred jackknife values without forming the matrix. Needs at least
    2 conditions and 2 readers; raises `ConfigError` otherwise or for an unknown `analysis`.
    """
    if analysis not in ANALYSES:
        raise ConfigError(f"analysis: expected one of {ANALYSES}, got {analysis!r}")
    t, r = foms.shape[-2:]
    if t < 2 or r < 2:
        raise ConfigError(f"foms: the OR test needs at least 2 conditions and 2 readers, got {t} and {r}")
    ms_t, _, ms_tr = mean_squares(foms)
    df1 = t - 1
    if analysis == "rrfc":
        with np.errstate(divide="ignore", invalid="ignore"):
            return stats.f.sf(ms_t / ms_tr, df1, (t - 1) * (r - 1))
    # Jackknife covariance (k-1)/k * D D^T over pairs (p, q) of FOMs, summed over each kind of pair.
    k = loo.shape[-1]
    d = loo - loo.mean(axis=-1, keepdims=True)
    scale = (k - 1) / k
    s_all = scale * (d.sum(axis=(-3, -2)) ** 2).sum(axis=-1)
    s_cond = scale * (d.sum(axis=-2) ** 2).sum(axis=(-2, -1))  # same condition (includes p = q)
    s_read = scale * (d.sum(axis=-3) ** 2).sum(axis=(-2, -1))  # same reader (includes p = q)
    s_diag = scale * (d**2).sum(axis=(-3, -2, -1))
    var_error = s_diag / (t * r)
    cov1 = (s_read - s_diag) / (t * (t - 1) * r)
    cov2 = (s_cond - s_diag) / (t * r * (r - 1))
    cov3 = (s_all - s_cond - s_read + s_diag) / (t * (t - 1) * r * (r - 1))
    den, ddf, den_f = error_terms(ms_tr, var_error, cov1, cov2, cov3, t, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        if analysis == "rrrc":
            return stats.f.sf(ms_t / den, df1, ddf)
        return stats.chi2.sf(df1 * ms_t / den_f, df1)


def _sizes(n_cases: int | None, n_negative: int | None, n_positive: int | None, prevalence: float) -> tuple:
    if n_cases is not None and (n_negative is not None or n_positive is not None):
        raise ConfigError("n_cases: give either n_cases (with prevalence) or n_negative and n_positive")
    if n_cases is None:
        if n_negative is None or n_positive is None:
            raise ConfigError("n_cases: give n_cases, or both n_negative and n_positive")
        return positive_int("n_negative", n_negative, 2), positive_int("n_positive", n_positive, 2)
    n_cases = positive_int("n_cases", n_cases, 4)
    if not 0 < prevalence < 1:
        raise ConfigError(f"prevalence: must be in (0, 1), got {prevalence!r}")
    n_positive = round(n_cases * prevalence)
    if min(n_positive, n_cases - n_positive) < 2:
        raise ConfigError(f"n_cases: {n_cases} cases at prevalence {prevalence} leave < 2 in a class")
    return n_cases - n_positive, n_positive


def power(
    n_readers: int,
    n_cases: int | None = None,
    *,
    n_negative: int | None = None,
    n_positive: int | None = None,
    prevalence: float = 0.5,
    delta: float | Sequence[float] | np.ndarray = (1.5, 1.7),
    components: RoeMetzComponents | None = None,
    n_sims: int = 200,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = 0,
    analysis: Analysis = "rrrc",
) -> float:
    """Fraction of `n_sims` simulated Roe & Metz studies whose OR test (jackknife, empirical AUC) has
    p < `alpha`: the power, or the type-I error rate when every `delta` is equal.

    Cases: `n_cases` split by `prevalence` (positives rounded), or `n_negative` and `n_positive`. `delta` is
    the separation per condition (at least 2), `components` the Roe & Metz variances (default
    `RoeMetzComponents()`), `analysis` one of rrrc, frrc, rrfc. A failed test (e.g. zero variance) counts as
    no rejection. The Monte Carlo SE is sqrt(p (1 - p) / n_sims). Raises `ConfigError` naming a bad argument.
    """
    n_readers = positive_int("n_readers", n_readers, 2)
    n0, n1 = _sizes(n_cases, n_negative, n_positive, prevalence)
    n_sims = positive_int("n_sims", n_sims, 1)
    if np.ndim(delta) != 1 or len(delta) < 2:
        raise ConfigError(f"delta: the test compares conditions; give at least 2 separations, got {delta!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: must be in (0, 1), got {alpha!r}")
    if analysis not in ANALYSES:
        raise ConfigError(f"analysis: expected one of {ANALYSES}, got {analysis!r}")
    rng = as_generator(seed)
    step = max(1, _CHUNK_ELEMENTS // (len(delta) * n_readers * (n0 + n1)))
    rejected = 0
    for start in range(0, n_sims, step):
        x = roe_metz(n_readers, n0, n1, delta, components, seed=rng, n_sims=min(step, n_sims - start))
        foms, loo = fom_and_jackknife(x, n0)
        rejected += int((or_pvalues(foms, loo, analysis) < alpha).sum())
    return rejected / n_sims


def power_table(
    readers: Sequence[int] = (4, 6, 10),
    cases: Sequence[int] = (50, 100, 200),
    *,
    prevalence: float = 0.5,
    delta: float | Sequence[float] | np.ndarray = (1.5, 1.7),
    components: RoeMetzComponents | None = None,
    n_sims: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    analysis: Analysis = "rrrc",
) -> pd.DataFrame:
    """Power over a grid: one row per number of readers, one column per total number of cases (split by
    `prevalence`); other arguments as in `power`. Cell (i, j) draws its studies from child
    ``i * len(cases) + j`` of ``SeedSequence(seed)``, so the table is reproducible."""
    readers, cases = list(readers), list(cases)
    if not readers or not cases:
        raise ConfigError(f"readers/cases: need at least one value each, got {readers!r} and {cases!r}")
    seeds = np.random.SeedSequence(seed).spawn(len(readers) * len(cases))
    table = np.empty((len(readers), len(cases)))
    for i, n_r in enumerate(readers):
        for j, n_c in enumerate(cases):
            rng = np.random.default_rng(seeds[i * len(cases) + j])
            table[i, j] = power(
                n_r,
                n_c,
                prevalence=prevalence,
                delta=delta,
                components=components,
                n_sims=n_sims,
                alpha=alpha,
                seed=rng,
                analysis=analysis,
            )
    return pd.DataFrame(table, index=pd.Index(readers, name="readers"), columns=pd.Index(cases, name="cases"))


__all__: Sequence[str] = ("ANALYSES", "or_pvalues", "power", "power_table")
