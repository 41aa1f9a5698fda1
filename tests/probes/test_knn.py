"""kNN and nearest-class-mean probes against brute-force numpy references (full similarity matrices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from panderm.errors import ProbeError
from probes.knn import knn_proba, knn_search, plan_chunks, prototype_proba


def features(n: int, d: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d))
    y = np.arange(n) % k
    return (means[y] + 1.5 * rng.normal(size=(n, d)) + 2.0).astype(np.float32), y.astype(np.int64)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_knn(train, labels, query, num_classes, k, temperature, variant, balanced=False):
    """Brute force in float64: the full similarity matrix, a stable argsort, weighted votes (each divided by
    the voter's class frequency in train when `balanced`)."""
    train, query = train.astype(np.float64), query.astype(np.float64)
    if variant == "uni":
        mean = train.mean(0)
        train, query = train - mean, query - mean
    sims = normalise(query) @ normalise(train).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sims, idx, axis=1)
    weights = np.exp(top / temperature) if variant == "dino" else np.ones_like(top)
    if balanced:
        weights = weights / (np.bincount(labels, minlength=num_classes)[labels[idx]] / len(labels))
    votes = np.zeros((len(query), num_classes))
    for row in range(len(query)):
        np.add.at(votes[row], labels[idx[row]], weights[row])
    return votes / votes.sum(1, keepdims=True), idx, top


@pytest.mark.parametrize("variant", ["dino", "uni"])
def test_knn_matches_brute_force(variant):
    x, y = features(300, 16, 4, seed=0)
    q, _ = features(50, 16, 4, seed=1)
    proba = knn_proba(x, y, q, num_classes=4, k=10, temperature=0.07, variant=variant)
    ref, ref_idx, ref_sims = reference_knn(x, y, q, 4, 10, 0.07, variant)
    assert proba.dtype == np.float64 and proba.shape == (50, 4)
    np.testing.assert_allclose(proba, ref, atol=1e-5)
    sims, idx = knn_search(x, q, k=10, variant=variant)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(sims.numpy(), ref_sims, atol=1e-5)


@pytest.mark.parametrize("variant", ["dino", "uni"])
def test_balanced_votes_match_brute_force(variant):
    x, y = features(300, 16, 4, seed=15)
    keep = (y == 0) | (np.arange(len(y)) % 5 == 0)  # class 0 keeps its 75 rows, the others 15 each
    x, y = x[keep], y[keep]
    q, _ = features(50, 16, 4, seed=16)
    proba = knn_proba(x, y, q, num_classes=4, k=10, variant=variant, balanced=True)
    ref, _, _ = reference_knn(x, y, q, 4, 10, 0.07, variant, balanced=True)
    np.testing.assert_allclose(proba, ref, atol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1)
    plain, _, _ = reference_knn(x, y, q, 4, 10, 0.07, variant)
    assert np.abs(ref - plain).max() > 0.1  # the reweighting matters on this imbalance


def test_balanced_votes_raise_balanced_accuracy_on_a_clustered_minority():
    """A minority class packed into one corner of a spread-out majority: among a minority query's neighbours
    the majority still outnumbers it, unless each class's votes are divided by its frequency."""
    rng = np.random.default_rng(17)
    d = 8
    centre = np.full(d, 3.0)

    def sample(n_major: int, n_minor: int) -> tuple[np.ndarray, np.ndarray]:
        major = centre + rng.normal(size=(n_major, d))
        minor = centre + np.r_[1.0, np.zeros(d - 1)] + 0.5 * rng.normal(size=(n_minor, d))
        x = np.concatenate([major, minor]).astype(np.float32)
        return x, np.r_[np.zeros(n_major, np.int64), np.ones(n_minor, np.int64)]

    x, y = sample(2000, 40)
    q, qy = sample(200, 200)
    plain = knn_proba(x, y, q, num_classes=2)
    balanced = knn_proba(x, y, q, num_classes=2, balanced=True)
    bacc_plain = balanced_accuracy_score(qy, plain.argmax(1))
    bacc_balanced = balanced_accuracy_score(qy, balanced.argmax(1))
    assert bacc_plain < 0.6 and bacc_balanced > 0.8, (bacc_plain, bacc_balanced)  # 0.515 and 0.905


@pytest.mark.parametrize("variant", ["dino", "uni"])
def test_chunked_search_gives_the_same_result(variant):
    x, y = features(257, 12, 3, seed=2)
    q, _ = features(61, 12, 3, seed=3)
    whole = knn_proba(x, y, q, num_classes=3, variant=variant)
    s_whole, i_whole = knn_search(x, q, variant=variant)
    for chunk, train_chunk in [(7, 13), (1, 1), (61, 5), (16, 257)]:
        s, i = knn_search(x, q, variant=variant, chunk_size=chunk, train_chunk_size=train_chunk)
        np.testing.assert_array_equal(i.numpy(), i_whole.numpy())
        np.testing.assert_allclose(s.numpy(), s_whole.numpy(), rtol=0, atol=1e-6)
        chunked = knn_proba(
            x, y, q, num_classes=3, variant=variant, chunk_size=chunk, train_chunk_size=train_chunk
        )
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)  # float32 dot products
    # a budget too small to cache the normalised training set: train chunks normalised on the fly
    assert plan_chunks(257, 61, 12, 20, 20_000, train_cached=False) == (30, 31)
    tiny = knn_proba(x, y, q, num_classes=3, variant=variant, memory_budget=20_000)
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-6)


def test_query_scale_and_zero_query_rows():
    """Queries are not normalised before the matrix multiply: their norm divides the k best similarities."""
    x, y = features(90, 8, 3, seed=12)
    q, _ = features(12, 8, 3, seed=13)
    q[4] = 0
    s, i = knn_search(x, q, k=7, chunk_size=5)
    np.testing.assert_array_equal(s[4].numpy(), 0)  # an all-zero row stays zero, as with F.normalize
    keep = np.arange(len(q)) != 4
    _, ref_idx, ref_sims = reference_knn(x, y, q[keep], 3, 7, 0.07, "dino")
    np.testing.assert_array_equal(i.numpy()[keep], ref_idx)
    np.testing.assert_allclose(s.numpy()[keep], ref_sims, atol=1e-5)
    s_big, i_big = knn_search(x, q * 1e3, k=7)  # a query's scale changes nothing
    np.testing.assert_array_equal(i_big.numpy()[keep], i.numpy()[keep])
    np.testing.assert_allclose(s_big.numpy(), s.numpy(), atol=1e-6)


def test_chunk_plan_fits_the_budget():
    budget = 2 * 10**9
    n, m, d, k = 100_000, 50_000, 1024, 20
    cached = n * d * 4 <= budget // 2
    q, t = plan_chunks(n, m, d, k, budget, cached)
    assert cached and t == n and 256 <= q <= m
    assert n * d * 4 + q * (d + 4 * k) * 4 + 2 * 4 * q * t <= budget
    # a training set too large for whole blocks is split, still within the budget
    q, t = plan_chunks(10_000_000, m, d, k, budget, train_cached=False)
    assert t < 10_000_000 and q * (d + 4 * k) * 4 + t * d * 4 + 2 * 4 * q * t <= budget
    with pytest.raises(ProbeError, match="memory_budget"):
        plan_chunks(10_000, 10, 1024, 20, 1000, train_cached=False)


def test_k_larger_than_train_uses_every_row():
    x, y = features(6, 5, 3, seed=4)
    q, _ = features(4, 5, 3, seed=5)
    ref, _, _ = reference_knn(x, y, q, 3, 6, 0.07, "dino")
    np.testing.assert_allclose(knn_proba(x, y, q, num_classes=3, k=20), ref, atol=1e-6)


def test_no_query_rows():
    x, y = features(20, 4, 2, seed=14)
    assert knn_proba(x, y, x[:0], num_classes=2).shape == (0, 2)
    sims, idx = knn_search(x, x[:0], k=3)
    assert sims.shape == idx.shape == (0, 3)


def test_missing_class_gets_zero_votes():
    x, y = features(40, 5, 3, seed=6)
    y[y == 2] = 0
    with pytest.raises(ProbeError, match=r"\[2\] have no samples"):
        knn_proba(x, y, x[:3], num_classes=3)
    for balanced in (False, True):
        proba = knn_proba(x, y, x[:3], num_classes=3, allow_missing_classes=True, balanced=balanced)
        np.testing.assert_array_equal(proba[:, 2], 0)
        np.testing.assert_allclose(proba.sum(1), 1)


def test_knn_bad_input():
    x, y = features(20, 4, 2, seed=7)
    q = x[:3].copy()
    q[1, 2] = np.nan
    with pytest.raises(ProbeError, match=r"query features: 1 row\(s\) contain NaN"):
        knn_proba(x, y, q, num_classes=2)
    with pytest.raises(ProbeError, match="unknown kNN variant"):
        knn_proba(x, y, x, num_classes=2, variant="cosine")  # type: ignore[arg-type]
    with pytest.raises(ProbeError, match="train: 20 feature rows but 19 labels"):
        knn_proba(x, y[:-1], x, num_classes=2)
    with pytest.raises(ProbeError, match="chunk_size must be >= 1"):
        knn_proba(x, y, x, num_classes=2, chunk_size=0)


@pytest.mark.parametrize("center", [True, False])
def test_prototypes_match_numpy(center):
    x, y = features(120, 8, 3, seed=8)
    q, _ = features(30, 8, 3, seed=9)
    proba = prototype_proba(x, y, q, num_classes=3, center=center, temperature=0.2, chunk_size=7)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    mean = x64.mean(0) if center else 0.0
    xn, qn = normalise(x64 - mean), normalise(q64 - mean)
    protos = np.stack([xn[y == c].mean(0) for c in range(3)])
    dist = np.linalg.norm(qn[:, None, :] - protos[None], axis=2)
    logits = -dist / 0.2
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(proba, ref, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), dist.argmin(1))


def test_prototype_missing_class_and_temperature():
    x, y = features(30, 4, 3, seed=10)
    y[y == 0] = 1
    proba = prototype_proba(x, y, x, num_classes=3, allow_missing_classes=True)
    np.testing.assert_array_equal(proba[:, 0], 0)
    np.testing.assert_allclose(proba.sum(1), 1)
    with pytest.raises(ProbeError, match="temperature must be > 0"):
        prototype_proba(x, y, x, num_classes=3, temperature=0, allow_missing_classes=True)


def test_torch_inputs_stay_on_their_device():
    x, y = features(50, 6, 2, seed=11)
    a = knn_proba(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x[:5]), num_classes=2)
    np.testing.assert_allclose(a, knn_proba(x, y, x[:5], num_classes=2))
    if torch.cuda.is_available():
        b = knn_proba(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), x[:5], num_classes=2)
        np.testing.assert_allclose(a, b, atol=1e-5)
