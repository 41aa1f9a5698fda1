"""Pretraining methods: each owns its heads (and teacher) and turns student + masked batch into a loss.

The LightningModule only calls a method: ``out = method(encoder, images, mask, step=step)``, then
``loss = out["loss"]``, and after each optimiser step
``method.on_after_optimizer_step(encoder, step, total_steps)``.
Images are normalised with the student's mean/std; masks are (B, N) bool, True = masked, with equal counts
per row. Build methods from configs with `build_method`.

Optimisers must take only parameters with ``requires_grad=True``: `MlmEma` holds a frozen EMA teacher as a
submodule (so resumed runs restore it), whose parameters are listed by `parameters()` but never trained.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from panderm.errors import ConfigError
from panderm.models.encoder import Encoder
from panderm.models.teachers import EMATeacher, OpenClipTeacher, momentum_schedule
from panderm.pretrain.objectives import (
    CLIP_POSITIONS,
    ClipPositions,
    EmaLoss,
    PretrainError,
    mae_loss,
    mlm_clip_loss,
    mlm_ema_loss,
)
from panderm.pretrain.predictors import LatentRegressor, PixelDecoder, merge, select

log = logging.getLogger(__name__)


def _check_batch(encoder: Encoder, images: Tensor, mask: Tensor) -> None:
    n = encoder.num_patches
    if mask.dtype != torch.bool or tuple(mask.shape) != (images.shape[0], n):
        raise PretrainError(
            f"mask must be bool of shape (batch={images.shape[0]}, num_patches={n}), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def _detached(terms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: value if name == "loss" else value.detach() for name, value in terms.items()}


class Method(nn.Module):
    """Base class of pretraining methods (see the module docstring for the calling protocol)."""

    name: ClassVar[str]
    mask_mode: ClassVar[Literal["drop", "replace"]]

    def forward(self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0) -> dict[str, Tensor]:
        """Returns at least ``{"loss": fp32 scalar}`` plus detached named terms for logging."""
        raise NotImplementedError

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """Hook run after every optimiser step (e.g. the EMA update); a no-op by default."""


class MlmClip(Method):
    """Masked latent prediction onto CLIP teacher tokens (PanDerm / CAE v2 style).

    The student encodes the visible patches only; a `LatentRegressor` predicts the latents of the masked
    patches from them; one linear head maps every student token (CLS, visible, predicted masked) to the
    teacher's dim; targets are the frozen `OpenClipTeacher`'s tokens for the full image, resampled to the
    student's grid; the loss is `mlm_clip_loss` with the given `positions` and weights. The teacher holds no
    parameters visible to this module (nothing of it is trained or saved) and stays in eval mode.
    """

    name = "mlm_clip"
    mask_mode = "drop"

    def __init__(
        self,
        encoder: Encoder,
        teacher: OpenClipTeacher,
        *,
        positions: ClipPositions = "all",
        reconstruction_weight: float = 1.0,
        alignment_weight: float = 1.0,
        regressor_depth: int = 4,
        regressor_heads: int | None = None,
    ) -> None:
        super().__init__()
        if positions not in CLIP_POSITIONS:
            raise ConfigError(f"mlm_clip.positions={positions!r} is not one of {CLIP_POSITIONS}")
        self.teacher = teacher
        self.positions = positions
        self.reconstruction_weight = reconstruction_weight
        self.alignment_weight = alignment_weight
        self.regressor = LatentRegressor(encoder.embed_dim, regressor_depth, regressor_heads)
        self.head = nn.Linear(encoder.embed_dim, teacher.embed_dim)

    def forward(self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0) -> dict[str, Tensor]:
        _check_batch(encoder, images, mask)
        latents = encoder.tokens(images, mask, mode="drop")
        cls, visible = latents[:, :1], latents[:, 1:]
        pos = encoder.patch_pos_embed().expand(images.shape[0], -1, -1)
        predicted = self.regressor(visible, select(pos, ~mask), select(pos, mask))
        student = self.head(torch.cat([cls, merge(visible, predicted, mask)], dim=1))
        target = self.teacher.tokens_for_grid(images, encoder.grid_size)
        terms = mlm_clip_loss(
            student,
            target,
            mask,
            positions=self.positions,
            reconstruction_weight=self.reconstruction_weight,
            alignment_weight=self.alignment_weight,
        )
        return _detached(terms)


class MlmEma(Method):
    """Masked prediction of an EMA teacher's averaged, layer-normalised block outputs (data2vec style).

    The student sees mask tokens in place of masked patches; a linear head predicts, at masked positions,
    the `EMATeacher` target computed from the unmasked image (the average of the last `top_k` blocks' outputs,
    each layer-normalised without affine); loss `mlm_ema_loss`. After each optimiser step the teacher moves
    towards the student with momentum `momentum_schedule(step, total_steps, base_momentum, final_momentum)`.

    The teacher is copied from `encoder` at construction (not lazily) so that a checkpoint of this method,
    teacher included, loads with strict key matching; call `setup(encoder)` to re-copy it after loading
    pretrained student weights into a fresh run.
    """

    name = "mlm_ema"
    mask_mode = "replace"

    def __init__(
        self,
        encoder: Encoder,
        *,
        top_k: int | None = None,
        loss: EmaLoss = "smooth_l1",
        beta: float = 2.0,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.top_k = top_k or min(6, encoder.depth)
        if not 1 <= self.top_k <= encoder.depth:
            raise ConfigError(f"mlm_ema.top_k={top_k} must be in [1, {encoder.depth}] (the encoder's depth)")
        self.loss, self.beta = loss, beta
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.head = nn.Linear(encoder.embed_dim, encoder.embed_dim)
        self.teacher = EMATeacher(encoder)

    def setup(self, encoder: Encoder) -> None:
        """Reset the EMA teacher to the student's current weights."""
        self.teacher.copy_from(encoder)

    def forward(self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0) -> dict[str, Tensor]:
        _check_batch(encoder, images, mask)
        latents = encoder.tokens(images, mask, mode="replace")
        pred = self.head(latents[:, 1:])
        target = self.teacher(images, self.top_k)[:, 1:]
        loss = mlm_ema_loss(pred, target, mask, loss=self.loss, beta=self.beta)
        # a collapsing teacher shows up as target variance falling towards 0
        return {"loss": loss, "target_var": target.var(dim=1).mean().detach()}

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        momentum = momentum_schedule(step, total_steps, self.base_momentum, self.final_momentum)
        self.teacher.update(encoder, momentum)


class Mae(Method):
    """Masked autoencoder: a `PixelDecoder` reconstructs the pixels of masked patches (loss `mae_loss`).

    The images the method receives are normalised with the student's mean/std, so MAE reconstructs those
    normalised pixel values (per patch standardised again when `norm_pix`, which makes the global
    normalisation irrelevant for the loss).
    """

    name = "mae"
    mask_mode = "drop"

    def __init__(
        self,
        encoder: Encoder,
        *,
        norm_pix: bool = True,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
    ) -> None:
        super().__init__()
        self.norm_pix = norm_pix
        self.patch_size = encoder.spec.patch_size
        self.decoder = PixelDecoder(
            encoder.embed_dim,
            encoder.grid_size,
            self.patch_size,
            decoder_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
        )

    def forward(self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0) -> dict[str, Tensor]:
        _check_batch(encoder, images, mask)
        pred = self.decoder(encoder.tokens(images, mask, mode="drop"), mask)
        return {"loss": mae_loss(pred, images, mask, self.patch_size, norm_pix=self.norm_pix)}


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (MlmClip, MlmEma, Mae)}


def build_method(name: str, encoder: Encoder, **kwargs: Any) -> Method:
    """Build a method by name ("mlm_clip", "mlm_ema", "mae") for `encoder`, with its keyword options.

    For "mlm_clip", `teacher` (required) is an `OpenClipTeacher` or a mapping of its keyword arguments
    (model_name, weights, image_size, project, ...; the student's mean/std default to `encoder.spec`'s).
    Raises `ConfigError` for an unknown name or option (listing the valid ones).
    """
    if name not in METHODS:
        raise ConfigError(f"pretraining method {name!r} is not one of {sorted(METHODS)}")
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "encoder")]
    if "teacher" in kwargs and "teacher" not in allowed:
        raise ConfigError(f"method {name!r} uses no open_clip teacher; set teacher=none (or use mlm_clip)")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {name!r}; valid options: {allowed}")
    if cls is MlmClip:
        teacher = kwargs.get("teacher")
        if teacher is None:
            raise ConfigError("method 'mlm_clip' needs an open_clip teacher (e.g. teacher=openclip_vitb16)")
        if isinstance(teacher, Mapping):
            options = {"student_mean": encoder.spec.mean, "student_std": encoder.spec.std, **teacher}
            kwargs["teacher"] = OpenClipTeacher(**options)
    return cls(encoder, **kwargs)
