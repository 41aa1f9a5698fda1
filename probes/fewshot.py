"""Few-shot episodes and label-efficiency curves over cached features.

`run_fewshot` draws, for each shot count, `n_episodes` support sets of exactly `n_shot` training rows per
class (over all classes), fits a probe on the support set (`prototype`, `knn`, `linear_sweep` or
`linear_panderm`) and scores the whole test split; `label_efficiency` trains on stratified fractions of the
training split (every class keeps at least one row) for several seeds. Both return pandas DataFrames of
mean ± std per setting. Metrics come from `metric_fn(y_true, proba)`, which may return a mapping of floats or
an object with a `.values` mapping (such as `probes.metrics.classification_metrics`); the default computes
balanced accuracy and accuracy with scikit-learn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from panderm.errors import ProbeError
from probes.knn import knn_proba, prototype_proba
from probes.linear import ArrayLike, fit_linear_panderm, fit_linear_sweep, validate_probe_inputs

logger = logging.getLogger(__name__)

Fit = Literal["prototype", "knn", "linear_sweep", "linear_panderm"]
FITS: tuple[str, ...] = ("prototype", "knn", "linear_sweep", "linear_panderm")
MetricFn = Callable[[np.ndarray, np.ndarray], Any]
Seed = int | np.random.Generator


def default_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Balanced accuracy and accuracy (scikit-learn) of the arg-max of `proba` (M, C) vs `y_true` (M,)."""
    pred = np.asarray(proba).argmax(axis=1)
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "accuracy": float(accuracy_score(y_true, pred)),
    }


def _metric_values(result: Any) -> dict[str, float]:
    values = result if isinstance(result, Mapping) else getattr(result, "values", None)
    if not isinstance(values, Mapping):
        raise ProbeError(
            "metric_fn must return a mapping of floats or an object with a `.values` mapping, "
            f"got {type(result).__name__}"
        )
    return {str(k): float(v) for k, v in values.items()}


def fit_predict(
    fit: Fit,
    train_x: ArrayLike,
    train_y: ArrayLike,
    query_x: ArrayLike,
    *,
    num_classes: int,
    val: tuple[ArrayLike, ArrayLike] | None = None,
    **fit_kwargs: Any,
) -> np.ndarray:
    """Fit probe `fit` on (train_x (N, D), train_y (N,)) and return query probabilities (M, num_classes).

    `val` is used by `linear_sweep` for selecting C (others ignore it); `fit_kwargs` go to the probe
    (`knn_proba`, `prototype_proba`, `fit_linear_sweep` or `fit_linear_panderm`). Raises `ProbeError` for an
    unknown fit or invalid input.
    """
    if fit == "prototype":
        return prototype_proba(train_x, train_y, query_x, num_classes=num_classes, **fit_kwargs)
    if fit == "knn":
        return knn_proba(train_x, train_y, query_x, num_classes=num_classes, **fit_kwargs)
    if fit == "linear_sweep":
        val_x, val_y = val if val is not None else (None, None)
        probe = fit_linear_sweep(train_x, train_y, val_x, val_y, num_classes=num_classes, **fit_kwargs)
        return probe.predict_proba(query_x)
    if fit == "linear_panderm":
        return fit_linear_panderm(train_x, train_y, num_classes, **fit_kwargs).predict_proba(query_x)
    raise ProbeError(f"unknown fit {fit!r}; choose one of {FITS}")


def _labels_numpy(y: ArrayLike) -> np.ndarray:
    return y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


def _infer_num_classes(*labels: ArrayLike) -> int:
    highest = [int(_labels_numpy(y).max()) for y in labels if len(y)]
    return max(highest) + 1 if highest else 0


def sample_episode(
    train_y: ArrayLike, n_shot: int, num_classes: int, rng: Seed, *, cap: bool = False
) -> np.ndarray:
    """Row indices of one few-shot support set: exactly `n_shot` rows of every class 0..num_classes-1.

    Rows are drawn without replacement by `rng` (a numpy Generator, or an int seed) and returned grouped
    by class (class 0's rows first), int64. A class with fewer than `n_shot` rows is an error naming it —
    a support set silently smaller for some classes would bias the comparison between shots — unless
    `cap=True`, which takes all of that class's rows instead. A class with no rows is always an error.
    """
    if n_shot < 1:
        raise ProbeError(f"n_shot must be >= 1, got {n_shot}")
    labels = _labels_numpy(train_y)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ProbeError(
            f"train_y must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ProbeError(f"train_y has labels outside [0, {num_classes})")
    rng = np.random.default_rng(rng)
    counts = np.bincount(labels, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] < (1 if cap else n_shot)]
    if short:
        detail = ", ".join(f"class {c}: {counts[c]}" for c in short)
        raise ProbeError(
            f"{n_shot}-shot episode: too few training rows ({detail}); use fewer shots"
            + ("" if cap else " or probe.options.cap=true (cap=True in Python) to take all of a short class")
        )
    picks = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        picks.append(rng.choice(rows, size=min(n_shot, len(rows)), replace=False))
    return np.concatenate(picks).astype(np.int64)


def stratified_subsample(train_y: ArrayLike, fraction: float, rng: Seed) -> np.ndarray:
    """Sorted row indices of a stratified `fraction` of `train_y`: round(fraction * n_c) rows of each class c
    present (at least one, at most n_c), drawn without replacement by `rng` (Generator or int seed)."""
    if not 0 < fraction <= 1:
        raise ProbeError(f"fractions must be in (0, 1], got {fraction}")
    labels = _labels_numpy(train_y)
    rng = np.random.default_rng(rng)
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows), max(1, round(fraction * len(rows))))
        picks.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _summarise(runs: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for a single run) of each metric per group."""
    grouped = runs.groupby(by, sort=True)
    out = grouped.size().rename("n_runs").reset_index()
    out["n_train"] = grouped["n_train"].mean().to_numpy()
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean().to_numpy()
        out[f"{m}_std"] = grouped[m].std(ddof=1).to_numpy()
    return out


def _prepare(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int | None,
    fit: str,
    extra: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    if fit not in FITS:
        raise ProbeError(f"unknown fit {fit!r}; choose one of {FITS}")
    splits = {"train": (train_x, train_y), "test": (test_x, test_y), **(extra or {})}
    if num_classes is None:
        num_classes = _infer_num_classes(*(y for _, y in splits.values()))
    checked, _ = validate_probe_inputs(splits, num_classes)
    return checked, num_classes  # type: ignore[return-value]


def run_fewshot(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    num_classes: int | None = None,
    shots: Sequence[int] = (1, 2, 4, 8, 16, 32),
    n_episodes: int = 100,
    fit: Fit = "prototype",
    seed: int = 0,
    metric_fn: MetricFn | None = None,
    cap: bool = False,
    fit_kwargs: Mapping[str, Any] | None = None,
    return_episodes: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Few-shot evaluation: per shot count, mean ± std of test metrics over `n_episodes` support sets.

    Features (N, D) / (M, D) with labels in [0, num_classes) (inferred as the largest label + 1 when None).
    Each episode samples `n_shot` rows per class with `sample_episode` (generator seeded by (seed, n_shot),
    so a shot's episodes do not depend on the other shots), fits `fit` on them (`fit_kwargs` go to the
    probe; `linear_sweep` selects C on a hold-out of the support set, or uses its default C at one shot) and
    scores all test rows with `metric_fn` (default: balanced accuracy and accuracy). Returns a DataFrame
    with one row per shot: `fit`, `shot`, `n_runs`, `n_train`, then `<metric>_mean` and `<metric>_std`
    (sample std); with `return_episodes`, also the per-episode table. Every shot is checked against the
    class counts before any fitting, so an infeasible shot (a class with fewer rows, see `cap`) fails at once.
    """
    splits, num_classes = _prepare(train_x, train_y, test_x, test_y, num_classes, fit)
    if n_episodes < 1:
        raise ProbeError(f"n_episodes must be >= 1, got {n_episodes}")
    (tx, ty), (qx, qy) = splits["train"], splits["test"]
    labels = ty.cpu().numpy()
    counts = np.bincount(labels, minlength=num_classes)
    infeasible = sorted(s for s in shots if s < 1 or (not cap and s > counts.min()))
    if infeasible:
        raise ProbeError(
            f"shots {infeasible} cannot be drawn: the smallest class has {counts.min()} training rows "
            f"(class {int(counts.argmin())}); drop those shots, or set "
            "probe.options.cap=true (cap=True in Python)"
        )
    metric_fn = metric_fn or default_metrics
    y_true = qy.cpu().numpy()
    rows: list[dict[str, Any]] = []
    for n_shot in sorted(set(shots)):
        rng = np.random.default_rng((seed, n_shot))
        for episode in range(n_episodes):
            idx = sample_episode(labels, n_shot, num_classes, rng, cap=cap)
            index = torch.as_tensor(idx, device=tx.device)
            proba = fit_predict(
                fit, tx[index], ty[index], qx, num_classes=num_classes, **dict(fit_kwargs or {})
            )
            values = _metric_values(metric_fn(y_true, proba))
            rows.append({"shot": n_shot, "episode": episode, "n_train": len(idx), **values})
        logger.info("%s %d-shot: %d episodes done", fit, n_shot, n_episodes)
    episodes = pd.DataFrame(rows)
    metrics = [c for c in episodes.columns if c not in ("shot", "episode", "n_train")]
    summary = _summarise(episodes, ["shot"], metrics)
    summary.insert(0, "fit", fit)
    return (summary, episodes) if return_episodes else summary


def label_efficiency(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    val_x: ArrayLike | None = None,
    val_y: ArrayLike | None = None,
    num_classes: int | None = None,
    fractions: Sequence[float] = (0.01, 0.1, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    fit: Fit = "linear_sweep",
    metric_fn: MetricFn | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    return_runs: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Label-efficiency curve: test metrics when training on stratified fractions of the training split.

    For each fraction and each of `seeds`, `stratified_subsample` keeps round(fraction * n_c) rows of every
    class (at least one), drawn with a generator seeded by (seed, seeds[i], fraction index); the probe `fit`
    is trained on them (`linear_sweep` selects C on the full `val_x`/`val_y` when given, else on a hold-out of
    the subsample) and all test rows are scored with `metric_fn`. Returns one row per fraction: `fit`,
    `fraction`, `n_runs`, `n_train` (mean rows used), `<metric>_mean`, `<metric>_std` (sample std over
    seeds); with `return_runs`, also the per-run table. Raises `ProbeError` on invalid input.
    """
    if (val_x is None) != (val_y is None):
        raise ProbeError("pass both val_x and val_y, or neither")
    extra = {"val": (val_x, val_y)} if val_x is not None else None
    splits, num_classes = _prepare(train_x, train_y, test_x, test_y, num_classes, fit, extra)
    if not seeds:
        raise ProbeError("seeds must not be empty")
    for f in fractions:
        if not 0 < f <= 1:
            raise ProbeError(f"fractions must be in (0, 1], got {f}")
    (tx, ty), (qx, qy) = splits["train"], splits["test"]
    labels = ty.cpu().numpy()
    val = splits.get("val")
    metric_fn = metric_fn or default_metrics
    y_true = qy.cpu().numpy()
    rows: list[dict[str, Any]] = []
    for i, fraction in enumerate(fractions):
        for s in seeds:
            idx = stratified_subsample(labels, fraction, np.random.default_rng((seed, s, i)))
            index = torch.as_tensor(idx, device=tx.device)
            proba = fit_predict(
                fit, tx[index], ty[index], qx, num_classes=num_classes, val=val, **dict(fit_kwargs or {})
            )
            values = _metric_values(metric_fn(y_true, proba))
            rows.append({"fraction": float(fraction), "seed": s, "n_train": len(idx), **values})
        logger.info("%s fraction %g: %d seeds done", fit, fraction, len(seeds))
    runs = pd.DataFrame(rows)
    metrics = [c for c in runs.columns if c not in ("fraction", "seed", "n_train")]
    summary = _summarise(runs, ["fraction"], metrics)
    summary.insert(0, "fit", fit)
    return (summary, runs) if return_runs else summary
