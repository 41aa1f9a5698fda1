"""The encoder: a timm Vision Transformer with the calls every panderm stage needs.

`features(x)` gives one vector per image (CLS after the final norm, mean of patch tokens, or both);
`intermediates(x, layers)` gives dense feature maps for segmentation heads (timm `forward_intermediates`);
`tokens(x, mask)` gives the token sequence for masked-image modelling, either encoding only the visible
patches (CAE/MAE style, ``mode="drop"``) or replacing masked patches by a learnt mask token (BEiT/data2vec
style, ``mode="replace"``). Masks are (B, N) bool, True = masked, with the same count in every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from panderm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from panderm.errors import ConfigError

# embed_dim, depth, num_heads of the standard ViT sizes
ARCHITECTURES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
POOLINGS = ("cls", "mean", "cls+mean")
Pooling = Literal["cls", "mean", "cls+mean"]


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder (saved next to its weights).

    `depth` overrides the architecture's depth (tiny test models); `init_values` enables LayerScale
    (PanDerm/BEiT-style checkpoints use it); `pos_embed` is "learn" or "sincos" (fixed 2-D sin-cos values).
    """

    arch: str = "vit_tiny"
    patch_size: int = 16
    image_size: int = 224
    depth: int | None = None
    init_values: float | None = None
    pos_embed: str = "learn"
    drop_path_rate: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def sincos_pos_embed(grid: tuple[int, int], dim: int, *, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (1, [1 +] gh·gw, dim); the CLS position is zeros.

    Written here because timm builds it only inside other model classes; the layout follows the MoCo v3 / CAE
    convention (PanDerm's lineage): the first half of the channels encodes the row (h) coordinate, the second
    half the column (MAE's table is its transpose).
    """
    if dim % 4:
        raise ConfigError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    gh, gw = grid
    ys, xs = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(ys), encode(xs)], dim=1).float()
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table[None]


class Encoder(nn.Module):
    """A timm ViT (`self.vit`) plus a mask token; see the module docstring for the calls."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        if spec.arch not in ARCHITECTURES:
            raise ConfigError(f"encoder.arch={spec.arch!r} is not one of {sorted(ARCHITECTURES)}")
        for name in ("image_size", "patch_size"):
            value = getattr(spec, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"encoder.{name}={value!r} must be a positive integer")
        if spec.image_size % spec.patch_size:
            raise ConfigError(
                f"encoder.image_size={spec.image_size} is not a multiple of patch_size={spec.patch_size}"
            )
        if spec.pos_embed not in ("learn", "sincos"):
            raise ConfigError(f"encoder.pos_embed={spec.pos_embed!r} is not 'learn' or 'sincos'")
        dim, depth, heads = ARCHITECTURES[spec.arch]
        depth = depth if spec.depth is None else spec.depth
        if depth < 1:
            raise ConfigError(f"encoder.depth={spec.depth} must be at least 1")
        self.spec = spec
        self.vit = VisionTransformer(
            img_size=spec.image_size,
            patch_size=spec.patch_size,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            num_classes=0,
            init_values=spec.init_values,
            drop_path_rate=spec.drop_path_rate,
        )
        if spec.pos_embed == "sincos":
            self.vit.pos_embed.data.copy_(sincos_pos_embed(self.grid_size, dim))
            self.vit.pos_embed.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.grad_checkpointing = False

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.vit.patch_embed.num_patches

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (less memory, ~30% more compute)."""
        self.grad_checkpointing = enable
        self.vit.set_grad_checkpointing(enable)

    def patch_pos_embed(self) -> torch.Tensor:
        """Position embeddings of the patches only, (1, N, D) (decoders use them as query positions)."""
        return self.vit.pos_embed[:, self.vit.num_prefix_tokens :]

    def _layer_indices(self, layers: Sequence[int]) -> list[int]:
        """0-based block indices (negatives count from the end); raises `ConfigError` when out of range."""
        for i in layers:
            if not -self.depth <= i < self.depth:
                raise ConfigError(f"layer {i} is out of range for an encoder of depth {self.depth}")
        return [i % self.depth for i in layers]

    def _blocks(self, x: torch.Tensor, keep: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        kept = []
        for i, block in enumerate(self.vit.blocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in keep:
                kept.append(x)
        return self.vit.norm(x), kept

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens (B, N, D) of images of the encoder's size or any other multiple of the patch size
        (e.g. DINO's small local crops), and their grid."""
        h, w = x.shape[-2:]
        if (h, w) == (self.spec.image_size, self.spec.image_size):
            return self.vit.patch_embed(x), self.grid_size
        p = self.spec.patch_size
        if h % p or w % p:
            raise ConfigError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        embed = self.vit.patch_embed  # strict about its own size, so its parts are called directly
        return embed.norm(embed.proj(x).flatten(2).transpose(1, 2)), (h // p, w // p)

    def _with_positions(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """CLS token prepended and position embeddings added, resampled (bicubic) for another grid."""
        if grid == self.grid_size:
            return self.vit._pos_embed(patches)
        pos = resample_abs_pos_embed(
            self.vit.pos_embed, new_size=list(grid), old_size=list(self.grid_size), num_prefix_tokens=1
        )
        cls = self.vit.cls_token.expand(patches.shape[0], -1, -1)
        return self.vit.pos_drop(torch.cat([cls, patches], dim=1) + pos)

    def tokens(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        mode: Literal["drop", "replace"] = "drop",
        return_layers: Sequence[int] = (),
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Token sequence after the final norm: (B, 1 + N, D), or (B, 1 + N_visible, D) with `mode="drop"`.

        `x` is (B, 3, H, W) with H and W multiples of the patch size (position embeddings are resampled when
        they differ from the encoder's image size).

        `mask` is (B, N) bool, True = masked, with equal counts per row. With `return_layers` also returns
        the (pre-norm) outputs of those blocks (0-based), e.g. for data2vec-style targets.
        """
        if mode not in ("drop", "replace"):
            raise ConfigError(f"mode={mode!r} is not 'drop' or 'replace'")
        if mask is not None:
            mask = mask.bool()
        keep = set(self._layer_indices(return_layers))
        patches, grid = self._embed(x)
        if mask is not None and mode == "replace":
            patches = torch.where(mask[..., None], self.mask_token.to(patches.dtype), patches)
        seq = self.vit.norm_pre(self._with_positions(patches, grid))
        if mask is not None and mode == "drop":
            prefix = self.vit.num_prefix_tokens
            counts = (~mask).sum(1)
            if bool((counts != counts[0]).any()):
                raise ValueError("mode='drop' needs the same number of visible patches in every row")
            visible = seq[:, prefix:][~mask].reshape(seq.shape[0], int(counts[0]), seq.shape[-1])
            seq = torch.cat([seq[:, :prefix], visible], dim=1)
        out, layers = self._blocks(seq, keep)
        return (out, layers) if return_layers else out

    def features(self, x: torch.Tensor, pooling: Pooling = "cls") -> torch.Tensor:
        """One vector per image: CLS after the final norm (B, D), mean patch token (B, D) or both (B, 2D)."""
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is not one of {POOLINGS}")
        seq = self.tokens(x)
        cls, patches = seq[:, 0], seq[:, self.vit.num_prefix_tokens :].mean(1)
        return {"cls": cls, "mean": patches, "cls+mean": torch.cat([cls, patches], dim=1)}[pooling]

    def intermediates(self, x: torch.Tensor, layers: Sequence[int] | int) -> list[torch.Tensor]:
        """Feature maps (B, D, h, w) of the given blocks (0-based; negative counts from the end)."""
        indices = self._layer_indices([layers] if isinstance(layers, int) else layers)
        return self.vit.forward_intermediates(x, indices=indices, output_fmt="NCHW", intermediates_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def create_encoder(
    arch: str = "vit_tiny", patch_size: int = 16, image_size: int = 224, **kwargs: Any
) -> Encoder:
    """Build an encoder from its spec fields (random init; load weights with `panderm.models.checkpoints`)."""
    return Encoder(EncoderSpec(arch=arch, patch_size=patch_size, image_size=image_size, **kwargs))
