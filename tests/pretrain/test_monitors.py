"""SSL monitors against brute force: leave-one-out kNN balanced accuracy, RankMe, feature std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from panderm.pretrain.monitors import feature_std, knn_accuracy, rankme


def brute_force_knn(x: np.ndarray, y: np.ndarray, k: int, temperature: float) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    counts = np.bincount(y)
    predictions = []
    for i in range(len(x)):
        sims = x @ x[i]
        sims[i] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(len(counts))
        for j in order:
            votes[y[j]] += np.exp((sims[j] - sims[order[0]]) / temperature)
        predictions.append(np.argmax(votes / counts))
    return balanced_accuracy_score(y, predictions)


def test_knn_accuracy_matches_a_brute_force_leave_one_out():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [30, 8, 5])
    x = rng.normal(size=(len(y), 6)) + 1.5 * np.eye(6)[y]  # classes are clusters
    got = knn_accuracy(torch.tensor(x), torch.tensor(y), k=5, temperature=0.1)
    assert got == pytest.approx(brute_force_knn(x, y, 5, 0.1))
    assert got > 0.45  # chance: 1/3
    # unlabelled rows (-1) are left out
    with_unlabelled = knn_accuracy(
        torch.tensor(np.vstack([x, rng.normal(size=(4, 6))])),
        torch.tensor(np.r_[y, [-1] * 4]),
        k=5,
        temperature=0.1,
    )
    assert with_unlabelled == pytest.approx(got)


def test_rankme_and_feature_std_see_collapse():
    rng = np.random.default_rng(1)
    spread = torch.tensor(rng.normal(size=(200, 16)))
    collapsed = torch.tensor(np.outer(rng.normal(size=200), rng.normal(size=16)))  # rank 1
    s = np.linalg.svd(spread.numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(spread) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert rankme(spread) > 12 and rankme(collapsed) == pytest.approx(1.0, abs=0.01)
    normed = spread.numpy() / np.linalg.norm(spread.numpy(), axis=1, keepdims=True)
    assert feature_std(spread) == pytest.approx(normed.std(axis=0, ddof=1).mean())
    assert feature_std(torch.ones(10, 4)) == pytest.approx(0.0)
