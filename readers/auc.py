"""Figures of merit of reader ratings and their covariance over cases (jackknife, DeLong, bootstrap).

All functions work on a rating array ``x`` of shape (conditions, readers, cases) whose cases are ordered
negatives first: ``x[..., :n0]`` are the ``n0`` truth-0 cases, ``x[..., n0:]`` the truth-1 cases.
Binary figures of merit call a case positive when ``rating >= threshold``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import rankdata

from panderm.errors import ConfigError
from panderm.stats import bootstrap_indices, delong_cov, structural_components

Fom = Literal["auc", "sensitivity", "specificity", "accuracy"]
FOMS: tuple[str, ...] = ("auc", "sensitivity", "specificity", "accuracy")
# one implementation of DeLong and of the stratified case bootstrap, shared with the probes' leaderboard
__all__ = [
    "FOMS",
    "bootstrap_cov",
    "bootstrap_foms",
    "bootstrap_indices",
    "delong_cov",
    "fom_and_jackknife",
    "fom_values",
    "jackknife_cov",
    "structural_components",
]


def _check_fom(fom: str, threshold: float | None) -> None:
    if fom not in FOMS:
        raise ConfigError(f"fom: unknown figure of merit {fom!r}; expected one of {FOMS}")
    if fom != "auc" and threshold is None:
        raise ConfigError(f"threshold: fom={fom!r} needs a threshold (rating >= threshold is positive)")


def fom_values(x: np.ndarray, n0: int, fom: str = "auc", threshold: float | None = None) -> np.ndarray:
    """Figure of merit over the last (case) axis; shape ``x.shape[:-1]``."""
    _check_fom(fom, threshold)
    if fom == "auc":
        n1 = x.shape[-1] - n0
        r_all = rankdata(x, axis=-1)
        return (r_all[..., n0:].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n0 * n1)
    pos = x >= threshold
    if fom == "sensitivity":
        return pos[..., n0:].mean(axis=-1)
    if fom == "specificity":
        return (~pos[..., :n0]).mean(axis=-1)
    return np.concatenate([~pos[..., :n0], pos[..., n0:]], axis=-1).mean(axis=-1)


def fom_and_jackknife(
    x: np.ndarray, n0: int, fom: str = "auc", threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Figure of merit and its leave-one-case-out values (shape ``x.shape``), in closed form (exact)."""
    _check_fom(fom, threshold)
    n = x.shape[-1]
    n1 = n - n0
    if fom == "auc":
        auc, v10, v01 = structural_components(x, n0)
        a = auc[..., None]
        loo = np.concatenate([(n0 * a - v01) / (n0 - 1), (n1 * a - v10) / (n1 - 1)], axis=-1)
        return auc, loo
    pos = x >= threshold
    if fom == "accuracy":
        c = np.concatenate([~pos[..., :n0], pos[..., n0:]], axis=-1).astype(float)
        m = c.mean(axis=-1, keepdims=True)
        return m[..., 0], (n * m - c) / (n - 1)
    if fom == "sensitivity":
        c, m_, lo, hi = pos[..., n0:].astype(float), n1, n0, n
    else:
        c, m_, lo, hi = (~pos[..., :n0]).astype(float), n0, 0, n0
    m = c.mean(axis=-1, keepdims=True)
    loo = np.broadcast_to(m, x.shape).copy()
    loo[..., lo:hi] = (m_ * m - c) / (m_ - 1)
    return m[..., 0], loo


def jackknife_cov(loo: np.ndarray) -> np.ndarray:
    """OR/Hillis jackknife covariance ``(K-1)/K * sum_k (f_(k) - mean)(f'_(k) - mean')`` of flattened FOMs.

    ``loo`` has shape (..., K); the result is (P, P) over the flattened leading axes (C order).
    """
    k = loo.shape[-1]
    d = loo.reshape(-1, k)
    d = d - d.mean(axis=1, keepdims=True)
    return (k - 1) / k * (d @ d.T)


def bootstrap_foms(
    x: np.ndarray,
    n0: int,
    fom: str = "auc",
    threshold: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    chunk_elems: int = 20_000_000,
) -> np.ndarray:
    """FOMs on ``n_boot`` case bootstrap samples drawn within truth strata; shape (n_boot, *x.shape[:-1])."""
    n = x.shape[-1]
    idx = bootstrap_indices(np.arange(n) >= n0, n_boot, seed)
    flat = x.reshape(-1, n)
    step = max(1, chunk_elems // max(1, flat.size))
    out = np.empty((n_boot, flat.shape[0]))
    for s in range(0, n_boot, step):
        xb = flat[:, idx[s : s + step]]  # (P, b, n)
        out[s : s + step] = fom_values(xb, n0, fom, threshold).T
    return out.reshape(n_boot, *x.shape[:-1])


def bootstrap_cov(
    x: np.ndarray,
    n0: int,
    fom: str = "auc",
    threshold: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap covariance (ddof 1) of the flattened FOMs."""
    b = bootstrap_foms(x, n0, fom, threshold, n_boot, seed).reshape(n_boot, -1)
    return np.atleast_2d(np.cov(b, rowvar=False))
