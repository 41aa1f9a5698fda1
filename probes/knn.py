"""Non-parametric probes on frozen features: weighted kNN (DINO / UNI variants) and nearest-class-mean.

- `knn_proba` variant "dino": cosine similarity between L2-normalised features, the k most similar training
  rows vote with weight exp(sim / T) (T = 0.07, k = 20 by default), probabilities are the normalised class
  vote sums. Variant "uni": features are centred on the training mean, then L2-normalised, and the top-k
  neighbours vote uniformly (probability = share of the k votes). With `balanced=True` (either variant) each
  class's vote mass is divided by its frequency in the training set before normalising, so a majority class
  no longer wins by sheer numbers among the neighbours.
- `prototype_proba` (SimpleShot): centre on the training mean, L2-normalise, average each class into a
  prototype, and score a query by its Euclidean distance to each prototype.

The search is chunked over query rows and, when the training set is too large for one block, over training
rows with a running top-k merge, so memory stays under `memory_budget` bytes (beyond the inputs). Each block
is one `torch.mm` into a reused buffer followed by `topk` on it; the query norm divides only the k selected
similarities (ranking within a row does not depend on it). Written by hand because scikit-learn's
`KNeighborsClassifier` runs on the CPU only and has neither the temperature-weighted votes nor a memory
budget. On the CPU both are bound by the same float32 matrix multiply (see benchmarks/probe_speed.py).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from panderm.errors import ProbeError
from probes.linear import ArrayLike, validate_probe_inputs

logger = logging.getLogger(__name__)

Variant = Literal["dino", "uni"]
VARIANTS: tuple[str, ...] = ("dino", "uni")
DEFAULT_MEMORY_BUDGET = 1 << 30  # 1 GiB of working memory beyond the inputs
_F32 = 4
_EPS = 1e-12  # F.normalize's floor on row norms


def _prepare(x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Centre (if given) and L2-normalise rows; an all-zero row stays zero."""
    return F.normalize(x if center is None else x - center, dim=1, eps=_EPS)


def _even_steps(total: int, step: int) -> int:
    """`step` evened out: the same number of chunks of `total` rows, as equal in size as possible (>= 1)."""
    step = max(step, 1)
    return -(-total // -(-total // step)) if total else step


def plan_chunks(
    n_train: int, n_query: int, dim: int, k: int, memory_budget: int, train_cached: bool
) -> tuple[int, int]:
    """(query rows, train rows) per similarity block so the working set fits `memory_budget` bytes.

    Per block we hold the query chunk (q x D), the similarity block (q x t, counted twice for the top-k
    temporaries), the running top-k (q x 2k values and indices) and, when the normalised training set is
    not cached, the normalised train chunk (t x D). Whole training blocks are preferred (no merge).
    """
    avail = memory_budget - (n_train * dim * _F32 if train_cached else 0)
    per_query_row = _F32 * (dim + 4 * k)
    train_row = 0 if train_cached else _F32 * dim
    target = min(n_query, 256)
    q = (avail - n_train * train_row) // (per_query_row + 2 * _F32 * n_train)
    if q >= target:
        return int(min(q, n_query)), n_train
    q = target  # split the training rows instead, halving the query rows until a block fits
    while q >= 1:
        t = (avail - q * per_query_row) // (2 * _F32 * q + train_row)
        if t >= 1:
            return q, int(min(t, n_train))
        q //= 2
    raise ProbeError(
        f"memory_budget={memory_budget} bytes is too small for kNN over {n_train} x {dim} features; "
        "raise it or pass chunk_size/train_chunk_size"
    )


def knn_search(
    train_x: ArrayLike,
    query_x: ArrayLike,
    *,
    k: int = 20,
    variant: Variant = "dino",
    chunk_size: int | None = None,
    train_chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar training rows of each query: (similarities (M, k) float32, indices (M, k) int64).

    Cosine similarity of L2-normalised rows ("dino") or of rows centred on the training mean and then
    normalised ("uni"), sorted from most to least similar, on the device of `train_x`. `k` is capped at the
    number of training rows. `chunk_size` (query rows) and `train_chunk_size` (training rows, merged with a
    running top-k) default to the largest blocks that fit `memory_budget` bytes. Raises `ProbeError` on
    non-finite or mismatched features.
    """
    splits, _ = validate_probe_inputs({"train": (train_x, None), "query": (query_x, None)}, 2)
    return _search(
        splits["train"][0], splits["query"][0], k, variant, chunk_size, train_chunk_size, memory_budget
    )


def _search(
    train: torch.Tensor,
    query: torch.Tensor,
    k: int,
    variant: str,
    chunk_size: int | None,
    train_chunk_size: int | None,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    if variant not in VARIANTS:
        raise ProbeError(f"unknown kNN variant {variant!r}; choose one of {VARIANTS}")
    if k < 1:
        raise ProbeError(f"k must be >= 1, got {k}")
    n, dim = train.shape
    m = len(query)
    if k > n:
        logger.info("k=%d exceeds the %d training rows; using k=%d", k, n, n)
        k = n
    center = train.mean(dim=0) if variant == "uni" else None
    cached = n * dim * _F32 <= memory_budget // 2
    q_auto, t_auto = plan_chunks(n, m, dim, k, memory_budget, cached)
    for name, value in (("chunk_size", chunk_size), ("train_chunk_size", train_chunk_size)):
        if value is not None and value < 1:
            raise ProbeError(f"{name} must be >= 1, got {value}")
    q_step = chunk_size or _even_steps(m, q_auto)
    t_step = train_chunk_size or t_auto
    bank = _prepare(train, center) if cached else None
    sims_out = torch.empty(m, k, dtype=torch.float32, device=train.device)
    idx_out = torch.empty(m, k, dtype=torch.int64, device=train.device)
    # One similarity buffer for every block (torch.mm writes into it; topk reads it in place).
    buffer = torch.empty(min(q_step, m) * min(t_step, n), dtype=torch.float32, device=train.device)
    with torch.no_grad():
        for q0 in range(0, m, q_step):
            q = query[q0 : q0 + q_step]
            if center is not None:
                q = q - center
            # Rows are ranked by q . t / |t|: the query norm only rescales a row, so it divides the k best
            # similarities afterwards instead of a normalised copy of the chunk (same floor as F.normalize).
            q_norm = torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min_(_EPS)
            best_s: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for t0 in range(0, n, t_step):
                block = (
                    bank[t0 : t0 + t_step] if bank is not None else _prepare(train[t0 : t0 + t_step], center)
                )
                sims = buffer[: len(q) * len(block)].view(len(q), len(block))
                torch.mm(q, block.t(), out=sims)
                s, i = sims.topk(min(k, len(block)), dim=1)
                if best_s is None:
                    best_s, best_i = s, i
                else:  # running merge: keep the k best of (previous best, this block's best)
                    i += t0
                    merged = torch.cat([best_s, s], dim=1)
                    s, pos = merged.topk(min(k, merged.shape[1]), dim=1)
                    best_i = torch.cat([best_i, i], dim=1).gather(1, pos)
                    best_s = s
            assert best_s is not None and best_i is not None
            torch.div(best_s, q_norm, out=sims_out[q0 : q0 + q_step])
            idx_out[q0 : q0 + q_step] = best_i
    return sims_out, idx_out


def knn_proba(
    train_x: ArrayLike,
    train_y: ArrayLike,
    query_x: ArrayLike,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    variant: Variant = "dino",
    chunk_size: int | None = None,
    train_chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    balanced: bool = False,
    allow_missing_classes: bool = False,
) -> np.ndarray:
    """kNN class probabilities (M, num_classes), numpy float64, for query features (M, D).

    Train features (N, D) with labels (N,) in [0, num_classes). "dino": neighbours vote with weight
    exp(similarity / temperature) (computed relative to each query's best similarity, which cancels in the
    normalisation); "uni": centred features, uniform votes (temperature unused). Probabilities are each
    class's share of the vote; with `balanced`, each class's vote sum is first divided by the class's share
    of the training rows (votes reweighted by the inverse class prior). Classes without training rows (only
    with `allow_missing_classes=True`) get 0.
    See `knn_search` for k, chunking and memory. Raises `ProbeError` on invalid input.
    """
    if variant == "dino" and not temperature > 0:
        raise ProbeError(f"temperature must be > 0, got {temperature}")
    splits, _ = validate_probe_inputs(
        {"train": (train_x, train_y), "query": (query_x, None)},
        num_classes,
        allow_missing_classes=allow_missing_classes,
    )
    (train, labels), (query, _) = splits["train"], splits["query"]
    assert labels is not None
    sims, idx = _search(train, query, k, variant, chunk_size, train_chunk_size, memory_budget)
    # The (M, k) votes are tallied in numpy on the host: a handful of tiny ops that would each be a parallel
    # region (or a kernel launch) in torch, where a busy CPU makes every one of them wait for its threads.
    top = sims.cpu().numpy().astype(np.float64)
    train_labels = labels.cpu().numpy()
    voters = train_labels[idx.cpu().numpy()]
    weights = np.ones_like(top) if variant == "uni" else np.exp((top - top[:, :1]) / temperature)
    cells = (np.arange(len(top))[:, None] * num_classes + voters).ravel()
    votes = np.bincount(cells, weights=weights.ravel(), minlength=len(top) * num_classes)
    votes = votes.reshape(len(top), num_classes)
    if balanced:  # dividing by counts rather than counts / N: the constant N cancels in the normalisation
        votes /= np.maximum(np.bincount(train_labels, minlength=num_classes), 1)
    return votes / votes.sum(axis=1, keepdims=True)


def prototype_proba(
    train_x: ArrayLike,
    train_y: ArrayLike,
    query_x: ArrayLike,
    *,
    num_classes: int,
    center: bool = True,
    temperature: float = 0.1,
    chunk_size: int = 8192,
    allow_missing_classes: bool = False,
) -> np.ndarray:
    """SimpleShot nearest-class-mean probabilities (M, num_classes), numpy float64.

    Features are centred on the training mean (when `center`) and L2-normalised; each class's prototype is
    the mean of its normalised training rows (not re-normalised). A query's probabilities are
    softmax(-d / temperature) over its Euclidean distances d to the prototypes, so the most probable class is
    always the nearest prototype; distances lie in [0, 2], and the default temperature 0.1 spreads them
    into usable confidences (it changes calibration, never the prediction). Classes without training rows
    (only with `allow_missing_classes=True`) have no prototype and get 0. Queries are processed
    `chunk_size` rows at a time. Raises `ProbeError` on invalid input.
    """
    if not temperature > 0:
        raise ProbeError(f"temperature must be > 0, got {temperature}")
    splits, present = validate_probe_inputs(
        {"train": (train_x, train_y), "query": (query_x, None)},
        num_classes,
        allow_missing_classes=allow_missing_classes,
    )
    (train, labels), (query, _) = splits["train"], splits["query"]
    assert labels is not None
    mean = train.mean(dim=0) if center else None
    with torch.no_grad():
        feats = _prepare(train, mean)
        sums = torch.zeros(num_classes, train.shape[1], device=train.device).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
        present = present.to(train.device)
        protos = sums[present] / counts[present, None]
        out = torch.zeros(len(query), num_classes, dtype=torch.float64, device=train.device)
        for q0 in range(0, len(query), chunk_size):
            q = _prepare(query[q0 : q0 + chunk_size], mean)
            d = torch.cdist(q, protos, compute_mode="donot_use_mm_for_euclid_dist").double()
            out[q0 : q0 + chunk_size, present] = torch.softmax(-d / temperature, dim=1)
    return out.cpu().numpy()
