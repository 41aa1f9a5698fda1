"""probes.metrics against scikit-learn, brute force and constructed cases."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from panderm.errors import ProbeError
from probes.metrics import (
    BINARY_METRICS,
    MULTICLASS_METRICS,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    stratified_bootstrap_indices,
    subgroup_gaps,
    subgroup_metrics,
)


def make_data(n: int, c: int, seed: int, *, ties: bool = False, signal: float = 1.0):
    """Labels and softmax probabilities; with `ties`, kNN-like vote fractions (k/10), many scores equal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    if ties:
        p = np.stack([rng.multinomial(10, row) for row in p]) / 10
    return y, p


def brute_force_ece(y, p, n_bins=15):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        members = [i for i in range(len(y)) if lo < p[i].max() <= hi]
        if members:
            acc = np.mean([p[i].argmax() == y[i] for i in members])
            conf = np.mean([p[i].max() for i in members])
            total += len(members) / len(y) * abs(acc - conf)
    return total


def sklearn_reference(y, p):
    c = p.shape[1]
    pred = p.argmax(axis=1)
    ref = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "f1_weighted": f1_score(y, pred, average="weighted", zero_division=0),
        "f1_macro": f1_score(y, pred, average="macro", zero_division=0),
        "kappa_quadratic": cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(c)),
        "ece": brute_force_ece(y, p),
    }
    if c == 2:
        ref["auroc"] = roc_auc_score(y, p[:, 1])
        ref["aupr_macro"] = average_precision_score(y, p[:, 1])
    else:
        ref["auroc_macro_ovr"] = roc_auc_score(y, p, multi_class="ovr", average="macro")
        ref["auroc_macro_ovo"] = roc_auc_score(y, p, multi_class="ovo", average="macro")
        ref["aupr_macro"] = np.mean([average_precision_score(y == k, p[:, k]) for k in range(c)])
    return ref


@pytest.mark.parametrize(
    ("n", "c", "seed", "ties"),
    [(300, 5, 0, False), (300, 5, 1, True), (200, 2, 2, False), (200, 2, 3, True), (120, 3, 4, True)],
)
def test_metrics_match_sklearn(n, c, seed, ties):
    y, p = make_data(n, c, seed, ties=ties)
    result = classification_metrics(y, p)
    assert result.missing == {}
    assert tuple(result.values) == (BINARY_METRICS if c == 2 else MULTICLASS_METRICS)
    ref = sklearn_reference(y, p)
    assert set(ref) == set(result.values)
    for name, value in ref.items():
        assert result.values[name] == pytest.approx(value, abs=1e-12), name
    assert expected_calibration_error(y, p) == pytest.approx(ref["ece"], abs=1e-12)
    assert result.n == n


def test_ece_bin_edges_match_brute_force():
    # confidences exactly on bin edges belong to the lower bin, (lo, hi]
    edges = np.linspace(0, 1, 16)
    conf = np.r_[edges[8:], 0.55, 0.9]
    p = np.column_stack([conf, 1 - conf])
    y = np.array([0, 1] * (len(conf) // 2) + [0] * (len(conf) % 2))
    assert expected_calibration_error(y, p) == pytest.approx(brute_force_ece(y, p), abs=1e-12)


def test_binary_single_class_reports_missing_with_reason():
    y = np.zeros(20, dtype=int)
    p = np.column_stack([np.linspace(0.2, 0.9, 20), 1 - np.linspace(0.2, 0.9, 20)])
    result = classification_metrics(y, p, classes=["benign", "malignant"])
    assert "auroc" not in result.values
    assert "only class 0 ('benign')" in result.missing["auroc"]
    assert "positive class 1 ('malignant')" in result.missing["aupr_macro"]
    assert all(math.isfinite(v) for v in result.values.values())
    blob = json.loads(json.dumps(result.to_dict()))
    assert set(blob) == {"n", "values", "missing"}
    assert blob["missing"]["auroc"] == result.missing["auroc"]
    with pytest.raises(KeyError, match="missing"):
        result["auroc"]


def test_multiclass_absent_class_reports_missing():
    y, p = make_data(100, 4, 5)
    y[y == 2] = 1
    result = classification_metrics(y, p, classes=["a", "b", "c", "d"])
    for name in ("auroc_macro_ovr", "auroc_macro_ovo", "aupr_macro"):
        assert name not in result.values
        assert "2 ('c')" in result.missing[name]
    assert {"accuracy", "f1_macro", "kappa_quadratic", "ece"} <= set(result.values)


def test_kappa_undefined_is_missing():
    y = np.zeros(10, dtype=int)
    p = np.tile([0.8, 0.1, 0.1], (10, 1))
    result = classification_metrics(y, p)
    assert "kappa_quadratic" in result.missing
    assert "0/0" in result.missing["kappa_quadratic"]
    assert result.values["accuracy"] == 1.0


def test_validation_collects_every_problem():
    y = np.array([0, 1, 5, 1])
    p = np.array([[0.5, 0.5], [np.nan, 1.0], [-0.2, 1.2], [0.3, 0.3]])
    with pytest.raises(ProbeError) as info:
        classification_metrics(y, p)
    message = str(info.value)
    for fragment in ("outside [0, 2)", "NaN", "negative", "do not sum to 1"):
        assert fragment in message
    with pytest.raises(ProbeError, match="length mismatch"):
        classification_metrics(np.array([0, 1]), np.full((3, 2), 0.5))
    with pytest.raises(ProbeError, match="non-integer"):
        classification_metrics(np.array([0.5, 1.0]), np.full((2, 2), 0.5))
    with pytest.raises(ProbeError, match="2-D"):
        classification_metrics(np.array([0, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ProbeError, match="classes has 3 names"):
        classification_metrics(np.array([0, 1]), np.full((2, 2), 0.5), classes=["a", "b", "c"])


def test_float16_rounding_is_accepted():
    y, p = make_data(200, 7, 6)
    result = classification_metrics(y, p.astype(np.float16))
    assert result.values["accuracy"] == pytest.approx(
        classification_metrics(y, p).values["accuracy"], abs=0.02
    )


def test_stratified_indices_keep_class_counts_and_are_seeded():
    y, _ = make_data(150, 4, 7)
    idx = stratified_bootstrap_indices(y, 50, seed=3)
    assert idx.shape == (50, 150)
    for row in idx:
        assert np.array_equal(np.bincount(y[row], minlength=4), np.bincount(y, minlength=4))
    assert np.array_equal(idx, stratified_bootstrap_indices(y, 50, seed=3))
    assert not np.array_equal(idx, stratified_bootstrap_indices(y, 50, seed=4))
    # resamples actually vary: duplicates appear
    assert len(np.unique(idx[0])) < 150


@pytest.mark.parametrize(("c", "ties"), [(5, True), (2, False)])
def test_bootstrap_equals_sklearn_on_explicit_resamples(c, ties):
    y, p = make_data(120, c, 8, ties=ties)
    n_resamples, level = 9, 0.8
    ci = bootstrap_ci(y, p, n_resamples=n_resamples, seed=11, level=level)
    idx = stratified_bootstrap_indices(y, n_resamples, seed=11)
    per_resample = [sklearn_reference(y[row], p[row]) for row in idx]
    for name, (lo, hi) in ci.items():
        values = [r[name] for r in per_resample]
        ref_lo, ref_hi = np.percentile(values, [10, 90])
        assert lo == pytest.approx(ref_lo, abs=1e-9), name
        assert hi == pytest.approx(ref_hi, abs=1e-9), name
        assert ci.n_used[name] == n_resamples


def test_bootstrap_contains_point_seeded_and_narrows():
    y, p = make_data(400, 5, 9)
    point = classification_metrics(y, p)
    ci = bootstrap_ci(y, p, n_resamples=300, seed=1)
    assert set(ci) == set(point.values)
    for name, value in point.values.items():
        lo, hi = ci[name]
        assert lo <= value <= hi, name
    assert dict(bootstrap_ci(y, p, n_resamples=300, seed=1)) == dict(ci)
    assert dict(bootstrap_ci(y, p, n_resamples=300, seed=2)) != dict(ci)
    assert json.loads(json.dumps(ci.to_dict()))["n_resamples"] == 300

    y_big, p_big = make_data(3200, 5, 9)
    wide = bootstrap_ci(y, p, n_resamples=300, seed=1)
    narrow = bootstrap_ci(y_big, p_big, n_resamples=300, seed=1)
    for name in ("accuracy", "balanced_accuracy", "auroc_macro_ovr", "aupr_macro", "kappa_quadratic"):
        assert narrow[name][1] - narrow[name][0] < 0.6 * (wide[name][1] - wide[name][0]), name


def test_bootstrap_drops_undefined_resamples_and_counts_them():
    # one sample predicted as class 1 makes kappa defined (= 0); resamples that miss it leave it 0/0
    y = np.zeros(20, dtype=int)
    p = np.tile([0.8, 0.1, 0.1], (20, 1))
    p[0] = [0.1, 0.8, 0.1]
    assert "kappa_quadratic" in classification_metrics(y, p).values
    ci = bootstrap_ci(y, p, n_resamples=200, seed=0)
    assert 0 < ci.n_used["kappa_quadratic"] < 200
    assert ci.n_used["accuracy"] == 200
    assert "auroc_macro_ovr" not in ci


def test_bootstrap_is_fast_at_realistic_size():
    y, p = make_data(2000, 7, 10)
    start = time.perf_counter()
    ci = bootstrap_ci(y, p, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 30.0
    assert ci.n_used["auroc_macro_ovo"] == 1000


def test_bootstrap_rejects_bad_settings():
    y, p = make_data(30, 3, 0)
    with pytest.raises(ProbeError, match="level"):
        bootstrap_ci(y, p, level=95)
    with pytest.raises(ProbeError, match="n_resamples"):
        bootstrap_ci(y, p, n_resamples=0)


def test_subgroup_metrics_and_gaps_on_known_case():
    # group "light": all 8 correct and confident; group "dark": 4 of 8 correct; group "mid": one class only
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1] * 2 + [0, 0, 0, 0])
    right = {0: [0.9, 0.1], 1: [0.1, 0.9]}
    wrong = {0: [0.4, 0.6], 1: [0.6, 0.4]}
    p = np.array(
        [right[k] for k in y[:8]]
        + [right[k] if i % 4 < 2 else wrong[k] for i, k in enumerate(y[8:16])]
        + [right[0]] * 4
    )
    groups = np.array(["light"] * 8 + ["dark"] * 8 + ["mid"] * 4)
    df = subgroup_metrics(y, p, groups, column="skin_tone")
    assert list(df.columns) == ["skin_tone", "n", *BINARY_METRICS, "missing"]
    assert list(df["skin_tone"]) == ["dark", "light", "mid"]
    rows = df.set_index("skin_tone")
    assert rows.loc["light", "accuracy"] == 1.0
    assert rows.loc["dark", "accuracy"] == 0.5
    assert rows.loc["mid", "n"] == 4
    assert math.isnan(rows.loc["mid", "auroc"])
    assert "auroc: only class 0" in rows.loc["mid", "missing"]
    assert rows.loc["light", "missing"] == ""
    for key in ("light", "dark", "mid"):
        mask = groups == key
        assert rows.loc[key, "f1_macro"] == pytest.approx(
            classification_metrics(y[mask], p[mask]).values["f1_macro"]
        )

    gaps = subgroup_gaps(df)
    assert gaps["auroc"] == {
        "best": "light",
        "worst": "dark",
        "gap": pytest.approx(rows.loc["light", "auroc"] - rows.loc["dark", "auroc"]),
    }
    assert gaps["accuracy"]["best"] in {"light", "mid"}
    assert gaps["accuracy"]["worst"] == "dark"
    assert gaps["accuracy"]["gap"] == pytest.approx(0.5)
    # ECE: lower is better; "light"/"mid" are 0.1 off, "dark" more
    assert gaps["ece"]["worst"] == "dark"
    assert gaps["ece"]["gap"] > 0


def test_subgroup_missing_group_values_and_length_check():
    y, p = make_data(40, 3, 12)
    groups = np.array(["a", None] * 20, dtype=object)
    df = subgroup_metrics(y, p, groups, column="sex")
    assert set(df["sex"]) == {"a", "(missing)"}
    assert df["n"].sum() == 40
    with pytest.raises(ProbeError, match="one value per sample"):
        subgroup_metrics(y, p, groups[:10], column="sex")


def test_paired_bootstrap_difference_matches_a_brute_force_loop():
    from sklearn.metrics import balanced_accuracy_score

    from probes.metrics import paired_bootstrap_difference, stratified_bootstrap_indices

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    a = rng.dirichlet(np.ones(3), 120)
    a[np.arange(120), y] += 0.6  # model a is better
    a /= a.sum(1, keepdims=True)
    b = rng.dirichlet(np.ones(3), 120)
    out = paired_bootstrap_difference(y, a, b, n_resamples=200, seed=3)
    rows = stratified_bootstrap_indices(y, 200, seed=3)
    brute = [
        balanced_accuracy_score(y[r], a[r].argmax(1)) - balanced_accuracy_score(y[r], b[r].argmax(1))
        for r in rows
    ]
    bacc = out["balanced_accuracy"]
    assert bacc["difference"] == pytest.approx(
        balanced_accuracy_score(y, a.argmax(1)) - balanced_accuracy_score(y, b.argmax(1))
    )
    assert [bacc["low"], bacc["high"]] == pytest.approx(np.percentile(brute, [2.5, 97.5]))
    assert bacc["low"] > 0 and bacc["p_not_above_0"] == pytest.approx(np.mean(np.array(brute) <= 0))
    # a model against itself: every difference is 0
    same = paired_bootstrap_difference(y, a, a, n_resamples=50)
    assert all(v["low"] == v["high"] == 0 for v in same.values())


def test_paired_difference_table_reads_two_prediction_files(tmp_path):
    from probes.metrics import paired_bootstrap_difference
    from probes.predictions import paired_difference_table, write_predictions

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    a, b = rng.dirichlet(np.ones(2), 40), rng.dirichlet(np.ones(2), 40)
    ids = [f"img{i:02d}.png" for i in range(40)]
    order = rng.permutation(40)  # the second file lists the images in another order
    write_predictions(tmp_path / "a.csv", ids, y, a, ["x", "y"], split="test")
    write_predictions(
        tmp_path / "b.csv", [ids[i] for i in order], y[order], b[order], ["x", "y"], split="test"
    )
    got = paired_difference_table(tmp_path / "a.csv", tmp_path / "b.csv", n_resamples=100)
    assert got == paired_bootstrap_difference(y, a, b, n_resamples=100)
    write_predictions(tmp_path / "c.csv", ids[:39], y[:39], a[:39], ["x", "y"], split="test")
    with pytest.raises(ProbeError, match="same test images"):
        paired_difference_table(tmp_path / "a.csv", tmp_path / "c.csv")
