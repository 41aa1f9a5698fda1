"""Paired tests, McNemar per reader and the class-wise analysis against scipy and hand computations."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from panderm.errors import ConfigError, DataError
from readers.metrics import reader_metrics
from readers.paired import classwise_paired, compare_paired, mcnemar_by_reader, paired_test
from readers.schema import ReaderStudy


def _accuracy(study: ReaderStudy) -> pd.DataFrame:
    """reader x condition accuracy computed directly with pandas."""
    d = study.data.assign(ok=(study.data["response"] == study.data["truth"]).astype(float))
    return d.pivot_table(index="reader", columns="condition", values="ok", aggfunc="mean")


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values from the step-up definition."""
    m = len(p)
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1)
    return out


def test_paired_test_matches_scipy_and_hand_effect_sizes(make_study):
    study = make_study(n_readers=8, n_cases=40, seed=1)
    acc = _accuracy(study)
    a, b = acc["unaided"].to_numpy(), acc["ai_aided"].to_numpy()
    d = b - a
    res = paired_test(study)
    t = stats.ttest_rel(b, a)
    assert res.n == 8 and res.df == 7
    assert res.mean_before == pytest.approx(a.mean()) and res.mean_after == pytest.approx(b.mean())
    assert res.mean_diff == pytest.approx(d.mean())
    assert res.t == pytest.approx(t.statistic) and res.p_t == pytest.approx(t.pvalue)
    half = stats.t.ppf(0.975, 7) * d.std(ddof=1) / np.sqrt(8)
    assert (res.ci_low, res.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    w = stats.wilcoxon(b, a)
    assert res.w == pytest.approx(w.statistic) and res.p_wilcoxon == pytest.approx(w.pvalue)
    dz = d.mean() / d.std(ddof=1)
    assert res.cohens_dz == pytest.approx(dz)
    assert res.hedges_gz == pytest.approx(dz * (1 - 3 / (4 * 7 - 1)))
    json.dumps(res.to_dict())


def test_paired_test_accepts_tidy_and_wide_tables(make_study):
    study = make_study(n_readers=6, n_cases=30, seed=2)
    tidy = reader_metrics(study, ["accuracy", "sensitivity"])
    wide = tidy.pivot(index=["reader", "condition"], columns="metric", values="value").reset_index()
    for metric in ("accuracy", "sensitivity"):
        from_study = paired_test(study, metric).to_dict()
        assert paired_test(tidy, metric).to_dict() == pytest.approx(from_study)
        assert paired_test(wide, metric).to_dict() == pytest.approx(from_study)
    res = paired_test(study, "accuracy", before="ai_aided", after="unaided", alpha=0.1)
    d = _accuracy(study).eval("unaided - ai_aided")
    half = stats.t.ppf(0.95, 5) * d.std(ddof=1) / np.sqrt(6)
    assert (res.ci_low, res.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_degenerate_pairs_are_nan_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="readers.paired"):
        res = compare_paired(np.array([0.5, 0.6, np.nan]), np.array([0.5, 0.6, 0.7]))
    assert res.n == 2 and np.isnan(res.t) and np.isnan(res.p_t)
    assert "1 pair(s) with a NaN value dropped" in caplog.text
    assert "every pair differs by 0" in caplog.text
    res = compare_paired(np.array([0.5]), np.array([0.7]))
    assert res.n == 1 and np.isnan(res.p_wilcoxon) and np.isnan(res.cohens_dz)


def test_mcnemar_per_reader_matches_binomial_and_chi2_by_hand(make_study):
    study = make_study(n_readers=6, n_cases=60, n_classes=3, accuracy=(0.6, 0.75), seed=0)
    table = mcnemar_by_reader(study).set_index("reader")
    d = study.data.assign(ok=study.data["response"] == study.data["truth"])
    wide = d.pivot(index=["reader", "case"], columns="condition", values="ok")
    methods = set()
    for reader in study.readers:
        before, after = (
            wide.loc[reader, "unaided"].to_numpy(bool),
            wide.loc[reader, "ai_aided"].to_numpy(bool),
        )
        r2w, w2r = int(np.sum(before & ~after)), int(np.sum(~before & after))
        row = table.loc[reader]
        assert (row["right_to_wrong"], row["wrong_to_right"], row["discordant"]) == (r2w, w2r, r2w + w2r)
        if r2w + w2r < 25:
            assert row["method"] == "exact"
            assert row["p_value"] == pytest.approx(stats.binomtest(min(r2w, w2r), r2w + w2r, 0.5).pvalue)
        else:
            assert row["method"] == "chi2"
            chi2 = (abs(r2w - w2r) - 1) ** 2 / (r2w + w2r)
            assert row["statistic"] == pytest.approx(chi2)
            assert row["p_value"] == pytest.approx(stats.chi2.sf(chi2, 1))
        methods.add(row["method"])
        diff = after.astype(float) - before.astype(float)  # per-case paired differences
        se = np.sqrt(diff.var() / len(diff))
        assert row["difference"] == pytest.approx(diff.mean())
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (diff.mean() - 1.96 * se, diff.mean() + 1.96 * se), abs=1e-4
        )
    assert methods == {"exact", "chi2"}  # this seed exercises both branches and 25 discordant (chi2)
    assert (
        table.loc[table["discordant"] == 25, "method"].eq("chi2").all() and (table["discordant"] == 25).any()
    )
    forced = mcnemar_by_reader(study, exact=True).set_index("reader")
    assert (forced["method"] == "exact").all()


def test_classwise_paired_with_bh_adjustment(make_study):
    study = make_study(n_readers=7, n_cases=150, n_classes=5, accuracy=(0.55, 0.75), seed=4)
    d = study.data.assign(ok=(study.data["response"] == study.data["truth"]).astype(float))
    for test in ("t", "wilcoxon"):
        table = classwise_paired(study, test=test).set_index("truth")
        p = []
        for cls in sorted(table.index):
            acc = d[d["truth"] == cls].pivot_table(index="reader", columns="condition", values="ok")
            a, b = acc["unaided"].to_numpy(), acc["ai_aided"].to_numpy()
            ref = stats.ttest_rel(b, a) if test == "t" else stats.wilcoxon(b, a)
            row = table.loc[cls]
            assert row["n_cases"] == (study.truth == cls).sum() and row["n_readers"] == 7
            assert row["mean_diff"] == pytest.approx((b - a).mean())
            assert row["statistic"] == pytest.approx(ref.statistic)
            assert row["p_value"] == pytest.approx(ref.pvalue)
            p.append(ref.pvalue)
        adjusted = table.loc[sorted(table.index), "p_adjusted"].to_numpy()
        np.testing.assert_allclose(adjusted, _bh(np.array(p)))
        assert (table["significant"] == (table["p_adjusted"] < 0.05)).all()


def test_classwise_class_without_p_value_is_left_out_of_bh(make_study, caplog):
    study = make_study(n_readers=5, n_cases=60, n_classes=3, seed=5)
    data = study.data.copy()
    cls0 = data["truth"] == 0
    # class 0: every reader answers identically in both conditions -> no t-test p-value
    data.loc[cls0 & (data["condition"] == "ai_aided"), "response"] = data.loc[
        cls0 & (data["condition"] == "unaided"), "response"
    ].to_numpy()
    with caplog.at_level(logging.WARNING, logger="readers.paired"):
        table = classwise_paired(ReaderStudy(data)).set_index("truth")
    assert np.isnan(table.loc[0, "p_value"]) and np.isnan(table.loc[0, "p_adjusted"])
    rest = table.drop(index=0)
    np.testing.assert_allclose(rest["p_adjusted"], _bh(rest["p_value"].to_numpy()))
    assert "left out of the BH adjustment" in caplog.text


def test_paired_errors_name_the_condition_or_column(make_study):
    study = make_study(n_readers=3, n_cases=10)
    with pytest.raises(DataError, match="second_read"):
        paired_test(study, before="unaided", after="second_read")
    with pytest.raises(DataError, match="second_read"):
        paired_test(reader_metrics(study, ["accuracy"]), before="second_read")
    with pytest.raises(DataError, match="'specificity' not in the metrics table"):
        paired_test(reader_metrics(study, ["accuracy"]), "specificity")
    with pytest.raises(DataError, match="missing column"):
        paired_test(pd.DataFrame({"reader": [1], "accuracy": [0.5]}))
    with pytest.raises(DataError, match="second_read"):
        mcnemar_by_reader(study, after="second_read")
    with pytest.raises(DataError, match="second_read"):
        classwise_paired(study, after="second_read")
    with pytest.raises(DataError, match="'response'"):
        mcnemar_by_reader(ReaderStudy(study.data.drop(columns="response")))
    with pytest.raises(ConfigError, match="test"):
        classwise_paired(study, test="sign")
