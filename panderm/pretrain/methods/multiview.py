"""Multi-view methods: DINO self-distillation on CLS with multi-crop (`Dino`), iBOT's masked patch
distillation on top of it (`Ibot`), and SimCLR's contrastive loss (`SimClr`), the small-budget baseline.

Each gets the views of `view_transform` (global views first) and returns its loss terms plus monitors
(teacher entropy and temperature for the distillation methods)."""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import Tensor

from panderm.data.transforms import MultiView, multi_crop
from panderm.errors import ConfigError
from panderm.models.encoder import Encoder
from panderm.models.teachers import EMATeacher, ema_update, momentum_schedule
from panderm.pretrain.heads import Projector, PrototypeHead
from panderm.pretrain.methods.base import PROBE_FEATURES, Method
from panderm.pretrain.objectives import (
    PretrainError,
    center_update,
    centered_softmax,
    dino_loss,
    entropy,
    info_nce_loss,
    koleo_loss,
    masked_patch_distillation_loss,
    sinkhorn_knopp,
)

Centering = Literal["center", "sinkhorn"]


def teacher_temperature(step: int, total_steps: int | None, start: float, end: float, warmup: float) -> float:
    """DINO's teacher temperature: linear from `start` to `end` over the first `warmup` fraction of the run,
    then constant (`end` at once when the run length is unknown or `warmup` is 0)."""
    if not total_steps or warmup <= 0:
        return end
    progress = min(1.0, step / max(1.0, warmup * total_steps))
    return start + (end - start) * progress


def _views(images: Tensor | list[Tensor], needed: int, name: str) -> list[Tensor]:
    if not isinstance(images, list | tuple) or len(images) < needed:
        got = len(images) if isinstance(images, list | tuple) else "one batch of images"
        raise PretrainError(f"{name} needs a list of at least {needed} views, got {got}")
    return list(images)


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


class Dino(Method):
    """DINO: the student's prototype scores for every view (`global_crops` at the image size, `local_crops`
    at `local_size`) match the EMA teacher's centred, sharpened scores for the global views
    (`dino_loss`); targets are centred (`center`, momentum `center_momentum`) or balanced by Sinkhorn-Knopp
    (`centering="sinkhorn"`); the teacher temperature warms up from `warmup_teacher_temp` over the first
    `teacher_temp_warmup` of the run; `koleo_weight` adds DINOv2's KoLeo on the student's global CLS tokens.
    The teacher (encoder and head) moves after each step with momentum ``momentum_schedule(step, total,
    base_momentum, final_momentum)``.
    """

    name = "dino"
    mask_mode = "none"
    num_masks = 0

    def __init__(
        self,
        encoder: Encoder,
        *,
        num_prototypes: int = 4096,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        global_crops: int = 2,
        local_crops: int = 6,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        centering: Centering = "center",
        center_momentum: float = 0.9,
        koleo_weight: float = 0.0,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        if global_crops < 2 and local_crops < 1:
            raise ConfigError(f"{self.name} needs two views at least: global_crops=2 or local_crops >= 1")
        if centering not in ("center", "sinkhorn"):
            raise ConfigError(f"{self.name}.centering={centering!r} is not 'center' or 'sinkhorn'")
        self.global_crops, self.local_crops = global_crops, local_crops
        self.crops = dict(
            local_size=local_size, global_scale=tuple(global_scale), local_scale=tuple(local_scale)
        )
        self.student_temp = student_temp
        self.temps = (warmup_teacher_temp, teacher_temp, teacher_temp_warmup)
        self.centering, self.center_momentum = centering, center_momentum
        self.koleo_weight = koleo_weight
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.head_shape = dict(hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, layers=head_layers)
        self.head = PrototypeHead(encoder.embed_dim, num_prototypes, **self.head_shape)
        self.teacher = EMATeacher(encoder)
        self.teacher_head = _frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(num_prototypes))

    def view_transform(self, image_size: int) -> MultiView:
        return multi_crop(
            image_size, global_crops=self.global_crops, local_crops=self.local_crops, **self.crops
        )

    def setup(self, encoder: Encoder) -> None:
        """Reset the teacher to the student's current weights (after loading pretrained student weights)."""
        self.teacher.copy_from(encoder)
        self.teacher_head.load_state_dict(self.head.state_dict())

    def _targets(self, logits: Tensor, center: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """Teacher targets for (..., K) logits and the updated centre (unchanged with Sinkhorn)."""
        if self.centering == "sinkhorn":
            flat = logits.reshape(-1, logits.shape[-1])
            return sinkhorn_knopp(flat, temperature).reshape(logits.shape), center
        return centered_softmax(logits, center, temperature), center_update(
            center, logits, self.center_momentum
        )

    def _student(
        self, encoder: Encoder, views: list[Tensor], mask: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """Student tokens of the global views (masked where `mask` is given) (G*B, 1 + N, D) and the CLS
        tokens of every view (one (B, D) per view)."""
        batch = views[0].shape[0]
        flat_mask = (
            None if mask is None else mask[:, : self.global_crops].transpose(0, 1).reshape(-1, mask.shape[-1])
        )
        global_tokens = encoder.tokens(torch.cat(views[: self.global_crops]), flat_mask, mode="replace")
        cls = list(global_tokens[:, 0].split(batch))
        if len(views) > self.global_crops:
            cls += list(encoder.tokens(torch.cat(views[self.global_crops :]))[:, 0].split(batch))
        return global_tokens, cls

    def _distillation(
        self, encoder: Encoder, views: list[Tensor], mask: Tensor | None, step: int, total_steps: int | None
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, float]:
        """The CLS terms shared by DINO and iBOT; also returns student and teacher global tokens and the
        teacher temperature."""
        views = _views(views, self.global_crops + self.local_crops, self.name)
        batch = views[0].shape[0]
        temp = teacher_temperature(step, total_steps, *self.temps)
        student_tokens, student_cls = self._student(encoder, views, mask)
        student_logits = list(self.head(torch.cat(student_cls)).split(batch))
        with torch.no_grad():
            teacher_tokens = self.teacher.encoder.tokens(torch.cat(views[: self.global_crops]))
            teacher_logits = self.teacher_head(teacher_tokens[:, 0])
            targets, center = self._targets(teacher_logits, self.center, temp)
        distill = dino_loss(student_logits, list(targets.split(batch)), self.student_temp)
        self.center.copy_(center)
        terms = {"loss": distill, "dino": distill.detach(), "teacher_entropy": entropy(targets)}
        if self.koleo_weight > 0:
            koleo = sum(koleo_loss(c) for c in student_cls[: self.global_crops]) / self.global_crops
            terms["loss"] = terms["loss"] + self.koleo_weight * koleo
            terms["koleo"] = koleo.detach()
        terms["teacher_temp"] = torch.tensor(temp)
        return terms, student_tokens, teacher_tokens, temp

    def forward(
        self,
        encoder: Encoder,
        images: Tensor | list[Tensor],
        mask: Tensor | None = None,
        *,
        step: int = 0,
        total_steps: int | None = None,
    ) -> dict[str, Tensor]:
        terms, student_tokens, *_ = self._distillation(encoder, images, None, step, total_steps)
        terms[PROBE_FEATURES] = student_tokens[: images[0].shape[0], 0].detach()  # first view, unmasked
        return terms

    def _momentum(self, step: int, total_steps: int) -> float:
        return momentum_schedule(step, total_steps, self.base_momentum, self.final_momentum)

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        momentum = self._momentum(step, total_steps)
        self.teacher.update(encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)


class Ibot(Dino):
    """iBOT: DINO on CLS plus masked patch distillation. Each global view reaches the student with its own
    mask (mask tokens in place of the masked patches, `num_masks` = `global_crops`) and the teacher unmasked;
    at masked positions the student's patch scores match the teacher's centred patch scores
    (`masked_patch_distillation_loss`, own centre, weight `patch_weight`). The head is shared between CLS
    and patches unless `separate_patch_head` (DINOv2's default is shared)."""

    name = "ibot"
    mask_mode = "replace"

    def __init__(
        self, encoder: Encoder, *, patch_weight: float = 1.0, separate_patch_head: bool = False, **kwargs
    ) -> None:
        super().__init__(encoder, **kwargs)
        self.num_masks = self.global_crops
        self.patch_weight = patch_weight
        num_prototypes = self.head.prototypes.shape[0]
        if separate_patch_head:
            self.patch_head = PrototypeHead(encoder.embed_dim, num_prototypes, **self.head_shape)
            self.teacher_patch_head = _frozen_copy(self.patch_head)
        self.register_buffer("patch_center", torch.zeros(num_prototypes))

    def _patch_heads(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        if hasattr(self, "patch_head"):
            return self.patch_head, self.teacher_patch_head
        return self.head, self.teacher_head

    def setup(self, encoder: Encoder) -> None:
        super().setup(encoder)
        if hasattr(self, "patch_head"):
            self.teacher_patch_head.load_state_dict(self.patch_head.state_dict())

    def forward(
        self,
        encoder: Encoder,
        images: Tensor | list[Tensor],
        mask: Tensor | None = None,
        *,
        step: int = 0,
        total_steps: int | None = None,
    ) -> dict[str, Tensor]:
        views = _views(images, self.global_crops, self.name)
        batch, n = views[0].shape[0], encoder.num_patches
        if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != (batch, self.global_crops, n):
            got = None if mask is None else f"{mask.dtype} {tuple(mask.shape)}"
            raise PretrainError(
                f"ibot needs masks of shape ({batch}, {self.global_crops}, {n}) bool, got {got}"
            )
        terms, student_tokens, teacher_tokens, temp = self._distillation(
            encoder, views, mask, step, total_steps
        )
        student_head, teacher_head = self._patch_heads()
        flat_mask = mask.transpose(0, 1).reshape(-1, n)  # view-major, as the global tokens
        student_patches = student_head(student_tokens[:, 1:][flat_mask])  # masked positions only
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_tokens[:, 1:][flat_mask])
            targets, center = self._targets(teacher_logits, self.patch_center, temp)
        scattered = student_patches.new_zeros((*flat_mask.shape, student_patches.shape[-1]))
        student_full = scattered.masked_scatter(flat_mask[..., None], student_patches)
        target_full = targets.new_zeros(student_full.shape).masked_scatter(flat_mask[..., None], targets)
        patch = masked_patch_distillation_loss(student_full, target_full, flat_mask, self.student_temp)
        self.patch_center.copy_(center)
        terms["loss"] = terms["loss"] + self.patch_weight * patch
        terms["patch"] = patch.detach()
        terms["patch_teacher_entropy"] = entropy(targets)
        return terms

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        super().on_after_optimizer_step(encoder, step, total_steps)
        if hasattr(self, "patch_head"):
            ema_update(self.teacher_patch_head, self.patch_head, self._momentum(step, total_steps))


class SimClr(Method):
    """SimCLR: two views of each image, their CLS tokens through a `Projector`, `info_nce_loss` at
    `temperature` with every other view of the (global) batch as negatives. No teacher, no masks: the
    cheapest method per step, and the one that learns first at small budgets. `view_size` trains on views
    smaller than the encoder's image size (a multiple of the patch size; position embeddings are resampled),
    a quarter of the compute at half the side: the encoder still exports and evaluates at its own size."""

    name = "simclr"
    mask_mode = "none"
    num_masks = 0

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = 0.2,
        proj_dim: int = 128,
        hidden_dim: int = 1024,
        proj_layers: int = 2,
        scale: tuple[float, float] = (0.25, 1.0),
        view_size: int | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0 or not math.isfinite(temperature):
            raise ConfigError(f"simclr.temperature={temperature} must be a positive number")
        self.temperature, self.scale, self.view_size = temperature, tuple(scale), view_size
        self.projector = Projector(encoder.embed_dim, proj_dim, hidden_dim=hidden_dim, layers=proj_layers)

    def view_transform(self, image_size: int) -> MultiView:
        return multi_crop(self.view_size or image_size, global_crops=2, global_scale=self.scale)

    def forward(
        self,
        encoder: Encoder,
        images: Tensor | list[Tensor],
        mask: Tensor | None = None,
        *,
        step: int = 0,
        total_steps: int | None = None,
    ) -> dict[str, Tensor]:
        views = _views(images, 2, self.name)
        batch = views[0].shape[0]
        cls = encoder.tokens(torch.cat(views[:2]))[:, 0]
        z1, z2 = self.projector(cls).split(batch)
        return {"loss": info_nce_loss(z1, z2, self.temperature), PROBE_FEATURES: cls[:batch].detach()}
