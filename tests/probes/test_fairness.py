"""probes.fairness against scikit-learn, fairlearn, bootstrap_ci and brute force on small numpy fixtures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from panderm.io import read_csv
from panderm.report import Report
from probes.fairness import band_values, fairness_rates, subgroup_report
from probes.metrics import bootstrap_ci

B = 100  # bootstrap resamples: enough for the interval checks, fast


def binary_data(n: int, seed: int, strength: dict[str, float]):
    """Labels, probabilities and a group per sample; group g's scores separate the classes by strength[g]."""
    rng = np.random.default_rng(seed)
    names = list(strength)
    g = np.array(names, dtype=object)[rng.integers(0, len(names), n)]
    y = rng.integers(0, 2, n)
    s = np.array([strength[v] for v in g]) * (y - 0.5) + rng.normal(0, 1, n)
    p1 = 1 / (1 + np.exp(-s))
    return y, np.column_stack([1 - p1, p1]), g


def multiclass_data(n: int, c: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p, rng.choice(["I-II", "III-IV", "V-VI"], n).astype(object)


def run(tmp_path, y, p, g, column="group", **kw):
    report = Report("t")
    kw = {"n_resamples": B, "seed": 0, "plots": False, **kw}
    out = subgroup_report(y, p, g, column=column, run_dir=tmp_path, report=report, **kw)
    json.dumps(out, allow_nan=False)  # JSON-ready: plain keys, no NaN
    table = read_csv(tmp_path / out["table"], text=[column])
    return out, table, report


def test_per_group_metrics_match_sklearn_and_bootstrap_ci(tmp_path):
    y, p, g = binary_data(300, 0, {"F": 1.0, "M": 2.0})
    out, table, _ = run(tmp_path, y, p, g, column="sex")
    assert list(table["sex"]) == ["F", "M"]
    for _, row in table.iterrows():
        m = g == row["sex"]
        pred = p[m].argmax(1)
        assert row["n"] == m.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(y[m], pred))
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[m], pred))
        assert row["f1_macro"] == pytest.approx(f1_score(y[m], pred, average="macro"))
        assert row["auroc"] == pytest.approx(roc_auc_score(y[m], p[m, 1]))
        ci = bootstrap_ci(y[m], p[m], n_resamples=B, seed=0)
        for name, (low, high) in ci.items():
            assert (row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx((low, high))
    assert out["calibration"] == pytest.approx(dict(zip(table["sex"], table["ece"], strict=True)))


def test_binary_equalised_odds_and_parity_match_fairlearn(tmp_path):
    y, p, g = binary_data(300, 1, {"a": 0.5, "b": 1.5, "c": 3.0})
    out, _, _ = run(tmp_path, y, p, g)
    pred = p.argmax(1)
    eo = out["equalised_odds"]
    assert eo["difference"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=g))
    dp = demographic_parity_difference(y, pred, sensitive_features=g)
    assert out["demographic_parity"]["difference"] == pytest.approx(dp)
    for group in ("a", "b", "c"):
        m = g == group
        assert eo["tpr"][group] == pytest.approx(true_positive_rate(y[m], pred[m], pos_label=1))
        assert eo["fpr"][group] == pytest.approx(false_positive_rate(y[m], pred[m], pos_label=1))
    assert eo["low"] <= eo["difference"] <= eo["high"]


def test_multiclass_equalised_odds_and_parity_match_brute_force(tmp_path):
    c = 3
    y, p, g = multiclass_data(300, c, 2)
    out, table, _ = run(tmp_path, y, p, g, column="fitzpatrick", classes=list("ABC"))
    pred = p.argmax(1)
    groups = ["I-II", "III-IV", "V-VI"]
    tpr, fpr, sel = {}, {}, {}
    for group in groups:
        m = g == group
        tpr[group] = np.mean([np.mean(pred[m & (y == k)] == k) for k in range(c)])
        fpr[group] = np.mean([np.mean(pred[m & (y != k)] == k) for k in range(c)])
        sel[group] = [np.mean(pred[m] == k) for k in range(c)]
    expected = max(max(tpr.values()) - min(tpr.values()), max(fpr.values()) - min(fpr.values()))
    eo = out["equalised_odds"]
    assert eo["difference"] == pytest.approx(expected)
    assert eo["tpr"] == pytest.approx(tpr) and eo["fpr"] == pytest.approx(fpr)
    by_class = np.array([sel[group] for group in groups])  # (groups, classes)
    parity = np.mean(by_class.max(axis=0) - by_class.min(axis=0))
    assert out["demographic_parity"]["difference"] == pytest.approx(parity)
    assert table["selection_rate:B"].to_list() == pytest.approx(list(by_class[:, 1]))
    assert out["primary_metric"] == "balanced_accuracy"


def test_fairness_rates_under_weights_equal_rates_on_repeated_rows():
    y, p, g = multiclass_data(120, 3, 3)
    pred = p.argmax(1)
    codes = pd.Series(g).map({"I-II": 0, "III-IV": 1, "V-VI": 2}).to_numpy()
    weights = np.random.default_rng(0).integers(0, 3, (2, len(y))).astype(float)
    rates = fairness_rates(weights, y, pred, codes, 3, 3)
    for b in range(2):
        rows = np.repeat(np.arange(len(y)), weights[b].astype(int))
        for k in range(3):
            m = codes[rows] == k
            yy, pp = y[rows][m], pred[rows][m]
            for cls in range(3):
                assert rates["tpr"][b, k, cls] == pytest.approx(np.mean(pp[yy == cls] == cls))
                assert rates["fpr"][b, k, cls] == pytest.approx(np.mean(pp[yy != cls] == cls))
                assert rates["selection_rate"][b, k, cls] == pytest.approx(np.mean(pp == cls))


def test_gap_interval_excludes_zero_for_a_real_gap_and_covers_it_without(tmp_path):
    y, p, g = binary_data(400, 4, {"dark": 0.2, "light": 3.0})
    out, _, _ = run(tmp_path, y, p, g)
    gap = out["gaps"]["auroc"]
    assert (gap["best"], gap["worst"]) == ("light", "dark")
    assert 0 < gap["low"] <= gap["gap"] <= gap["high"]
    y, p, g = binary_data(400, 5, {"dark": 1.5, "light": 1.5})
    out, _, _ = run(tmp_path, y, p, g)
    gap = out["gaps"]["auroc"]
    assert gap["low"] < 0 < gap["high"]


def test_age_is_banded_by_hand_and_categories_kept():
    ages = [18, 29, 29.5, 30, 44, 44.9, 45, 59, 60, 74, 75, 90, None, np.nan]
    labels, bands = band_values(ages)
    assert bands == ["<30", "30-44", "45-59", "60-74", "75+"]
    expected = ["<30", "<30", "<30", "30-44", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+"]
    assert list(labels) == [*expected, "75+", None, None]
    labels, bands = band_values([1.0, 2.0, np.nan, 6.0])  # Fitzpatrick read as floats: ints, not banded
    assert bands is None and list(labels) == [1, 2, None, 6]
    labels, bands = band_values(["head", "trunk", None])
    assert bands is None and list(labels) == ["head", "trunk", None]


def test_age_report_orders_bands_writes_figure_and_report(tmp_path):
    y, p, _ = multiclass_data(200, 3, 6)
    age = np.random.default_rng(6).integers(20, 90, len(y)).astype(object)
    age[:3] = None
    out, table, report = run(tmp_path, y, p, age, column="age", plots=True)
    assert out["bands"] == ["<30", "30-44", "45-59", "60-74", "75+"]
    assert list(table["age"]) == [*out["bands"], "(missing)"]
    assert table.loc[table["age"] == "(missing)", "n"].item() == 3
    assert (tmp_path / "figures" / "fairness_age.png").stat().st_size > 0
    text = report.markdown()
    assert "figures/fairness_age.png" in text and "Equalised-odds difference" in text


def test_single_member_group_does_not_crash(tmp_path):
    y, p, g = binary_data(60, 7, {"a": 1.0, "b": 1.0})
    g[0] = "only"
    out, table, _ = run(tmp_path, y, p, g, plots=True)
    row = table.set_index("group").loc["only"]
    assert row["n"] == 1 and np.isnan(row["auroc"]) and "auroc" in row["missing"]
    assert out["n"]["only"] == 1
    rates = out["equalised_odds"]["tpr"]["only"], out["equalised_odds"]["fpr"]["only"]
    assert (rates[0] is None) != (rates[1] is None)  # one sample: a positive has no FPR, a negative no TPR
    assert out["equalised_odds"]["difference"] is not None
