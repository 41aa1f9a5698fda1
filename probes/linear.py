"""Linear probes on frozen features: the PanDerm/UNI parity recipe and our robust C-sweep recipe.

Both fit a multinomial logistic regression (`nn.Linear(D, C)` + softmax) with full-batch
`torch.optim.LBFGS` (strong Wolfe line search) in float32 on the device the training features live on,
and return a `LinearProbe` whose `predict_proba` gives numpy float64 probabilities (M, C).

- `fit_linear_panderm` ("linear_panderm" v1) reproduces the PanDerm/UNI protocol exactly: raw features,
  zero-initialised weight and bias, `LBFGS(lr=1, max_iter=1000)` with torch's default tolerances and history,
  and loss = mean cross-entropy + (0.5 / C_reg) * ||W||_2 with C_reg = D * num_classes / 100. Note the
  penalty is the L2 *norm* of the weight (not its square) and the bias is not penalised.
- `fit_linear_sweep` ("linear_sweep" v1) standardises features with training statistics and minimises
  mean cross-entropy + ||W||^2 / (2 C N), which is scikit-learn's `LogisticRegression(C)` objective divided by
  N, so a fit at a given C matches scikit-learn's. C is picked on a log grid by a validation metric (a seeded,
  stratified 20 % hold-out of train when no validation split is given; the grid is extended by up to three
  decades past an end that wins), then refit on train + val. L-BFGS
  runs preconditioned by the eigendecomposition of the feature covariance (a change of variables with the
  same optimum), which cuts the iterations several-fold on correlated features.

This module also holds the input validation every probe shares (`validate_probe_inputs`): feature/label
length mismatches, non-finite features, labels out of range and classes missing from train are all collected
and raised together as one `ProbeError`.

Hand-written (no library offers it on torch tensors): scikit-learn's solver runs on the CPU in float64, and
the PanDerm objective (non-squared norm) is not a scikit-learn objective at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from panderm.errors import ProbeError
from panderm.models.classifier import LinearClassifier

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
Metric = Literal["balanced_accuracy", "accuracy", "neg_log_loss"]
METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "neg_log_loss")

#: 25 values, three per decade, from very strong (1e-4) to very weak (1e4) regularisation (scikit-learn's C).
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 25))

# ---------------------------------------------------------------------------------------------- validation


def _as_features(x: Any, split: str, problems: list[str]) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            problems.append(f"{split} features: cannot be read as a numeric array ({err})")
            return None
    if t.ndim != 2:
        problems.append(f"{split} features: expected a 2-D array (rows, dims), got shape {tuple(t.shape)}")
        return None
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        problems.append(f"{split} features: dtype {t.dtype} is not numeric")
        return None
    t = t.to(torch.float32)
    # NaN and Inf survive a row sum, so one cheap pass finds candidate rows; the exact per-element test runs
    # only then (a sum of large finite values can overflow, which is not an error)
    bad = ~torch.isfinite(t.sum(dim=1))
    if bool(bad.any()):
        bad = ~torch.isfinite(t).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        problems.append(
            f"{split} features: {n_bad} row(s) contain NaN or Inf (first rows {rows}); "
            "drop or re-extract them"
        )
    return t


def _as_labels(y: Any, split: str, num_classes: int, problems: list[str]) -> torch.Tensor | None:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1:
        problems.append(f"{split} labels: expected a 1-D array, got shape {tuple(t.shape)}")
        return None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        problems.append(f"{split} labels: expected integer class indices, got dtype {t.dtype}")
        return None
    t = t.to(torch.int64)
    out = (t < 0) | (t >= num_classes)
    n_out = int(out.sum())
    if n_out:
        values = sorted(set(t[out].tolist()))[:5]
        problems.append(
            f"{split} labels: {n_out} label(s) outside [0, {num_classes}) (e.g. {values}); "
            "labels must be class indices 0..num_classes-1"
        )
    return t


def validate_probe_inputs(
    splits: Mapping[str, tuple[Any, Any | None]],
    num_classes: int,
    *,
    fit_split: str = "train",
    allow_missing_classes: bool = False,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], torch.Tensor]:
    """Check and convert every split a probe uses; raise one `ProbeError` listing all problems.

    `splits` maps a split name ("train", "val", "query", ...) to `(features (N, D), labels (N,) or None)`;
    features may be numpy or torch (any float or int dtype) and become float32 tensors on the device of
    `splits[fit_split]`'s features, labels become int64 tensors there. Checked: 2-D features with the same
    width everywhere, equal feature/label lengths (naming the split), finite features (naming the split and
    the number of bad rows), integer labels in [0, num_classes), `num_classes >= 2`, at least two classes in
    the fit split, and every class present in the fit split. A missing class is an error naming it unless
    `allow_missing_classes=True`: then it is logged as a warning and the probe gives it probability 0.
    Returns the converted splits and the sorted classes present in the fit split (int64 tensor).
    """
    problems: list[str] = []
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ProbeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    out: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for split, (x, y) in splits.items():
        xt = _as_features(x, split, problems)
        yt = None if y is None else _as_labels(y, split, num_classes, problems)
        if xt is not None and yt is not None and len(xt) != len(yt):
            problems.append(f"{split}: {len(xt)} feature rows but {len(yt)} labels; they must match")
        out[split] = (xt, yt)
    widths = {split: xt.shape[1] for split, (xt, _) in out.items() if xt is not None}
    if len(set(widths.values())) > 1:
        problems.append(f"feature widths differ between splits: {widths}")
    fit_x, fit_y = out.get(fit_split, (None, None))
    present = torch.zeros(0, dtype=torch.int64)
    if fit_x is not None and len(fit_x) == 0:
        problems.append(f"{fit_split}: no rows")
    if fit_y is not None and not problems:
        present = torch.unique(fit_y).cpu()
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        if len(present) < 2:
            problems.append(
                f"{fit_split}: needs at least 2 classes, found {present.tolist()} (num_classes={num_classes})"
            )
        elif missing and not allow_missing_classes:
            problems.append(
                f"{fit_split}: class(es) {missing} have no samples (num_classes={num_classes}); add samples, "
                "or set probe.options.allow_missing_classes=true (allow_missing_classes=True in Python) to "
                "give them probability 0"
            )
        elif missing:
            logger.warning(
                "%s: class(es) %s have no samples; they get probability 0 (allow_missing_classes=True)",
                fit_split,
                missing,
            )
    if problems:
        raise ProbeError("invalid probe input:\n  " + "\n  ".join(problems))
    device = out[fit_split][0].device if fit_split in out else torch.device("cpu")
    converted = {
        split: (xt.to(device), None if yt is None else yt.to(device)) for split, (xt, yt) in out.items()
    }
    return converted, present


# ----------------------------------------------------------------------------------------------- the probe


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression over `num_classes` classes.

    `weight` (K, D) and `bias` (K,) are float32 tensors for the K classes seen in training (`classes`,
    int64, sorted; K == num_classes unless missing classes were allowed, and those get probability 0). When
    `mean`/`std` are set, features are standardised with them before the linear map (the sweep recipe).
    The training objective is mean cross-entropy + `reg` * ||W||_2 (`penalty="l2_norm"`) or
    `reg` * ||W||_2^2 (`penalty="l2_squared"`), evaluated on standardised features.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    num_classes: int
    classes: torch.Tensor
    penalty: Literal["l2_norm", "l2_squared"]
    reg: float
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def _inputs(self, x: ArrayLike, split: str = "query") -> torch.Tensor:
        problems: list[str] = []
        t = _as_features(x, split, problems)
        if t is not None and t.shape[1] != self.weight.shape[1]:
            problems.append(
                f"{split} features: {t.shape[1]} columns, the probe expects {self.weight.shape[1]}"
            )
        if problems:
            raise ProbeError("invalid probe input:\n  " + "\n  ".join(problems))
        assert t is not None
        t = t.to(self.weight.device)
        return t if self.mean is None else _standardise(t, self.mean, self.std)

    def logits(self, x: ArrayLike) -> torch.Tensor:
        """Float32 logits (M, K) of the fitted classes (`classes`) for features (M, D)."""
        return F.linear(self._inputs(x), self.weight, self.bias)

    def predict_proba(self, x: ArrayLike) -> np.ndarray:
        """Class probabilities (M, num_classes), numpy float64; classes unseen in training get 0."""
        with torch.no_grad():
            z = self.logits(x).double()
        return _expand(torch.softmax(z, dim=1), self.classes, self.num_classes).cpu().numpy()

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Predicted class indices (M,), numpy int64."""
        with torch.no_grad():
            return self.classes.to(self.weight.device)[self.logits(x).argmax(dim=1)].cpu().numpy()

    def to_classifier(
        self, encoder: nn.Module, class_names: Sequence[str], *, pooling: str = "cls"
    ) -> LinearClassifier:
        """This probe on `encoder` as a `LinearClassifier` (to save and reuse on images). Classes unseen in
        training get weight 0 and bias -1e9, so their probability is 0 as in `predict_proba`."""
        if len(class_names) != self.num_classes:
            raise ProbeError(f"{len(class_names)} class names for a probe of {self.num_classes} classes")
        model = LinearClassifier(encoder, class_names, pooling=pooling)
        if model.head.in_features != self.weight.shape[1]:
            raise ProbeError(
                f"the probe expects {self.weight.shape[1]}-d features; "
                f"the encoder gives {model.head.in_features}"
            )
        index = self.classes.cpu()
        weight = torch.zeros(self.num_classes, self.weight.shape[1])
        bias = torch.full((self.num_classes,), -1e9)
        weight[index], bias[index] = self.weight.detach().float().cpu(), self.bias.detach().float().cpu()
        mean = None if self.mean is None else self.mean.detach().float().cpu()
        std = None if self.std is None else self.std.detach().float().cpu()
        return model.set_head(weight, bias, mean, std)

    def objective(self, x: ArrayLike, y: ArrayLike) -> float:
        """The training objective of these weights on (x, y): mean cross-entropy + penalty (see class doc)."""
        xt = self._inputs(x, "objective")
        problems: list[str] = []
        yt = _as_labels(y, "objective", self.num_classes, problems)
        if problems:
            raise ProbeError("invalid probe input:\n  " + "\n  ".join(problems))
        assert yt is not None
        compact = _compact_labels(yt.to(self.weight.device), self.classes, self.num_classes)
        if bool((compact < 0).any()):
            raise ProbeError("objective: labels include classes the probe was not trained on")
        with torch.no_grad():
            return float(
                _loss(F.linear(xt, self.weight, self.bias), compact, self.weight, self.penalty, self.reg)
            )


# ------------------------------------------------------------------------------------------------ helpers


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean).div_(std)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and population std (as scikit-learn's StandardScaler); constant columns get std 1."""
    mean = x.mean(dim=0)
    # two reductions over rows run several times faster than torch.std(dim=0) on the CPU
    std = (x - mean).square_().mean(dim=0).sqrt_()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _compact_labels(y: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map labels to row indices of `classes` (-1 for a label not among them)."""
    lookup = torch.full((num_classes,), -1, dtype=torch.int64, device=y.device)
    lookup[classes.to(y.device)] = torch.arange(len(classes), device=y.device)
    return lookup[y]


def _expand(p: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    if len(classes) == num_classes:
        return p
    full = torch.zeros(p.shape[0], num_classes, dtype=p.dtype, device=p.device)
    full[:, classes.to(p.device)] = p
    return full


def _loss(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, penalty: str, reg: float
) -> torch.Tensor:
    ce = F.cross_entropy(logits, y)
    if penalty == "l2_norm":
        # linalg.vector_norm has a zero (sub)gradient at W = 0, where the fit starts; sqrt(sum) would be NaN
        return ce + reg * torch.linalg.vector_norm(weight)
    return ce + reg * weight.pow(2).sum()


def _lbfgs(
    x: torch.Tensor,
    y: torch.Tensor,
    n_out: int,
    *,
    penalty: str,
    reg: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    precond: tuple[torch.Tensor, torch.Tensor] | None = None,
    **lbfgs_options: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Full-batch L-BFGS (strong Wolfe) for an `nn.Linear(D, n_out)` starting at zero (or `init`).

    Returns (weight (n_out, D), bias (n_out,), iteration counts). The closure computes the loss of `_loss`
    and its gradient in closed form instead of through autograd: grad_logits = (softmax - onehot) / N, so one
    pass over `x` for the logits and one for the weight gradient, and no autograd graph (about a third
    faster on the CPU, and less memory). With `precond` = (Q (D, D), s (D,)), L-BFGS runs on V where
    W = (V * s) @ Q^T: the same objective in other coordinates (see `_preconditioner`), which changes the
    path and the iteration count but not the optimum; the gradient tolerance then applies to grad_V.
    """
    linear = nn.Linear(x.shape[1], n_out, device=x.device, dtype=torch.float32)
    linear.requires_grad_(False)
    with torch.no_grad():
        if init is None:
            linear.weight.zero_()
            linear.bias.zero_()
        else:
            linear.weight.copy_(init[0])
            linear.bias.copy_(init[1])
    bias = linear.bias
    if precond is None:
        param = linear.weight
    else:
        basis, scale = precond
        param = (linear.weight @ basis).div_(scale)

    def to_weight(v: torch.Tensor) -> torch.Tensor:
        return v if precond is None else (v * scale) @ basis.t()

    onehot = F.one_hot(y, n_out).to(torch.float32)
    n = len(x)
    optimizer = torch.optim.LBFGS(
        [param, bias], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe", **lbfgs_options
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        weight = to_weight(param)
        logits = torch.addmm(bias, x, weight.t())
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        loss = (lse - logits).mul_(onehot).sum() / n
        grad_logits = logits.sub_(lse).exp_().sub_(onehot).div_(n)
        grad = grad_logits.t() @ x
        bias.grad = grad_logits.sum(dim=0)
        if penalty == "l2_norm":
            norm = torch.linalg.vector_norm(weight)
            loss = loss + reg * norm
            if float(norm) > 0:  # zero subgradient at W = 0, as autograd's vector_norm gives
                grad.add_(weight, alpha=reg / float(norm))
        else:
            loss = loss + reg * weight.pow(2).sum()
            grad.add_(weight, alpha=2 * reg)
        param.grad = grad if precond is None else (grad @ basis).mul_(scale)
        return loss

    optimizer.step(closure)
    state = optimizer.state[param]
    param.grad = bias.grad = None
    counts = {"iterations": int(state.get("n_iter", 0)), "evaluations": int(state.get("func_evals", 0))}
    return to_weight(param), bias, counts


def _preconditioner(
    eig: tuple[torch.Tensor, torch.Tensor], reg: float, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, s) with s = (lambda + mu)^(-1/2) from the eigendecomposition (lambda, Q) of X^T X / N.

    Near the start the Hessian of mean cross-entropy + reg ||W||^2 in W is about (Sigma / K + 2 reg I) per
    class (softmax curvature ~1/K), so mu = 2 K reg makes the Hessian in V close to a multiple of the
    identity; mu >= 1e-3 keeps s bounded when Sigma is rank-deficient.
    """
    values, basis = eig
    mu = max(2.0 * n_classes * reg, 1e-3)
    return basis, (values.clamp_min(0) + mu).rsqrt()


@dataclass
class _Prepared:
    """Standardised fit data: features, labels as rows of `classes`, and the standardisation used."""

    x: torch.Tensor
    y: torch.Tensor
    classes: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    eig: tuple[torch.Tensor, torch.Tensor] | None  # eigenvalues and vectors of x^T x / N, to precondition


# ----------------------------------------------------------------------------------------- PanDerm parity


def fit_linear_panderm(
    train_x: ArrayLike,
    train_y: ArrayLike,
    num_classes: int,
    *,
    max_iter: int = 1000,
    allow_missing_classes: bool = False,
) -> LinearProbe:
    """Fit the PanDerm/UNI linear probe ("linear_panderm" v1) on train only.

    Raw features (N, D) (no scaling) and labels (N,) in [0, num_classes); an `nn.Linear(D, C)` with zero
    weight and bias trained by full-batch `LBFGS(lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")`
    (torch's default tolerances and history size) on mean cross-entropy + (1 / C_reg) * 0.5 * ||W||_2, the
    non-squared L2 norm of the weight (bias unpenalised), with C_reg = D * C / 100. C is the number of classes
    fitted: `num_classes`, or the classes present when `allow_missing_classes=True` lets some be absent
    (those get probability 0). Raises `ProbeError` on invalid input (see `validate_probe_inputs`).
    """
    splits, present = validate_probe_inputs(
        {"train": (train_x, train_y)}, num_classes, allow_missing_classes=allow_missing_classes
    )
    x, y = splits["train"]
    assert y is not None
    n_fit = len(present)
    c_reg = x.shape[1] * n_fit / 100
    reg = 0.5 / c_reg
    weight, bias, counts = _lbfgs(
        x, _compact_labels(y, present, num_classes), n_fit, penalty="l2_norm", reg=reg, max_iter=max_iter
    )
    recipe = {"name": "linear_panderm", "version": "1", "C": c_reg, "max_iter": max_iter, **counts}
    return LinearProbe(
        weight=weight,
        bias=bias,
        num_classes=int(num_classes),
        classes=present.to(x.device),
        penalty="l2_norm",
        reg=reg,
        recipe=recipe,
    )


# ------------------------------------------------------------------------------------------------ C sweep


def score_proba(proba: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """Selection score of probabilities (M, C) against labels (M,): higher is better.

    `balanced_accuracy` (mean recall over the classes present in `y`, as scikit-learn), `accuracy`, or
    `neg_log_loss` (minus the mean negative log-probability of the true class, clipped at 1e-15).
    """
    if metric == "accuracy":
        return float((proba.argmax(dim=1) == y).double().mean())
    if metric == "balanced_accuracy":
        correct = (proba.argmax(dim=1) == y).double()
        n_cls = proba.shape[1]
        hits = torch.zeros(n_cls, dtype=torch.float64, device=y.device).index_add_(0, y, correct)
        counts = torch.bincount(y, minlength=n_cls).double()
        seen = counts > 0
        return float((hits[seen] / counts[seen]).mean())
    if metric == "neg_log_loss":
        p = proba.double().gather(1, y[:, None]).clamp_min(1e-15)
        return float(p.log().mean())
    raise ProbeError(f"unknown selection metric {metric!r}; choose one of {METRICS}")


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row indices into (fit, holdout), per class: round(fraction * n_c) rows held out (at least one),
    always leaving at least one row of each class in fit (classes with one row stay wholly in fit). Seeded."""
    rng = np.random.default_rng(seed)
    labels = y.cpu().numpy()
    fit, hold = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_hold = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        hold.append(rows[:n_hold])
        fit.append(rows[n_hold:])
    fit_idx = torch.as_tensor(np.sort(np.concatenate(fit)), device=y.device)
    hold_idx = torch.as_tensor(np.sort(np.concatenate(hold)), device=y.device)
    return fit_idx, hold_idx


def _winning_edge(scores: Mapping[float, float]) -> Literal["lower", "upper"] | None:
    """Which end of the C grid (`scores` maps C to its validation score) scores strictly better than every
    other C, if either; None for an interior or tied best, or a grid of fewer than two values."""
    cs = sorted(scores)
    if len(cs) < 2:
        return None
    if scores[cs[-1]] > max(scores[c] for c in cs[:-1]):
        return "upper"
    if scores[cs[0]] > max(scores[c] for c in cs[1:]):
        return "lower"
    return None


def _decade_beyond(grid: Sequence[float], edge: Literal["lower", "upper"]) -> list[float]:
    """One decade of C values past `edge` of the ascending `grid`, ordered outwards, at the grid's spacing
    at that end (rounded to a whole number of values per decade, at least one)."""
    end, inner = (grid[-1], grid[-2]) if edge == "upper" else (grid[0], grid[1])
    per_decade = max(1, round(1 / abs(math.log10(end / inner))))
    sign = 1 if edge == "upper" else -1
    return [end * 10.0 ** (sign * j / per_decade) for j in range(1, per_decade + 1)]


def fit_linear_sweep(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike | None = None,
    val_y: ArrayLike | None = None,
    *,
    num_classes: int,
    c_grid: Sequence[float] | None = None,
    metric: Metric = "balanced_accuracy",
    refit: bool = True,
    max_iter: int = 500,
    tol: float = 1e-4,
    history_size: int = 20,
    holdout: float = 0.2,
    seed: int = 0,
    default_c: float = 1.0,
    extend_decades: int = 3,
    precondition: bool | None = None,
    allow_missing_classes: bool = False,
) -> LinearProbe:
    """Fit our robust linear probe ("linear_sweep" v1): standardise, sweep C, select on val, refit.

    Features (N, D) are standardised with the fit data's column mean and population std (stored in the
    probe and applied at predict time). For each C of `c_grid` (default `DEFAULT_C_GRID`, 1e-4..1e4, visited
    from strong to weak regularisation, each fit warm-started from the previous solution) we minimise
    mean cross-entropy + ||W||^2 / (2 C N) — scikit-learn's `LogisticRegression(C)` objective divided by
    N — with full-batch float32 L-BFGS (stopping when the largest gradient entry is below `tol`, as
    scikit-learn's lbfgs does, or after `max_iter` iterations) and score the validation split by `metric`
    ("balanced_accuracy", "accuracy" or "neg_log_loss"; ties go to the smaller C). When one end of the grid
    scores strictly better than every other C, the sweep goes on a decade beyond it (at the grid's spacing
    there, e.g. three values per decade for the default grid, warm-started outwards from that end), and again
    while the new end stays the strict best, for at most `extend_decades` decades (0: never); an interior or
    tied best leaves the grid as given. Without `val_x`/`val_y`, a stratified `holdout` fraction of train
    (seeded by `seed`) is the validation split, and the recipe says so;
    when that leaves no validation rows (one sample per class), no sweep is run and `default_c` is used. With
    `refit`, the chosen C is refit on train + val (re-standardised); otherwise the selection fit is returned.
    A single grid value is a plain fit at that C (no selection) on train, plus val when `refit`.
    `precondition` runs L-BFGS in coordinates whitened by the eigendecomposition of the standardised
    features' covariance (computed once per fit set, reused for every C): the same objective and optimum,
    typically 3-6x fewer iterations on correlated features. None (default) turns it on when N >= D and
    D <= 2048, where the one-off N·D² covariance and D³ eigendecomposition cost less than the iterations they
    save; the gradient tolerance then applies in the whitened coordinates.
    The recipe records the chosen C, the grid visited and its scores (ascending C), `c_grid_bounds` (its
    ends), `c_grid_extended` (decades added) and `c_at_grid_edge` (True when an end of the final grid is
    still the strict best, so the optimum may lie beyond it; also logged as a warning), the selection source,
    whether it was preconditioned and the L-BFGS iterations and evaluations summed over every fit. Raises
    `ProbeError` on invalid input.
    """
    if (val_x is None) != (val_y is None):
        raise ProbeError("pass both val_x and val_y, or neither")
    if metric not in METRICS:
        raise ProbeError(f"unknown selection metric {metric!r}; choose one of {METRICS}")
    grid = sorted(float(c) for c in (DEFAULT_C_GRID if c_grid is None else c_grid))
    if not grid or any(not math.isfinite(c) or c <= 0 for c in grid):
        raise ProbeError(f"c_grid must be non-empty positive finite values, got {list(grid)}")
    if not 0 < holdout < 1:
        raise ProbeError(f"holdout must be in (0, 1), got {holdout}")
    if isinstance(extend_decades, bool) or not isinstance(extend_decades, int) or extend_decades < 0:
        raise ProbeError(f"extend_decades must be an integer >= 0, got {extend_decades!r}")
    given = {"train": (train_x, train_y)}
    if val_x is not None:
        given["val"] = (val_x, val_y)
    splits, _ = validate_probe_inputs(given, num_classes, allow_missing_classes=allow_missing_classes)
    x, y = splits["train"]
    assert y is not None
    options = {"tolerance_grad": tol, "tolerance_change": 1e-9, "history_size": history_size}
    counts: dict[str, int] = {"iterations": 0, "evaluations": 0}

    def prepare(xs: torch.Tensor, ys: torch.Tensor) -> _Prepared:
        classes = torch.unique(ys)
        mean, std = _moments(xs)
        xs = _standardise(xs, mean, std)
        use = precondition if precondition is not None else len(xs) >= xs.shape[1] and xs.shape[1] <= 4096
        eig = torch.linalg.eigh(xs.t() @ xs / len(xs)) if use else None
        return _Prepared(xs, _compact_labels(ys, classes, num_classes), classes, mean, std, eig)

    def solve(data: _Prepared, c: float, init: Any = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        n_cls = len(data.classes)
        # Two softmax rows w0, w1 meet sklearn's single binary logit w = w1 - w0 at w0 = -w1 = w/2, so the
        # penalty on both rows is doubled to keep sklearn's C (penalty ||w||^2 / 2C) for binary tasks.
        reg = (2.0 if n_cls == 2 else 1.0) / (2.0 * c * len(data.x))
        precond = None if data.eig is None else _preconditioner(data.eig, reg, n_cls)
        weight, bias, n = _lbfgs(
            data.x,
            data.y,
            n_cls,
            penalty="l2_squared",
            reg=reg,
            max_iter=max_iter,
            init=init,
            precond=precond,
            **options,
        )
        counts["iterations"] += n["iterations"]
        counts["evaluations"] += n["evaluations"]
        return weight, bias, reg

    scores: list[float] = []
    extended, at_edge = 0, False
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    data: _Prepared | None = None
    if len(grid) == 1:
        chosen, selection = grid[0], "none (a single C)"
    else:
        if "val" in splits:
            fit_x, fit_y = x, y
            val_x_t, val_y_t = splits["val"]
            selection = "val"
        else:
            fit_idx, hold_idx = stratified_holdout(y, holdout, seed)
            fit_x, fit_y, val_x_t, val_y_t = x[fit_idx], y[fit_idx], x[hold_idx], y[hold_idx]
            selection = f"stratified {holdout:.0%} hold-out of train (seed {seed})"
        assert val_y_t is not None
        if len(val_y_t) == 0:
            chosen = float(default_c)
            selection = f"none (too few samples per class to hold out); default C={chosen:g}"
        else:
            data = prepare(fit_x, fit_y)
            val_std = _standardise(val_x_t, data.mean, data.std)
            visited: dict[float, float] = {}
            best_score, chosen = -math.inf, grid[0]

            def visit(cs: Sequence[float], init: tuple[torch.Tensor, torch.Tensor] | None) -> None:
                """Fit and score each C in turn, warm-starting each fit from the previous one."""
                nonlocal best, best_score, chosen
                for c in cs:
                    fitted = solve(data, c, init)
                    init = fitted[:2]
                    with torch.no_grad():
                        z = F.linear(val_std, fitted[0], fitted[1])
                        proba = _expand(torch.softmax(z.double(), dim=1), data.classes, num_classes)
                    visited[c] = score = score_proba(proba, val_y_t, metric)
                    if score > best_score or (score == best_score and c < chosen):  # ties: smaller C
                        best, best_score, chosen = fitted, score, c

            visit(grid, None)
            edge = _winning_edge(visited)
            while edge is not None and extended < extend_decades:
                # the edge is the best fit so far: the next decade starts from it, outwards
                assert best is not None
                visit(_decade_beyond(sorted(visited), edge), best[:2])
                extended += 1
                edge = _winning_edge(visited)
            grid, scores = sorted(visited), [visited[c] for c in sorted(visited)]
            at_edge = edge is not None
            if at_edge:
                logger.warning(
                    "linear_sweep: the best C=%g (%s %.4f) is at the %s end of the C grid [%g, %g] after %d "
                    "extra decade(s); the optimum may lie beyond it (raise extend_decades or widen c_grid)",
                    chosen,
                    metric,
                    best_score,
                    edge,
                    grid[0],
                    grid[-1],
                    extended,
                )
            del val_std, fit_x, fit_y
    if refit or best is None:
        init = None
        if best is not None and data is not None:
            selected_classes, data = data.classes, None  # free the selection copy first
        if refit and "val" in splits:
            val_x_t, val_y_t = splits["val"]
            data = prepare(torch.cat([x, val_x_t]), torch.cat([y, val_y_t]))
        else:
            data = prepare(x, y)
        if best is not None:
            # warm start from the selected solution, rows matched by class
            rows = _compact_labels(data.classes, selected_classes, num_classes)
            known = rows >= 0
            w0 = torch.zeros(len(data.classes), x.shape[1], device=x.device)
            b0 = torch.zeros(len(data.classes), device=x.device)
            w0[known], b0[known] = best[0][rows[known]], best[1][rows[known]]
            init = (w0, b0)
        best = solve(data, chosen, init)
    assert data is not None
    weight, bias, reg = best
    recipe = {
        "name": "linear_sweep",
        "version": "1",
        "C": chosen,
        "metric": metric,
        "selection": selection,
        "refit": bool(refit),
        "c_grid": grid,
        "scores": scores,
        "c_grid_bounds": [grid[0], grid[-1]],
        "c_grid_extended": extended,
        "c_at_grid_edge": at_edge,
        "n_fit": len(data.x),
        "max_iter": max_iter,
        "tol": tol,
        "standardise": "train mean / population std",
        "preconditioned": data.eig is not None,
        **counts,
    }
    return LinearProbe(
        weight=weight.detach(),
        bias=bias.detach(),
        num_classes=int(num_classes),
        classes=data.classes,
        penalty="l2_squared",
        reg=reg,
        mean=data.mean,
        std=data.std,
        recipe=recipe,
    )
