"""Segmentation heads on a ViT encoder's intermediate feature maps, as plain `nn.Module`s.

Every head has `layers` (the 0-based encoder blocks it reads, in order) and
``forward(features, image) -> logits``: `features` are those blocks' maps (B, D, h, w) in `layers` order,
`image` is the encoder's input (B, 3, H, W), and the logits are (B, num_classes, H, W) for any grid h, w.

- `LinearSegHead`: dinov2's linear head (BatchNorm + 1×1 conv on the concatenated maps).
- `FPNUperNetHead`: PanDerm's ViT + simple feature pyramid + UPerNet, in plain PyTorch (no mmseg/mmcv).
- `UNETRHead`: MONAI's UNETR decoder (2-D) on the encoder's intermediates.

`SegmentationModel` wires an encoder to a head (frozen or fine-tuned encoder); `build_segmentation_model`
builds one by head name; `save_segmenter` / `load_segmenter` write and read it as safetensors + JSON. This
module imports nothing from `probes`, so the MLLM backend can load a segmenter that `probes` trained.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from panderm.errors import ConfigError
from panderm.models.checkpoints import (
    CheckpointError,
    canonical_json,
    checkpoint_paths,
    load_state_dict_file,
    load_weights,
    read_checkpoint_metadata,
    spec_from_dict,
    verified_weights,
    write_checkpoint,
)
from panderm.models.encoder import Encoder
from panderm.models.timm_encoder import TimmEncoder, encoder_from_spec

HEADS = ("linear", "fpn_upernet", "unetr")
SEGMENTER_FORMAT = "panderm-segmenter"
SEGMENTER_FORMAT_VERSION = 1
# Constructor arguments that come from the encoder or the task, not from the user's head options.
_STRUCTURAL = ("embed_dim", "num_classes", "layers", "patch_size")

PathLike = str | os.PathLike[str]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """mmcv's ConvModule (conv without bias, BatchNorm, ReLU), which UPerNet uses everywhere."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _check_layers(name: str, layers: Sequence[int], count: int | None = None) -> list[int]:
    layers = [int(i) for i in layers]
    if not layers:
        raise ConfigError(f"{name}: layers is empty; give at least one encoder block index")
    if count is not None and len(layers) != count:
        raise ConfigError(f"{name}: needs exactly {count} layers, got {len(layers)} ({layers})")
    return layers


def _positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}: {key}={value!r} must be a positive integer")


class SegHead(nn.Module):
    """Base of the heads: `layers`, `num_classes`, `name` (its `HEADS` entry) and `options` (JSON-able)."""

    name: ClassVar[str]

    def __init__(self, embed_dim: int, num_classes: int, layers: Sequence[int], count: int | None) -> None:
        super().__init__()
        _positive(type(self).__name__, embed_dim=embed_dim, num_classes=num_classes)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.layers = _check_layers(type(self).__name__, layers, count)
        self.options: dict[str, Any] = {}


class LinearSegHead(SegHead):
    """dinov2's linear head: concatenate the maps on channels, BatchNorm, 1×1 conv, bilinear upsample.

    `layers` is usually the last block (dinov2 "linear") or the last four ("linear4"); any count works.
    """

    name = "linear"

    def __init__(self, embed_dim: int, num_classes: int, layers: Sequence[int]) -> None:
        super().__init__(embed_dim, num_classes, layers, None)
        channels = embed_dim * len(self.layers)
        self.norm = nn.BatchNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = torch.cat(list(features), dim=1)
        return _resize(self.classifier(self.norm(x)), image.shape[-2:])


class PyramidPooling(nn.Module):
    """UPerNet's pyramid pooling module: pooled context at several scales, concatenated, 3×3 bottleneck."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv_bn_relu(in_channels, channels, 1))
            for scale in pool_scales
        )
        self.bottleneck = _conv_bn_relu(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class FPNUperNetHead(SegHead):
    """PanDerm's segmentation decoder: a simple feature pyramid from four ViT maps, then UPerNet.

    The four maps (e.g. blocks [3, 5, 7, 11] of ViT-B) are resampled ×4, ×2, ×1 and ×½ (BEiT's
    fpn1..fpn4), then fused UPerNet-style: 1×1 laterals, pyramid pooling on the coarsest level, a top-down
    pathway, 3×3 convs, concatenation at the finest level, a 3×3 fuse conv, dropout and a 1×1 classifier.
    Needs batches of more than one image in training (BatchNorm after the 1×1 pooled context).
    """

    name = "fpn_upernet"

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        layers: Sequence[int],
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(embed_dim, num_classes, layers, 4)
        pool_scales = [int(s) for s in pool_scales]
        _positive(
            "FPNUperNetHead", channels=channels, **{f"pool_scales[{i}]": s for i, s in enumerate(pool_scales)}
        )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"FPNUperNetHead: dropout={dropout!r} must be in [0, 1)")
        self.options = {"channels": channels, "pool_scales": pool_scales, "dropout": float(dropout)}
        d = embed_dim
        self.pyramid = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(d, d, 2, stride=2),
                    nn.BatchNorm2d(d),
                    nn.GELU(),
                    nn.ConvTranspose2d(d, d, 2, stride=2),
                ),
                nn.ConvTranspose2d(d, d, 2, stride=2),
                nn.Identity(),
                # ceil_mode: a 1×1 grid (image = one patch) stays 1×1, not 0×0; even grids are unchanged.
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )
        self.laterals = nn.ModuleList(_conv_bn_relu(d, channels, 1) for _ in range(3))
        self.ppm = PyramidPooling(d, channels, pool_scales)
        self.fpn_convs = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = _conv_bn_relu(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        maps = [resample(x) for resample, x in zip(self.pyramid, features, strict=True)]
        levels = [lateral(x) for lateral, x in zip(self.laterals, maps[:3], strict=True)]
        levels.append(self.ppm(maps[3]))
        for i in range(3, 0, -1):  # top-down: add each coarser level to the next finer one
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels[:3], strict=True)] + [levels[3]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *(_resize(x, size) for x in outs[1:])], dim=1))
        return _resize(self.classifier(self.dropout(fused)), image.shape[-2:])


def _patch_exponent(patch_size: int) -> int:
    """k with patch_size = 2^k (k ≥ 1); `ConfigError` otherwise (UNETR doubles the resolution k times)."""
    if not isinstance(patch_size, int) or patch_size < 2 or patch_size & (patch_size - 1):
        raise ConfigError(
            f"unetr: patch size {patch_size!r} is not a power of two (≥ 2); the UNETR decoder doubles the "
            "resolution once per level, so use an encoder with patch size 4, 8, 16 or 32, or another head"
        )
    return int(math.log2(patch_size))


class UNETRHead(SegHead):
    """MONAI's UNETR decoder in 2-D on the encoder's maps, for a patch size p = 2^k.

    The raw image gives the full-resolution skip (`UnetrBasicBlock`); the first k−1 layers give skips at
    ×2^(k−1) … ×2 of the grid (`UnetrPrUpBlock`), the last layer is the bottleneck; k `UnetrUpBlock`s decode
    to full resolution and `UnetOutBlock` gives the logits. `len(layers)` must be k (4 for patch 16).
    """

    name = "unetr"

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        layers: Sequence[int],
        patch_size: int,
        feature_size: int = 16,
        norm_name: str = "instance",
    ) -> None:
        k = _patch_exponent(patch_size)
        if len(layers) != k:
            raise ConfigError(
                f"UNETRHead: patch size {patch_size} = 2^{k} needs exactly {k} layers "
                f"({k - 1} skips + the bottleneck), got {len(layers)} ({list(layers)})"
            )
        super().__init__(embed_dim, num_classes, layers, k)
        _positive("UNETRHead", feature_size=feature_size)
        self.patch_size = patch_size
        self.options = {"feature_size": feature_size, "norm_name": norm_name}
        fs, common = feature_size, {"spatial_dims": 2, "norm_name": norm_name}
        self.stem = UnetrBasicBlock(
            in_channels=3, out_channels=fs, kernel_size=3, stride=1, res_block=True, **common
        )
        # skip i (from layers[i]) is upsampled ×2^(k-1-i): 1 + num_layer transposed convs
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(
                in_channels=embed_dim,
                out_channels=fs * 2 ** (i + 1),
                num_layer=k - 2 - i,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                conv_block=True,
                res_block=True,
                **common,
            )
            for i in range(k - 1)
        )
        widths = [embed_dim] + [
            fs * 2 ** (i + 1) for i in range(k - 2, -1, -1)
        ]  # decoder inputs, coarse first
        self.ups = nn.ModuleList(
            UnetrUpBlock(
                in_channels=c_in,
                out_channels=c_in // 2 if i else fs * 2 ** (k - 1),
                kernel_size=3,
                upsample_kernel_size=2,
                res_block=True,
                **common,
            )
            for i, c_in in enumerate(widths)
        )
        self.out = UnetOutBlock(spatial_dims=2, in_channels=fs, out_channels=num_classes)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(image)] + [block(x) for block, x in zip(self.skips, features[:-1], strict=True)]
        x = features[-1]
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        return self.out(x)


HEAD_CLASSES: dict[str, type[SegHead]] = {cls.name: cls for cls in (LinearSegHead, FPNUperNetHead, UNETRHead)}


def _check_head(head: str) -> type[SegHead]:
    if head not in HEAD_CLASSES:
        raise ConfigError(f"head={head!r} is not one of {list(HEADS)}")
    return HEAD_CLASSES[head]


def default_layers(head: str, depth: int, patch_size: int, *, linear_layers: int = 1) -> list[int]:
    """The encoder blocks (0-based) a head reads by default, for an encoder of `depth` blocks.

    linear: the last block (`linear_layers=1`) or the last four (`linear_layers=4`, dinov2's "linear4");
    fpn_upernet: ViT-B's [3, 5, 7, 11] / ViT-L's [7, 11, 15, 23] scaled to `depth`; unetr: k = log2(patch)
    evenly spaced blocks ending at the last (UNETR paper's z3, z6, z9, z12 for ViT-B/16 = [2, 5, 8, 11]).
    Indices are clamped at 0, so tiny encoders may repeat a block. Raises `ConfigError` for bad values.
    """
    _check_head(head)
    _positive("default_layers", depth=depth)
    if head == "linear":
        if linear_layers not in (1, 4):
            raise ConfigError(
                f"linear_layers={linear_layers!r} must be 1 (last block) or 4 (last four blocks)"
            )
        return [max(depth - linear_layers + i, 0) for i in range(linear_layers)]
    if head == "fpn_upernet":
        return [max(i, 0) for i in (depth // 3 - 1, depth // 2 - 1, 2 * depth // 3 - 1, depth - 1)]
    k = _patch_exponent(patch_size)
    return [max((i + 1) * depth // k - 1, 0) for i in range(k)]


def encoder_depth(encoder: nn.Module) -> int:
    """Number of transformer blocks: `encoder.depth`, else the length of a timm ViT's `blocks`."""
    depth = getattr(encoder, "depth", None)
    if depth is None:
        blocks = getattr(getattr(encoder, "model", None), "blocks", None)
        if blocks is None:
            raise ConfigError(
                f"{type(encoder).__name__}: cannot tell the encoder's depth (no `depth`, no ViT `blocks`); "
                "segmentation heads need a ViT-family encoder"
            )
        depth = len(blocks)
    return int(depth)


def _normalise_layers(layers: Sequence[int], depth: int) -> list[int]:
    bad = [i for i in layers if not -depth <= int(i) < depth]
    if bad:
        raise ConfigError(f"layers {bad} are out of range for an encoder of depth {depth}")
    return [int(i) % depth for i in layers]


def _unused_encoder_parameters(encoder: nn.Module) -> list[nn.Parameter]:
    """Parameters `intermediates` never uses (or must stay fixed): left frozen when fine-tuning, so that
    no trainable parameter goes without a gradient (DDP would stop on it)."""
    found: list[nn.Parameter] = []
    vit = getattr(encoder, "vit", None)
    if vit is None:
        vit = getattr(encoder, "model", None)
    for name in ("norm", "fc_norm", "head", "attn_pool"):  # applied after the blocks, never to intermediates
        module = getattr(vit, name, None)
        if isinstance(module, nn.Module):
            found += list(module.parameters())
    if isinstance(encoder, Encoder):
        found.append(encoder.mask_token)  # masked-image modelling only
        if encoder.spec.pos_embed == "sincos":  # fixed values, never trained
            found.append(encoder.vit.pos_embed)
    return found


class SegmentationModel(nn.Module):
    """An encoder and a head: ``forward(x) -> logits (B, num_classes, H, W)``.

    The encoder is run once per batch on the distinct blocks the head needs (`head.layers` may repeat a
    block). `frozen=True`: encoder parameters do not require grad, its forward runs under `no_grad` and it
    stays in eval mode whatever `train()` says (no dropout / drop-path); `frozen=False`: the encoder trains
    too, except the parameters `intermediates` never uses (final norm, mask token, fixed sin-cos table).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, *, frozen: bool) -> None:
        super().__init__()
        depth = encoder_depth(encoder)
        self.encoder = encoder
        self.head = head
        self.frozen = bool(frozen)
        self.head_name: str = getattr(head, "name", type(head).__name__)
        self.head_options: dict[str, Any] = json.loads(canonical_json(getattr(head, "options", {})))
        self.num_classes = int(getattr(head, "num_classes", 0)) or None
        layers = _normalise_layers(head.layers, depth)
        self._blocks = sorted(set(layers))
        self._take = [self._blocks.index(i) for i in layers]
        if self.frozen:
            encoder.requires_grad_(False)
            encoder.eval()
        else:
            encoder.requires_grad_(True)
            for param in _unused_encoder_parameters(encoder):
                param.requires_grad_(False)

    @property
    def layers(self) -> list[int]:
        return [self._blocks[j] for j in self._take]

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's maps (B, D, h, w) of each distinct block the head reads (without gradient when
        frozen): what `decode` takes, and what a frozen run may compute once per image."""
        if self.frozen:
            with torch.no_grad():
                return self.encoder.intermediates(x, self._blocks)
        return self.encoder.intermediates(x, self._blocks)

    def decode(self, maps: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The head's logits (B, num_classes, H, W) from `encode(x)`'s maps and the image `x`."""
        return self.head([maps[j] for j in self._take], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)


def head_option_defaults(head: str) -> dict[str, Any]:
    """The options a head accepts beyond the structural ones, with their defaults."""
    params = inspect.signature(_check_head(head).__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name != "self" and name not in _STRUCTURAL and p.default is not inspect.Parameter.empty
    }


def build_segmentation_model(
    encoder: nn.Module,
    head: str,
    *,
    num_classes: int = 2,
    frozen: bool = True,
    layers: Sequence[int] | None = None,
    **head_options: Any,
) -> SegmentationModel:
    """A `SegmentationModel` with the head named `head` (one of `HEADS`) on `encoder`.

    `encoder` needs `intermediates(x, layers)`, `embed_dim` and a depth (`depth` or timm ViT `blocks`);
    the patch size is `encoder.spec.patch_size`. `layers` (0-based, negatives count from the end) defaults
    to `default_layers`; for dinov2's "linear4" pass ``layers=[-4, -3, -2, -1]``. `head_options` are the
    head's own arguments (fpn_upernet: channels, pool_scales, dropout; unetr: feature_size, norm_name).
    Raises `ConfigError` for an unknown head or option, an unusable encoder or bad layers.
    """
    cls = _check_head(head)
    defaults = head_option_defaults(head)
    unknown = sorted(set(head_options) - set(defaults))
    if unknown:
        raise ConfigError(f"head={head!r}: unknown option(s) {unknown}; it accepts {sorted(defaults)}")
    if not callable(getattr(encoder, "intermediates", None)) or not hasattr(encoder, "embed_dim"):
        raise ConfigError(
            f"{type(encoder).__name__} has no `intermediates(x, layers)` / `embed_dim`; segmentation "
            "heads need a panderm Encoder or a timm ViT-family encoder"
        )
    depth = encoder_depth(encoder)
    patch_size = getattr(getattr(encoder, "spec", None), "patch_size", None)
    if not isinstance(patch_size, int):
        raise ConfigError(f"{type(encoder).__name__} has no `spec.patch_size`; cannot size the head")
    chosen = default_layers(head, depth, patch_size) if layers is None else _normalise_layers(layers, depth)
    kwargs: dict[str, Any] = {
        "embed_dim": int(encoder.embed_dim),
        "num_classes": num_classes,
        "layers": chosen,
    }
    if "patch_size" in inspect.signature(cls.__init__).parameters:
        kwargs["patch_size"] = patch_size
    return SegmentationModel(encoder, cls(**kwargs, **head_options), frozen=frozen)


# ------------------------------------------------------------------------------------------ save / load


def save_segmenter(
    model: SegmentationModel, path: PathLike, *, recipe: Mapping[str, Any] | None = None
) -> Path:
    """Write ``<path>.safetensors`` (encoder under ``encoder.``, head under ``head.``) and ``<path>.json``.

    Both are written atomically, the JSON last, recording the encoder spec, head name and options, layers,
    num_classes, frozen, the recipe with its hash and the weights' sha256. Returns the weights path. The
    encoder is a panderm `Encoder` or a `TimmEncoder` (rebuilt from its ``timm:<name>`` spec on loading);
    anything else is a `ConfigError`.
    """
    if not isinstance(model.encoder, Encoder | TimmEncoder):
        raise ConfigError(
            f"save_segmenter: the encoder is a {type(model.encoder).__name__}; only panderm Encoders and "
            "timm encoders can be saved (their spec rebuilds them)"
        )
    fields = {
        "encoder_spec": model.encoder.spec.to_dict(),
        "head": model.head_name,
        "head_options": model.head_options,
        "layers": model.layers,
        "num_classes": model.num_classes,
        "frozen": model.frozen,
    }
    return write_checkpoint(
        model, path, fmt=SEGMENTER_FORMAT, version=SEGMENTER_FORMAT_VERSION, fields=fields, recipe=recipe
    )


def read_segmenter_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON beside a saved segmenter (stem, weights or JSON path); `CheckpointError` if unusable."""
    return read_checkpoint_metadata(
        path,
        fmt=SEGMENTER_FORMAT,
        version=SEGMENTER_FORMAT_VERSION,
        kind="segmenter",
        hint="saved by save_segmenter?",
        required=(
            "encoder_spec",
            "head",
            "head_options",
            "layers",
            "num_classes",
            "frozen",
            "weights_sha256",
        ),
    )


def load_segmenter(path: PathLike, *, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a segmenter written by `save_segmenter` (stem or either file's path), in eval mode.

    The weights' sha256 must equal the recorded one and their keys must match the rebuilt model exactly
    (`load_weights`, strict). Raises `CheckpointError` naming the file for anything missing or inconsistent.
    """
    meta_path = checkpoint_paths(path)[1]
    meta = read_segmenter_metadata(meta_path)
    weights = verified_weights(path, meta)
    spec = spec_from_dict(meta["encoder_spec"], meta_path)
    try:
        encoder = encoder_from_spec(spec)
        model = build_segmentation_model(
            encoder,
            meta["head"],
            num_classes=meta["num_classes"],
            frozen=meta["frozen"],
            layers=meta["layers"],
            **meta["head_options"],
        )
    except ConfigError as error:
        raise CheckpointError(f"{meta_path}: the recorded segmenter cannot be built ({error})") from error
    load_weights(model, load_state_dict_file(weights), strict=True, source=str(weights))
    return model.to(map_location).eval()
