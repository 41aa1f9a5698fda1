"""MRMC analysis: the OR-DBM MRMC 2.51 output for Franken et al. to its printed precision, DBM = OR under the
jackknife, RRFC = a paired t-test / repeated-measures ANOVA, and the covariances against brute force."""

from __future__ import annotations

import json
import re
from itertools import product

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.anova import AnovaRM

from panderm.errors import ConfigError, DataError
from readers.auc import (
    bootstrap_cov,
    bootstrap_foms,
    delong_cov,
    fom_and_jackknife,
    fom_values,
    jackknife_cov,
)
from readers.mrmc import fom_covariance, mrmc, or_analysis, study_array
from readers.schema import load_study
from tests.conftest import shared_path


def tol(printed: float | str) -> float:
    """Half a unit in the last printed decimal of `printed`."""
    text = f"{printed}" if isinstance(printed, str) else repr(printed)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0**-decimals + 1e-12


def close(ours: float, printed: float) -> bool:
    return abs(ours - printed) <= tol(printed)


@pytest.fixture(scope="module")
def franken() -> tuple[dict, dict]:
    folder = shared_path("reader_franken")
    ref = json.loads((folder / "reference_values.json").read_text())["franken"]
    return mrmc(load_study(folder / "franken_long.csv")), ref


@pytest.mark.shared_data
def test_franken_aucs_anova_and_variance_components(franken):
    out, ref = franken
    for cond, aucs in ref["auc_reader"].items():
        for reader, auc in enumerate(aucs):
            assert close(out["fom"][cond][str(reader)], auc), (cond, reader)
    assert all(close(out["condition_means"][str(i)], m) for i, m in enumerate(ref["auc_mean"]))
    diff = out["rrrc"]["differences"][0]
    assert close(diff["difference"], ref["auc_diff_0_minus_1"])
    anova = ref["or_anova"]
    assert close(out["anova"]["MS_T"], anova["MS_T"])
    assert close(out["anova"]["MS_R"], anova["MS_R"])
    assert close(out["anova"]["MS_TR"], anova["MS_TR"])
    assert all(
        close(a, b)
        for a, b in zip(out["anova"]["MS_R_per_condition"], anova["MS_R_per_treatment"], strict=True)
    )
    vc, ref_vc = out["variance_components"], ref["or_varcomp_jackknife"]
    for ours, theirs in [("var_r", "Var_R"), ("var_tr", "Var_TR"), ("cov1", "Cov1"), ("cov2", "Cov2"),
                         ("cov3", "Cov3"), ("var_error", "Var_Error")]:  # fmt: skip
        assert close(vc[ours], ref_vc[theirs]), ours


@pytest.mark.shared_data
def test_franken_random_readers_random_cases_with_cov2_below_cov3(franken):
    out, ref = franken
    rrrc, ref_r = out["rrrc"], ref["RRRC"]
    assert out["variance_components"]["cov2"] < out["variance_components"]["cov3"]  # the edge case
    assert close(rrrc["value"], ref_r["F"]) and rrrc["df1"] == ref_r["df1"]
    assert close(rrrc["df2"], ref_r["ddf_hillis"]) and rrrc["df2"] == pytest.approx(3.0)  # (t-1)(r-1)
    assert close(rrrc["p"], ref_r["p"])
    diff = rrrc["differences"][0]
    assert close(diff["se"], ref_r["diff_se"]) and close(diff["p"], ref_r["p"])
    assert all(close(a, b) for a, b in zip(diff["ci95"], ref_r["diff_ci95"], strict=True))
    for ours, theirs in zip(rrrc["single_condition"], ref_r["single_treatment"], strict=True):
        for key in ("se", "df", "cov2"):
            assert close(ours[key], theirs[key]), key
        assert close(ours["fom"], theirs["auc"])
        assert all(close(a, b) for a, b in zip(ours["ci95"], theirs["ci95"], strict=True))


@pytest.mark.shared_data
def test_franken_fixed_readers_and_fixed_cases(franken):
    out, ref = franken
    frrc = out["frrc"]
    assert close(frrc["value"], ref["FRRC"]["X2"]) and frrc["df1"] == ref["FRRC"]["df"]
    assert close(frrc["p"], ref["FRRC"]["p"])
    diff = frrc["differences"][0]
    assert close(diff["se"], ref["FRRC"]["diff_se"])
    assert all(close(a, b) for a, b in zip(diff["ci95"], ref["FRRC"]["diff_ci95"], strict=True))
    rrfc = out["rrfc"]
    assert close(rrfc["value"], ref["RRFC"]["F"]) and (rrfc["df1"], rrfc["df2"]) == (1, ref["RRFC"]["df2"])
    assert close(rrfc["p"], ref["RRFC"]["p"])


@pytest.mark.shared_data
def test_franken_tables_of_the_printed_output(franken):
    """Values printed by OR-DBM MRMC 2.51 that the JSON does not transcribe: FRRC single-condition and
    single-reader results, RRFC single-condition CIs and the DBM variance components."""
    out, _ = franken
    text = shared_path("reader_franken", "franken_ORDBM-MRMC-2.51_output.txt").read_text()
    number = r"(-?\d+\.\d+)"
    fixed = re.search(r"Analysis 2 \(OR Analysis\).*?Analysis 3", text, re.S).group(0)
    singles = re.findall(
        rf"^\s+(\d)\s+{number}\s+{number}\s+\(\s*{number}\s*,\s*{number}\s*\)\s*$", fixed, re.M
    )
    assert len(singles) == 2
    for ours, (_, auc, se, lo, hi) in zip(out["frrc"]["single_condition"], singles, strict=True):
        assert close(ours["fom"], float(auc)) and close(ours["se"], float(se))
        assert close(ours["ci95"][0], float(lo)) and close(ours["ci95"][1], float(hi))
    var_rows = re.findall(rf"^\s+(\d)\s+{number}\s+{number}\s*$", fixed, re.M)
    assert len(var_rows) == 6  # 2 conditions (Var(Error), Cov2), then 4 readers (Var(Error), Cov1)
    for ours, (_, var, cov2) in zip(out["frrc"]["single_condition"], var_rows[:2], strict=True):
        assert close(ours["var_error"], float(var)) and close(ours["cov2"], float(cov2))
    readers = re.findall(
        rf"^\s+(\d)\s+1 - 2\s+{number}\s+{number}\s+{number}\s+{number}\s+\(\s*{number}\s*,\s*{number}\s*\)",
        fixed,
        re.M,
    )
    assert len(readers) == 4
    for ours, (_, d, se, z, p, lo, hi), (_, var, cov1) in zip(
        out["frrc"]["single_reader"], readers, var_rows[2:], strict=True
    ):
        assert close(ours["difference"], float(d)) and close(ours["se"], float(se))
        assert close(ours["statistic"], float(z)) and close(ours["p"], float(p))
        assert close(ours["ci95"][0], float(lo)) and close(ours["ci95"][1], float(hi))
        assert close(ours["var_error"], float(var)) and close(ours["cov1"], float(cov1))
    fixed_cases = text.split("Analysis 3 (OR Analysis)")[1]
    rows = re.findall(
        rf"^\s+(\d)\s+{number}\s+{number}\s+{number}\s+3\s+\(\s*{number}\s*,\s*{number}\s*\)",
        fixed_cases,
        re.M,
    )
    assert len(rows) == 2
    for ours, (_, auc, _ms, se, lo, hi) in zip(out["rrfc"]["single_condition"], rows, strict=True):
        assert close(ours["fom"], float(auc)) and close(ours["se"], float(se)) and ours["df"] == 3
        assert close(ours["ci95"][0], float(lo)) and close(ours["ci95"][1], float(hi))
    dbm = out["dbm"]["variance_components"]
    names = {"Var(R)": "var_r", "Var(C)": "var_c", "Var(T*R)": "var_tr", "Var(T*C)": "var_tc"}
    names |= {"Var(R*C)": "var_rc", "Var(T*R*C) + Var(Error)": "var_trc_error"}
    for name, key in names.items():
        printed = re.search(re.escape(name) + rf"\s+{number}", text.split("Corresponding DBM")[1]).group(1)
        assert close(dbm[key], float(printed)), name


@pytest.mark.shared_data
def test_the_lrc_file_gives_the_same_analysis(franken):
    out, _ = franken
    lrc = mrmc(load_study(shared_path("reader_franken", "franken.lrc")))
    assert lrc["rrrc"]["value"] == pytest.approx(out["rrrc"]["value"], rel=1e-12)
    flat = [v for per_reader in lrc["fom"].values() for v in per_reader.values()]
    assert flat == pytest.approx(
        [v for per_reader in out["fom"].values() for v in per_reader.values()], abs=1e-12
    )


def simulated(t: int = 2, r: int = 5, n0: int = 30, n1: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    case = rng.normal(size=n0 + n1)
    truth = np.r_[np.zeros(n0), np.ones(n1)]
    x = truth * (1.0 + 0.2 * np.arange(t)[:, None, None]) + case + rng.normal(size=(t, r, n0 + n1))
    return np.round(x, 1)  # ties on purpose


def as_study(x: np.ndarray, n0: int) -> pd.DataFrame:
    t, r, n = x.shape
    rows = [
        {"reader": f"R{j}", "condition": f"C{i}", "case": k, "truth": int(k >= n0), "rating": x[i, j, k]}
        for i, j, k in product(range(t), range(r), range(n))
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # any row order


def test_foms_and_jackknife_against_sklearn_and_leave_one_out():
    x, n0 = simulated(), 30
    truth = np.r_[np.zeros(n0), np.ones(x.shape[-1] - n0)]
    brute = np.array([[roc_auc_score(truth, x[i, j]) for j in range(x.shape[1])] for i in range(x.shape[0])])
    for fom, thr in [("auc", None), ("sensitivity", 0.8), ("specificity", 0.8), ("accuracy", 0.8)]:
        foms, loo = fom_and_jackknife(x, n0, fom, thr)
        assert np.allclose(foms, fom_values(x, n0, fom, thr), atol=1e-12)
        for k in (0, 7, n0, x.shape[-1] - 1):
            keep = np.arange(x.shape[-1]) != k
            assert np.allclose(loo[..., k], fom_values(x[..., keep], n0 - (k < n0), fom, thr), atol=1e-12)
    assert np.allclose(fom_values(x, n0), brute, atol=1e-12)
    called = x >= 0.8
    assert np.allclose(fom_values(x, n0, "sensitivity", 0.8), called[..., n0:].mean(-1))
    assert np.allclose(fom_values(x, n0, "accuracy", 0.8), (called == truth.astype(bool)).mean(-1))


def test_jackknife_covariance_against_a_brute_force_loop():
    x, n0 = simulated(r=3), 30
    n = x.shape[-1]
    truth = np.r_[np.zeros(n0), np.ones(n - n0)]
    loo = np.array(
        [
            [roc_auc_score(np.delete(truth, k), np.delete(x[i, j], k)) for k in range(n)]
            for i, j in product(range(x.shape[0]), range(x.shape[1]))
        ]
    )  # (t*r, n), in C order of (t, r)
    dev = loo - loo.mean(axis=1, keepdims=True)
    brute = (n - 1) / n * dev @ dev.T
    assert np.allclose(jackknife_cov(fom_and_jackknife(x, n0)[1]), brute, atol=1e-14)


def test_delong_covariance_against_explicit_structural_components():
    x, n0 = simulated(r=3), 30
    flat = x.reshape(-1, x.shape[-1])
    neg, pos = flat[:, :n0], flat[:, n0:]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # (P, n1, n0)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    brute = np.cov(v10) / pos.shape[1] + np.cov(v01) / n0
    assert np.allclose(delong_cov(x, n0), brute, atol=1e-14)
    # one AUC: DeLong's variance is close to the jackknife's (both are unbiased-ish for the same quantity)
    one = x[:1, :1]
    assert delong_cov(one, n0)[0, 0] == pytest.approx(
        jackknife_cov(fom_and_jackknife(one, n0)[1])[0, 0], rel=0.1
    )


def test_bootstrap_is_vectorised_stratified_resampling():
    x, n0 = simulated(r=2), 30
    n = x.shape[-1]
    boots = bootstrap_foms(x, n0, n_boot=300, seed=3, chunk_elems=10_000)  # several chunks
    rng = np.random.default_rng(3)  # the same draws, one resample at a time
    idx = np.concatenate([rng.integers(0, n0, (300, n0)), rng.integers(n0, n, (300, n - n0))], axis=1)
    truth = np.r_[np.zeros(n0), np.ones(n - n0)]
    for b in (0, 151, 299):
        assert np.allclose(
            boots[b], [[roc_auc_score(truth, x[i, j, idx[b]]) for j in range(2)] for i in range(2)]
        )
    var_boot = np.diag(bootstrap_cov(x, n0, n_boot=2000, seed=0))
    var_jack = np.diag(jackknife_cov(fom_and_jackknife(x, n0)[1]))
    assert np.allclose(var_boot, var_jack, rtol=0.25)


def test_rrfc_is_a_paired_t_test_and_repeated_measures_anova():
    x, n0 = simulated(t=2, r=6), 30
    foms, cov, _ = fom_covariance(x, n0)
    out = or_analysis(foms, cov)
    t = stats.ttest_rel(foms[0], foms[1])
    assert out["rrfc"]["value"] == pytest.approx(t.statistic**2)
    assert out["rrfc"]["p"] == pytest.approx(t.pvalue)
    x3 = simulated(t=3, r=6)
    foms3, cov3, _ = fom_covariance(x3, n0)
    out3 = or_analysis(foms3, cov3)
    long = pd.DataFrame(
        [{"reader": j, "cond": i, "fom": foms3[i, j]} for i, j in product(range(3), range(6))]
    )
    table = AnovaRM(long, "fom", "reader", within=["cond"]).fit().anova_table
    assert out3["rrfc"]["value"] == pytest.approx(table["F Value"].iloc[0])
    assert out3["rrfc"]["p"] == pytest.approx(table["Pr > F"].iloc[0])
    assert len(out3["rrrc"]["differences"]) == 3  # every pair of 3 conditions


@pytest.mark.parametrize("fom", ["auc", "sensitivity", "accuracy"])
def test_dbm_pseudovalue_analysis_equals_or_with_the_jackknife(fom):
    x, n0 = simulated(t=3, r=4, seed=1), 30
    study = load_study(as_study(x, n0))
    out = mrmc(study, fom, threshold=None if fom == "auc" else 0.8)
    assert out["dbm"]["rrrc"]["value"] == pytest.approx(out["rrrc"]["value"], rel=1e-9)
    assert out["dbm"]["rrrc"]["df2"] == pytest.approx(out["rrrc"]["df2"], rel=1e-9)
    assert out["dbm"]["variance_components"]["var_r"] == pytest.approx(out["variance_components"]["var_r"])


def test_study_table_order_and_covariance_methods_agree():
    x, n0 = simulated(), 30
    study = load_study(as_study(x, n0))
    arr, _ = study_array(study)
    assert arr.conditions == ["C0", "C1"] or set(arr.conditions) == {"C0", "C1"}
    jack = mrmc(study, cov="jackknife")
    delong = mrmc(study, cov="delong")
    boot = mrmc(study, cov="bootstrap", n_boot=500, seed=1)
    assert pd.DataFrame(jack["fom"]).to_numpy() == pytest.approx(
        pd.DataFrame(boot["fom"]).to_numpy(), abs=1e-12
    )
    assert delong["fom"] == boot["fom"]
    assert "dbm" in jack and "dbm" not in delong and boot["n_boot"] == 500
    assert delong["variance_components"]["var_error"] == pytest.approx(
        jack["variance_components"]["var_error"], rel=0.1
    )
    assert json.loads(json.dumps(boot)) == json.loads(json.dumps(boot))  # JSON-ready


def test_binary_foms_from_responses_and_multiclass_accuracy():
    x, n0 = simulated(r=3), 30
    frame = as_study(x, n0)
    frame["response"] = (frame["rating"] >= 0.8).astype(int)
    by_threshold = mrmc(load_study(frame), "sensitivity", threshold=0.8)
    by_response = mrmc(load_study(frame.drop(columns="rating")), "sensitivity")
    assert by_threshold["fom"] == by_response["fom"]
    assert by_threshold["rrrc"]["value"] == pytest.approx(by_response["rrrc"]["value"])
    multi = frame.drop(columns="rating").assign(
        truth=frame["case"] % 3, response=(frame["case"] + frame.index) % 3
    )
    out = mrmc(load_study(multi), "accuracy")
    expected = (
        multi.assign(c=multi["response"] == multi["truth"]).groupby(["condition", "reader"])["c"].mean()
    )
    assert out["fom"]["C0"]["R1"] == pytest.approx(expected["C0", "R1"])
    with pytest.raises(DataError, match="binary truth"):
        mrmc(load_study(multi), "auc")


def test_bad_inputs_name_the_problem():
    x, n0 = simulated(r=3), 30
    frame = as_study(x, n0)
    with pytest.raises(DataError, match="every reader to read every case"):
        mrmc(
            load_study(
                frame[~((frame["reader"] == "R1") & (frame["case"] == 4) & (frame["condition"] == "C0"))]
            )
        )
    with pytest.raises(ConfigError, match="DeLong"):
        mrmc(load_study(frame), "sensitivity", "delong", threshold=0.5)
    with pytest.raises(ConfigError, match="cov"):
        mrmc(load_study(frame), cov="bootstrapp")
    with pytest.raises(ConfigError, match="fom"):
        mrmc(load_study(frame), "sens")
    with pytest.raises(ConfigError, match="threshold"):
        fom_values(x, n0, "sensitivity")
    with pytest.raises(DataError, match="rating"):
        mrmc(load_study(frame.drop(columns="rating").assign(response=1)), "auc")
    with pytest.raises(DataError, match="not in the study"):
        mrmc(load_study(frame), conditions=["C0", "C9"])
    with pytest.raises(DataError, match="at least 2 readers"):
        mrmc(load_study(frame[frame["reader"] == "R0"]))
