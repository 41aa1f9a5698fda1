"""Any timm model behind the calls panderm's stages need (`features`, `intermediates`, `spec`, `embed_dim`,
`depth`), and its rebuilding from a saved spec (a segmenter or probe records ``arch="timm:<name>"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from panderm.errors import ProbeError
from panderm.models.encoder import POOLINGS, EncoderSpec


class TimmEncoder(nn.Module):
    """Any timm model behind the `Encoder` calls a probe needs: `features(x, pooling)`, `spec`, `embed_dim`.

    `spec` is an `EncoderSpec` whose `arch` reads ``timm:<name>`` (image size and normalisation from the
    model's pretrained config unless overridden); it describes preprocessing and cannot rebuild a panderm
    `Encoder`. Pooling: token models (ViT family) give "cls" (first token after the final norm), "mean"
    (mean of the patch tokens) or both; feature-map models (CNNs) give only "mean" (global average pool).
    `dynamic_image_size` is True for models that accept any input size (most CNNs).
    """

    def __init__(self, model: nn.Module, name: str, spec: EncoderSpec, *, dynamic_image_size: bool) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.spec = spec
        self.dynamic_image_size = dynamic_image_size

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def depth(self) -> int:
        """Transformer blocks (for layer-wise lr decay); `ProbeError` for models without `blocks`."""
        blocks = getattr(self.model, "blocks", None)
        if blocks is None:
            raise ProbeError(f"timm model {self.name!r} has no transformer blocks to count")
        return len(blocks)

    def features(self, x: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """One vector per image, (B, D) or (B, 2D) for "cls+mean"; `ProbeError` for an unsupported pooling."""
        if pooling not in POOLINGS:
            raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
        out = self.model.forward_features(x)
        if out.ndim == 4:
            channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
            if pooling != "mean":
                raise ProbeError(
                    f"timm model {self.name!r} returns feature maps without a class token; use pooling='mean'"
                )
            return out.mean((1, 2) if channels_last else (2, 3))
        if out.ndim != 3:
            raise ProbeError(f"timm model {self.name!r}: forward_features gave a {out.ndim}-D output")
        prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        patches = out[:, prefix:].mean(1)
        if pooling == "mean":
            return patches
        if getattr(self.model, "cls_token", None) is None:
            raise ProbeError(f"timm model {self.name!r} has no class token; use pooling='mean'")
        cls = out[:, 0]
        return cls if pooling == "cls" else torch.cat([cls, patches], dim=1)

    def intermediates(self, x: torch.Tensor, layers: Sequence[int] | int) -> list[torch.Tensor]:
        """Feature maps (B, D, h, w) of the given blocks (0-based; negative counts from the end), like
        `Encoder.intermediates`, via timm `forward_intermediates`. Raises `ProbeError` for a model that is
        not ViT-like (no `forward_intermediates` over `blocks`) or a block index out of range."""
        blocks = getattr(self.model, "blocks", None)
        if not hasattr(self.model, "forward_intermediates") or blocks is None:
            raise ProbeError(
                f"timm model {self.name!r} has no ViT-style forward_intermediates (patch tokens from "
                "`blocks`); dense heads need a ViT-family model"
            )
        indices = [layers] if isinstance(layers, int) else list(layers)
        depth = len(blocks)
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ProbeError(f"timm model {self.name!r}: layer(s) {bad} out of range for depth {depth}")
        wanted = [i % depth for i in indices]
        distinct = sorted(set(wanted))
        maps = self.model.forward_intermediates(
            x, indices=distinct, output_fmt="NCHW", intermediates_only=True
        )
        # timm gives one map per distinct block, in block order; return them in the order asked
        return [maps[distinct.index(i)] for i in wanted]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def create_timm(name: str, kwargs: dict[str, Any], image_size: int | None) -> tuple[nn.Module, bool]:
    """(model, accepts any input size): ViT-like models take `img_size`; models that refuse it are CNNs."""
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs), False
        except TypeError:
            pass  # no img_size argument: a convolutional model, which takes any size
    model = timm.create_model(name, **kwargs)
    fixed = hasattr(model, "patch_embed") and getattr(model.patch_embed, "strict_img_size", True)
    return model, not fixed


def timm_encoder_from_spec(spec: EncoderSpec) -> TimmEncoder:
    """A randomly initialised `TimmEncoder` of the architecture a saved spec names (``arch="timm:<name>"``,
    at `spec.image_size`), ready for the saved weights; nothing is downloaded."""
    name = spec.extra.get("timm_model") or spec.arch.removeprefix("timm:")
    model, dynamic = create_timm(name, {"pretrained": False, "num_classes": 0}, spec.image_size)
    return TimmEncoder(model, name, spec, dynamic_image_size=dynamic)


def encoder_from_spec(spec: EncoderSpec) -> nn.Module:
    """A randomly initialised encoder for a recorded spec: a `TimmEncoder` for ``timm:`` specs, an
    `OpenClipEncoder` / `HfEncoder` / `PixelEncoder` for "open_clip" / "hf" / "pixels" specs (their spec
    records the model config), else an `Encoder` (saved heads rebuild their encoder this way before loading
    weights)."""
    from panderm.models.encoder import Encoder

    if spec.arch.startswith("timm:"):
        return timm_encoder_from_spec(spec)
    if spec.arch in ("open_clip", "hf", "pixels"):  # imported here: they import this module
        from panderm.models.hf_encoder import hf_encoder_from_spec
        from panderm.models.open_clip_encoder import open_clip_encoder_from_spec
        from panderm.models.pixel_encoder import pixel_encoder_from_spec

        build = {"open_clip": open_clip_encoder_from_spec, "hf": hf_encoder_from_spec}
        return build.get(spec.arch, pixel_encoder_from_spec)(spec)
    return Encoder(spec)
