"""Heads that predict what the student cannot see: masked latents (CAE-style) and pixels (MAE-style).

Both work with masks of shape (B, N), bool, True = masked, with the same number of masked patches per row, and
with visible tokens listed in row-major patch order (the order `Encoder.tokens(mode="drop")` returns).
"""

from __future__ import annotations

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from panderm.errors import ConfigError
from panderm.models.encoder import sincos_pos_embed


def select(tokens: Tensor, which: Tensor) -> Tensor:
    """Rows of `tokens` (B, N, D) where `which` (B, N) bool is True, as (B, K, D); K must be equal per row."""
    b, _, d = tokens.shape
    return tokens[which].reshape(b, -1, d)


def merge(visible: Tensor, masked: Tensor, mask: Tensor) -> Tensor:
    """Put visible (B, N_v, D) and masked (B, N_m, D) tokens back in patch order: (B, N, D).

    Differentiable in both inputs; each is read in row-major order of its positions in `mask` (B, N).
    """
    b, n = mask.shape
    shape = (b, n, visible.shape[-1])
    out = visible.new_zeros(shape).masked_scatter(~mask[..., None].expand(shape), visible)
    return out.masked_scatter(mask[..., None].expand(shape), masked.to(out.dtype))


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block whose queries attend to a separate key/value sequence, then an MLP.

    Written here because timm has no general cross-attention block (its pooling heads use fixed latent
    queries); `nn.MultiheadAttention` provides the attention itself, with fused SDPA kernels.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        """(B, Q, D) queries attending to (B, K, D) context -> (B, Q, D)."""
        kv = self.norm_kv(context)
        queries = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


def _check_heads(dim: int, num_heads: int, what: str) -> None:
    if dim % num_heads:
        raise ConfigError(f"{what}: dim {dim} is not divisible by num_heads={num_heads}")


class LatentRegressor(nn.Module):
    """CAE-style latent regressor: predicts the encoder's latents of masked patches from the visible ones.

    Queries are a learnt mask token plus the encoder's position embedding of each masked position; keys and
    values are the visible latent tokens plus their position embeddings; `depth` cross-attention blocks and a
    final LayerNorm follow. Shapes: visible (B, N_v, D), positions (B, N_v, D) and (B, N_m, D) -> (B, N_m, D).
    """

    def __init__(self, embed_dim: int, depth: int = 4, num_heads: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        num_heads = num_heads or max(1, embed_dim // 64)
        _check_heads(embed_dim, num_heads, "LatentRegressor")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, visible: Tensor, visible_pos: Tensor, masked_pos: Tensor) -> Tensor:
        context = visible + visible_pos.to(visible.dtype)
        queries = self.mask_token.to(masked_pos.dtype).expand(masked_pos.shape[0], masked_pos.shape[1], -1)
        queries = queries + masked_pos
        for block in self.blocks:
            queries = block(queries, context)
        return self.norm(queries)


class PixelDecoder(nn.Module):
    """MAE-style light transformer decoder predicting the pixels of every patch.

    Input: the encoder's output for visible patches, CLS first, (B, 1 + N_v, D_enc), and the mask (B, N).
    Latents are projected to `decoder_dim`, mask tokens fill the masked positions (original patch order),
    fixed 2-D sin-cos position embeddings are added, and `depth` timm `Block`s, a LayerNorm and a linear head
    give (B, N, p*p*in_chans) predictions in the `objectives.patchify` layout (all patches; the loss picks).
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: tuple[int, int],
        patch_size: int,
        *,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        _check_heads(decoder_dim, num_heads, "PixelDecoder")
        self.grid_size = tuple(grid_size)
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        # fixed (not learnt) positions, as in MAE: (1, 1 + N, decoder_dim), zeros for the CLS slot
        self.register_buffer("pos_embed", sincos_pos_embed(self.grid_size, decoder_dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)

    def forward(self, latents: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(latents)
        b, n = mask.shape
        masked = self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - 1), -1)
        patches = merge(x[:, 1:], masked, mask)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]
