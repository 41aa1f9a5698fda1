"""Linear probes against independent references: scipy on the PanDerm objective, scikit-learn's
LogisticRegression for the C sweep, and input validation."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from panderm.errors import ProbeError
from probes.linear import (
    DEFAULT_C_GRID,
    fit_linear_panderm,
    fit_linear_sweep,
    score_proba,
    stratified_holdout,
    validate_probe_inputs,
)


def blobs(n: int, d: int, k: int, seed: int, sep: float = 1.0, offset: float = 0.0):
    """Gaussian classes with random means (scaled by `sep`), float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * sep
    y = np.arange(n) % k
    rng.shuffle(y)
    x = means[y] + rng.normal(size=(n, d)) + offset * rng.normal(size=d)
    return x.astype(np.float32), y.astype(np.int64)


def panderm_objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, k: int, reg: float):
    """Mean cross-entropy + reg * ||W||_2 (not squared) and its gradient, float64 numpy."""
    n, d = x.shape
    w, b = params[: k * d].reshape(k, d), params[k * d :]
    z = x @ w.T + b
    lse = logsumexp(z, axis=1)
    loss = np.mean(lse - z[np.arange(n), y])
    g = np.exp(z - lse[:, None])
    g[np.arange(n), y] -= 1
    g /= n
    norm = np.linalg.norm(w)
    gw = g.T @ x + (reg * w / norm if norm > 0 else 0.0)
    return loss + reg * norm, np.concatenate([gw.ravel(), g.sum(axis=0)])


# -------------------------------------------------------------------------------------------- PanDerm


def test_panderm_matches_scipy_on_the_same_objective():
    k, d = 4, 50
    x, y = blobs(240, d, k, seed=0, sep=0.4)
    xq, _ = blobs(100, d, k, seed=1, sep=0.4)
    probe = fit_linear_panderm(x, y, k)
    reg = 0.5 / (d * k / 100)
    assert probe.recipe == {**probe.recipe, "name": "linear_panderm", "version": "1", "C": d * k / 100}
    assert probe.recipe["iterations"] > 0

    x64 = x.astype(np.float64)
    start = np.random.default_rng(0).normal(size=k * d + k) * 1e-3
    ref = minimize(
        panderm_objective,
        start,
        args=(x64, y, k, reg),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "gtol": 1e-10, "ftol": 1e-15},
    )
    ours = np.concatenate([probe.weight.numpy().ravel(), probe.bias.numpy()]).astype(np.float64)
    f_ours = panderm_objective(ours, x64, y, k, reg)[0]
    assert np.linalg.norm(ref.x[: k * d]) > 0.1  # the optimum is away from the non-smooth point W = 0
    assert f_ours == pytest.approx(ref.fun, rel=1e-4)
    assert probe.objective(x, y) == pytest.approx(ref.fun, rel=1e-4)
    w_ref, b_ref = ref.x[: k * d].reshape(k, d), ref.x[k * d :]
    for features in (x64, xq.astype(np.float64)):
        np.testing.assert_array_equal(probe.predict(features), (features @ w_ref.T + b_ref).argmax(1))


def test_panderm_is_the_literal_recipe():
    """Zero init and the closed-form gradient give what the recipe written with autograd gives."""
    k, d = 3, 30
    x, y = blobs(150, d, k, seed=2, sep=0.5)
    probe = fit_linear_panderm(torch.from_numpy(x), torch.from_numpy(y), k, max_iter=50)

    linear = torch.nn.Linear(d, k)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=50, line_search_fn="strong_wolfe")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xt), yt)
        loss = loss + (1 / (d * k / 100)) * 0.5 * torch.linalg.vector_norm(linear.weight)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(probe.weight, linear.weight.detach(), atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(probe.bias, linear.bias.detach(), atol=2e-4, rtol=1e-3)


def test_panderm_starts_from_zero():
    x, y = blobs(60, 8, 3, seed=3)
    probe = fit_linear_panderm(x, y, 3, max_iter=0)  # no iteration: the initial point
    assert torch.count_nonzero(probe.weight) == 0 and torch.count_nonzero(probe.bias) == 0
    np.testing.assert_allclose(probe.predict_proba(x), 1 / 3)
    assert probe.objective(x, y) == pytest.approx(np.log(3), rel=1e-6)
    again = fit_linear_panderm(x, y, 3)
    torch.testing.assert_close(again.weight, fit_linear_panderm(x, y, 3).weight, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ sweep


@pytest.mark.parametrize("precondition", [True, False])
@pytest.mark.parametrize("c", [0.01, 1.0])
def test_sweep_single_c_matches_sklearn(c, precondition):
    k = 3
    x, y = blobs(300, 20, k, seed=4, sep=0.35, offset=3.0)
    xq, yq = blobs(300, 20, k, seed=5, sep=0.35, offset=0.0)
    xq = xq + (x.mean(0) - xq.mean(0))  # same offset as train
    x[:, 1] = 0.6 * x[:, 0] + 0.4 * x[:, 1]  # correlated columns, which preconditioning is for
    xq[:, 1] = 0.6 * xq[:, 0] + 0.4 * xq[:, 1]
    probe = fit_linear_sweep(
        x, y, num_classes=k, c_grid=[c], tol=1e-7, max_iter=2000, precondition=precondition
    )
    assert probe.recipe["C"] == c and probe.recipe["n_fit"] == len(x)
    assert probe.recipe["preconditioned"] is precondition and probe.recipe["selection"] == "none (a single C)"

    scaler = StandardScaler().fit(x)
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
    acc_ours = (probe.predict(xq) == yq).mean()
    acc_sk = (sk.predict(scaler.transform(xq)) == yq).mean()
    assert abs(acc_ours - acc_sk) <= 0.005
    np.testing.assert_allclose(probe.weight.numpy(), sk.coef_, atol=2e-3 * np.abs(sk.coef_).max())
    np.testing.assert_allclose(probe.predict_proba(xq), sk.predict_proba(scaler.transform(xq)), atol=1e-3)
    # the penalty is ||W||^2 / (2 C N): the sklearn objective divided by N
    assert probe.reg == pytest.approx(1 / (2 * c * len(x)))


def test_sweep_binary_uses_sklearns_c():
    x, y = blobs(300, 10, 2, seed=4, sep=0.35)
    xq, _ = blobs(300, 10, 2, seed=5, sep=0.35)
    for c in (0.01, 1.0):
        probe = fit_linear_sweep(x, y, num_classes=2, c_grid=[c], tol=1e-8, max_iter=2000)
        scaler = StandardScaler().fit(x)
        sk = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
        np.testing.assert_allclose(probe.predict_proba(xq), sk.predict_proba(scaler.transform(xq)), atol=1e-3)
        w = probe.weight.numpy()
        np.testing.assert_allclose(w[1] - w[0], sk.coef_[0], atol=2e-3 * np.abs(sk.coef_).max())


def test_sweep_selects_the_best_validation_score():
    k = 3
    x, y = blobs(240, 40, k, seed=6, sep=0.25)
    xv, yv = blobs(240, 40, k, seed=6, sep=0.25)  # same means (same seed) ...
    xv = xv + np.random.default_rng(9).normal(size=xv.shape).astype(np.float32)  # ... new noise
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    probe = fit_linear_sweep(x, y, xv, yv, num_classes=k, c_grid=grid, refit=False, tol=1e-6)
    scores = probe.recipe["scores"]
    assert probe.recipe["c_grid"] == grid and len(scores) == len(grid)
    assert probe.recipe["C"] == grid[int(np.argmax(scores))]
    assert probe.recipe["selection"] == "val"
    # the selection fit scores as recorded, and as scikit-learn computes it
    assert balanced_accuracy_score(yv, probe.predict(xv)) == pytest.approx(max(scores))
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_scores = [
            balanced_accuracy_score(
                yv,
                LogisticRegression(C=c, max_iter=5000)
                .fit(scaler.transform(x), y)
                .predict(scaler.transform(xv)),
            )
            for c in grid
        ]
    np.testing.assert_allclose(scores, sk_scores, atol=0.01)

    refit = fit_linear_sweep(x, y, xv, yv, num_classes=k, c_grid=grid, tol=1e-6)
    assert refit.recipe["C"] == probe.recipe["C"] and refit.recipe["n_fit"] == len(x) + len(xv)
    single = fit_linear_sweep(x, y, xv, yv, num_classes=k, c_grid=[0.1])
    assert single.recipe["n_fit"] == len(x) + len(xv) and single.recipe["scores"] == []
    # the refit is the plain fit at the chosen C on train + val, standardised with train + val statistics
    direct = fit_linear_sweep(
        np.concatenate([x, xv]), np.concatenate([y, yv]), num_classes=k, c_grid=[refit.recipe["C"]], tol=1e-6
    )
    np.testing.assert_allclose(refit.predict_proba(xv), direct.predict_proba(xv), atol=1e-3)


def test_sweep_holds_out_a_seeded_stratified_split_without_val():
    x, y = blobs(150, 10, 3, seed=7, sep=0.5)
    a = fit_linear_sweep(x, y, num_classes=3, c_grid=[0.01, 1.0], seed=1)
    b = fit_linear_sweep(x, y, num_classes=3, c_grid=[0.01, 1.0], seed=1)
    assert "hold-out" in a.recipe["selection"] and "seed 1" in a.recipe["selection"]
    assert a.recipe["scores"] == b.recipe["scores"]
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    fit_idx, hold_idx = stratified_holdout(torch.from_numpy(y), 0.2, seed=1)
    assert len(np.intersect1d(fit_idx.numpy(), hold_idx.numpy())) == 0
    assert np.bincount(y[hold_idx.numpy()]).tolist() == [10, 10, 10]


def test_sweep_default_c_when_nothing_can_be_held_out():
    x, y = blobs(3, 5, 3, seed=8)
    probe = fit_linear_sweep(x, y, num_classes=3, default_c=0.5)
    assert probe.recipe["C"] == 0.5 and probe.recipe["scores"] == []
    assert probe.recipe["selection"].startswith("none")
    assert probe.predict_proba(x).shape == (3, 3)


def test_default_grid_and_metrics():
    assert 15 <= len(DEFAULT_C_GRID) <= 45 and DEFAULT_C_GRID[0] == 1e-4 and DEFAULT_C_GRID[-1] == 1e4
    proba = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    assert score_proba(proba, y, "accuracy") == pytest.approx(2 / 3)
    assert score_proba(proba, y, "balanced_accuracy") == pytest.approx(0.75)
    assert score_proba(proba, y, "neg_log_loss") == pytest.approx(np.mean(np.log([0.9, 0.8, 0.4])))
    with pytest.raises(ProbeError, match="unknown selection metric"):
        fit_linear_sweep(np.zeros((4, 2)), np.array([0, 1, 0, 1]), num_classes=2, metric="f1")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ bad input


def test_missing_class_is_an_error_naming_it():
    x, y = blobs(30, 4, 3, seed=9)
    y[y == 1] = 0
    with pytest.raises(ProbeError, match=r"class\(es\) \[1\] have no samples"):
        fit_linear_panderm(x, y, 3)


def test_allowed_missing_class_gets_probability_zero(caplog):
    x, y = blobs(60, 4, 3, seed=10)
    y[y == 1] = 2
    with caplog.at_level(logging.WARNING, logger="probes.linear"):
        for probe in (
            fit_linear_panderm(x, y, 3, allow_missing_classes=True),
            fit_linear_sweep(x, y, num_classes=3, c_grid=[1.0], allow_missing_classes=True),
        ):
            proba = probe.predict_proba(x)
            assert proba.shape == (60, 3) and proba.dtype == np.float64
            np.testing.assert_array_equal(proba[:, 1], 0)
            np.testing.assert_allclose(proba.sum(1), 1)
    assert "[1] have no samples" in caplog.text


@pytest.mark.parametrize(
    ("splits", "num_classes", "pattern"),
    [
        ({"train": (np.zeros((5, 3)), np.zeros(4, int))}, 2, "train: 5 feature rows but 4 labels"),
        (
            {
                "train": (np.zeros((4, 3)), np.array([0, 1, 0, 1])),
                "val": (np.zeros((2, 3)), np.zeros(3, int)),
            },
            2,
            "val: 2 feature rows but 3 labels",
        ),
        (
            {"train": (np.array([[0.0, np.nan], [1, 1], [np.inf, 0]]), np.array([0, 1, 0]))},
            2,
            r"train features: 2 row\(s\) contain NaN or Inf",
        ),
        ({"train": (np.zeros((3, 2)), np.array([0, 1, 5]))}, 2, r"outside \[0, 2\)"),
        ({"train": (np.zeros((3, 2)), np.array([0, 0, 0]))}, 2, "at least 2 classes"),
        ({"train": (np.zeros((3, 2)), np.array([0, 1, 0]))}, 1, "num_classes must be an integer >= 2"),
        ({"train": (np.zeros((2, 2)), np.array([0.0, 1.0]))}, 2, "integer class indices"),
        (
            {"train": (np.zeros((2, 2)), np.array([0, 1])), "query": (np.zeros((2, 3)), None)},
            2,
            "widths differ",
        ),
    ],
)
def test_bad_input_is_a_clear_error(splits, num_classes, pattern):
    with pytest.raises(ProbeError, match=pattern):
        validate_probe_inputs(splits, num_classes)


def test_all_problems_are_reported_at_once():
    x = np.zeros((4, 2))
    x[0, 0] = np.nan
    with pytest.raises(ProbeError) as info:
        validate_probe_inputs({"train": (x, np.array([0, 1, 7])), "val": (np.full((2, 2), np.inf), None)}, 2)
    message = str(info.value)
    assert "4 feature rows but 3 labels" in message and "outside [0, 2)" in message
    assert "train features: 1 row(s)" in message and "val features: 2 row(s)" in message


def test_predict_checks_query_width_and_values():
    x, y = blobs(30, 4, 3, seed=11)
    probe = fit_linear_sweep(x, y, num_classes=3, c_grid=[1.0])
    with pytest.raises(ProbeError, match="3 columns, the probe expects 4"):
        probe.predict_proba(np.zeros((2, 3)))
    with pytest.raises(ProbeError, match=r"query features: 1 row\(s\) contain NaN"):
        probe.predict_proba(np.array([[np.nan, 0, 0, 0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fits_on_the_gpu():
    x, y = blobs(200, 16, 3, seed=12)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    cpu, gpu = (
        fit_linear_sweep(x, y, num_classes=3, c_grid=[1.0]),
        fit_linear_sweep(xt, yt, num_classes=3, c_grid=[1.0]),
    )
    assert gpu.weight.is_cuda
    np.testing.assert_allclose(gpu.predict_proba(xt), cpu.predict_proba(x), atol=1e-4)
