"""The encoder against independent references: timm's forward, hand-run blocks, a numpy sin-cos table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panderm.errors import ConfigError
from panderm.models.encoder import ARCHITECTURES, Encoder, EncoderSpec, create_encoder, sincos_pos_embed

# (arch, patch, image size): every patch/size pair with vit_tiny, and each larger arch once (depth 1).
SHAPE_CASES = [
    *[("vit_tiny", p, s) for p, s in [(8, 32), (8, 56), (8, 64), (8, 112), (14, 56), (14, 112), (16, 32)]],
    *[("vit_tiny", 16, 64), ("vit_tiny", 16, 112)],
    ("vit_small", 16, 64),
    ("vit_base", 14, 56),
    ("vit_large", 8, 32),
]


def tiny(**kwargs) -> Encoder:
    torch.manual_seed(0)
    kwargs = {"arch": "vit_tiny", "patch_size": 8, "image_size": 32, "depth": 2, **kwargs}
    return create_encoder(**kwargs).eval()


def image(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def embed_patches(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch embeddings by an explicit strided convolution (reference for timm's PatchEmbed)."""
    proj = encoder.vit.patch_embed.proj
    p = encoder.spec.patch_size
    return F.conv2d(x, proj.weight, proj.bias, stride=p).flatten(2).transpose(1, 2)


def run_blocks(encoder: Encoder, seq: torch.Tensor) -> torch.Tensor:
    for block in encoder.vit.blocks:
        seq = block(seq)
    return seq


@pytest.mark.parametrize(("arch", "patch", "size"), SHAPE_CASES)
def test_feature_shapes(arch: str, patch: int, size: int) -> None:
    encoder = create_encoder(arch, patch, size, depth=1).eval()
    dim, grid = ARCHITECTURES[arch][0], size // patch
    x = image(2, size)
    with torch.no_grad():
        assert encoder.grid_size == (grid, grid) and encoder.num_patches == grid * grid
        assert encoder.features(x).shape == (2, dim)
        assert encoder.features(x, "mean").shape == (2, dim)
        assert encoder.features(x, "cls+mean").shape == (2, 2 * dim)
        assert encoder(x).shape == (2, dim)
        assert encoder.tokens(x).shape == (2, 1 + grid * grid, dim)
        [maps] = encoder.intermediates(x, [-1])
        assert maps.shape == (2, dim, grid, grid)


def test_poolings_match_timm_forward_features() -> None:
    encoder = tiny()
    x = image()
    with torch.no_grad():
        reference = encoder.vit.forward_features(x)  # timm: blocks then final norm, (B, 1 + N, D)
        cls, mean = reference[:, 0], reference[:, 1:].mean(1)
        torch.testing.assert_close(encoder.features(x, "cls"), cls)
        torch.testing.assert_close(encoder.features(x, "mean"), mean)
        torch.testing.assert_close(encoder.features(x, "cls+mean"), torch.cat([cls, mean], 1))
        torch.testing.assert_close(encoder.tokens(x)[:, 0], cls)
    with pytest.raises(ConfigError, match="pooling='max'"):
        encoder.features(x, "max")  # type: ignore[arg-type]


def test_drop_mode_matches_hand_run_blocks() -> None:
    encoder = tiny()
    x = image()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 5, 6, 9, 15]] = True
    mask[1, [1, 2, 7, 8, 12, 13]] = True
    pos = encoder.vit.pos_embed
    with torch.no_grad():
        patches = embed_patches(encoder, x) + pos[:, 1:]
        cls = encoder.vit.cls_token + pos[:, :1]
        rows = [torch.cat([cls[0], patches[b][~mask[b]]]) for b in range(2)]
        reference = encoder.vit.norm(run_blocks(encoder, torch.stack(rows)))
        out = encoder.tokens(x, mask, mode="drop")
    assert out.shape == (2, 1 + 10, 192)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_drop_mode_returns_pre_norm_layers() -> None:
    encoder = tiny()
    x = image()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    with torch.no_grad():
        out, layers = encoder.tokens(x, mask, return_layers=[0, 1])
        seq = torch.cat([encoder.vit.cls_token.expand(2, -1, -1), embed_patches(encoder, x)], 1)
        seq = (seq + encoder.vit.pos_embed)[:, [0, *range(5, 17)]]
        first = encoder.vit.blocks[0](seq)
        second = encoder.vit.blocks[1](first)
    torch.testing.assert_close(layers[0], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layers[1], second, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, encoder.vit.norm(second), atol=1e-5, rtol=1e-5)


def test_unequal_visible_counts_raise() -> None:
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :5] = True
    with pytest.raises(ValueError, match="same number of visible patches"):
        tiny().tokens(image(), mask, mode="drop")


def test_replace_mode_uses_the_mask_token() -> None:
    encoder = tiny()
    x = image()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 5, 10]] = True
    mask[1, 15] = True  # replace mode allows unequal counts
    with torch.no_grad():
        patches = torch.where(mask[..., None], encoder.mask_token, embed_patches(encoder, x))
        seq = torch.cat([encoder.vit.cls_token.expand(2, -1, -1), patches], 1) + encoder.vit.pos_embed
        reference = encoder.vit.norm(run_blocks(encoder, seq))
        out = encoder.tokens(x, mask, mode="replace")
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        # Pixels under a masked patch (row 0, col 0 of the 4x4 grid) cannot reach the output ...
        changed = x.clone()
        changed[:, :, :8, :8] += 5.0
        torch.testing.assert_close(encoder.tokens(changed, mask, mode="replace"), out)
        # ... while pixels under a visible patch (row 0, col 1) do.
        changed = x.clone()
        changed[:, :, :8, 8:16] += 5.0
        assert (encoder.tokens(changed, mask, mode="replace") - out).abs().max() > 1e-3


def test_intermediates_match_timm_and_hand_run_blocks() -> None:
    encoder = tiny()
    x = image()
    with torch.no_grad():
        ours = encoder.intermediates(x, [0, -1])
        timm_maps = encoder.vit.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        seq = torch.cat([encoder.vit.cls_token.expand(2, -1, -1), embed_patches(encoder, x)], 1)
        last = run_blocks(encoder, seq + encoder.vit.pos_embed)  # pre-norm output of the final block
    assert len(ours) == 2
    for a, b in zip(ours, timm_maps, strict=True):
        torch.testing.assert_close(a, b)
    expected = last[:, 1:].reshape(2, 4, 4, 192).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours[1], expected, atol=1e-5, rtol=1e-5)


def numpy_sincos(grid: tuple[int, int], dim: int) -> np.ndarray:
    """Reference table (1 + gh*gw, dim): [sin(r w), cos(r w), sin(c w), cos(c w)], w_i = 10000^(-4i/dim)."""
    gh, gw = grid
    quarter = dim // 4
    table = np.zeros((1 + gh * gw, dim))
    for r in range(gh):
        for c in range(gw):
            row = table[1 + r * gw + c]
            for i in range(quarter):
                w = 10000.0 ** (-i / quarter)
                row[i], row[quarter + i] = math.sin(r * w), math.cos(r * w)
                row[2 * quarter + i], row[3 * quarter + i] = math.sin(c * w), math.cos(c * w)
    return table


def test_sincos_matches_numpy_reference() -> None:
    # A non-square grid tells rows from columns.
    ours = sincos_pos_embed((2, 3), 16)
    assert ours.shape == (1, 7, 16)
    np.testing.assert_allclose(ours[0].numpy(), numpy_sincos((2, 3), 16), atol=1e-6)
    np.testing.assert_allclose(
        sincos_pos_embed((2, 3), 16, cls_token=False)[0].numpy(), numpy_sincos((2, 3), 16)[1:]
    )
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_pos_embed((2, 2), 18)


def test_sincos_pos_embed_is_fixed() -> None:
    encoder = tiny(pos_embed="sincos").train()
    assert not encoder.vit.pos_embed.requires_grad
    np.testing.assert_allclose(
        encoder.vit.pos_embed[0].detach().numpy(), numpy_sincos((4, 4), 192), atol=1e-6
    )
    torch.testing.assert_close(encoder.patch_pos_embed(), encoder.vit.pos_embed[:, 1:])
    before = encoder.vit.pos_embed.detach().clone()
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=1.0)
    encoder.features(image()).sum().backward()
    optimizer.step()
    assert encoder.vit.pos_embed.grad is None
    torch.testing.assert_close(encoder.vit.pos_embed.detach(), before)
    # learnt position embeddings are trainable
    assert tiny(pos_embed="learn").vit.pos_embed.requires_grad


def test_gradient_checkpointing_gives_same_loss_and_gradients() -> None:
    encoder = tiny().train()
    x = image()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    calls = []
    block = encoder.vit.blocks[0]
    original_forward = block.forward

    def counting_forward(*args, **kwargs):  # forward hooks do not fire on recomputation; this does
        calls.append(1)
        return original_forward(*args, **kwargs)

    block.forward = counting_forward

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        loss = encoder.tokens(x, mask).pow(2).mean() + encoder.features(x, "cls+mean").square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    assert len(calls) == 2
    encoder.set_grad_checkpointing(True)
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert len(calls) == 6, "checkpointing should re-run block 0 in the backward pass"
    torch.testing.assert_close(ckpt_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_layer_scale_and_depth_follow_the_spec() -> None:
    encoder = tiny(init_values=0.25, depth=3)
    assert encoder.depth == 3 and encoder.embed_dim == 192
    torch.testing.assert_close(encoder.vit.blocks[2].ls2.gamma.detach(), torch.full((192,), 0.25))
    assert isinstance(EncoderSpec(arch="vit_small").to_dict()["mean"], list)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arch": "vit_huge"}, "arch"),
        ({"image_size": 50}, "image_size"),
        ({"patch_size": 12}, "image_size"),  # 32 is not a multiple of 12
        ({"pos_embed": "rope"}, "pos_embed"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        tiny(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"patch_size": 0}, "patch_size"), ({"image_size": 0}, "image_size")]
)
def test_non_positive_sizes_raise_config_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        tiny(**kwargs)


def test_zero_depth_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="depth"):
        tiny(depth=0)


def test_out_of_range_intermediate_layer_raises() -> None:
    with pytest.raises((ConfigError, IndexError)):
        tiny().intermediates(image(), [5])


def test_negative_return_layers_count_from_the_end() -> None:
    _, layers = tiny().tokens(image(), return_layers=[-1])
    assert len(layers) == 1


def test_unknown_mask_mode_raises() -> None:
    with pytest.raises((ConfigError, ValueError)):
        tiny().tokens(image(), torch.zeros(2, 16, dtype=torch.bool), mode="zero")  # type: ignore[arg-type]
