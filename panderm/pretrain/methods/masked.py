"""Masked-image methods: latent regression onto CLIP (`MlmClip`), data2vec 2.0 against an EMA teacher
(`MlmEma`) and pixel reconstruction (`Mae`)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from panderm.errors import ConfigError
from panderm.models.encoder import Encoder
from panderm.models.teachers import EMATeacher, OpenClipTeacher, TargetNorm, TargetSource, momentum_schedule
from panderm.pretrain.methods.base import Method, check_batch, detached
from panderm.pretrain.objectives import (
    CLIP_POSITIONS,
    ClipPositions,
    EmaLoss,
    mae_loss,
    mlm_clip_loss,
    mlm_ema_loss,
)
from panderm.pretrain.predictors import LatentRegressor, PixelDecoder, merge, select

log = logging.getLogger(__name__)


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

    def forward(
        self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0, total_steps: int | None = None
    ) -> dict[str, Tensor]:
        check_batch(encoder, images, mask)
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
        return detached(terms)


class MlmEma(Method):
    """Masked prediction of an EMA teacher's contextual targets, data2vec 2.0 recipe by default.

    The student sees mask tokens in place of masked patches; a linear head predicts, at masked positions,
    the `EMATeacher` target computed from the unmasked image: the average over the last `top_k` blocks of
    each block's FFN output (`target_source="ffn"`), each instance-normalised over the image's tokens
    (`target_norm="instance"`), then layer-normalised (`final_norm`). A second linear head regresses the
    mean of the patch targets from the CLS token (weight `cls_weight`; it is what gives probes on CLS
    something to read). The teacher moves after each optimiser step with momentum
    `momentum_schedule(step, total_steps, base_momentum, final_momentum)`: 0.99 -> 0.999 by default, so it
    follows the student in a run of a few hundred steps (data2vec's 0.999+ assumes hundreds of thousands).
    ``target_source="block", target_norm="layer", final_norm=False, cls_weight=0`` is data2vec 1.

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
        loss: EmaLoss = "mse",
        beta: float = 2.0,
        target_source: TargetSource = "ffn",
        target_norm: TargetNorm = "instance",
        final_norm: bool = True,
        cls_weight: float = 1.0,
        base_momentum: float = 0.99,
        final_momentum: float = 0.999,
    ) -> None:
        super().__init__()
        self.top_k = top_k or max(1, round(encoder.depth * 5 / 6))  # data2vec 2.0: 10 of 12 blocks
        if not 1 <= self.top_k <= encoder.depth:
            raise ConfigError(f"mlm_ema.top_k={top_k} must be in [1, {encoder.depth}] (the encoder's depth)")
        self.loss, self.beta = loss, beta
        self.target = dict(source=target_source, norm=target_norm, final_norm=final_norm)
        self.cls_weight = cls_weight
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.head = nn.Linear(encoder.embed_dim, encoder.embed_dim)
        self.cls_head = nn.Linear(encoder.embed_dim, encoder.embed_dim)
        self.cls_head.requires_grad_(cls_weight > 0)  # an unused parameter would break DDP
        self.teacher = EMATeacher(encoder)

    def setup(self, encoder: Encoder) -> None:
        """Reset the EMA teacher to the student's current weights."""
        self.teacher.copy_from(encoder)

    def forward(
        self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0, total_steps: int | None = None
    ) -> dict[str, Tensor]:
        check_batch(encoder, images, mask)
        latents = encoder.tokens(images, mask, mode="replace")
        pred = self.head(latents[:, 1:])
        target = self.teacher(images, self.top_k, **self.target)[:, 1:]
        patch = mlm_ema_loss(pred, target, mask, loss=self.loss, beta=self.beta)
        terms = {"patch": patch.detach()}
        loss = patch
        if self.cls_weight > 0:
            cls = mlm_ema_loss(
                self.cls_head(latents[:, :1]),
                target.mean(1, keepdim=True),
                mask.new_ones(mask.shape[0], 1),
                loss=self.loss,
                beta=self.beta,
            )
            loss = loss + self.cls_weight * cls
            terms["cls"] = cls.detach()
        # a collapsing teacher shows up as target variance falling towards 0
        return {"loss": loss, **terms, "target_var": target.var(dim=1).mean().detach()}

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        momentum = momentum_schedule(step, total_steps, self.base_momentum, self.final_momentum)
        self.teacher.update(encoder, momentum)


class Mae(Method):
    """Masked autoencoder: a `PixelDecoder` reconstructs the pixels of masked patches (loss `mae_loss`).

    The images the method receives are normalised with the student's mean/std, so MAE reconstructs those
    normalised pixel values (per patch standardised again when `norm_pix`, which makes the global
    normalisation irrelevant for the loss). The decoder defaults to half the encoder's width and a third of
    its depth (ViT-tiny: 96-d x 4 blocks; ViT-L: MAE's 512-d x 8).
    """

    name = "mae"
    mask_mode = "drop"

    def __init__(
        self,
        encoder: Encoder,
        *,
        norm_pix: bool = True,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
    ) -> None:
        super().__init__()
        # sized relative to the encoder as MAE's ViT-L recipe (1024-d x 24 -> 512-d x 8, 16 heads): half the
        # width, a third of the depth, 32 channels per head
        decoder_dim = decoder_dim or max(32, encoder.embed_dim // 2)
        decoder_depth = decoder_depth or max(1, encoder.depth // 3)
        decoder_heads = decoder_heads or max(1, decoder_dim // 32)
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

    def forward(
        self, encoder: Encoder, images: Tensor, mask: Tensor, *, step: int = 0, total_steps: int | None = None
    ) -> dict[str, Tensor]:
        check_batch(encoder, images, mask)
        pred = self.decoder(encoder.tokens(images, mask, mode="drop"), mask)
        return {"loss": mae_loss(pred, images, mask, self.patch_size, norm_pix=self.norm_pix)}
