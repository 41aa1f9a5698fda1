"""Per-reader metrics and answer changes against sklearn, scipy, hand counts and a brute-force bootstrap."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, recall_score

from panderm.errors import ConfigError, DataError
from readers.auc import bootstrap_indices
from readers.metrics import answer_changes, bootstrap_means, reader_metrics
from readers.schema import ReaderStudy, load_study
from tests.conftest import shared_path


def _wilson(successes: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval written out from its textbook formula."""
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def _get(table: pd.DataFrame, reader: object, condition: object, metric: str) -> pd.Series:
    row = table[(table["reader"] == reader) & (table["condition"] == condition) & (table["metric"] == metric)]
    assert len(row) == 1
    return row.iloc[0]


def test_binary_metrics_match_sklearn_with_wilson_intervals(make_study):
    study = make_study(n_readers=4, n_cases=50, seed=1)
    table = reader_metrics(study)
    assert list(table.columns) == ["reader", "condition", "metric", "value", "ci_low", "ci_high", "n"]
    assert set(table["metric"]) == {"accuracy", "sensitivity", "specificity", "top_k_accuracy", "confidence"}
    for (reader, cond), g in study.data.groupby(["reader", "condition"]):
        y, r = g["truth"].to_numpy(int), g["response"].to_numpy(int)
        expected = {
            "accuracy": (accuracy_score(y, r), len(y)),
            "sensitivity": (recall_score(y, r, pos_label=1), int((y == 1).sum())),
            "specificity": (recall_score(y, r, pos_label=0), int((y == 0).sum())),
        }
        for metric, (value, n) in expected.items():
            row = _get(table, reader, cond, metric)
            assert row["value"] == pytest.approx(value)
            assert row["n"] == n
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(value * n, n))


def test_threshold_calls_ratings_and_positive_selects_the_class(make_study):
    study = make_study(n_readers=3, n_cases=60, n_classes=3, seed=2)
    table = reader_metrics(study, ["accuracy", "sensitivity", "specificity"], threshold=1.5, positive=2)
    for (reader, cond), g in study.data.groupby(["reader", "condition"]):
        y, call = (g["truth"] == 2).to_numpy(int), (g["rating"] >= 1.5).to_numpy(int)
        assert _get(table, reader, cond, "accuracy")["value"] == pytest.approx(accuracy_score(y, call))
        assert _get(table, reader, cond, "sensitivity")["value"] == pytest.approx(recall_score(y, call))
        assert _get(table, reader, cond, "specificity")["value"] == pytest.approx(
            recall_score(y, call, pos_label=0)
        )
    # one-vs-rest on responses for a multi-class study
    table = reader_metrics(study, ["sensitivity"], positive=2, ci=None)
    g = study.data[(study.data["reader"] == "R0") & (study.data["condition"] == "unaided")]
    expected = ((g["response"] == 2) & (g["truth"] == 2)).sum() / (g["truth"] == 2).sum()
    assert _get(table, "R0", "unaided", "sensitivity")["value"] == pytest.approx(expected)
    assert table["ci_low"].isna().all()


def test_default_metrics_skip_sensitivity_for_multiclass(make_study):
    table = reader_metrics(make_study(n_readers=2, n_cases=20, n_classes=3), ci=None)
    assert set(table["metric"]) == {"accuracy", "top_k_accuracy", "confidence"}


def test_top_k_accuracy_by_hand(make_study):
    study = make_study(n_readers=2, n_cases=30, n_classes=4, accuracy=(0.4, 0.6), seed=3)
    for k in (1, 2, None):
        table = reader_metrics(study, ["top_k_accuracy"], k=k)
        for (reader, cond), g in study.data.groupby(["reader", "condition"]):
            hits = [
                int(t) in [int(v) for v in lst[:k]] for lst, t in zip(g["top_k"], g["truth"], strict=True)
            ]
            row = _get(table, reader, cond, "top_k_accuracy")
            assert row["value"] == pytest.approx(np.mean(hits))
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(sum(hits), len(hits)))
    top1 = reader_metrics(study, ["top_k_accuracy"], k=1, ci=None)["value"].to_numpy()
    acc = reader_metrics(study, ["accuracy"], ci=None)["value"].to_numpy()
    np.testing.assert_allclose(top1, acc)  # the first top-k entry is the response
    with pytest.raises(ConfigError, match="k >= 1"):
        reader_metrics(study, ["top_k_accuracy"], k=0)


def test_mean_confidence_with_t_interval(make_study):
    study = make_study(n_readers=2, n_cases=25, seed=4)
    table = reader_metrics(study, ["confidence"])
    for (reader, cond), g in study.data.groupby(["reader", "condition"]):
        x = g["confidence"].to_numpy(float)
        m, se = x.mean(), x.std(ddof=1) / np.sqrt(len(x))
        q = stats.t.ppf(0.975, len(x) - 1)
        row = _get(table, reader, cond, "confidence")
        assert row["value"] == pytest.approx(m)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((m - q * se, m + q * se))


def test_bootstrap_indices_keep_strata_and_are_seeded():
    strata = np.array(["b", "a", "b", "b", "a", "c"])
    idx = bootstrap_indices(strata, 50, seed=7)
    assert idx.shape == (50, 6)
    for s in "abc":
        assert np.all(np.isin(strata[idx], [s]).sum(axis=1) == (strata == s).sum())
    np.testing.assert_array_equal(idx, bootstrap_indices(strata, 50, seed=7))
    assert not np.array_equal(idx, bootstrap_indices(strata, 50, seed=8))
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_indices(strata, 1)


def test_vectorised_bootstrap_equals_a_loop_over_the_same_resamples(make_study):
    study = make_study(n_readers=3, n_cases=30, seed=5)
    n_boot, seed = 300, 11
    table = reader_metrics(study, ["accuracy", "sensitivity"], ci="bootstrap", n_boot=n_boot, seed=seed)
    cases = study.cases
    truth = study.truth.reindex(cases)
    idx = bootstrap_indices(truth.astype(str).to_numpy(), n_boot, seed)
    for (reader, cond), g in study.data.groupby(["reader", "condition"]):
        g = g.set_index("case").reindex(cases)
        right = (g["response"] == g["truth"]).to_numpy(float)
        pos = (g["truth"] == 1).to_numpy()
        acc, sens = [], []
        for b in range(n_boot):  # brute force: one resample at a time
            i = idx[b]
            acc.append(right[i].mean())
            sens.append(right[i][pos[i]].mean())
        for metric, boot in (("accuracy", acc), ("sensitivity", sens)):
            row = _get(table, reader, cond, metric)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    values = np.array([[1.0, np.nan, 0.0, 1.0], [np.nan, np.nan, 2.0, 4.0]])
    idx = np.array([[0, 0, 1, 3], [1, 1, 1, 1], [2, 3, 3, 0]])
    expected = [[1.0, 4.0], [np.nan, np.nan], [0.75, 10 / 3]]
    np.testing.assert_allclose(bootstrap_means(values, idx), expected)


def test_bootstrap_interval_is_close_to_wilson_for_a_large_study(make_study):
    study = make_study(n_readers=1, n_cases=400, accuracy=(0.7, 0.7), seed=6)
    wil = reader_metrics(study, ["accuracy"])
    boot = reader_metrics(study, ["accuracy"], ci="bootstrap", n_boot=4000, seed=1)
    np.testing.assert_allclose(boot[["ci_low", "ci_high"]], wil[["ci_low", "ci_high"]], atol=0.015)


def test_uncomputable_metric_is_nan_with_a_logged_reason(make_study, caplog):
    study = make_study(n_readers=2, n_cases=20, seed=7)
    data = study.data.copy()
    gone = (data["reader"] == "R1") & (data["condition"] == "ai_aided") & (data["truth"] == 1)
    data.loc[gone, ["response", "top_k"]] = None
    with caplog.at_level(logging.WARNING, logger="readers.metrics"):
        table = reader_metrics(ReaderStudy(data), ["sensitivity", "specificity"], ci="bootstrap", n_boot=50)
    row = _get(table, "R1", "ai_aided", "sensitivity")
    assert np.isnan(row["value"]) and np.isnan(row["ci_low"]) and row["n"] == 0
    assert _get(table, "R1", "ai_aided", "specificity")["value"] > 0
    assert "sensitivity is NaN for reader 'R1', condition 'ai_aided': no positive cases" in caplog.text


def test_metric_errors_name_the_column_or_option(make_study):
    study = make_study(n_readers=2, n_cases=10)
    bare = ReaderStudy(study.data.drop(columns=["response", "top_k", "confidence"]))
    with pytest.raises(DataError, match="'response'"):
        reader_metrics(bare, ["accuracy"])
    with pytest.raises(DataError, match="'top_k'"):
        reader_metrics(bare, ["top_k_accuracy"])
    with pytest.raises(DataError, match="no metric can be computed"):
        reader_metrics(bare)
    with pytest.raises(DataError, match="'rating'"):
        reader_metrics(ReaderStudy(study.data.drop(columns="rating")), ["accuracy"], threshold=0.5)
    with pytest.raises(ConfigError, match="unknown metric"):
        reader_metrics(study, ["auc"])
    with pytest.raises(ConfigError, match="ci"):
        reader_metrics(study, ci="exact")
    with pytest.raises(ConfigError, match="positive=5"):
        reader_metrics(study, ["sensitivity"], positive=5)


def test_answer_changes_by_hand(make_study, caplog):
    study = make_study(n_readers=4, n_cases=30, seed=8)
    changes = answer_changes(study)
    assert changes["reader"].tolist() == ["R0", "R1", "R2", "R3", "total"]
    right = study.data.assign(ok=study.data["response"] == study.data["truth"])
    wide = right.pivot(index=["reader", "case"], columns="condition", values="ok")
    for reader in study.readers:
        w = wide.loc[reader]
        b, a = w["unaided"].to_numpy(bool), w["ai_aided"].to_numpy(bool)
        row = changes.set_index("reader").loc[reader]
        counts = {
            "right_to_right": np.sum(b & a),
            "right_to_wrong": np.sum(b & ~a),
            "wrong_to_right": np.sum(~b & a),
            "wrong_to_wrong": np.sum(~b & ~a),
        }
        for key, value in counts.items():
            assert row[key] == value
        assert row["n"] == 30
        assert row["net_gain"] == counts["wrong_to_right"] - counts["right_to_wrong"]
        assert row["change_ratio"] == pytest.approx(counts["wrong_to_right"] / counts["right_to_wrong"])
    total = changes.set_index("reader").loc["total"]
    assert total["wrong_to_right"] == changes["wrong_to_right"].iloc[:-1].sum()
    assert total["change_ratio"] == pytest.approx(total["wrong_to_right"] / total["right_to_wrong"])

    # inf when answers only improve, NaN (logged) when none changes
    rows = [
        {"reader": r, "case": c, "condition": cond, "truth": 1, "response": resp}
        for r, before, after in (("up", 0, 1), ("same", 1, 1))
        for c in range(3)
        for cond, resp in (("unaided", before), ("ai_aided", after))
    ]
    with caplog.at_level(logging.WARNING, logger="readers.metrics"):
        changes = answer_changes(load_study(pd.DataFrame(rows))).set_index("reader")
    assert changes.loc["up", "change_ratio"] == np.inf
    assert np.isnan(changes.loc["same", "change_ratio"])
    assert "change ratio NaN for reader 'same'" in caplog.text


def test_answer_change_errors(make_study):
    study = make_study(n_readers=2, n_cases=10)
    with pytest.raises(DataError, match="second_read"):
        answer_changes(study, "unaided", "second_read")
    with pytest.raises(DataError, match="'response'"):
        answer_changes(ReaderStudy(study.data.drop(columns="response")))


@pytest.mark.shared_data
def test_franken_ratings_called_at_a_threshold():
    study = load_study(shared_path("reader_franken", "franken_long.csv"))
    table = reader_metrics(study, ["sensitivity", "specificity"], threshold=3)
    for (reader, cond), g in study.data.groupby(["reader", "condition"]):
        y, call = g["truth"].to_numpy(int), (g["rating"] >= 3).to_numpy(int)
        assert _get(table, reader, cond, "sensitivity")["value"] == pytest.approx(recall_score(y, call))
        assert _get(table, reader, cond, "specificity")["value"] == pytest.approx(
            recall_score(y, call, pos_label=0)
        )
