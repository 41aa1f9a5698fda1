"""Paired comparisons of two conditions across readers: paired t and Wilcoxon tests of a per-reader metric
with effect sizes, McNemar per reader on correctness, and a class-wise paired analysis with
Benjamini-Hochberg adjusted p-values. Differences are always ``after - before``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from panderm.errors import ConfigError, DataError
from readers.metrics import answer_changes, correct, reader_metrics
from readers.schema import ReaderStudy, conditions_pair

log = logging.getLogger(__name__)

EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant pairs, else chi2 with correction


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison across `n` readers of `metric` between `before` and `after`.

    `mean_diff` (after - before) has a t interval `ci_low`..`ci_high`; `t`, `df`, `p_t` from the paired
    t-test; `w`, `p_wilcoxon` from the Wilcoxon signed-rank test (zero differences dropped); `cohens_dz` =
    mean_diff / sd_diff and `hedges_gz` = `cohens_dz` times Hedges' small-sample correction.
    """

    metric: str
    before: object
    after: object
    n: int
    mean_before: float
    mean_after: float
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    t: float
    df: int
    p_t: float
    w: float
    p_wilcoxon: float
    cohens_dz: float
    hedges_gz: float

    def to_dict(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in asdict(self).items()}


def compare_paired(
    before: np.ndarray,
    after: np.ndarray,
    *,
    metric: str = "value",
    labels: tuple[object, object] = ("before", "after"),
    alpha: float = 0.05,
) -> PairedTest:
    """Paired t-test (scipy `ttest_rel`), Wilcoxon signed-rank test (scipy `wilcoxon`) and effect sizes of
    `after - before` over paired values (1-D arrays of equal length; pairs with a NaN are dropped)."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    if before.shape != after.shape or before.ndim != 1:
        raise DataError(
            f"{metric}: paired values need two 1-D arrays of equal length, got {before.shape}, {after.shape}"
        )
    keep = ~(np.isnan(before) | np.isnan(after))
    if not keep.all():
        log.warning("%s: %d pair(s) with a NaN value dropped", metric, int((~keep).sum()))
    before, after = before[keep], after[keep]
    n = len(before)
    diff = after - before
    nan = float("nan")
    t = df = p_t = w = p_w = lo = hi = sd = dz = gz = nan
    if n < 2:
        log.warning("%s: paired tests need at least 2 pairs, got %d; results are NaN", metric, n)
    else:
        sd = float(diff.std(ddof=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # degenerate data are logged below instead
            res = stats.ttest_rel(after, before)
            t, df, p_t = float(res.statistic), int(res.df), float(res.pvalue)
            lo, hi = (float(v) for v in res.confidence_interval(1 - alpha))
            wres = stats.wilcoxon(diff)
            w, p_w = float(wres.statistic), float(wres.pvalue)
        if sd == 0:
            log.warning("%s: every pair differs by %g; t and effect sizes are degenerate", metric, diff[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            dz = float(np.mean(diff) / sd)
        # Hedges' small-sample correction J = 1 - 3 / (4 (n - 1) - 1); scipy/statsmodels have no paired dz.
        gz = dz * (1 - 3 / (4 * (n - 1) - 1)) if n > 2 else nan
    return PairedTest(
        metric=metric,
        before=labels[0],
        after=labels[1],
        n=n,
        mean_before=float(before.mean()) if n else nan,
        mean_after=float(after.mean()) if n else nan,
        mean_diff=float(diff.mean()) if n else nan,
        sd_diff=sd,
        ci_low=lo,
        ci_high=hi,
        t=t,
        df=df,
        p_t=p_t,
        w=w,
        p_wilcoxon=p_w,
        cohens_dz=dz,
        hedges_gz=gz,
    )


def _per_reader(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """reader, condition, value rows of `metric` from a tidy metrics table or a table with that column."""
    if {"metric", "value"} <= set(table.columns):
        table = table[table["metric"] == metric]
        if table.empty:
            raise DataError(f"metric {metric!r} not in the metrics table")
        value = "value"
    else:
        value = metric
    missing = [c for c in ("reader", "condition", value) if c not in table.columns]
    if missing:
        raise DataError(f"per-reader table: missing column(s) {', '.join(missing)}")
    return table[["reader", "condition", value]].rename(columns={value: "value"})


def paired_test(
    table: pd.DataFrame | ReaderStudy,
    metric: str = "accuracy",
    before: object = "unaided",
    after: object = "ai_aided",
    *,
    alpha: float = 0.05,
    positive: object | None = None,
    threshold: float | None = None,
    k: int | None = None,
) -> PairedTest:
    """Paired comparison across readers of `metric` between conditions `before` and `after`.

    `table` is a `reader_metrics` table (reader, condition, metric, value), a table with reader, condition
    and a `metric` column, or a `ReaderStudy` (then `positive`, `threshold`, `k` go to `reader_metrics`).
    Readers lacking either condition are dropped. Raises `DataError` for a missing column, metric or
    condition.
    """
    if isinstance(table, ReaderStudy):
        conditions_pair(table, before, after)
        table = reader_metrics(table, [metric], ci=None, positive=positive, threshold=threshold, k=k)
    per = _per_reader(table, metric)
    missing = [c for c in (before, after) if c not in set(per["condition"])]
    if missing:
        raise DataError(
            f"condition(s) {missing} not in the per-reader table ({sorted(map(str, set(per['condition'])))})"
        )
    wide = per.pivot(index="reader", columns="condition", values="value")
    return compare_paired(
        wide[before].to_numpy(), wide[after].to_numpy(), metric=metric, labels=(before, after), alpha=alpha
    )


def mcnemar_by_reader(
    study: ReaderStudy,
    before: object = "unaided",
    after: object = "ai_aided",
    *,
    exact: bool | None = None,
    alpha: float = 0.05,
    positive: object | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """McNemar's test per reader on correctness (as in `readers.metrics.correct`) between two conditions.

    By default the exact binomial test is used when a reader has fewer than 25 discordant cases, else the chi2
    test with continuity correction (statsmodels `mcnemar`); `exact` forces one. Columns: reader, n, the four
    answer-change counts, discordant, method, statistic, p_value, and difference (accuracy after - before)
    with a Wald CI (ci_low, ci_high). Raises `DataError` for a condition not in the study or missing column.
    """
    changes = answer_changes(study, before, after, positive=positive, threshold=threshold)
    changes = changes[changes["reader"].astype(str) != "total"].reset_index(drop=True)
    z = stats.norm.ppf(1 - alpha / 2)
    rows = []
    for rec in changes.itertuples(index=False):
        discordant = rec.right_to_wrong + rec.wrong_to_right
        use_exact = discordant < EXACT_BELOW if exact is None else exact
        table = [[rec.right_to_right, rec.right_to_wrong], [rec.wrong_to_right, rec.wrong_to_wrong]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # chi2 with no discordant pair: NaN, logged below
            res = mcnemar(table, exact=use_exact, correction=True)
        if discordant == 0:
            log.warning("reader %r: no discordant cases between %r and %r", rec.reader, before, after)
        n = rec.n
        diff = (rec.wrong_to_right - rec.right_to_wrong) / n if n else float("nan")
        # Wald interval of a paired difference of proportions; statsmodels offers none for paired data.
        se = np.sqrt(max(discordant / n - diff**2, 0.0) / n) if n else float("nan")
        rows.append(
            {
                **rec._asdict(),
                "discordant": discordant,
                "method": "exact" if use_exact else "chi2",
                "statistic": float(res.statistic),
                "p_value": float(res.pvalue),
                "difference": diff,
                "ci_low": diff - z * se,
                "ci_high": diff + z * se,
            }
        )
    out = pd.DataFrame(rows)
    return out.drop(columns=["net_gain", "change_ratio"])


def classwise_paired(
    study: ReaderStudy,
    before: object = "unaided",
    after: object = "ai_aided",
    *,
    test: Literal["t", "wilcoxon"] = "t",
    alpha: float = 0.05,
    positive: object | None = None,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Per truth class: each reader's accuracy on that class's cases in both conditions, a paired test across
    readers (`test`: paired t or Wilcoxon, as in `compare_paired`) and Benjamini-Hochberg adjusted p-values
    (statsmodels `multipletests`, over the classes with a p-value; `significant` = p_adjusted < alpha).

    Columns: truth, n_cases, n_readers, mean_before, mean_after, mean_diff, ci_low, ci_high, statistic,
    p_value, p_adjusted, significant. Raises `DataError` for a condition not in the study or missing column.
    """
    if test not in ("t", "wilcoxon"):
        raise ConfigError(f"test: expected 't' or 'wilcoxon', got {test!r}")
    conditions_pair(study, before, after)
    data = study.data.assign(_correct=correct(study, positive=positive, threshold=threshold).to_numpy())
    data = data[data["condition"].isin([before, after])]
    acc = data.groupby(["truth", "reader", "condition"], sort=False)["_correct"].mean().unstack("condition")
    n_cases = data.groupby("truth", sort=False)["case"].nunique()
    rows = []
    for cls in n_cases.index:
        per = acc.loc[cls]
        res = compare_paired(
            per[before].to_numpy(),
            per[after].to_numpy(),
            metric=f"accuracy[truth={cls}]",
            labels=(before, after),
            alpha=alpha,
        )
        rows.append(
            {
                "truth": cls,
                "n_cases": int(n_cases[cls]),
                "n_readers": res.n,
                "mean_before": res.mean_before,
                "mean_after": res.mean_after,
                "mean_diff": res.mean_diff,
                "ci_low": res.ci_low,
                "ci_high": res.ci_high,
                "statistic": res.t if test == "t" else res.w,
                "p_value": res.p_t if test == "t" else res.p_wilcoxon,
            }
        )
    out = pd.DataFrame(rows)
    out["p_adjusted"] = np.nan
    ok = out["p_value"].notna().to_numpy()
    if ok.any():
        out.loc[ok, "p_adjusted"] = multipletests(out.loc[ok, "p_value"], alpha=alpha, method="fdr_bh")[1]
    if not ok.all():
        log.warning(
            "classes %s have no p-value (no difference or too few readers); left out of the BH adjustment",
            out.loc[~ok, "truth"].tolist(),
        )
    out["significant"] = out["p_adjusted"] < alpha
    return out


__all__: Sequence[str] = (
    "EXACT_BELOW",
    "PairedTest",
    "classwise_paired",
    "compare_paired",
    "mcnemar_by_reader",
    "paired_test",
)
