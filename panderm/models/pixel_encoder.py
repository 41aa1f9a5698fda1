"""Raw pixels as features: the baseline every leaderboard wants (``pixels[@<size>]`` in probes).

The probe transform resizes the shorter side to ``round(size·256/224)`` and centre-crops ``size x size``
(panderm's evaluation transform); the feature vector is that crop's RGB values in [0, 1] (mean 0, std 1: no
normalisation), flattened channel-first, ``3·size²`` numbers. Nothing is learnt, so the encoder is
deterministic and identified by its spec alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from panderm.errors import ProbeError
from panderm.models.encoder import POOLINGS, EncoderSpec
from panderm.models.timm_encoder import TimmEncoder

ARCH = "pixels"
DEFAULT_SIZE = 32


def pixel_spec(size: int = DEFAULT_SIZE) -> EncoderSpec:
    """The spec of the pixel baseline at `size` (mean 0, std 1: features are pixel values in [0, 1])."""
    if not isinstance(size, int) or size < 1:
        raise ProbeError(f"pixels@{size}: the size must be a positive integer")
    return EncoderSpec(arch=ARCH, patch_size=1, image_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class PixelEncoder(TimmEncoder):
    """The image itself as a (B, 3·S·S) vector; a `TimmEncoder` subclass so saved classifiers accept it.

    Every pooling gives the flattened image ("cls+mean" gives it twice, so that its width is
    ``2·embed_dim`` as for every encoder); there are no weights.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        super().__init__(nn.Identity(), ARCH, pixel_spec(size), dynamic_image_size=False)

    @property
    def embed_dim(self) -> int:
        return 3 * self.spec.image_size**2

    @property
    def depth(self) -> int:
        raise ProbeError("the pixel baseline has no layers")

    def intermediates(self, x: torch.Tensor, layers: Sequence[int] | int) -> list[torch.Tensor]:
        raise ProbeError("the pixel baseline gives no dense feature maps")

    def features(self, x: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """(B, 3·S·S) flattened pixels, or (B, 2·3·S·S) for "cls+mean"; `ProbeError` for another size."""
        if pooling not in POOLINGS:
            raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
        size = self.spec.image_size
        if tuple(x.shape[1:]) != (3, size, size):
            raise ProbeError(f"pixels@{size}: expected (B, 3, {size}, {size}) images, got {tuple(x.shape)}")
        flat = x.flatten(1).float()
        return torch.cat([flat, flat], dim=1) if pooling == "cls+mean" else flat


def pixel_encoder_from_spec(spec: EncoderSpec) -> PixelEncoder:
    """The pixel baseline a saved spec records."""
    return PixelEncoder(spec.image_size)
