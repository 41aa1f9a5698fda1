"""Multi-label probes on frozen features: one-vs-rest linear heads and a kNN vote share per label.

Targets are (N, C) float arrays of 1/0 with NaN where a label is unknown for an image (CheXpert's "ignore"
policy, `Manifest.targets()`); unknown cells are left out of the loss and of the validation score.

- `fit_multilabel_sweep` ("multilabel_sweep" v1): standardise the features with the fit data's statistics,
  fit C independent logistic regressions (one `nn.Linear(D, C)`, sigmoid outputs) by minimising, per label k,
  the mean binary cross-entropy over its known rows + ||w_k||^2 / (2 C_reg N_k): scikit-learn's
  `LogisticRegression(C=C_reg)` objective on that label divided by N_k, so each column matches
  scikit-learn's fit at that C. C_reg is swept on a log grid (warm-started from strong to weak
  regularisation) and chosen by macro AUROC on the val split (a seeded 20 % hold-out of train without one),
  then refit on train + val: the selection scheme of `probes.linear.fit_linear_sweep`.
- `fit_multilabel_panderm` ("multilabel_panderm" v1): the PanDerm linear-probe recipe with sigmoid outputs:
  raw features, zero initialisation, `LBFGS(lr=1, max_iter=1000)`, masked mean BCE + (0.5 / C_reg) ||W||_2
  with C_reg = D * C / 100, train split only.
- `multilabel_knn_proba`: per label, the share of the k most cosine-similar training images (as
  `probes.knn.knn_proba`: weighted by exp(similarity / T) in variant "dino", uniform after centring in "uni")
  that are positive, among those whose label is known; a query whose k neighbours all have that label
  unknown gets the label's training prevalence.

All solvers run on tensors on the device of the training features (GPU when present). Written by hand:
scikit-learn fits one label at a time on the CPU in float64 and has no notion of unknown cells.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from panderm.errors import ProbeError
from probes.knn import VARIANTS, _search
from probes.linear import DEFAULT_C_GRID, ArrayLike, _as_features, _moments, _standardise
from probes.metrics import multilabel_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "MultiLabelProbe",
    "fit_multilabel_panderm",
    "fit_multilabel_sweep",
    "multilabel_knn_proba",
    "validate_multilabel_inputs",
]


def _as_targets(y: Any, split: str, problems: list[str]) -> torch.Tensor | None:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, dtype=np.float32))
    if t.ndim != 2:
        problems.append(
            f"{split} targets: expected a 2-D (rows, labels) array of 1/0/NaN, got {tuple(t.shape)}"
        )
        return None
    t = t.to(torch.float32)
    bad = ~torch.isnan(t) & (t != 0) & (t != 1)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1)).flatten()[:5].tolist()
        problems.append(f"{split} targets: values other than 1, 0 or NaN in rows {rows}")
    return t


def validate_multilabel_inputs(
    splits: dict[str, tuple[Any, Any | None]], *, fit_split: str = "train"
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Check and convert every split (name -> (features (N, D), targets (N, C) or None)); features become
    float32 tensors, targets float32 (NaN = unknown), all on the device of the fit split's features. Every
    problem (shapes, widths, non-finite features, bad target values, a fit label with no known row) is
    collected into one `ProbeError`."""
    problems: list[str] = []
    out: dict[str, tuple[Any, Any]] = {}
    for split, (x, y) in splits.items():
        xt = _as_features(x, split, problems)
        yt = None if y is None else _as_targets(y, split, problems)
        if xt is not None and yt is not None and len(xt) != len(yt):
            problems.append(f"{split}: {len(xt)} feature rows but {len(yt)} target rows; they must match")
        out[split] = (xt, yt)
    widths = {s: xt.shape[1] for s, (xt, _) in out.items() if xt is not None}
    if len(set(widths.values())) > 1:
        problems.append(f"feature widths differ between splits: {widths}")
    labels = {s: yt.shape[1] for s, (_, yt) in out.items() if yt is not None}
    if len(set(labels.values())) > 1:
        problems.append(f"label counts differ between splits: {labels}")
    fit_x, fit_y = out.get(fit_split, (None, None))
    if fit_x is not None and len(fit_x) == 0:
        problems.append(f"{fit_split}: no rows")
    elif fit_y is not None and not problems:
        unknown = torch.nonzero(torch.isnan(fit_y).all(dim=0)).flatten().tolist()
        if unknown:
            problems.append(f"{fit_split}: label column(s) {unknown} have no known row to fit")
    if problems:
        raise ProbeError("invalid multi-label probe input:\n  " + "\n  ".join(problems))
    device = out[fit_split][0].device
    return {s: (xt.to(device), None if yt is None else yt.to(device)) for s, (xt, yt) in out.items()}


@dataclass
class MultiLabelProbe:
    """C fitted one-vs-rest logistic regressions: `weight` (C, D), `bias` (C,), optional standardisation
    (`mean`, `std`) applied first; `predict_proba` gives sigmoid probabilities (M, C) as numpy float64."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    recipe: dict[str, Any] = field(default_factory=dict)

    def logits(self, x: ArrayLike) -> torch.Tensor:
        """Float32 logits (M, C) for features (M, D)."""
        problems: list[str] = []
        t = _as_features(x, "query", problems)
        if t is not None and t.shape[1] != self.weight.shape[1]:
            problems.append(f"query features: {t.shape[1]} columns, the probe expects {self.weight.shape[1]}")
        if problems:
            raise ProbeError("invalid probe input:\n  " + "\n  ".join(problems))
        t = t.to(self.weight.device)
        t = t if self.mean is None else _standardise(t, self.mean, self.std)
        return F.linear(t, self.weight, self.bias)

    def predict_proba(self, x: ArrayLike) -> np.ndarray:
        """Per-label probabilities (M, C), numpy float64."""
        with torch.no_grad():
            return torch.sigmoid(self.logits(x).double()).cpu().numpy()


def _lbfgs_bce(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    penalty: str,
    reg: torch.Tensor | float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    **lbfgs_options: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Full-batch L-BFGS (strong Wolfe) for weight (C, D) and bias (C,) minimising the masked BCE
    sum_k mean_{i known for k} bce(z_ik, y_ik) plus `reg` (C,) * ||w_k||^2 per label ("l2_squared") or
    `reg` * ||W||_2 ("l2_norm", PanDerm's). Gradient in closed form: d/dz = (sigmoid(z) - y) / N_k on known
    cells, so no autograd graph is built."""
    known = ~torch.isnan(y)
    n_known = known.sum(dim=0).clamp_min(1).to(torch.float32)
    cell_weight = known.to(torch.float32) / n_known  # (N, C): 1 / N_k where known, else 0
    target = torch.nan_to_num(y, nan=0.0)
    c, d = y.shape[1], x.shape[1]
    weight = torch.zeros(c, d, device=x.device) if init is None else init[0].clone()
    bias = torch.zeros(c, device=x.device) if init is None else init[1].clone()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe", **lbfgs_options
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        logits = torch.addmm(bias, x, weight.t())
        # softplus(z) - y z is the BCE with logits, computed stably
        loss = ((F.softplus(logits) - target * logits) * cell_weight).sum()
        grad_logits = (torch.sigmoid(logits) - target).mul_(cell_weight)
        grad = grad_logits.t() @ x
        bias.grad = grad_logits.sum(dim=0)
        if penalty == "l2_norm":
            norm = torch.linalg.vector_norm(weight)
            loss = loss + reg * norm
            if float(norm) > 0:  # zero subgradient at W = 0
                grad.add_(weight, alpha=float(reg) / float(norm))
        else:
            r = torch.as_tensor(reg, device=x.device, dtype=torch.float32).reshape(-1, 1)
            loss = loss + (r * weight.pow(2)).sum()
            grad.add_(2 * r * weight)
        weight.grad = grad
        return loss

    optimizer.step(closure)
    state = optimizer.state[weight]
    weight.grad = bias.grad = None
    counts = {"iterations": int(state.get("n_iter", 0)), "evaluations": int(state.get("func_evals", 0))}
    return weight.detach(), bias.detach(), counts


def _macro_auroc(y: torch.Tensor, proba: torch.Tensor) -> float:
    """Macro AUROC (`multilabel_metrics`) of probabilities against targets; -inf when no label is defined."""
    result = multilabel_metrics(y.cpu().numpy(), proba.cpu().numpy())
    return result.values.get("auroc_macro", -math.inf)


def fit_multilabel_sweep(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike | None = None,
    val_y: ArrayLike | None = None,
    *,
    c_grid: Sequence[float] | None = None,
    metric: str = "auroc_macro",
    refit: bool = True,
    max_iter: int = 500,
    tol: float = 1e-4,
    history_size: int = 20,
    holdout: float = 0.2,
    seed: int = 0,
) -> MultiLabelProbe:
    """Fit the one-vs-rest linear probe ("multilabel_sweep" v1; see the module docstring): standardise, sweep
    C over `c_grid` (default `probes.linear.DEFAULT_C_GRID`), choose by val macro AUROC (ties: smaller C),
    refit on train + val when `refit` (`metric` is "auroc_macro", the only choice). Features (N, D),
    targets (N, C) of 1/0/NaN. Without a val split a
    seeded random `holdout` fraction of train is used (the recipe says so); a single C is a plain fit.
    L-BFGS stops when the largest gradient entry is below `tol` or after `max_iter` iterations. Raises
    `ProbeError` on invalid input.
    """
    if (val_x is None) != (val_y is None):
        raise ProbeError("pass both val_x and val_y, or neither")
    if metric != "auroc_macro":
        raise ProbeError(f"multi-label C selection is by metric='auroc_macro', got {metric!r}")
    grid = sorted(float(c) for c in (DEFAULT_C_GRID if c_grid is None else c_grid))
    if not grid or any(not math.isfinite(c) or c <= 0 for c in grid):
        raise ProbeError(f"c_grid must be non-empty positive finite values, got {list(grid)}")
    if not 0 < holdout < 1:
        raise ProbeError(f"holdout must be in (0, 1), got {holdout}")
    given: dict[str, tuple[Any, Any]] = {"train": (train_x, train_y)}
    if val_x is not None:
        given["val"] = (val_x, val_y)
    splits = validate_multilabel_inputs(given)
    x, y = splits["train"]
    options = {"tolerance_grad": tol, "tolerance_change": 1e-9, "history_size": history_size}
    counts = {"iterations": 0, "evaluations": 0}

    def solve(xs: torch.Tensor, ys: torch.Tensor, c: float, init: Any = None) -> tuple[Any, ...]:
        n_known = (~torch.isnan(ys)).sum(dim=0).clamp_min(1).to(torch.float32)
        reg = 1.0 / (2.0 * c * n_known)  # sklearn's ||w||^2 / (2C), divided by the label's N_k
        w, b, n = _lbfgs_bce(xs, ys, penalty="l2_squared", reg=reg, max_iter=max_iter, init=init, **options)
        counts["iterations"] += n["iterations"]
        counts["evaluations"] += n["evaluations"]
        return w, b

    scores: list[float] = []
    if len(grid) == 1:
        chosen, selection = grid[0], "none (a single C)"
    else:
        if "val" in splits:
            fit_x, fit_y, vx, vy = x, y, *splits["val"]
            selection = "val"
        else:
            order = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)), device=x.device)
            n_hold = max(1, round(holdout * len(x)))
            fit_x, fit_y, vx, vy = x[order[n_hold:]], y[order[n_hold:]], x[order[:n_hold]], y[order[:n_hold]]
            selection = f"random {holdout:.0%} hold-out of train (seed {seed})"
        mean, std = _moments(fit_x)
        fit_std, val_std = _standardise(fit_x, mean, std), _standardise(vx, mean, std)
        best_score, chosen, init = -math.inf, grid[0], None
        for c in grid:
            init = solve(fit_std, fit_y, c, init)
            with torch.no_grad():
                score = _macro_auroc(vy, torch.sigmoid(F.linear(val_std, *init).double()))
            scores.append(score)
            if score > best_score:  # strict: ties keep the smaller C
                best_score, chosen = score, c
        if not math.isfinite(best_score):
            logger.warning("multilabel_sweep: no label has both classes in the val split; C=%g", grid[0])
    if refit and "val" in splits:
        xs, ys = torch.cat([x, splits["val"][0]]), torch.cat([y, splits["val"][1]])
    else:
        xs, ys = x, y
    mean, std = _moments(xs)
    weight, bias = solve(_standardise(xs, mean, std), ys, chosen)
    recipe = {
        "name": "multilabel_sweep",
        "version": "1",
        "C": chosen,
        "metric": "auroc_macro",
        "selection": selection,
        "refit": bool(refit),
        "c_grid": grid,
        "scores": scores,
        "n_fit": len(xs),
        "max_iter": max_iter,
        "tol": tol,
        "standardise": "train mean / population std",
        **counts,
    }
    return MultiLabelProbe(weight, bias, mean, std, recipe)


def fit_multilabel_panderm(
    train_x: ArrayLike, train_y: ArrayLike, *, max_iter: int = 1000
) -> MultiLabelProbe:
    """The PanDerm linear-probe recipe with one sigmoid output per label ("multilabel_panderm" v1): raw
    features, zero initialisation, `LBFGS(lr=1, max_iter)` on masked mean BCE + (0.5 / C_reg) * ||W||_2
    (non-squared norm, bias unpenalised), C_reg = D * C / 100; train only. Raises `ProbeError` on invalid
    input."""
    x, y = validate_multilabel_inputs({"train": (train_x, train_y)})["train"]
    c_reg = x.shape[1] * y.shape[1] / 100
    weight, bias, counts = _lbfgs_bce(x, y, penalty="l2_norm", reg=0.5 / c_reg, max_iter=max_iter)
    recipe = {"name": "multilabel_panderm", "version": "1", "C": c_reg, "max_iter": max_iter, **counts}
    return MultiLabelProbe(weight, bias, recipe=recipe)


def multilabel_knn_proba(
    train_x: ArrayLike,
    train_y: ArrayLike,
    query_x: ArrayLike,
    *,
    k: int = 20,
    temperature: float = 0.07,
    variant: str = "dino",
    balanced: bool = False,
    memory_budget: int = 1 << 30,
) -> np.ndarray:
    """Per-label kNN probabilities (M, C), numpy float64: among the k most similar training rows (cosine
    similarity, as `probes.knn.knn_proba`), the share that is positive for each label, counted over the
    neighbours whose label is known. Variant "dino": each neighbour weighs exp(similarity / temperature);
    "uni": features centred on the training mean first, every neighbour weighs 1. A query whose neighbours
    all have a label unknown gets that label's training prevalence. `balanced` (class-prior reweighting) is
    single-label only. Raises `ProbeError` on invalid input."""
    if variant not in VARIANTS:
        raise ProbeError(f"unknown kNN variant {variant!r} for multi-label data; choose one of {VARIANTS}")
    if balanced:
        raise ProbeError("knn balanced=true is not for multi-label data (each label is its own vote share)")
    if variant == "dino" and not temperature > 0:
        raise ProbeError(f"temperature must be > 0, got {temperature}")
    splits = validate_multilabel_inputs({"train": (train_x, train_y), "query": (query_x, None)})
    (train, targets), (query, _) = splits["train"], splits["query"]
    sims, idx = _search(train, query, k, variant, None, None, memory_budget)
    # (M, k, C) votes are small; numpy on the host, as probes.knn tallies its votes
    y = targets.cpu().numpy().astype(np.float64)
    top = sims.cpu().numpy().astype(np.float64)
    weights = np.ones_like(top) if variant == "uni" else np.exp((top - top[:, :1]) / temperature)
    votes = y[idx.cpu().numpy()]  # (M, k, C)
    w = weights[:, :, None] * ~np.isnan(votes)
    positive = (w * np.nan_to_num(votes)).sum(axis=1)
    total = w.sum(axis=1)
    prevalence = np.nanmean(y, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = positive / total
    return np.where(total > 0, share, prevalence[None, :])
