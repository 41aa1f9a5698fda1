"""Reader-study statistics speed in one run: closed-form jackknife, vectorised bootstrap and rank-based DeLong
against straightforward scikit-learn / pairwise baselines, on simulated Roe & Metz studies.

Comparisons (each checks that both sides give the same numbers before timing is reported):

- OR analysis: `readers.mrmc.mrmc(study)` (jackknife, from the long table, DBM cross-check included) on a
  `roe_metz_study` of `--readers` readers x 2 conditions x `--cases` cases, against a naive leave-one-case-out
  loop that recomputes every AUC with `sklearn.metrics.roc_auc_score` (readers x conditions x (cases + 1)
  calls), then the jackknife covariance and the same `or_analysis`. Ours is the median of `--repeats` runs
  and must be under 1 s; the baseline runs once.
- Bootstrap: `readers.auc.bootstrap_foms` (`--n-boot` stratified case resamples, `--boot-cases` cases) against
  a Python loop over the same resample indices calling `roc_auc_score` for every reader and condition.
- DeLong: `readers.auc.delong_cov` (structural components from mid-ranks, O(n log n)) against the textbook
  computation from the full positive x negative comparison matrix of each reader and condition (O(n0 n1)).

    .venv/bin/python benchmarks/reader_stats.py [--readers 10] [--cases 1000] [--boot-cases 200] \
        [--n-boot 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from readers.auc import bootstrap_foms, bootstrap_indices, delong_cov
from readers.mrmc import mrmc, or_analysis
from readers.simulate import roe_metz, roe_metz_study


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def naive_or(study) -> dict:
    """Leave-one-case-out AUCs by brute force with roc_auc_score, jackknife covariance, then OR."""
    data = study.data
    conditions, readers = study.conditions, study.readers
    truth = study.truth
    cases = list(truth.index[truth.to_numpy() == 0]) + list(truth.index[truth.to_numpy() == 1])
    y = truth.loc[cases].to_numpy()
    k = len(cases)
    foms = np.empty((len(conditions), len(readers)))
    loo = np.empty((len(conditions), len(readers), k))
    for i, cond in enumerate(conditions):
        for j, reader in enumerate(readers):
            cell = data[(data["condition"] == cond) & (data["reader"] == reader)].set_index("case")
            x = cell.loc[cases, "rating"].to_numpy()
            foms[i, j] = roc_auc_score(y, x)
            keep = np.ones(k, dtype=bool)
            for c in range(k):
                keep[c] = False
                loo[i, j, c] = roc_auc_score(y[keep], x[keep])
                keep[c] = True
    d = loo.reshape(-1, k) - loo.reshape(-1, k).mean(axis=1, keepdims=True)
    cov = (k - 1) / k * d @ d.T
    return {"loo": loo, **or_analysis(foms, cov, conditions, readers)}


def compare_or(args: argparse.Namespace) -> None:
    n0 = args.cases // 2
    study = roe_metz_study(args.readers, n0, args.cases - n0, [1.5, 1.7], seed=args.seed)
    ours_s, ours = timed(lambda: mrmc(study), args.repeats)
    base_s, base = timed(lambda: naive_or(study))
    for key in ("rrrc", "frrc", "rrfc"):
        assert np.isclose(ours[key]["p"], base[key]["p"], rtol=1e-9, atol=1e-15), key
        assert np.isclose(ours[key]["value"], base[key]["value"], rtol=1e-9), key
    for key, value in ours["variance_components"].items():
        assert np.isclose(value, base["variance_components"][key], rtol=1e-9, atol=1e-15), key
    calls = base["loo"].size + base["loo"].size // args.cases
    print(
        f"OR analysis (mrmc, jackknife) {args.readers} readers x 2 conditions x {args.cases} cases: "
        f"{ours_s:.3f} s (under 1 s: {'yes' if ours_s < 1 else 'NO'}) vs naive leave-one-out with "
        f"roc_auc_score ({calls} calls): {base_s:.2f} s, same F, p and variance components "
        f"ratio={base_s / ours_s:.0f}"
    )


def compare_bootstrap(args: argparse.Namespace) -> None:
    n0 = args.boot_cases // 2
    x = roe_metz(args.readers, n0, args.boot_cases - n0, [1.5, 1.7], seed=args.seed)
    ours_s, ours = timed(lambda: bootstrap_foms(x, n0, n_boot=args.n_boot, seed=args.seed), args.repeats)

    def loop() -> np.ndarray:
        # The same stratified resample indices bootstrap_foms draws (negatives, then positives).
        n = x.shape[-1]
        idx = bootstrap_indices(np.arange(n) >= n0, args.n_boot, args.seed)
        y = np.r_[np.zeros(n0), np.ones(n - n0)]
        out = np.empty((args.n_boot, *x.shape[:-1]))
        for b in range(args.n_boot):
            for i in range(x.shape[0]):
                for j in range(x.shape[1]):
                    out[b, i, j] = roc_auc_score(y, x[i, j, idx[b]])
        return out

    base_s, base = timed(loop)
    np.testing.assert_allclose(ours, base, rtol=1e-12, atol=1e-15)
    print(
        f"bootstrap AUCs ({args.n_boot} resamples x {x.shape[1]} readers x 2 conditions x "
        f"{x.shape[-1]} cases): bootstrap_foms {ours_s:.3f} s vs roc_auc_score loop {base_s:.2f} s, "
        f"same values ratio={base_s / ours_s:.0f}"
    )


def delong_pairwise(x: np.ndarray, n0: int) -> np.ndarray:
    """DeLong covariance from the full comparison matrix psi(pos, neg) of each reader and condition."""
    flat = x.reshape(-1, x.shape[-1])
    n1 = flat.shape[1] - n0
    v10, v01 = np.empty((flat.shape[0], n1)), np.empty((flat.shape[0], n0))
    for p, row in enumerate(flat):
        pos, neg = row[n0:, None], row[None, :n0]
        psi = (pos > neg) + 0.5 * (pos == neg)
        v10[p], v01[p] = psi.mean(axis=1), psi.mean(axis=0)
    return np.cov(v10) / n1 + np.cov(v01) / n0


def compare_delong(args: argparse.Namespace) -> None:
    n0 = args.cases // 2
    x = roe_metz(args.readers, n0, args.cases - n0, [1.5, 1.7], seed=args.seed)
    x = np.round(x, 1)  # ties, so the half-credit rule is exercised too
    ours_s, ours = timed(lambda: delong_cov(x, n0), args.repeats)
    base_s, base = timed(lambda: delong_pairwise(x, n0), args.repeats)
    np.testing.assert_allclose(ours, base, rtol=1e-10, atol=1e-16)
    print(
        f"DeLong covariance ({x.shape[1]} readers x 2 conditions x {x.shape[-1]} cases, ratings rounded "
        f"to 0.1): delong_cov {ours_s * 1e3:.1f} ms vs pairwise comparison matrices {base_s * 1e3:.1f} ms, "
        f"same matrix ratio={base_s / ours_s:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--boot-cases", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    compare_or(args)
    compare_bootstrap(args)
    compare_delong(args)


if __name__ == "__main__":
    main()
