"""Survival (prognosis) probe: a penalised Cox model on frozen-encoder features of one image per case.

One image per case (the earliest time point of one modality), its `event`/`time` outcome, features
standardised (and reduced by PCA: scikit-survival's Newton-Raphson Cox fit grows steeply with the dimension,
e.g. 0.08 s at 64 dims but 12-120 s at 768 dims for 250 cases) and optional clinical covariates (numeric
standardised, categorical one-hot), all fitted on the training fold only. The ridge penalty (or an
elastic-net one, `l1_ratio` > 0) is chosen by an inner patient-grouped cross-validation on Harrell's C;
an outer patient-grouped cross-validation gives every case an out-of-fold risk score. From those scores:
Harrell's and Uno's C (with patient-clustered bootstrap intervals), the cumulative/dynamic time-dependent
AUC, and Kaplan-Meier curves of risk groups with the log-rank test (scikit-survival throughout).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sksurv.compare import compare_survival
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from panderm.data.outcomes import EVENT, TIME, parse_events, parse_timepoints
from panderm.errors import ConfigError, ProbeError
from panderm.io import write_csv
from panderm.stats import bootstrap_indices
from probes.cases import TaskContext, patient_folds, require_columns
from probes.plots import new_figure, save_figure

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
KM_TABLE = "km.csv"
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # CoxPHSurvivalAnalysis: penalty 0.5·alpha·||β||²
ELASTIC_NET_ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3)  # CoxnetSurvivalAnalysis: scaled by 1/n
GROUP_NAMES = {2: ("low", "high"), 3: ("low", "intermediate", "high")}
_FEATURE = "feature_{}"


# ------------------------------------------------------------------------------------------------ cases
def _shown(values: Sequence[object], limit: int = 10) -> str:
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def survival_cases(
    table: pd.DataFrame,
    *,
    case: str = "lesion_id",
    modality: str = "dermoscopy",
    timepoint: str = "timepoint",
) -> pd.DataFrame:
    """One row per case with numeric `event` (0/1) and `time`: the case's earliest `timepoint` image of
    `modality` (when the table has those columns). The index holds the rows' positions in `table` (and in
    its features). Raises `ConfigError` for missing columns and `ProbeError`, naming images or cases, for
    rows without a case id, bad or missing outcomes, or no events at all."""
    require_columns(table, [case, EVENT, TIME], "the survival probe")
    table = table.reset_index(drop=True)
    named = table["image"] if "image" in table else pd.Series(table.index.map(lambda i: f"row {i}"))
    if table[case].isna().any():
        raise ProbeError(f"column {case!r} is empty for images {_shown(list(named[table[case].isna()]))}")
    rows = table
    if "modality" in table and modality:
        rows = table[table["modality"] == modality]
        if rows.empty:
            raise ProbeError(
                f"no {modality!r} images; modalities: {sorted(map(str, table['modality'].unique()))}"
            )
    if timepoint in rows:
        order = parse_timepoints(rows[timepoint])
        rows = rows.assign(_order=np.nan_to_num(order, nan=np.inf)).sort_values("_order", kind="stable")
    cases = rows[~rows[case].duplicated()].drop(columns="_order", errors="ignore").sort_index()
    if left_out := table[case].nunique() - len(cases):
        log.warning("survival: %d case(s) have no %r image and are left out", left_out, modality)
    try:
        event = parse_events(cases[EVENT])
    except ValueError:
        bad = [i for i, v in zip(named[cases.index], cases[EVENT], strict=True) if _bad_event(v)]
        raise ProbeError(f"column {EVENT!r} is not 0/1 for images {_shown(bad)}") from None
    time = pd.to_numeric(cases[TIME], errors="coerce").to_numpy(dtype=float)
    invalid = ~np.isnan(time) & ~(time >= 0)
    if invalid.any():
        raise ProbeError(
            f"column {TIME!r} is negative for images {_shown(list(named[cases.index[invalid]]))}"
        )
    missing = np.isnan(event) | np.isnan(time)
    if missing.any():
        raise ProbeError(
            f"{int(missing.sum())} case(s) without an outcome ({EVENT!r}/{TIME!r} empty or not a number): "
            f"{case} {_shown(list(cases[case][missing]))}; give them an outcome or drop them"
        )
    if not event.any():
        raise ProbeError(f"no events among {len(cases)} cases: column {EVENT!r} is 0 everywhere")
    return cases.assign(**{EVENT: event.astype(int), TIME: time})


def _bad_event(value: object) -> bool:
    try:
        parse_events([value])
    except ValueError:
        return True
    return False


# -------------------------------------------------------------------------------------------------- fit
def design_matrix(
    features: np.ndarray, cases: pd.DataFrame, covariates: Sequence[str] = (), categorical: Sequence[str] = ()
) -> pd.DataFrame:
    """Features (one column each) and the covariate columns of `cases`: numeric ones as floats, the others
    and those named in `categorical` (e.g. integer class codes) as strings ("missing" where empty)."""
    frame = pd.DataFrame(np.asarray(features, dtype=np.float64), columns=_feature_names(features.shape[1]))
    for column in covariates:
        values = cases[column].reset_index(drop=True)
        if column not in categorical and _is_numeric(values):
            frame[column] = pd.to_numeric(values).astype(float)
        else:
            frame[column] = values.where(values.notna(), "missing").astype(str)
    return frame


def _feature_names(dim: int) -> list[str]:
    return [_FEATURE.format(i) for i in range(dim)]


def _is_numeric(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values) or values.dropna().empty:
        return False
    return bool(pd.to_numeric(values.dropna(), errors="coerce").notna().all())


def cox_model(
    design: pd.DataFrame, *, alpha: float = 1.0, n_components: int | None = None, l1_ratio: float = 0.0
) -> Pipeline:
    """An unfitted pipeline: standardised features (-> PCA to `n_components` when given and smaller),
    standardised numeric and one-hot categorical covariates, and a penalised Cox model (ridge:
    `CoxPHSurvivalAnalysis(alpha)`, Breslow ties; elastic net when `l1_ratio` > 0:
    `CoxnetSurvivalAnalysis(alphas=[alpha])`)."""
    features = [c for c in design if c.startswith("feature_")]
    covariates = [c for c in design if c not in features]
    numeric = [c for c in covariates if pd.api.types.is_float_dtype(design[c])]
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if n_components is not None and n_components < len(features):
        steps.append(("pca", PCA(n_components=n_components, svd_solver="full")))
    columns = ColumnTransformer(
        [
            ("features", Pipeline(steps), features),
            ("numeric", StandardScaler(), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore"),
                [c for c in covariates if c not in numeric],
            ),
        ]
    )
    if l1_ratio > 0:
        model = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=[alpha], fit_baseline_model=False)
    else:
        model = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow")
    return Pipeline([("columns", columns), ("model", model)])


def fit_cox(
    design: pd.DataFrame,
    time: np.ndarray,
    event: np.ndarray,
    groups: Sequence[object],
    *,
    alphas: Sequence[float],
    inner_folds: int = 3,
    n_components: int | None = 64,
    l1_ratio: float = 0.0,
    seed: int = 0,
) -> tuple[Pipeline, float]:
    """The Cox pipeline refitted on all of `design` with the penalty that scored the best Harrell's C in a
    patient-grouped (`groups`), event-stratified `inner_folds`-fold cross-validation; (model, alpha)."""
    folds = patient_folds(groups, inner_folds, strata=event, seed=seed)
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(inner_folds)]
    smallest = min(len(train) for train, _ in splits)
    components = None if n_components is None else min(n_components, smallest - 1)
    grid = {"model__alphas": [[a] for a in alphas]} if l1_ratio > 0 else {"model__alpha": list(alphas)}
    search = GridSearchCV(
        cox_model(design, n_components=components, l1_ratio=l1_ratio), grid, cv=splits, error_score=np.nan
    )
    with warnings.catch_warnings():  # weak penalties on few events: convergence notes, scored as they are
        warnings.simplefilter("ignore")
        search.fit(design, _surv(event, time))
    best = search.best_params_
    return search.best_estimator_, float(best["model__alphas"][0] if l1_ratio > 0 else best["model__alpha"])


def out_of_fold_risk(
    design: pd.DataFrame,
    time: np.ndarray,
    event: np.ndarray,
    groups: Sequence[object],
    *,
    folds: int = 5,
    seed: int = 0,
    **fit: Any,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Risk score per case from the model of the outer fold that held it out (patient-grouped folds,
    stratified by event); (risk, fold per case, chosen alpha per fold). `fit`: options of `fit_cox`."""
    groups = np.asarray(groups, dtype=object)
    fold = patient_folds(groups, folds, strata=event, seed=seed)
    risk = np.full(len(design), np.nan)
    chosen = []
    for k in range(folds):
        train, test = fold != k, fold == k
        model, alpha = fit_cox(
            design[train].reset_index(drop=True), time[train], event[train], groups[train], seed=seed, **fit
        )
        risk[test] = model.predict(design[test].reset_index(drop=True))
        chosen.append(alpha)
    return risk, fold, chosen


# ---------------------------------------------------------------------------------------------- metrics
def _surv(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time, dtype=float))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    return float(concordance_index_censored(np.asarray(event).astype(bool), time, risk)[0])


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tau: float) -> float:
    """Uno's IPCW C up to `tau`, the censoring distribution estimated from the same cases."""
    y = _surv(event, time)
    return float(concordance_index_ipcw(y, y, risk, tau=tau)[0])


def time_dependent_auc(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at `times` and its mean (weighted by the KM estimate, scikit-survival's)."""
    y = _surv(event, time)
    auc, mean = cumulative_dynamic_auc(y, y, risk, times)
    return np.asarray(auc, dtype=float), float(mean)


def clustered_resamples(groups: Sequence[object], n_resamples: int, seed: int = 0) -> list[np.ndarray]:
    """Case indices of `n_resamples` bootstrap samples that draw patients (`groups`) with replacement and
    take all their cases, so cases of one patient stay together."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups, dtype=object)))
    members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
    picks = bootstrap_indices(np.zeros(len(uniques)), n_resamples, seed)
    return [np.concatenate([members[p] for p in row]) for row in picks]


def _interval(
    statistic: Callable[[np.ndarray], float], resamples: list[np.ndarray], level: float = 0.95
) -> tuple[list[float] | None, int]:
    values = []
    for rows in resamples:
        try:
            values.append(statistic(rows))
        except ValueError:  # a resample without events or comparable pairs
            continue
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None, 0
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])], int(values.size)


def assign_risk_groups(risk: np.ndarray, n_groups: int) -> np.ndarray:
    """Group per case (0 = lowest risk) cut at the quantiles of `risk` (the median for 2 groups)."""
    if n_groups < 2:
        raise ConfigError(f"risk_groups must be at least 2 (got {n_groups})")
    cuts = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
    return np.searchsorted(cuts, risk, side="left")


def group_names(n_groups: int) -> tuple[str, ...]:
    return GROUP_NAMES.get(n_groups, tuple(f"Q{i + 1}" for i in range(n_groups)))


def kaplan_meier_table(
    time: np.ndarray, event: np.ndarray, group: np.ndarray, names: Sequence[str]
) -> pd.DataFrame:
    """Kaplan-Meier survival (log-log 95% CI) per risk group: group, time, survival, ci_low, ci_high."""
    frames = []
    for g in np.unique(group):
        at = group == g
        t, s, ci = kaplan_meier_estimator(np.asarray(event[at]).astype(bool), time[at], conf_type="log-log")
        frames.append(
            pd.DataFrame({"group": names[g], "time": t, "survival": s, "ci_low": ci[0], "ci_high": ci[1]})
        )
    return pd.concat(frames, ignore_index=True)


def logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> dict[str, float]:
    """Log-rank test across risk groups: chi2, degrees of freedom and p."""
    if len(np.unique(group)) < 2:
        return {"chi2": float("nan"), "df": 0, "p": float("nan")}
    chi2, p = compare_survival(_surv(event, time), group)
    return {"chi2": float(chi2), "df": int(len(np.unique(group)) - 1), "p": float(p)}


def survival_metrics(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    groups: Sequence[object],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    tau_quantile: float = 0.8,
    auc_quantiles: Sequence[float] = (0.25, 0.5, 0.75),
) -> dict[str, Any]:
    """Harrell's C, Uno's C (tau = `tau_quantile` of the observed times) and the mean time-dependent AUC
    (at `auc_quantiles` of the event times), each with a patient-clustered (`groups`) bootstrap interval."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    tau = float(np.quantile(time, tau_quantile))
    times = np.unique(np.quantile(time[event == 1], auc_quantiles))
    times = times[(times >= time.min()) & (times < time.max())]
    statistics: dict[str, Callable[[np.ndarray], float]] = {
        "harrell_c": lambda r: harrell_c(time[r], event[r], risk[r]),
        "uno_c": lambda r: uno_c(time[r], event[r], risk[r], tau),
        "td_auc_mean": lambda r: time_dependent_auc(time[r], event[r], risk[r], times)[1],
    }
    every = np.arange(len(time))
    result: dict[str, Any] = {"tau": tau}
    for name, statistic in statistics.items():
        try:
            result[name] = statistic(every)
        except ValueError as err:
            result[name], result.setdefault("missing", {})[name] = float("nan"), str(err)
    if len(times):
        result["td_auc"] = {
            "times": times.tolist(),
            "auc": time_dependent_auc(time, event, risk, times)[0].tolist(),
            "quantiles_of_event_times": list(auc_quantiles),
        }
    if bootstrap:
        resamples = clustered_resamples(groups, bootstrap, seed)
        intervals, used = {}, {}
        for name, statistic in statistics.items():
            if np.isfinite(result[name]):
                intervals[name], used[name] = _interval(statistic, resamples)
        result["ci95"] = {"intervals": intervals, "n_used": used}  # the shape classification metrics have
        result["bootstrap"] = {"n_resamples": int(bootstrap), "unit": "patient (clustered)", "seed": seed}
    return result


# ---------------------------------------------------------------------------------------------- figures
def plot_kaplan_meier(km: pd.DataFrame, p_value: float, path: str | Path) -> Path:
    """Kaplan-Meier curves (step, 95% band) per risk group; the log-rank p in the title."""
    fig = new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    for name, curve in km.groupby("group", sort=False):
        t = np.concatenate([[0.0], curve["time"]])
        line = ax.step(t, np.concatenate([[1.0], curve["survival"]]), where="post", label=f"{name} risk")
        band = [np.concatenate([[1.0], curve[c]]) for c in ("ci_low", "ci_high")]
        ax.fill_between(t, *band, step="post", alpha=0.15, color=line[0].get_color())
    ax.set(xlabel="time", ylabel="event-free probability", ylim=(0, 1.02))
    ax.set_title(f"Kaplan-Meier by predicted risk (log-rank p = {p_value:.3g})")
    ax.legend()
    return save_figure(fig, path)


def plot_td_auc(times: Sequence[float], auc: Sequence[float], mean: float, path: str | Path) -> Path:
    """Cumulative/dynamic AUC against time, its mean dashed."""
    fig = new_figure(5.5, 4.0)
    ax = fig.add_subplot()
    ax.plot(times, auc, marker="o", label="AUC(t)")
    ax.axhline(mean, linestyle="--", color="grey", label=f"mean {mean:.3f}")
    ax.axhline(0.5, linestyle=":", color="black", linewidth=0.8)
    ax.set(xlabel="time", ylabel="cumulative/dynamic AUC", ylim=(0, 1), title="Time-dependent AUC")
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------- entry
def run_survival(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    context: TaskContext,
    case: str = "lesion_id",
    modality: str = "dermoscopy",
    timepoint: str = "timepoint",
    covariates: Sequence[str] = (),
    categorical: Sequence[str] = (),
    folds: int = 5,
    inner_folds: int = 3,
    alphas: Sequence[float] | None = None,
    l1_ratio: float = 0.0,
    n_components: int | None = 64,
    risk_groups: int = 2,
    tau_quantile: float = 0.8,
) -> dict[str, Any]:
    """The survival probe (`panderm probe probe=survival`): out-of-fold Cox risk scores for one image per
    case, written to predictions.csv (case, patient_id, image, fold, risk, time, event) with km.csv,
    figures and report sections; returns the metrics (JSON-serialisable). `covariates`: manifest columns
    added to the features (numeric standardised, others one-hot; `categorical` forces one-hot, e.g. for
    integer codes). `alphas` default to `RIDGE_ALPHAS` (or `ELASTIC_NET_ALPHAS` when `l1_ratio` > 0)."""
    covariates, categorical = list(covariates), list(categorical)
    require_columns(table, covariates, "survival covariates")
    if stray := sorted(set(categorical) - set(covariates)):
        raise ConfigError(f"categorical={stray} are not among covariates={covariates}")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ConfigError(f"l1_ratio must be in [0, 1] (got {l1_ratio})")
    alphas = list(alphas or (ELASTIC_NET_ALPHAS if l1_ratio > 0 else RIDGE_ALPHAS))
    cases = survival_cases(table, case=case, modality=modality, timepoint=timepoint)
    patients = cases["patient_id"] if "patient_id" in cases else cases[case]
    time, event = cases[TIME].to_numpy(float), cases[EVENT].to_numpy(int)
    design = design_matrix(np.asarray(features)[cases.index.to_numpy()], cases, covariates, categorical)
    risk, fold, chosen = out_of_fold_risk(
        design, time, event, patients.to_numpy(), folds=folds, seed=context.seed, alphas=alphas,
        inner_folds=inner_folds, n_components=n_components, l1_ratio=l1_ratio,
    )  # fmt: skip
    predictions = pd.DataFrame(
        {
            case: cases[case].to_numpy(),
            "patient_id": patients.to_numpy(),
            "image": cases["image"].to_numpy() if "image" in cases else cases.index.to_numpy(),
            "fold": fold,
            "risk": risk,
            TIME: time,
            EVENT: event,
        }
    )
    write_csv(context.run_dir / PREDICTIONS, predictions)
    metrics = survival_metrics(
        time, event, risk, patients.to_numpy(), bootstrap=context.bootstrap, seed=context.seed,
        tau_quantile=tau_quantile,
    )  # fmt: skip
    group = assign_risk_groups(risk, risk_groups)
    names = group_names(risk_groups)
    km = kaplan_meier_table(time, event, group, names)
    write_csv(context.run_dir / KM_TABLE, km)
    metrics["logrank"] = logrank(time, event, group)
    metrics["risk_groups"] = [
        {"group": names[g], "cases": int((group == g).sum()), "events": int(event[group == g].sum())}
        for g in np.unique(group)
    ]
    metrics.update(
        values={name: metrics[name] for name in ("harrell_c", "uno_c", "td_auc_mean")},
        n_cases=len(cases),
        n_events=int(event.sum()),
        n_patients=int(patients.nunique()),
        folds=folds,
        predictions=PREDICTIONS,
        km=KM_TABLE,
        recipe={
            "model": "coxnet" if l1_ratio > 0 else "coxph_ridge",
            "alphas": alphas,
            "alpha_per_fold": chosen,
            "l1_ratio": l1_ratio,
            "n_components": n_components,
            "covariates": covariates,
            "categorical": categorical,
            "inner_folds": inner_folds,
            "modality": modality,
            "case": case,
        },
    )
    _report(metrics, km, context)
    return metrics


def _ci(metrics: dict[str, Any], name: str) -> str:
    interval = metrics.get("ci95", {}).get("intervals", {}).get(name)
    return "[{:.3f}, {:.3f}]".format(*interval) if interval else ""


def _report(metrics: dict[str, Any], km: pd.DataFrame, context: TaskContext) -> None:
    report, recipe = context.report, metrics["recipe"]
    report.heading("Survival (time to event)")
    report.text(
        f"{metrics['n_cases']} cases ({recipe['case']}, one {recipe['modality']} image each, earliest time "
        f"point) of {metrics['n_patients']} patients, {metrics['n_events']} events. Penalised Cox model "
        f"({recipe['model']}, features standardised, PCA to {recipe['n_components']} components) in "
        f"{metrics['folds']}-fold patient-grouped cross-validation; penalty chosen per fold by an inner "
        f"{recipe['inner_folds']}-fold CV on Harrell's C: {recipe['alpha_per_fold']}. Risk scores are out of "
        f"fold; intervals: {metrics.get('bootstrap', {}).get('n_resamples', 0)} patient-clustered bootstrap "
        "resamples."
    )
    rows = [
        {"metric": "Harrell's C", "value": metrics["harrell_c"], "95% CI": _ci(metrics, "harrell_c")},
        {
            "metric": f"Uno's C (tau = {metrics['tau']:.3g})",
            "value": metrics["uno_c"],
            "95% CI": _ci(metrics, "uno_c"),
        },
        {
            "metric": "mean time-dependent AUC",
            "value": metrics["td_auc_mean"],
            "95% CI": _ci(metrics, "td_auc_mean"),
        },
        {"metric": "log-rank chi2 (risk groups)", "value": metrics["logrank"]["chi2"], "95% CI": ""},
        {"metric": "log-rank p", "value": f"{metrics['logrank']['p']:.3g}", "95% CI": ""},
    ]
    report.table(pd.DataFrame(rows), "Survival metrics (out-of-fold risk scores)")
    report.table(pd.DataFrame(metrics["risk_groups"]), "Risk groups (cut at quantiles of the risk score)")
    td = metrics.get("td_auc")
    if td:
        report.table(pd.DataFrame({"time": td["times"], "AUC(t)": td["auc"]}), "Cumulative/dynamic AUC")
    if context.plots:
        figures = context.run_dir / "figures"
        path = plot_kaplan_meier(km, metrics["logrank"]["p"], figures / "kaplan_meier.png")
        report.figure(path, "Kaplan-Meier curves of predicted risk groups", relative_to=context.run_dir)
        if td:
            path = plot_td_auc(td["times"], td["auc"], metrics["td_auc_mean"], figures / "td_auc.png")
            report.figure(path, "time-dependent AUC", relative_to=context.run_dir)
