"""Pretraining objectives as plain functions over tensors (no modules, no framework beyond torch).

Conventions shared by every loss here:

- token tensors are (B, N, D) or, where stated, (B, 1 + N, D) with the CLS token first;
- masks are (B, N) bool over patch positions, True = masked;
- inputs of any floating dtype are cast to fp32 before any reduction, so every loss is an fp32 scalar even
  under fp16/bf16 autocast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from panderm.errors import ConfigError, PandermError

log = logging.getLogger(__name__)

ClipPositions = Literal["masked", "all", "all+cls"]
CLIP_POSITIONS = ("masked", "all", "all+cls")
EmaLoss = Literal["smooth_l1", "mse", "cosine"]
EMA_LOSSES = ("smooth_l1", "mse", "cosine")


class PretrainError(PandermError):
    """Inputs to a pretraining objective or method are inconsistent (shapes, dims, masks)."""


class NonFiniteLossError(PretrainError):
    """A loss term became NaN or Inf; `step` and `terms` (name -> value) say where."""

    def __init__(self, step: int, terms: Mapping[str, float]) -> None:
        self.step = step
        self.terms = dict(terms)
        listed = ", ".join(f"{name}={value}" for name, value in self.terms.items())
        super().__init__(
            f"non-finite loss at step {step}: {listed}. Lower the learning rate, enable gradient clipping, "
            "use bf16 instead of fp16, or set the non-finite policy to 'skip' to drop such batches"
        )


def _check_tokens(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise PretrainError(
            f"{what}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )


def _check_mask(mask: Tensor, batch: int, n: int, what: str) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, n):
        raise PretrainError(
            f"{what}: mask must be bool of shape ({batch}, {n}), got {mask.dtype} {tuple(mask.shape)}"
        )


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of `values` over all positions, or weighted by `weight` (0 when every weight is 0)."""
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype).expand_as(values)
    # clamp: an empty selection (e.g. nothing visible) contributes 0 rather than NaN
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def cosine_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``1 - cos(pred, target)`` along the last dim, over all leading positions.

    `pred` and `target` are (..., D) of the same shape (both are L2-normalised here, so the loss is
    invariant to their scale); `weight` is optional, broadcastable to the leading shape (...), e.g. a bool
    mask selecting positions. Returns an fp32 scalar in [0, 2]: 0 for parallel, 1 for orthogonal, 2 for
    opposite vectors. Raises `PretrainError` on a shape mismatch.
    """
    _check_tokens(pred, target, "cosine_loss")
    cos = (F.normalize(pred.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1)
    return _weighted_mean(1.0 - cos, weight)


def mlm_clip_loss(
    pred_tokens: Tensor,
    teacher_tokens: Tensor,
    mask: Tensor,
    *,
    positions: ClipPositions = "masked",
    reconstruction_weight: float = 1.0,
    alignment_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Masked feature prediction onto CLIP teacher tokens (PanDerm/CAEv2-style), with cosine distances.

    `pred_tokens` and `teacher_tokens` are (B, 1 + N, D_t), CLS first; `mask` is (B, N) bool, True = masked.
    Terms (each an fp32 scalar; inactive terms are 0):

    - ``reconstruction``: cosine loss over masked patch positions (always);
    - ``alignment``: cosine loss over visible patch positions (positions "all" and "all+cls");
    - ``cls``: cosine loss of the CLS token (positions "all+cls").

    ``loss = reconstruction_weight * reconstruction + alignment_weight * (alignment + cls)``.
    Raises `ConfigError` for an unknown `positions`, `PretrainError` for inconsistent shapes.
    """
    if positions not in CLIP_POSITIONS:
        raise ConfigError(f"positions={positions!r} is not one of {CLIP_POSITIONS}")
    _check_tokens(pred_tokens, teacher_tokens, "mlm_clip_loss")
    batch, n = pred_tokens.shape[0], pred_tokens.shape[1] - 1
    _check_mask(mask, batch, n, "mlm_clip_loss")
    pred_patches, target_patches = pred_tokens[:, 1:], teacher_tokens[:, 1:]
    zero = pred_tokens.new_zeros((), dtype=torch.float32)
    reconstruction = cosine_loss(pred_patches, target_patches, mask)
    alignment = cosine_loss(pred_patches, target_patches, ~mask) if positions != "masked" else zero
    cls = cosine_loss(pred_tokens[:, 0], teacher_tokens[:, 0]) if positions == "all+cls" else zero
    loss = reconstruction_weight * reconstruction + alignment_weight * (alignment + cls)
    return {"loss": loss, "reconstruction": reconstruction, "alignment": alignment, "cls": cls}


def mlm_ema_loss(
    pred: Tensor, target: Tensor, mask: Tensor, *, loss: EmaLoss = "smooth_l1", beta: float = 2.0
) -> Tensor:
    """Regression of predictions onto (already normalised) EMA-teacher targets at masked positions only.

    `pred` and `target` are (B, N, D) patch tokens (no CLS), `mask` (B, N) bool. "smooth_l1" (Huber-like with
    transition point `beta`) and "mse" average over the masked tokens' elements; "cosine" averages
    ``1 - cos`` over masked tokens. Returns an fp32 scalar; raises `ConfigError` / `PretrainError`.
    """
    if loss not in EMA_LOSSES:
        raise ConfigError(f"loss={loss!r} is not one of {EMA_LOSSES}")
    _check_tokens(pred, target, "mlm_ema_loss")
    _check_mask(mask, pred.shape[0], pred.shape[1], "mlm_ema_loss")
    if loss == "cosine":
        return cosine_loss(pred, target, mask)
    pred, target = pred.float(), target.float()
    if loss == "mse":
        per_token = F.mse_loss(pred, target, reduction="none").mean(-1)
    else:
        per_token = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(-1)
    return _weighted_mean(per_token, mask)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images (B, C, H, W) into flattened patches (B, N, p*p*C), N = (H/p)·(W/p).

    Layout (the MAE convention): patches are listed row by row (index = row·(W/p) + col, the same order as
    the ViT's patch tokens), and inside a patch values are ordered (y, x, channel) with the channel fastest,
    i.e. element ``[b, i, (dy*p + dx)*C + c] == images[b, c, row*p + dy, col*p + dx]``.
    Raises `PretrainError` when H or W is not a multiple of `patch_size`.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise PretrainError(f"image size {h}x{w} is not a multiple of patch_size={p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: Tensor, patch_size: int, grid: tuple[int, int] | None = None, channels: int = 3
) -> Tensor:
    """Inverse of `patchify`: (B, N, p*p*C) -> (B, C, gh*p, gw*p); `grid` (gh, gw) defaults to square."""
    b, n, _ = patches.shape
    p = patch_size
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise PretrainError(f"{n} patches do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != n or patches.shape[-1] != p * p * channels:
        raise PretrainError(
            f"patches {tuple(patches.shape)} do not match grid {grid}, patch_size={p}, channels={channels}"
        )
    x = patches.reshape(b, gh, gw, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * p, gw * p)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch standardisation over the last dim: ``(x - mean) / sqrt(var + eps)`` (population variance)."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(
    pred_patches: Tensor, images: Tensor, mask: Tensor, patch_size: int, *, norm_pix: bool = True
) -> Tensor:
    """MAE pixel reconstruction: MSE between predicted and true patches, averaged over masked patches only.

    `pred_patches` is (B, N, p*p*C) in the `patchify` layout, `images` (B, C, H, W), `mask` (B, N) bool.
    With `norm_pix` every target patch is standardised by its own mean and variance (`normalize_patches`).
    Returns an fp32 scalar; raises `PretrainError` for inconsistent shapes.
    """
    target = patchify(images.float(), patch_size)
    _check_tokens(pred_patches, target, "mae_loss")
    _check_mask(mask, target.shape[0], target.shape[1], "mae_loss")
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred_patches.float() - target).pow(2).mean(-1)
    return _weighted_mean(per_patch, mask)


def check_finite(
    loss: Tensor | Mapping[str, Tensor], step: int, *, policy: Literal["raise", "skip"] = "raise"
) -> bool:
    """True when every loss term is finite; otherwise raise or tell the caller to skip the batch.

    `loss` is a scalar tensor (named "loss") or a mapping of named scalar terms (e.g. a method's output).
    With policy "raise" a non-finite term raises `NonFiniteLossError` naming `step` and each bad term; with
    "skip" a warning is logged and False is returned. One device sync per call.
    """
    if policy not in ("raise", "skip"):
        raise ConfigError(f"non-finite policy={policy!r} is not 'raise' or 'skip'")
    terms = {"loss": loss} if isinstance(loss, Tensor) else dict(loss)
    names = [name for name, value in terms.items() if isinstance(value, Tensor)]
    if not names:
        return True
    values = torch.stack([terms[name].detach().float().reshape(()) for name in names])
    if bool(torch.isfinite(values).all()):
        return True
    bad = {name: float(v) for name, v in zip(names, values.tolist(), strict=True) if not math.isfinite(v)}
    if policy == "raise":
        raise NonFiniteLossError(step, bad)
    log.warning("skipping batch at step %d: non-finite loss terms %s", step, bad)
    return False


# --- self-distillation (DINO / iBOT) and contrastive (SimCLR) losses ---------------------------------------


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_sum(x: Tensor) -> Tensor:
    """`x` summed over all processes (a copy; `x` itself when not distributed). No gradient flows."""
    if not _distributed():
        return x
    x = x.clone()
    torch.distributed.all_reduce(x)
    return x


def global_count(n: int, device: torch.device) -> int:
    """`n` summed over all processes."""
    return int(global_sum(torch.tensor(float(n), device=device)).item())


def entropy(probs: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the distributions along the last dim of `probs` (..., K); fp32."""
    probs = probs.float()
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


def centered_softmax(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINO's teacher targets: ``softmax((logits - center) / temperature)`` along the last dim, in fp32.

    `teacher_logits` is (..., K), `center` broadcastable to it (K,). No gradient flows (teachers are
    targets)."""
    return F.softmax((teacher_logits.detach().float() - center.float()) / temperature, dim=-1)


@torch.no_grad()
def center_update(center: Tensor, teacher_logits: Tensor, momentum: float) -> Tensor:
    """The new centre ``momentum * center + (1 - momentum) * mean(teacher_logits)`` over every leading
    position of (..., K) logits on all processes; returns (K,) fp32."""
    flat = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    count = global_count(flat.shape[0], flat.device)
    if count == 0:  # e.g. no masked patch anywhere: nothing to average
        return center.float()
    mean = global_sum(flat.sum(0)) / count
    return center.float() * momentum + mean * (1.0 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Balanced teacher targets (SwAV / DINOv2): rows of ``exp(logits / temperature)`` alternately scaled so
    every prototype gets an equal share of the batch (over all processes) and every sample sums to 1.

    `teacher_logits` is (B, K); returns (B, K) fp32 whose rows sum to 1 and whose columns each sum to
    B_total / K after the last (row) step up to the iterations' convergence.
    """
    if iterations < 1:
        raise ConfigError(f"sinkhorn iterations={iterations} must be at least 1")
    logits = teacher_logits.detach().float() / temperature
    # subtract the global max before exp: the same constant for every entry, so the result is unchanged
    q = (logits - global_max(logits)).exp().t()  # (K, B)
    k, b = q.shape
    b_total = global_count(b, q.device)
    q = q / global_sum(q.sum())
    for _ in range(iterations):
        q = q / global_sum(q.sum(dim=1, keepdim=True)) / k  # each prototype: mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / b_total  # each sample: mass 1/B_total
    return (q * b_total).t()


def global_max(x: Tensor) -> Tensor:
    """Largest entry of `x` over all processes (a 0-d tensor)."""
    top = x.detach().amax()
    if _distributed():
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    return top


def dino_loss(
    student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor], temperature: float
) -> Tensor:
    """DINO's multi-crop cross-entropy ``H(p_t, softmax(s / temperature))`` averaged over view pairs.

    `teacher_probs` are the V_t global views' targets (B, K) (rows sum to 1), `student_logits` the student's
    (B, K) logits for every view, its first V_t in the same order as the teacher's; a pair of the same view is
    skipped. Each pair's cross-entropy is averaged over the batch. When the student's softmax equals the
    teacher's targets, the loss is the teacher's entropy. Returns an fp32 scalar.
    """
    if len(teacher_probs) > len(student_logits):
        raise PretrainError(
            f"dino_loss: {len(teacher_probs)} teacher views but only {len(student_logits)} student views"
        )
    log_probs = [F.log_softmax(s.float() / temperature, dim=-1) for s in student_logits]
    total, pairs = student_logits[0].new_zeros((), dtype=torch.float32), 0
    for i, target in enumerate(teacher_probs):
        for j, log_p in enumerate(log_probs):
            if i == j:
                continue
            _check_tokens(log_p, target, "dino_loss")
            total = total - (target.float() * log_p).sum(-1).mean()
            pairs += 1
    if pairs == 0:
        raise PretrainError("dino_loss needs at least two views (a teacher view and another student view)")
    return total / pairs


def masked_patch_distillation_loss(
    student_logits: Tensor, teacher_probs: Tensor, mask: Tensor, temperature: float
) -> Tensor:
    """iBOT's masked-image-modelling term: cross-entropy between the teacher's patch targets (B, N, K) and the
    student's patch logits (B, N, K) at masked positions (`mask` (B, N) bool, True = masked), averaged over
    each image's masked patches, then over images that have any. Returns an fp32 scalar (0 with no mask)."""
    _check_tokens(student_logits, teacher_probs, "masked_patch_distillation_loss")
    _check_mask(mask, student_logits.shape[0], student_logits.shape[1], "masked_patch_distillation_loss")
    ce = -(teacher_probs.float() * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1)
    per_image = (ce * mask).sum(1) / mask.sum(1).clamp_min(1)
    has_mask = mask.any(1)
    return _weighted_mean(per_image, has_mask)


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser (DINOv2): ``-mean_i log(min_{j != i} ||x_i - x_j||)`` on L2-normalised (B, D)
    features; it spreads features uniformly. Needs B >= 2. Returns an fp32 scalar."""
    if features.shape[0] < 2:
        raise PretrainError(f"koleo_loss needs at least 2 samples, got {features.shape[0]}")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # never one's own neighbour
        nearest = sims.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -(distances + eps).log().mean()


def gather_with_grad(x: Tensor) -> Tensor:
    """(B, D) rows of every process, concatenated in rank order; gradients flow back to each rank's rows."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # the autograd-aware all_gather

    return torch.cat(dist_fn.all_gather(x), dim=0)


def info_nce_loss(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's NT-Xent: for each of the 2B embeddings (B, D) of two views, cross-entropy of picking its
    partner among the other 2B - 1 by cosine similarity / `temperature`. Negatives come from every process
    (rows gathered with gradient), so DDP gives the single-process loss on the global batch. Symmetric in
    (z1, z2). Returns an fp32 scalar."""
    _check_tokens(z1, z2, "info_nce_loss")
    local = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    all_z = torch.cat([gather_with_grad(z1), gather_with_grad(z2)], dim=0)  # (2 B_total, D)
    b_total = all_z.shape[0] // 2
    offset = torch.distributed.get_rank() * local if _distributed() else 0
    rows = torch.arange(local, device=z1.device) + offset
    queries = torch.cat([z1, z2], dim=0)  # this rank's 2B queries
    index = torch.cat([rows, rows + b_total])  # their own positions in all_z
    partner = torch.cat([rows + b_total, rows])
    logits = queries @ all_z.t() / temperature
    logits = logits.masked_fill(F.one_hot(index, 2 * b_total).bool(), float("-inf"))
    return F.cross_entropy(logits, partner)
