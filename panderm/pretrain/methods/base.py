"""The method protocol every pretraining objective follows, and what methods share.

The LightningModule only calls a method: ``out = method(encoder, images, mask, step=step,
total_steps=total)``, then ``loss = out["loss"]``, and after each optimiser step
``method.on_after_optimizer_step(encoder, step, total_steps)``.

- masked-image methods (`mask_mode` "drop" or "replace") get one batch of images (B, 3, H, W), normalised
  with the student's mean/std, and masks (B, N) bool, True = masked, with equal counts per row;
- multi-view methods (`view_transform` returns a `MultiView`) get the list of views, each (B, 3, h, w), global
  views first, and, when `num_masks` > 0, masks (B, num_masks, N) for their first `num_masks` views.

A method that already computes the unmasked final-norm CLS of `images` (the first view) may return it,
detached, as ``out[PROBE_FEATURES]`` (B, D): the online probe then trains on it instead of running the encoder
again (a sixth of a SimCLR step on the CPU).

Optimisers must take only parameters with ``requires_grad=True``: EMA teachers are frozen submodules (so
resumed runs restore them) whose parameters are listed by `parameters()` but never trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from panderm.data.transforms import MultiView
from panderm.models.encoder import Encoder
from panderm.pretrain.objectives import PretrainError

MaskMode = Literal["drop", "replace", "none"]
#: the key of the optional detached CLS features in a method's output (see the module docstring)
PROBE_FEATURES = "probe_features"


def check_batch(encoder: Encoder, images: Tensor, mask: Tensor) -> None:
    """Raise `PretrainError` unless `mask` is bool (B, N) for `images` and `encoder`."""
    n = encoder.num_patches
    if mask.dtype != torch.bool or tuple(mask.shape) != (images.shape[0], n):
        raise PretrainError(
            f"mask must be bool of shape (batch={images.shape[0]}, num_patches={n}), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def detached(terms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every term but "loss" detached (logged, never back-propagated)."""
    return {name: value if name == "loss" else value.detach() for name, value in terms.items()}


class Method(nn.Module):
    """Base class of pretraining methods (see the module docstring for the calling protocol)."""

    name: ClassVar[str]
    mask_mode: ClassVar[MaskMode]
    #: masks drawn per sample (0: none; 1: a (B, N) mask; more: (B, num_masks, N))
    num_masks: int = 1

    def view_transform(self, image_size: int) -> MultiView | None:
        """The training views this method needs (None: one augmented image, `train_transform`)."""
        return None

    def forward(
        self,
        encoder: Encoder,
        images: Tensor | list[Tensor],
        mask: Tensor | None,
        *,
        step: int = 0,
        total_steps: int | None = None,
    ) -> dict[str, Tensor]:
        """Returns at least ``{"loss": fp32 scalar}`` plus detached named terms for logging."""
        raise NotImplementedError

    def on_after_optimizer_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """Hook run after every optimiser step (e.g. the EMA update); a no-op by default."""
