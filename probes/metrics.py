"""Classification metrics for probes: point estimates, stratified bootstrap intervals and subgroup tables.

Every probe (linear, kNN, few-shot) ends in per-class probabilities `proba` of shape (N, C) and integer gold
labels `y_true` of shape (N,) in [0, C); multi-label probes end in per-label probabilities against (N, C)
targets with NaN where unknown (`multilabel_metrics`, `multilabel_bootstrap_ci`, at the end).
The point estimates come from scikit-learn; a metric that cannot be computed is reported in
`MetricResult.missing` with the reason, never as 0 and never as a silent NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from panderm.errors import ProbeError

__all__ = [
    "BINARY_METRICS",
    "LOWER_IS_BETTER",
    "MULTICLASS_METRICS",
    "MULTILABEL_METRICS",
    "BootstrapResult",
    "MetricResult",
    "MultiLabelBootstrapResult",
    "MultiLabelResult",
    "ReliabilityBins",
    "bootstrap_ci",
    "check_multilabel",
    "check_probabilities",
    "classification_metrics",
    "expected_calibration_error",
    "metric_names",
    "multilabel_bootstrap_ci",
    "multilabel_bootstrap_indices",
    "multilabel_metrics",
    "reliability_bins",
    "stratified_bootstrap_indices",
    "subgroup_gaps",
    "subgroup_metrics",
]

BINARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1_weighted",
    "f1_macro",
    "auroc",
    "aupr_macro",
    "kappa_quadratic",
    "ece",
)
MULTICLASS_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1_weighted",
    "f1_macro",
    "auroc_macro_ovr",
    "auroc_macro_ovo",
    "aupr_macro",
    "kappa_quadratic",
    "ece",
)
LOWER_IS_BETTER = frozenset({"ece"})
ECE_BINS = 15
# Row sums may be off by float16 rounding (relative 2**-11 per entry, so < 5e-4 in total) and no more.
SUM_TOLERANCE = 1e-3
_SHOW = 5  # how many offending rows an error message lists


def metric_names(n_classes: int) -> tuple[str, ...]:
    """The metric names `classification_metrics` reports for `n_classes` classes, in table order."""
    return BINARY_METRICS if n_classes == 2 else MULTICLASS_METRICS


@dataclass
class MetricResult:
    """Computed metrics (`values`, name -> float) and the ones that could not be computed (`missing`,
    name -> reason); `n` is the number of samples scored."""

    values: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    n: int = 0

    def __getitem__(self, name: str) -> float:
        if name in self.values:
            return self.values[name]
        if name in self.missing:
            raise KeyError(f"metric {name!r} is missing: {self.missing[name]}")
        raise KeyError(f"no metric named {name!r}; known: {sorted([*self.values, *self.missing])}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: {"n": ..., "values": {...}, "missing": {...}}."""
        return {"n": self.n, "values": dict(self.values), "missing": dict(self.missing)}


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:_SHOW])
    return f"{len(rows)} row(s) (0-based: {shown}{', ...' if len(rows) > _SHOW else ''})"


def check_probabilities(
    y_true: Any, proba: Any, *, classes: Sequence[Any] | None = None, tolerance: float = SUM_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; return `(y, p)` as int64 (N,) and float64 (N, C) arrays.

    `y_true` holds integer labels in [0, C); `proba` holds one row of non-negative probabilities per sample,
    each summing to 1 within `tolerance`. Values are returned as given (not renormalised, which would break
    exact score ties such as kNN vote fractions). Every problem is collected before raising `ProbeError`.
    """
    p = np.asarray(proba)
    if p.ndim != 2:
        raise ProbeError(f"proba must be a 2-D (samples, classes) array, got shape {p.shape}")
    if not (np.issubdtype(p.dtype, np.number) or p.dtype == bool):
        raise ProbeError(f"proba must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)
    n, n_classes = p.shape
    y = np.asarray(y_true)
    problems: list[str] = []
    if n == 0:
        problems.append("no samples: proba has 0 rows")
    if n_classes < 2:
        problems.append(f"proba has {n_classes} column(s); a classifier needs at least 2 classes")
    if classes is not None and len(classes) != n_classes:
        problems.append(f"classes has {len(classes)} names but proba has {n_classes} columns")
    if y.ndim != 1:
        problems.append(f"y_true must be 1-D, got shape {y.shape}")
    elif len(y) != n:
        problems.append(f"length mismatch: y_true has {len(y)} labels but proba has {n} rows")
    else:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            problems.append(f"y_true must hold integer labels, got dtype {y.dtype}")
            y = None
        else:
            yf = y.astype(np.float64)
            bad = ~np.isfinite(yf) | (yf != np.round(yf))
            if bad.any():
                problems.append(f"y_true has non-integer labels in {_rows(bad)}")
            out = ~bad & ((yf < 0) | (yf >= n_classes))
            if out.any():
                values = sorted({int(v) for v in yf[out]})[:_SHOW]
                problems.append(
                    f"y_true has labels outside [0, {n_classes}) in {_rows(out)}: values {values}"
                )
    finite = np.isfinite(p)
    if not finite.all():
        problems.append(f"proba has NaN or infinite values in {_rows(~finite.all(axis=1))}")
    negative = finite & (p < 0)
    if negative.any():
        problems.append(f"proba has negative values in {_rows(negative.any(axis=1))}")
    sums = np.where(finite, p, 0.0).sum(axis=1)
    off = finite.all(axis=1) & (np.abs(sums - 1.0) > tolerance)
    if off.any():
        worst = float(sums[off][np.argmax(np.abs(sums[off] - 1.0))])
        problems.append(
            f"proba rows do not sum to 1 (tolerance {tolerance}) in {_rows(off)}; worst sum {worst:.6g} "
            "(pass probabilities, e.g. softmax of logits, not logits or scores)"
        )
    if problems:
        raise ProbeError("invalid probe outputs:\n  " + "\n  ".join(problems))
    return y.astype(np.int64), p


# ----------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label reliability table: `edges` (n_bins+1,), and per bin the sample `count`, mean `confidence`
    and `accuracy` (NaN where a bin is empty)."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        filled = self.count > 0
        weights = self.count[filled] / self.count.sum()
        return float(np.sum(weights * np.abs(self.accuracy[filled] - self.confidence[filled])))


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (lo, hi] over equal-width edges; comparing against the same edge array keeps ties exact.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(y_true: Any, proba: Any, *, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin samples by their top probability into `n_bins` equal-width bins (lo, hi] over [0, 1].

    Raises `ProbeError` on invalid inputs (see `check_probabilities`) or `n_bins < 1`.
    """
    if int(n_bins) < 1:
        raise ProbeError(f"n_bins must be at least 1, got {n_bins}")
    y, p = check_probabilities(y_true, proba)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = _bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), count.astype(np.int64), conf, acc)


def expected_calibration_error(y_true: Any, proba: Any, *, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: sum over bins of |bin| / N * |accuracy - mean confidence|."""
    # scikit-learn has per-class calibration curves but no top-label ECE, so this one is written here.
    return reliability_bins(y_true, proba, n_bins=n_bins).ece


# ---------------------------------------------------------------------------------------------- point values


def _class_list(labels: Sequence[int], classes: Sequence[Any] | None) -> str:
    if classes is None:
        return ", ".join(str(int(k)) for k in labels)
    return ", ".join(f"{int(k)} ({classes[int(k)]!r})" for k in labels)


def _quiet(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(fn(*args, **kwargs))


def classification_metrics(y_true: Any, proba: Any, *, classes: Sequence[Any] | None = None) -> MetricResult:
    """Score probabilities `proba` (N, C) against integer labels `y_true` (N,) in [0, C).

    Predictions are the arg-max class. Reports accuracy, balanced_accuracy, f1_weighted, f1_macro (over the
    classes present in gold or predictions, as scikit-learn does), AUROC (`auroc` on the class-1 probability
    for C == 2; `auroc_macro_ovr` and `auroc_macro_ovo` otherwise), aupr_macro (macro average precision; for
    C == 2 the average precision of class 1), kappa_quadratic (quadratic-weighted Cohen's kappa, meaningful
    for ordinal labels) and ece (15-bin top-label calibration error). Metrics that are undefined for these
    data go to `missing` with the reason. `classes` (C names) only labels those reasons.
    Raises `ProbeError` on invalid inputs.
    """
    y, p = check_probabilities(y_true, proba, classes=classes)
    n, n_classes = p.shape
    pred = p.argmax(axis=1)
    labels = np.arange(n_classes)
    present = np.bincount(y, minlength=n_classes) > 0
    absent = labels[~present]
    result = MetricResult(n=n)
    values, missing = result.values, result.missing

    values["accuracy"] = _quiet(accuracy_score, y, pred)
    values["balanced_accuracy"] = _quiet(balanced_accuracy_score, y, pred)
    values["f1_weighted"] = _quiet(f1_score, y, pred, average="weighted", zero_division=0)
    values["f1_macro"] = _quiet(f1_score, y, pred, average="macro", zero_division=0)

    if n_classes == 2:
        if absent.size:
            only = _class_list(labels[present], classes)
            missing["auroc"] = f"only class {only} present in y_true; AUROC needs both classes"
        else:
            values["auroc"] = _quiet(roc_auc_score, y, p[:, 1])
        if not present[1]:
            missing["aupr_macro"] = (
                f"no sample of the positive class {_class_list([1], classes)} in y_true; "
                "average precision is undefined"
            )
        else:
            values["aupr_macro"] = _quiet(average_precision_score, y == 1, p[:, 1])
    elif absent.size:
        why = f"classes absent from y_true: {_class_list(absent, classes)}"
        missing["auroc_macro_ovr"] = f"{why}; macro AUROC needs every class present"
        missing["auroc_macro_ovo"] = f"{why}; macro AUROC needs every class present"
        missing["aupr_macro"] = f"{why}; their average precision is undefined"
    else:
        # Built from binary AUROCs (the same definitions as roc_auc_score's multi_class="ovr"/"ovo") because
        # that call rejects rows whose sums carry float16 rounding, and renormalising would break score ties.
        values["auroc_macro_ovr"] = float(np.mean([_quiet(roc_auc_score, y == k, p[:, k]) for k in labels]))
        pairs = []
        for a in range(n_classes):
            for b in range(a + 1, n_classes):
                m = (y == a) | (y == b)
                ab = _quiet(roc_auc_score, y[m] == a, p[m, a]) + _quiet(roc_auc_score, y[m] == b, p[m, b])
                pairs.append(ab / 2)
        values["auroc_macro_ovo"] = float(np.mean(pairs))
        onehot = labels[None, :] == y[:, None]
        values["aupr_macro"] = _quiet(average_precision_score, onehot, p, average="macro")

    kappa = _quiet(cohen_kappa_score, y, pred, weights="quadratic", labels=labels)
    if np.isfinite(kappa):
        values["kappa_quadratic"] = kappa
    else:
        missing["kappa_quadratic"] = (
            "chance agreement is total (gold labels and predictions are one and the same single class), "
            "so kappa is 0/0"
        )
    values["ece"] = reliability_bins(y, p).ece
    order = metric_names(n_classes)
    result.values = {k: values[k] for k in order if k in values}
    result.missing = {k: missing[k] for k in order if k in missing}
    return result


# ----------------------------------------------------------------------------------------------- bootstrap
#
# The bootstrap scores 1000 resamples at once. A resample is a vector of multiplicities (how often each
# sample was drawn), so every metric becomes a weighted sum over the original samples: confusion matrices and
# calibration bins are weighted group sums, and AUROC / average precision walk the samples pre-sorted once by
# score with weighted cumulative sums (ties handled by grouping equal scores). scikit-learn would need one
# call per resample, metric and class pair (tens of thousands of calls); the tests check these weighted forms
# against scikit-learn on explicitly resampled data.


def _group_sum(weights: np.ndarray, keys: np.ndarray, n_keys: int) -> np.ndarray:
    """Sum the columns of `weights` (B, N) that share a key; returns (B, n_keys)."""
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    out = np.zeros((weights.shape[0], n_keys))
    out[:, uniq] = np.add.reduceat(weights[:, order], starts, axis=1)
    return out


class _RankPlan:
    """Samples `subset` sorted by descending `score`, with groups of tied scores; `positive` marks class 1."""

    def __init__(self, score: np.ndarray, positive: np.ndarray, subset: np.ndarray) -> None:
        order = np.argsort(-score[subset], kind="stable")
        self.index = subset[order]
        sorted_score = score[self.index]
        self.starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
        self.positive = positive[self.index]

    def _sums(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[:, self.index]
        if not self.index.size:
            return w, w
        pos = np.add.reduceat(w * self.positive, self.starts, axis=1)
        neg = np.add.reduceat(w * ~self.positive, self.starts, axis=1)
        return pos, neg

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        pos, neg = self._sums(weights)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        below = n_neg[:, None] - np.cumsum(neg, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(pos * (below + 0.5 * neg), axis=1) / (n_pos * n_neg)

    def average_precision(self, weights: np.ndarray) -> np.ndarray:
        pos, neg = self._sums(weights)
        tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
            return np.sum(pos * precision, axis=1) / pos.sum(axis=1)


class WeightedScorer:
    """All metrics of `classification_metrics` for many weightings of one data set at once."""

    def __init__(self, y: np.ndarray, p: np.ndarray, names: Sequence[str], n_bins: int = ECE_BINS) -> None:
        self.y, self.names, self.n_bins = y, set(names), n_bins
        n, self.n_classes = p.shape
        c = self.n_classes
        pred = p.argmax(axis=1)
        self.cell = y * c + pred
        confidence = p.max(axis=1)
        self.correct = (pred == y).astype(np.float64)
        self.confidence = confidence
        self.bins = _bin_index(confidence, n_bins)
        everyone = np.arange(n)
        self.ovr = [_RankPlan(p[:, k], y == k, everyone) for k in range(c)]
        self.ovo: list[tuple[_RankPlan, _RankPlan]] = []
        if "auroc_macro_ovo" in self.names:
            for a in range(c):
                for b in range(a + 1, c):
                    pair = np.flatnonzero((y == a) | (y == b))
                    self.ovo.append((_RankPlan(p[:, a], y == a, pair), _RankPlan(p[:, b], y == b, pair)))

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        c = self.n_classes
        total = weights.sum(axis=1)
        confusion = _group_sum(weights, self.cell, c * c).reshape(-1, c, c)
        diag = np.diagonal(confusion, axis1=1, axis2=2)
        rows, cols = confusion.sum(axis=2), confusion.sum(axis=1)
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            out["accuracy"] = diag.sum(axis=1) / total
            has_true = rows > 0
            recall = np.where(has_true, diag / np.where(has_true, rows, 1), 0.0)
            out["balanced_accuracy"] = recall.sum(axis=1) / has_true.sum(axis=1)
            seen = rows + cols > 0
            f1 = np.where(seen, 2 * diag / np.where(seen, rows + cols, 1), 0.0)
            out["f1_macro"] = f1.sum(axis=1) / seen.sum(axis=1)
            out["f1_weighted"] = (f1 * rows).sum(axis=1) / rows.sum(axis=1)
            grid = np.arange(c, dtype=np.float64)
            penalty = (grid[:, None] - grid[None, :]) ** 2
            expected = rows[:, :, None] * cols[:, None, :] / total[:, None, None]
            chance = (penalty * expected).sum(axis=(1, 2))
            observed = (penalty * confusion).sum(axis=(1, 2))
            out["kappa_quadratic"] = np.where(chance > 0, 1.0 - observed / chance, np.nan)
            hits = _group_sum(weights * self.correct, self.bins, self.n_bins)
            conf = _group_sum(weights * self.confidence, self.bins, self.n_bins)
            out["ece"] = np.abs(hits - conf).sum(axis=1) / total
        if c == 2:
            if "auroc" in self.names:
                out["auroc"] = self.ovr[1].auroc(weights)
            if "aupr_macro" in self.names:
                out["aupr_macro"] = self.ovr[1].average_precision(weights)
        else:
            if "auroc_macro_ovr" in self.names:
                out["auroc_macro_ovr"] = np.mean([plan.auroc(weights) for plan in self.ovr], axis=0)
            if "auroc_macro_ovo" in self.names:
                pairs = [(a.auroc(weights) + b.auroc(weights)) / 2 for a, b in self.ovo]
                out["auroc_macro_ovo"] = np.mean(pairs, axis=0)
            if "aupr_macro" in self.names:
                out["aupr_macro"] = np.mean([plan.average_precision(weights) for plan in self.ovr], axis=0)
        return {k: v for k, v in out.items() if k in self.names}


class _StratifiedSampler:
    """Draws bootstrap resamples that keep every class's count: sample i's class block is resampled alone."""

    def __init__(self, y: np.ndarray, seed: int) -> None:
        self.n = len(y)
        self.order = np.argsort(y, kind="stable")
        counts = np.bincount(y)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        sorted_y = y[self.order]
        self.block_start, self.block_size = starts[sorted_y], counts[sorted_y]
        self.rng = np.random.default_rng(seed)

    def draw(self, n_resamples: int) -> np.ndarray:
        """Indices (n_resamples, N); one uniform draw per slot, so chunked and whole draws agree."""
        u = self.rng.random((n_resamples, self.n))
        offset = np.minimum((u * self.block_size).astype(np.int64), self.block_size - 1)
        return self.order[self.block_start + offset]

    def counts(self, indices: np.ndarray) -> np.ndarray:
        """Multiplicity of each sample in each resample, (n_resamples, N) float64."""
        b = indices.shape[0]
        flat = (np.arange(b)[:, None] * self.n + indices).ravel()
        return np.bincount(flat, minlength=b * self.n).reshape(b, self.n).astype(np.float64)


def stratified_bootstrap_indices(y_true: Any, n_resamples: int, *, seed: int = 0) -> np.ndarray:
    """The resamples `bootstrap_ci` uses for this `seed`: indices (n_resamples, N) into the N samples, each
    row drawn with replacement within every class so class counts are kept."""
    y = np.asarray(y_true).astype(np.int64)
    if y.ndim != 1 or (y < 0).any():
        raise ProbeError("y_true must be a 1-D array of non-negative integer labels")
    return _StratifiedSampler(y, seed).draw(int(n_resamples))


class BootstrapResult(dict):
    """Metric name -> (low, high) percentile interval, plus `n_used` (name -> resamples where the metric was
    defined), `n_resamples`, `level` and `seed`."""

    def __init__(
        self,
        intervals: dict[str, tuple[float, float]],
        *,
        n_used: dict[str, int],
        n_resamples: int,
        level: float,
        seed: int,
    ) -> None:
        super().__init__(intervals)
        self.n_used, self.n_resamples, self.level, self.seed = n_used, n_resamples, level, seed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the intervals as two-element lists."""
        return {
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.items()},
            "n_used": dict(self.n_used),
            "n_resamples": self.n_resamples,
            "level": self.level,
            "seed": self.seed,
            "method": "stratified bootstrap, percentile intervals",
        }


def _finite(chunks: list[np.ndarray]) -> np.ndarray:
    values = np.concatenate(chunks)
    return values[np.isfinite(values)]


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    y_true: Any, proba: Any, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> BootstrapResult:
    """Stratified bootstrap percentile intervals for every metric `classification_metrics` can compute here.

    Each resample draws, within every class, as many samples as that class has (with replacement). Resamples
    where a metric is undefined are dropped; `result.n_used[name]` says how many were used. A metric with no
    usable resample is left out. Same inputs and `seed` give identical intervals. Vectorised over resamples:
    1000 resamples of 2000 samples x 7 classes take a few seconds. Raises `ProbeError` on invalid inputs,
    `n_resamples < 1` or `level` outside (0, 1).
    """
    if int(n_resamples) < 1:
        raise ProbeError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ProbeError(f"level must lie strictly between 0 and 1, got {level}")
    point = classification_metrics(y_true, proba)
    y, p = check_probabilities(y_true, proba)
    names = list(point.values)
    scorer = WeightedScorer(y, p, names)
    sampler = _StratifiedSampler(y, seed)
    chunk = max(1, min(int(n_resamples), 2_000_000 // max(len(y), 1)))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        scores = scorer(sampler.counts(sampler.draw(b)))
        for name in names:
            collected[name].append(scores[name])
        done += b
    intervals: dict[str, tuple[float, float]] = {}
    n_used: dict[str, int] = {}
    for name in names:
        values = _finite(collected[name])
        n_used[name] = int(values.size)
        if values.size:
            intervals[name] = _percentile_interval(values, level)
    return BootstrapResult(intervals, n_used=n_used, n_resamples=int(n_resamples), level=level, seed=seed)


def paired_bootstrap_difference(
    y_true: Any,
    proba_a: Any,
    proba_b: Any,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Difference (a - b) of every metric two models reach on the same test images, with a paired stratified
    bootstrap percentile interval: each resample draws the images once (within each class) and scores both
    models on that draw, so what the images have in common cancels. Returns metric name ->
    ``{"difference", "low", "high", "p_not_above_0"}`` (the last: the share of resamples where a - b <= 0).
    Raises `ProbeError` for invalid or mismatched inputs."""
    y, p_a = check_probabilities(y_true, proba_a)
    _, p_b = check_probabilities(y_true, proba_b)
    if p_a.shape != p_b.shape:
        raise ProbeError(f"paired models must score the same images and classes: {p_a.shape} vs {p_b.shape}")
    point_a, point_b = classification_metrics(y, p_a).values, classification_metrics(y, p_b).values
    names = [n for n in point_a if n in point_b]
    scorers = (WeightedScorer(y, p_a, names), WeightedScorer(y, p_b, names))
    sampler = _StratifiedSampler(y, seed)
    chunk = max(1, min(int(n_resamples), 2_000_000 // max(len(y), 1)))
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    done = 0
    while done < n_resamples:
        counts = sampler.counts(sampler.draw(min(chunk, n_resamples - done)))
        a, b = scorers[0](counts), scorers[1](counts)
        for name in names:
            diffs[name].append(a[name] - b[name])
        done += len(counts)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = _finite(diffs[name])
        if not values.size:
            continue
        lo, hi = _percentile_interval(values, level)
        out[name] = {
            "difference": float(point_a[name] - point_b[name]),
            "low": float(lo),
            "high": float(hi),
            "p_not_above_0": float((values <= 0).mean()),
        }
    return out


# ------------------------------------------------------------------------------------------------ subgroups


def subgroup_metrics(y_true: Any, proba: Any, groups: Any, *, column: str) -> pd.DataFrame:
    """Every metric per value of `groups` (N,), e.g. Fitzpatrick type or sex; `column` names that attribute.

    Returns one row per subgroup (sorted by value; samples without a value form the group "(missing)") with
    columns `column`, `n`, every metric name (NaN where the metric is missing for that subgroup) and `missing`
    ("metric: reason; ..." or ""). `df.attrs["column"]` records `column` for `subgroup_gaps`.
    Raises `ProbeError` on invalid inputs or when `groups` has the wrong length.
    """
    y, p = check_probabilities(y_true, proba)
    g = pd.Series(np.asarray(groups, dtype=object) if np.ndim(groups) else groups)
    if g.ndim != 1 or len(g) != len(y):
        raise ProbeError(f"groups for {column!r} must hold one value per sample ({len(y)}), got {len(g)}")
    if column in {"n", "missing", *MULTICLASS_METRICS, *BINARY_METRICS}:
        raise ProbeError(f"column name {column!r} clashes with a metric table column; rename it")
    g = g.where(g.notna(), "(missing)")
    names = metric_names(p.shape[1])
    keys = list(pd.unique(g))
    try:
        keys = sorted(keys)
    except TypeError:
        keys = sorted(keys, key=str)
    records = []
    values = g.to_numpy()
    for key in keys:
        mask = values == key
        result = classification_metrics(y[mask], p[mask])
        row: dict[str, Any] = {column: key, "n": int(mask.sum())}
        row.update({name: result.values.get(name, np.nan) for name in names})
        row["missing"] = "; ".join(f"{k}: {v}" for k, v in result.missing.items())
        records.append(row)
    df = pd.DataFrame.from_records(records, columns=[column, "n", *names, "missing"])
    df.attrs["column"] = column
    return df


def subgroup_gaps(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Best and worst subgroup per metric of a `subgroup_metrics` table and the gap between them.

    Returns metric -> {"best": group, "worst": group, "gap": float >= 0}; for `ece` lower is better.
    Missing (NaN) entries are ignored; a metric defined for fewer than two subgroups is left out.
    """
    column = df.attrs.get("column", df.columns[0])
    gaps: dict[str, dict[str, Any]] = {}
    for name in df.columns:
        if name in {column, "n", "missing"}:
            continue
        scores = pd.to_numeric(df[name], errors="coerce")
        defined = scores.notna()
        if defined.sum() < 2:
            continue
        s, groups = scores[defined].to_numpy(), df.loc[defined, column].to_list()
        hi, lo = int(np.argmax(s)), int(np.argmin(s))
        best, worst = (lo, hi) if name in LOWER_IS_BETTER else (hi, lo)
        gaps[name] = {"best": groups[best], "worst": groups[worst], "gap": float(s[hi] - s[lo])}
    return gaps


# ---------------------------------------------------------------------------------------------- multi-label
#
# Multi-label probes (ChestX-ray14, CheXpert, ChestMNIST) give one independent probability per label:
# `proba` (N, C) in [0, 1] (rows need not sum to 1) against targets `y_true` (N, C) of 1/0 with NaN where the
# label is unknown for that image (CheXpert's "ignore" policy). Each label is scored on its known rows only.

MULTILABEL_METRICS = ("auroc_macro", "auroc_micro", "ap_macro", "ap_micro")


@dataclass
class MultiLabelResult(MetricResult):
    """`MetricResult` of a multi-label task: `values`/`missing` hold the summary metrics (MULTILABEL_METRICS)
    and `per_label` maps each class name to {"auroc", "ap", "n_pos", "n_neg", "n_unknown"} (None where
    undefined; the reason is in `missing` under ``auroc:<name>`` / ``ap:<name>``)."""

    per_label: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "per_label": {k: dict(v) for k, v in self.per_label.items()}}


def check_multilabel(
    y_true: Any, proba: Any, *, classes: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate multi-label targets and probabilities; return both as float64 (N, C) arrays.

    `y_true` holds 1/0 or NaN (unknown), `proba` finite values in [0, 1] of the same shape; `classes`
    (C names) must match the width. Every problem is collected before raising `ProbeError`."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64)
    problems: list[str] = []
    if p.ndim != 2 or y.shape != p.shape:
        raise ProbeError(f"multi-label y_true {y.shape} and proba {p.shape} must both be (samples, labels)")
    if len(p) == 0:
        problems.append("no samples: proba has 0 rows")
    if classes is not None and len(classes) != p.shape[1]:
        problems.append(f"classes has {len(classes)} names but proba has {p.shape[1]} columns")
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        problems.append(f"y_true must be 1, 0 or NaN (unknown); other values in {_rows(bad.any(axis=1))}")
    off = ~np.isfinite(p) | (p < 0) | (p > 1)
    if off.any():
        problems.append(f"proba must be finite probabilities in [0, 1]; not so in {_rows(off.any(axis=1))}")
    if problems:
        raise ProbeError("invalid multi-label probe outputs:\n  " + "\n  ".join(problems))
    return y, p


def multilabel_metrics(y_true: Any, proba: Any, *, classes: Sequence[Any] | None = None) -> MultiLabelResult:
    """Score multi-label probabilities `proba` (N, C) against targets `y_true` (N, C) of 1/0/NaN.

    Per label (rows with NaN for that label left out): AUROC and average precision (scikit-learn's
    `roc_auc_score` / `average_precision_score`). Summary: `auroc_macro` and `ap_macro`, the mean over the
    labels where the metric is defined (equal to scikit-learn's ``average="macro"`` when every label is);
    `auroc_micro` and `ap_micro` over all known (image, label) cells pooled (scikit-learn's
    ``average="micro"``). A label with one class only among its known rows has no AUROC (and without a
    positive, no AP): it is reported in `missing` with the reason and left out of the macro mean. `classes`
    names the labels (default "0".."C-1"). Raises `ProbeError` on invalid inputs.
    """
    y, p = check_multilabel(y_true, proba, classes=classes)
    names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(p.shape[1])]
    result = MultiLabelResult(n=len(y))
    aurocs, aps = [], []
    for k, name in enumerate(names):
        known = ~np.isnan(y[:, k])
        truth = y[known, k] == 1
        n_pos, n_neg = int(truth.sum()), int((~truth).sum())
        entry: dict[str, Any] = {"auroc": None, "ap": None, "n_pos": n_pos, "n_neg": n_neg}
        entry["n_unknown"] = int((~known).sum())
        unknown = f" ({entry['n_unknown']} unknown left out)" if entry["n_unknown"] else ""
        if n_pos and n_neg:
            entry["auroc"] = _quiet(roc_auc_score, truth, p[known, k])
            aurocs.append(entry["auroc"])
        else:
            only = "positives" if n_pos else "negatives"
            result.missing[f"auroc:{name}"] = (
                f"label {name!r}: only {only} ({n_pos + n_neg}) among the known rows{unknown}; "
                "AUROC needs both"
            )
        if n_pos:
            entry["ap"] = _quiet(average_precision_score, truth, p[known, k])
            aps.append(entry["ap"])
        else:
            result.missing[f"ap:{name}"] = (
                f"label {name!r}: no positive among the known rows{unknown}; average precision is undefined"
            )
        result.per_label[name] = entry
    cells = ~np.isnan(y)
    pooled, scores = y[cells] == 1, p[cells]
    for metric, per_label, fn in (("auroc", aurocs, roc_auc_score), ("ap", aps, average_precision_score)):
        if per_label:
            result.values[f"{metric}_macro"] = float(np.mean(per_label))
        else:
            result.missing[f"{metric}_macro"] = f"no label has a defined {metric.upper()}"
        defined = pooled.any() and (metric == "ap" or not pooled.all())
        if defined:
            result.values[f"{metric}_micro"] = _quiet(fn, pooled, scores)
        else:
            result.missing[f"{metric}_micro"] = (
                f"the pooled known cells lack a class; {metric.upper()} undefined"
            )
    result.values = {k: result.values[k] for k in MULTILABEL_METRICS if k in result.values}
    return result


class MultiLabelBootstrapResult(BootstrapResult):
    """`BootstrapResult` of `multilabel_bootstrap_ci` (images resampled without strata)."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "method": "bootstrap over images, percentile intervals"}


def multilabel_bootstrap_indices(n: int, n_resamples: int, *, seed: int = 0) -> np.ndarray:
    """The resamples `multilabel_bootstrap_ci` uses: indices (n_resamples, n) drawn with replacement over
    all images (a multi-label image has no single class to stratify by)."""
    return _StratifiedSampler(np.zeros(int(n), np.int64), seed).draw(int(n_resamples))


def multilabel_bootstrap_ci(
    y_true: Any,
    proba: Any,
    *,
    classes: Sequence[Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Bootstrap percentile intervals of `auroc_macro`, `auroc_micro` and each label's AUROC
    (``auroc:<name>``).

    Images are resampled with replacement (`multilabel_bootstrap_indices`) and scored with the weighted
    AUROC of `bootstrap_ci` (each label on its known rows). The macro mean is over the labels whose AUROC is
    defined on the full test set; a resample where one of them lacks a class is dropped for that metric
    (`n_used` counts the resamples kept). Raises `ProbeError` on invalid inputs or arguments.
    """
    if int(n_resamples) < 1:
        raise ProbeError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ProbeError(f"level must lie strictly between 0 and 1, got {level}")
    y, p = check_multilabel(y_true, proba, classes=classes)
    point = multilabel_metrics(y, p, classes=classes)
    n, c = y.shape
    plans = {
        f"auroc:{name}": _RankPlan(p[:, k], y[:, k] == 1, np.flatnonzero(~np.isnan(y[:, k])))
        for k, name in enumerate(point.per_label)
        if point.per_label[name]["auroc"] is not None
    }
    cells = np.flatnonzero(~np.isnan(y).ravel())
    micro = _RankPlan(p.ravel(), y.ravel() == 1, cells) if "auroc_micro" in point.values else None
    sampler = _StratifiedSampler(np.zeros(n, np.int64), seed)
    chunk = max(1, min(int(n_resamples), 2_000_000 // max(n * c, 1)))
    collected: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < n_resamples:
        weights = sampler.counts(sampler.draw(min(chunk, n_resamples - done)))
        scores = {name: plan.auroc(weights) for name, plan in plans.items()}
        if plans:
            scores["auroc_macro"] = np.mean(list(scores.values()), axis=0)  # NaN if any label is undefined
        if micro is not None:
            scores["auroc_micro"] = micro.auroc(np.repeat(weights, c, axis=1))
        for name, values in scores.items():
            collected.setdefault(name, []).append(values)
        done += len(weights)
    intervals: dict[str, tuple[float, float]] = {}
    n_used: dict[str, int] = {}
    for name in sorted(collected, key=lambda k: (":" in k, k)):
        values = _finite(collected[name])
        n_used[name] = int(values.size)
        if values.size:
            intervals[name] = _percentile_interval(values, level)
    return MultiLabelBootstrapResult(
        intervals, n_used=n_used, n_resamples=int(n_resamples), level=level, seed=seed
    )
