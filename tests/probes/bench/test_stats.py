"""panderm.stats: DeLong against the readers' path, a brute-force double loop and a hand-checked case; the
paired bootstrap against a brute-force loop with scikit-learn; Holm against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from panderm.stats import (
    bootstrap_indices,
    bootstrap_p_value,
    delong_test,
    holm,
    paired_bootstrap,
)
from readers.auc import delong_cov as readers_delong_cov
from readers.auc import fom_values


def _scores(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    a = y + rng.normal(0, 0.8, n)
    b = y + rng.normal(0, 1.2, n)
    b[:5] = np.round(b[:5], 1)  # a few ties
    return y, a, b


def test_delong_matches_readers_path_and_brute_force():
    y, a, b = _scores()
    result = delong_test(y, a, b)
    order = np.argsort(y, kind="stable")
    n0 = int((y == 0).sum())
    x = np.stack([a[order], b[order]])[:, None, :]  # (conditions, readers, cases) as readers.mrmc builds it
    cov = readers_delong_cov(x, n0)
    assert result.auc_a == pytest.approx(fom_values(x, n0)[0, 0]) == pytest.approx(roc_auc_score(y, a))
    assert result.auc_b == pytest.approx(roc_auc_score(y, b))
    assert result.se**2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    # brute force: structural components from the psi kernel, pair by pair
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(s):
        return np.array([[1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0 for j in neg] for i in pos])

    pa, pb = psi(a), psi(b)
    v10 = np.stack([pa.mean(1), pb.mean(1)])
    v01 = np.stack([pa.mean(0), pb.mean(0)])
    s = np.cov(v10) / len(pos) + np.cov(v01) / len(neg)
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    assert result.se == pytest.approx(np.sqrt(var))
    assert result.p_value == pytest.approx(2 * norm.sf(abs((pa.mean() - pb.mean()) / np.sqrt(var))))


def test_delong_hand_checked_case():
    # a: AUROC 3/4 (0.35 loses to 0.4), b: AUROC 1; V10(a) = [1/2, 1], V01(a) = [1, 1/2], b's all 1:
    # var = var([1/2, 1]) / 2 + var([1, 1/2]) / 2 = 0.125, z = -0.25 / sqrt(0.125)
    result = delong_test([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [0.2, 0.3, 0.6, 0.7])
    assert (result.auc_a, result.auc_b, result.difference) == (0.75, 1.0, -0.25)
    assert result.se == pytest.approx(np.sqrt(0.125))
    assert result.p_value == pytest.approx(2 * norm.sf(0.25 / np.sqrt(0.125)))
    assert result.low == pytest.approx(-0.25 - 1.959964 * np.sqrt(0.125), abs=1e-6)
    same = delong_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8])
    assert (same.difference, same.z, same.p_value) == (0.0, 0.0, 1.0)


def test_bootstrap_indices_keep_strata_and_are_seeded():
    strata = np.array([0, 1, 1, 0, 1, 2])
    idx = bootstrap_indices(strata, 50, seed=3)
    assert idx.shape == (50, 6)
    for row in idx:
        assert sorted(strata[row].tolist()) == sorted(strata.tolist())
    assert np.array_equal(idx, bootstrap_indices(strata, 50, seed=3))


def test_paired_bootstrap_matches_brute_force_loop():
    y, a, b = _scores(40, seed=1)
    result = paired_bootstrap(
        lambda r: roc_auc_score(y[r], a[r]),
        lambda r: roc_auc_score(y[r], b[r]),
        len(y),
        n_boot=100,
        seed=7,
        strata=y,
    )
    diffs = []
    for rows in bootstrap_indices(y, 100, seed=7):  # the same seeded draws, scored one by one
        diffs.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    diffs = np.array(diffs)
    assert result.difference == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    below = (1 + sum(d <= 0 for d in diffs)) / 101
    above = (1 + sum(d >= 0 for d in diffs)) / 101
    assert result.p_value == pytest.approx(min(1, 2 * min(below, above)))
    assert result.n_used == 100


def test_bootstrap_p_value_and_holm_by_hand():
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    assert bootstrap_p_value(np.zeros(9)) == 1.0
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = holm([0.02, np.nan, 0.04])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.04, 0.04])
