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
from sklearn.metrics import balanced_accuracy_score, log_loss
from sklearn.preprocessing import StandardScaler

from panderm.errors import ProbeError
from probes.linear import (
    DEFAULT_C_GRID,
    _decade_beyond,
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


def sklearn_val_scores(x, y, xv, yv, grid, metric):
    """Validation scores of scikit-learn's LogisticRegression(C) on standardised features, per C."""
    scaler = StandardScaler().fit(x)
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in grid:
            model = LogisticRegression(C=c, tol=1e-8, max_iter=10000).fit(scaler.transform(x), y)
            proba = model.predict_proba(scaler.transform(xv))
            if metric == "neg_log_loss":
                scores.append(-log_loss(yv, proba, labels=model.classes_))
            else:
                scores.append(balanced_accuracy_score(yv, proba.argmax(1)))
    return np.array(scores)


def test_sweep_extends_the_grid_past_a_winning_upper_end(caplog):
    """C = 1e-4 and 1e-3 barely fit these blobs: the val log-loss improves past the grid, so the sweep adds a
    decade at a time (the grid's spacing: one value per decade) until an interior C wins, as scikit-learn's
    scores on the same extended grid say."""
    k = 3
    x, y = blobs(300, 10, k, seed=13, sep=0.5)
    xv, yv = blobs(300, 10, k, seed=13, sep=0.5)
    xv = xv + np.random.default_rng(14).normal(size=xv.shape).astype(np.float32)
    kwargs = dict(num_classes=k, metric="neg_log_loss", refit=False, tol=1e-7, max_iter=2000)
    with caplog.at_level(logging.WARNING, logger="probes.linear"):
        probe = fit_linear_sweep(x, y, xv, yv, c_grid=[1e-4, 1e-3], **kwargs)
    recipe = probe.recipe
    grid = recipe["c_grid"]
    assert grid[:2] == [1e-4, 1e-3] and recipe["C"] > 1e-3
    assert 1 <= recipe["c_grid_extended"] <= 3 and len(grid) == 2 + recipe["c_grid_extended"]
    np.testing.assert_allclose(grid, 10.0 ** np.arange(-4, -4 + len(grid)), rtol=1e-12)
    assert recipe["c_grid_bounds"] == [grid[0], grid[-1]] and recipe["c_at_grid_edge"] is False
    assert "end of the C grid" not in caplog.text
    sk = sklearn_val_scores(x, y, xv, yv, grid, "neg_log_loss")
    np.testing.assert_allclose(recipe["scores"], sk, atol=1e-4)
    assert recipe["C"] == grid[int(np.argmax(sk))] == grid[int(np.argmax(recipe["scores"]))]
    # the extension is the same as sweeping the extended grid from the start
    full = fit_linear_sweep(x, y, xv, yv, c_grid=grid, **kwargs)
    assert full.recipe["C"] == recipe["C"] and full.recipe["c_grid_extended"] == 0
    np.testing.assert_allclose(full.recipe["scores"], recipe["scores"], atol=1e-5)

    # too few extra decades allowed: the best C is still the upper end, which is flagged and logged
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="probes.linear"):
        capped = fit_linear_sweep(x, y, xv, yv, c_grid=[1e-6, 1e-5], extend_decades=1, **kwargs)
    assert capped.recipe["C"] == pytest.approx(1e-4) and capped.recipe["c_grid_extended"] == 1
    assert capped.recipe["c_at_grid_edge"] is True
    np.testing.assert_allclose(capped.recipe["c_grid_bounds"], [1e-6, 1e-4])
    assert "upper end of the C grid" in caplog.text and "extend_decades" in caplog.text
    never = fit_linear_sweep(x, y, xv, yv, c_grid=[1e-6, 1e-5], extend_decades=0, **kwargs)
    assert never.recipe["C"] == 1e-5 and never.recipe["c_grid"] == [1e-6, 1e-5]
    assert never.recipe["c_at_grid_edge"] is True


def test_sweep_extends_the_grid_past_a_winning_lower_end():
    """Few rows in many dimensions: weak regularisation overfits, so the val log-loss peaks below C = 0.3."""
    k = 2
    x, y = blobs(40, 30, k, seed=15, sep=0.3)
    xv, yv = blobs(200, 30, k, seed=15, sep=0.3)
    xv = xv + np.random.default_rng(16).normal(size=xv.shape).astype(np.float32)
    grid = [0.3, 3.0]
    probe = fit_linear_sweep(
        x, y, xv, yv, num_classes=k, c_grid=grid, metric="neg_log_loss", refit=False, tol=1e-7, max_iter=2000
    )
    recipe = probe.recipe
    assert recipe["C"] < 0.3 and recipe["c_grid"][-2:] == grid and recipe["c_grid_extended"] >= 1
    assert recipe["c_grid_bounds"] == [recipe["c_grid"][0], 3.0] and recipe["c_at_grid_edge"] is False
    sk = sklearn_val_scores(x, y, xv, yv, recipe["c_grid"], "neg_log_loss")
    np.testing.assert_allclose(recipe["scores"], sk, atol=1e-3)
    assert recipe["C"] == recipe["c_grid"][int(np.argmax(sk))]


def test_sweep_keeps_an_interior_or_tied_best_and_its_grid():
    k = 3
    x, y = blobs(240, 40, k, seed=6, sep=0.25)
    xv, yv = blobs(240, 40, k, seed=6, sep=0.25)
    xv = xv + np.random.default_rng(9).normal(size=xv.shape).astype(np.float32)
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    probe = fit_linear_sweep(x, y, xv, yv, num_classes=k, c_grid=grid, tol=1e-6)
    assert grid[0] < probe.recipe["C"] < grid[-1]  # interior, so nothing is added
    assert probe.recipe["c_grid"] == grid and probe.recipe["c_grid_extended"] == 0
    assert probe.recipe["c_grid_bounds"] == [1e-4, 10.0] and probe.recipe["c_at_grid_edge"] is False
    fixed = fit_linear_sweep(x, y, xv, yv, num_classes=k, c_grid=grid, tol=1e-6, extend_decades=0)
    assert fixed.recipe["C"] == probe.recipe["C"] and fixed.recipe["scores"] == probe.recipe["scores"]
    torch.testing.assert_close(fixed.weight, probe.weight, rtol=0, atol=0)
    # separable classes: every C scores a balanced accuracy of 1, a tie the smallest C wins without extension
    xs, ys = blobs(90, 5, 3, seed=17, sep=20.0)
    xsv, ysv = blobs(90, 5, 3, seed=17, sep=20.0)
    tied = fit_linear_sweep(xs, ys, xsv, ysv, num_classes=3, c_grid=[0.01, 0.1, 1.0])
    assert tied.recipe["scores"] == [1.0, 1.0, 1.0] and tied.recipe["C"] == 0.01
    assert tied.recipe["c_grid"] == [0.01, 0.1, 1.0] and tied.recipe["c_at_grid_edge"] is False


def test_grid_extension_keeps_the_grid_spacing():
    np.testing.assert_allclose(
        _decade_beyond(DEFAULT_C_GRID, "upper"), [1e4 * 10 ** (1 / 3), 1e4 * 10 ** (2 / 3), 1e5]
    )
    np.testing.assert_allclose(
        _decade_beyond(DEFAULT_C_GRID, "lower"), [1e-4 / 10 ** (1 / 3), 1e-4 / 10 ** (2 / 3), 1e-5]
    )
    np.testing.assert_allclose(_decade_beyond([0.01, 1.0], "upper"), [10.0])  # sparser than a decade: one
    with pytest.raises(ProbeError, match="extend_decades"):
        fit_linear_sweep(np.zeros((4, 2)), np.array([0, 1, 0, 1]), num_classes=2, extend_decades=-1)


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
