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
from collections.abc import Mapping
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
