"""Survival probe: the Cox fit, C-indices, time-dependent AUC, KM and log-rank against statsmodels,
scikit-survival called directly and brute force; patient-grouped out-of-fold risk; errors; SynthDerm's
simulated outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.util import Surv
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from panderm.data.manifest import read_manifest
from panderm.data.synthetic import synthderm
from panderm.errors import ConfigError, ProbeError
from panderm.io import read_csv
from panderm.report import Report
from probes.cases import TaskContext
from probes.survival import (
    clustered_resamples,
    cox_model,
    design_matrix,
    out_of_fold_risk,
    run_survival,
    survival_cases,
    survival_metrics,
)

FAST = {"alphas": (1.0, 100.0), "inner_folds": 3}


def make_table(n: int = 150, *, informative: bool = True, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """10-d features; the hazard depends on dims 0 and 1 (or on nothing); exponential times, uniform
    censoring; two cases per patient."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10))
    log_hazard = 1.0 * x[:, 0] - 0.8 * x[:, 1] if informative else np.zeros(n)
    event_time = rng.exponential(1.0 / np.exp(log_hazard))
    censor = rng.uniform(0.0, 2.0, n)
    table = pd.DataFrame(
        {
            "image": [f"images/c{i}.png" for i in range(n)],
            "lesion_id": [f"L{i}" for i in range(n)],
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "event": (event_time <= censor).astype(int),
            "time": np.minimum(event_time, censor),
            "age": rng.normal(55, 12, n),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    return x, table


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, pd.DataFrame, TaskContext]:
    x, table = make_table()
    context = TaskContext(
        run_dir=tmp_path_factory.mktemp("survival"), report=Report("t"), classes=[], bootstrap=40
    )
    metrics = run_survival(x, table, context=context, **FAST)
    return metrics, read_csv(context.run_dir / "predictions.csv"), context


# ---------------------------------------------------------------------------------------------------- fit
def test_unpenalised_cox_equals_statsmodels_phreg():
    x, table = make_table(120, seed=1)
    design = design_matrix(x[:, :4], table)
    model = cox_model(design, alpha=0.0).fit(design, Surv.from_arrays(table["event"] == 1, table["time"]))
    reference = PHReg(table["time"], standardised(x[:, :4]), status=table["event"], ties="breslow").fit()
    np.testing.assert_allclose(model["model"].coef_, reference.params, rtol=1e-4, atol=1e-6)


def test_penalised_cox_with_covariates_and_pca_equals_sksurv_called_directly():
    x, table = make_table(120, seed=2)
    table["grade"] = np.arange(120) % 3  # integer codes, one-hot when named categorical
    design = design_matrix(x, table, ["age", "sex", "grade"], categorical=["grade"])
    y = Surv.from_arrays(table["event"] == 1, table["time"])
    model = cox_model(design, alpha=10.0, n_components=4).fit(design, y)
    pcs = PCA(n_components=4, svd_solver="full").fit_transform(StandardScaler().fit_transform(x))
    dummies = pd.get_dummies(table[["sex", "grade"]].astype(str)).to_numpy(float)
    direct = np.column_stack([pcs, standardised(table[["age"]].to_numpy()), dummies])
    reference = CoxPHSurvivalAnalysis(alpha=10.0, ties="breslow").fit(direct, y)
    np.testing.assert_allclose(model["model"].coef_, reference.coef_, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ metrics
def test_harrell_c_recomputes_from_predictions_file(run):
    metrics, predictions, _ = run
    time, event, risk = (predictions[c].to_numpy() for c in ("time", "event", "risk"))
    assert concordance_index_censored(event == 1, time, risk)[0] == pytest.approx(
        metrics["harrell_c"], abs=1e-12
    )
    # brute force: pairs (i, j) with an event at i before j's time; concordant when i has the higher risk
    comparable = (event[:, None] == 1) & (time[:, None] < time[None, :])
    score = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    assert score[comparable].sum() / comparable.sum() == pytest.approx(metrics["harrell_c"], abs=1e-12)
    low, high = metrics["ci95"]["intervals"]["harrell_c"]
    assert metrics["harrell_c"] > 0.65 and low > 0.5  # informative features
    assert low < metrics["harrell_c"] < high


def test_uno_c_and_time_dependent_auc_equal_sksurv(run):
    metrics, predictions, _ = run
    time, event, risk = (predictions[c].to_numpy() for c in ("time", "event", "risk"))
    y = Surv.from_arrays(event == 1, time)
    assert metrics["tau"] == pytest.approx(np.quantile(time, 0.8))
    uno = concordance_index_ipcw(y, y, risk, tau=metrics["tau"])[0]
    assert metrics["uno_c"] == pytest.approx(uno, abs=1e-12)
    times = np.quantile(time[event == 1], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(metrics["td_auc"]["times"], times)
    auc, mean = cumulative_dynamic_auc(y, y, risk, times)
    np.testing.assert_allclose(metrics["td_auc"]["auc"], auc)
    assert metrics["td_auc_mean"] == pytest.approx(mean)


def test_kaplan_meier_and_logrank_equal_statsmodels(run):
    metrics, predictions, context = run
    km = read_csv(context.run_dir / "km.csv")
    high = predictions["risk"] > np.median(predictions["risk"])
    assert [g["cases"] for g in metrics["risk_groups"]] == [int((~high).sum()), int(high.sum())]
    for name, members in (("low", ~high), ("high", high)):
        rows = predictions[members]
        reference = SurvfuncRight(rows["time"].to_numpy(), rows["event"].to_numpy())
        curve = km[km["group"] == name].set_index("time")["survival"]
        np.testing.assert_allclose(
            curve.loc[reference.surv_times].to_numpy(), reference.surv_prob, rtol=1e-10
        )
    chi2, p = survdiff(predictions["time"], predictions["event"], high.astype(int))
    assert metrics["logrank"]["chi2"] == pytest.approx(chi2, rel=1e-8)
    assert metrics["logrank"]["p"] == pytest.approx(p, rel=1e-6)
    assert (context.run_dir / "figures" / "kaplan_meier.png").is_file()
    assert "Harrell's C" in context.report.markdown()


def test_noise_features_give_c_near_one_half():
    x, table = make_table(120, informative=False, seed=3)
    time, event = table["time"].to_numpy(), table["event"].to_numpy()
    risk, _, _ = out_of_fold_risk(design_matrix(x, table), time, event, table["patient_id"], **FAST)
    metrics = survival_metrics(time, event, risk, table["patient_id"], bootstrap=40)
    low, high = metrics["ci95"]["intervals"]["harrell_c"]
    assert low < 0.5 < high and abs(metrics["harrell_c"] - 0.5) < 0.1


# ------------------------------------------------------------------------------------------------- folds
def test_folds_keep_patients_together(run):
    _, predictions, _ = run
    assert (predictions.groupby("patient_id")["fold"].nunique() == 1).all()
    assert sorted(predictions["fold"].unique()) == [0, 1, 2, 3, 4]


def test_risk_is_out_of_fold():
    x, table = make_table(100, seed=4)
    design = design_matrix(x, table)
    time, event = table["time"].to_numpy(), table["event"].to_numpy()
    risk, fold, _ = out_of_fold_risk(design, time, event, table["patient_id"], folds=3, **FAST)
    changed = time * np.where(fold == 0, np.random.default_rng(0).uniform(0.2, 5.0, len(time)), 1.0)
    again, fold_again, _ = out_of_fold_risk(design, changed, event, table["patient_id"], folds=3, **FAST)
    np.testing.assert_array_equal(fold, fold_again)  # folds are stratified by event only
    np.testing.assert_array_equal(risk[fold == 0], again[fold == 0])  # fold 0's model never saw its times
    assert not np.allclose(risk[fold != 0], again[fold != 0])  # the other folds' models did


def test_bootstrap_resamples_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for rows in clustered_resamples(groups, 20, seed=1):
        counts = pd.Series(groups[rows]).value_counts()
        sizes = pd.Series(groups).value_counts()
        assert all(counts[g] % sizes[g] == 0 for g in counts.index)


# ------------------------------------------------------------------------------------------------- cases
def test_one_case_is_its_earliest_image_of_the_modality():
    table = pd.DataFrame(
        {
            "image": ["a_t1", "a_t0_clin", "a_t0", "b_t0"],
            "lesion_id": ["A", "A", "A", "B"],
            "timepoint": [1, 0, 0, 0],
            "modality": ["dermoscopy", "clinical", "dermoscopy", "dermoscopy"],
            "event": ["1", "1", "1", "false"],
            "time": ["2.5", "2.5", "2.5", "4"],
        }
    )
    cases = survival_cases(table)
    assert list(cases["image"]) == ["a_t0", "b_t0"] and list(cases.index) == [2, 3]
    assert list(cases["event"]) == [1, 0] and list(cases["time"]) == [2.5, 4.0]


def test_errors_name_columns_rows_and_cases():
    _, table = make_table(20)
    with pytest.raises(ConfigError, match="'time'"):
        survival_cases(table.drop(columns="time"))
    with pytest.raises(ProbeError, match="no events"):
        survival_cases(table.assign(event=0))
    with pytest.raises(ProbeError, match=r"'event'.*images/c3\.png"):
        survival_cases(table.assign(event=table["event"].astype(object).where(table.index != 3, "maybe")))
    with pytest.raises(ProbeError, match=r"without an outcome.*L5"):
        survival_cases(table.assign(time=table["time"].where(table.index != 5)))
    with pytest.raises(ConfigError, match="stage"):
        run_survival(np.zeros((20, 2)), table, context=None, covariates=["stage"])


# ---------------------------------------------------------------------------------------------- SynthDerm
def test_synthderm_outcome_rates_follow_the_class():
    _, lesions = synthderm._plan(400, seed=0)
    outcome = pd.DataFrame(
        [(lesion.label, *synthderm._outcome(lesion, False, 0)) for lesion in lesions],
        columns=["label", "event", "time"],
    )
    assert 0.1 < outcome["event"].mean() < 0.3
    rate = outcome.groupby("label")["event"].mean()
    assert rate["melanoma"] > 0.5 > 0.1 > rate["nevus"]
    assert outcome["time"].between(0, 10).all()
    censored = outcome[outcome["event"] == 0]["time"]
    assert censored.min() >= 0.5  # follow-up ~ Uniform(0.5, 10)


def test_synthderm_manifest_outcome_is_one_per_lesion(tmp_path):
    manifest = synthderm.generate_synthderm(tmp_path, n_patients=6, image_size=32, seed=1)
    read_manifest(manifest, classes=synthderm.CLASSES)  # checks the outcome columns (panderm.data.outcomes)
    table = pd.read_csv(manifest)
    assert set(table["event"]) == {0, 1}
    assert (table.groupby("lesion_id")[["event", "time"]].nunique() == 1).all().all()
    assert len(survival_cases(table)) == table["lesion_id"].nunique()
