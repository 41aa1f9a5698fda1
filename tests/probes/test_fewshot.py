"""Few-shot episodes and label-efficiency curves: exact shot counts, seeding, stratification, tables."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from panderm.errors import ProbeError
from probes.fewshot import (
    default_metrics,
    fit_predict,
    label_efficiency,
    run_fewshot,
    sample_episode,
    stratified_subsample,
)
from probes.knn import prototype_proba


def data(n_per_class: list[int], d: int = 8, seed: int = 0):
    means = np.random.default_rng(100).normal(size=(len(n_per_class), d)) * 2  # the same for every split
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    rng.shuffle(y)
    return (means[y] + rng.normal(size=(len(y), d))).astype(np.float32), y.astype(np.int64)


def test_episode_has_exactly_n_shot_per_class_and_is_seeded():
    _, y = data([40, 10, 25])
    idx = sample_episode(y, 4, 3, np.random.default_rng(0))
    assert idx.dtype == np.int64 and len(np.unique(idx)) == 12
    assert np.bincount(y[idx], minlength=3).tolist() == [4, 4, 4]
    assert y[idx].tolist() == sorted(y[idx].tolist())  # grouped by class
    np.testing.assert_array_equal(idx, sample_episode(y, 4, 3, 0))
    assert not np.array_equal(idx, sample_episode(y, 4, 3, 1))


def test_episode_short_class_is_an_error_unless_capped():
    _, y = data([40, 3, 25])
    with pytest.raises(ProbeError, match="class 1: 3"):
        sample_episode(y, 4, 3, 0)
    idx = sample_episode(y, 4, 3, 0, cap=True)
    assert np.bincount(y[idx], minlength=3).tolist() == [4, 3, 4]
    with pytest.raises(ProbeError, match="class 3: 0"):
        sample_episode(y, 1, 4, 0, cap=True)


def test_stratified_subsample_keeps_every_class():
    _, y = data([500, 30, 7])
    for fraction, expected in [
        (0.01, [5, 1, 1]),
        (0.1, [50, 3, 1]),
        (0.5, [250, 15, 4]),
        (1.0, [500, 30, 7]),
    ]:
        idx = stratified_subsample(y, fraction, 0)
        assert np.bincount(y[idx], minlength=3).tolist() == expected
        assert len(np.unique(idx)) == len(idx)
    np.testing.assert_array_equal(stratified_subsample(y, 0.1, 3), stratified_subsample(y, 0.1, 3))


def test_run_fewshot_table_and_reproducibility():
    x, y = data([30, 30, 30])
    xt, yt = data([20, 20, 20], seed=1)
    summary, episodes = run_fewshot(
        x, y, xt, yt, shots=(1, 2, 4), n_episodes=5, fit="prototype", seed=3, return_episodes=True
    )
    assert list(summary["shot"]) == [1, 2, 4] and list(summary["n_train"]) == [3, 6, 12]
    assert list(summary.columns) == [
        "fit", "shot", "n_runs", "n_train",
        "balanced_accuracy_mean", "balanced_accuracy_std", "accuracy_mean", "accuracy_std",
    ]  # fmt: skip
    assert (summary["n_runs"] == 5).all() and len(episodes) == 15
    first = episodes[episodes["shot"] == 2].groupby("shot")["balanced_accuracy"].agg(["mean", "std"])
    assert summary.loc[1, "balanced_accuracy_mean"] == pytest.approx(first["mean"].iloc[0])
    assert summary.loc[1, "balanced_accuracy_std"] == pytest.approx(first["std"].iloc[0])
    # episode 0 of the 2-shot run is the first draw of a generator seeded by (seed, shot)
    idx = sample_episode(y, 2, 3, np.random.default_rng((3, 2)))
    proba = prototype_proba(x[idx], y[idx], xt, num_classes=3)
    expected = balanced_accuracy_score(yt, proba.argmax(1))
    assert episodes.query("shot == 2 and episode == 0")["balanced_accuracy"].item() == pytest.approx(expected)
    again = run_fewshot(x, y, xt, yt, shots=(1, 2, 4), n_episodes=5, fit="prototype", seed=3)
    pd.testing.assert_frame_equal(summary, again)


@pytest.mark.parametrize("fit", ["knn", "linear_sweep", "linear_panderm"])
def test_run_fewshot_other_fits(fit):
    x, y = data([12, 12, 12])
    xt, yt = data([10, 10, 10], seed=1)
    options = {"c_grid": [0.1, 1.0]} if fit == "linear_sweep" else {}
    table = run_fewshot(x, y, xt, yt, shots=(1, 4), n_episodes=2, fit=fit, fit_kwargs=options)
    assert table["fit"].unique().tolist() == [fit]
    assert table["balanced_accuracy_mean"].between(0, 1).all()


def test_metric_fn_may_return_an_object_with_values():
    x, y = data([10, 10])
    xt, yt = data([10, 10], seed=1)

    def metrics(y_true, proba):
        return SimpleNamespace(
            values={"accuracy": float((proba.argmax(1) == y_true).mean()), "n": len(y_true)}
        )

    table = run_fewshot(x, y, xt, yt, shots=(2,), n_episodes=3, metric_fn=metrics)
    assert {"accuracy_mean", "n_mean"} <= set(table.columns) and table["n_mean"].item() == 20
    with pytest.raises(ProbeError, match="metric_fn must return"):
        run_fewshot(x, y, xt, yt, shots=(2,), n_episodes=1, metric_fn=lambda a, b: 0.5)


def test_infeasible_shots_fail_before_any_fit():
    x, y = data([40, 6])
    with pytest.raises(ProbeError, match=r"shots \[8, 16\] cannot be drawn: the smallest class has 6"):
        run_fewshot(x, y, x, y, shots=(1, 8, 16), n_episodes=1)
    table = run_fewshot(x, y, x, y, shots=(8,), n_episodes=2, cap=True)
    assert table["n_train"].item() == 14


def test_label_efficiency_table():
    x, y = data([200, 40, 10])
    xt, yt = data([30, 30, 30], seed=1)
    summary, runs = label_efficiency(
        x, y, xt, yt, fractions=(0.01, 0.5, 1.0), seeds=(0, 1), fit="prototype", return_runs=True
    )
    assert list(summary["fraction"]) == [0.01, 0.5, 1.0] and (summary["n_runs"] == 2).all()
    assert list(summary["n_train"]) == [4, 125, 250]  # 2 + 1 + 1 at 1 %: every class kept
    assert summary.loc[2, "balanced_accuracy_std"] == 0  # the full set is the same for every seed
    assert len(runs) == 6 and set(runs["seed"]) == {0, 1}


def test_label_efficiency_with_val_for_the_sweep():
    x, y = data([60, 30, 15])
    xv, yv = data([10, 10, 10], seed=2)
    xt, yt = data([20, 20, 20], seed=1)
    table = label_efficiency(
        torch.from_numpy(x), torch.from_numpy(y), xt, yt, val_x=xv, val_y=yv,
        fractions=(0.2,), seeds=(0,), fit="linear_sweep", fit_kwargs={"c_grid": [0.1, 1.0]},
    )  # fmt: skip
    assert table["accuracy_mean"].item() > 0.8
    with pytest.raises(ProbeError, match="both val_x and val_y"):
        label_efficiency(x, y, xt, yt, val_x=xv)
    with pytest.raises(ProbeError, match=r"fractions must be in \(0, 1\]"):
        label_efficiency(x, y, xt, yt, fractions=(0.0,))


def test_bad_inputs_and_unknown_fit():
    x, y = data([10, 10])
    with pytest.raises(ProbeError, match="unknown fit"):
        run_fewshot(x, y, x, y, shots=(1,), fit="svm")  # type: ignore[arg-type]
    with pytest.raises(ProbeError, match="unknown fit"):
        fit_predict("svm", x, y, x, num_classes=2)  # type: ignore[arg-type]
    bad = x.copy()
    bad[:3, 0] = np.inf
    with pytest.raises(ProbeError, match=r"test features: 3 row\(s\)"):
        run_fewshot(x, y, bad, y, shots=(1,))
    assert default_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]])) == {
        "balanced_accuracy": 0.5,
        "accuracy": 0.5,
    }


def test_the_metrics_module_plugs_in():
    metrics = pytest.importorskip("probes.metrics")
    x, y = data([10, 10, 10])
    xt, yt = data([10, 10, 10], seed=1)
    table = run_fewshot(x, y, xt, yt, shots=(2,), n_episodes=2, metric_fn=metrics.classification_metrics)
    assert {"balanced_accuracy_mean", "accuracy_mean", "auroc_macro_ovr_mean"} <= set(table.columns)
