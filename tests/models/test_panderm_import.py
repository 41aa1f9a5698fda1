"""PanDerm (CAE/BEiT-layout) import: every tensor lands where it should and the forward pass equals a
hand-written BEiT-style reference computed straight from the checkpoint tensors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from panderm.models.checkpoints import CheckpointError
from panderm.models.encoder import Encoder, sincos_pos_embed
from panderm.models.panderm_import import import_panderm, panderm_to_timm

HEADS = ["regressor.blocks.0.norm1.weight", "decoder.pred.weight", "teacher.cls_token", "projector.fc.bias"]


def panderm_state(dim: int = 192, depth: int = 2, grid: int = 4, patch: int = 16, seed: int = 0) -> dict:
    """A random state dict in PanDerm's layout (``encoder.`` prefix, q/v biases, gammas, heads)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {
        "encoder.cls_token": rnd(1, 1, dim, scale=0.5),
        "encoder.pos_embed": rnd(1, 1 + grid * grid, dim, scale=0.5),
        "encoder.patch_embed.proj.weight": rnd(dim, 3, patch, patch),
        "encoder.patch_embed.proj.bias": rnd(dim),
        "encoder.norm.weight": rnd(dim, scale=0.1, offset=1.0),
        "encoder.norm.bias": rnd(dim, scale=0.1),
    }
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        sd |= {
            b + "norm1.weight": rnd(dim, scale=0.1, offset=1.0),
            b + "norm1.bias": rnd(dim, scale=0.1),
            b + "attn.qkv.weight": rnd(3 * dim, dim),
            b + "attn.q_bias": rnd(dim, scale=0.2),
            b + "attn.v_bias": rnd(dim, scale=0.2),
            b + "attn.proj.weight": rnd(dim, dim),
            b + "attn.proj.bias": rnd(dim),
            b + "gamma_1": rnd(dim, scale=0.3, offset=0.5),
            b + "norm2.weight": rnd(dim, scale=0.1, offset=1.0),
            b + "norm2.bias": rnd(dim, scale=0.1),
            b + "mlp.fc1.weight": rnd(4 * dim, dim),
            b + "mlp.fc1.bias": rnd(4 * dim),
            b + "mlp.fc2.weight": rnd(dim, 4 * dim),
            b + "mlp.fc2.bias": rnd(dim),
            b + "gamma_2": rnd(dim, scale=0.3, offset=0.5),
        }
    sd |= {key: rnd(dim) for key in HEADS}
    return sd


def reference_tokens(sd: dict, x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """BEiT-style ViT written out by hand from PanDerm's tensors: (B, 1 + N, D) after the final norm."""

    def p(name: str) -> torch.Tensor:
        return sd[f"encoder.{name}"]

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], p(f"{name}.weight"), p(f"{name}.bias"), eps=1e-6)

    patch = p("patch_embed.proj.weight").shape[-1]
    t = F.conv2d(x, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([p("cls_token").expand(len(x), -1, -1), t], 1) + p("pos_embed")
    batch, tokens, dim = t.shape
    hd = dim // heads
    for i in range(depth):
        h = norm(t, f"blocks.{i}.norm1")
        w_q, w_k, w_v = p(f"blocks.{i}.attn.qkv.weight").chunk(3)
        q = h @ w_q.T + p(f"blocks.{i}.attn.q_bias")
        k = h @ w_k.T  # no key bias
        v = h @ w_v.T + p(f"blocks.{i}.attn.v_bias")
        q, k, v = (z.view(batch, tokens, heads, hd).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        o = o @ p(f"blocks.{i}.attn.proj.weight").T + p(f"blocks.{i}.attn.proj.bias")
        t = t + p(f"blocks.{i}.gamma_1") * o
        h = norm(t, f"blocks.{i}.norm2")
        m = F.gelu(h @ p(f"blocks.{i}.mlp.fc1.weight").T + p(f"blocks.{i}.mlp.fc1.bias"))
        m = m @ p(f"blocks.{i}.mlp.fc2.weight").T + p(f"blocks.{i}.mlp.fc2.bias")
        t = t + p(f"blocks.{i}.gamma_2") * m
    return norm(t, "norm")


def expected_location(encoder: Encoder, key: str) -> torch.Tensor:
    """Where a PanDerm key must land in our encoder (an explicit table, independent of the importer)."""
    name = key.removeprefix("encoder.")
    vit = encoder.vit
    top = {
        "cls_token": vit.cls_token,
        "pos_embed": vit.pos_embed,
        "patch_embed.proj.weight": vit.patch_embed.proj.weight,
        "patch_embed.proj.bias": vit.patch_embed.proj.bias,
        "norm.weight": vit.norm.weight,
        "norm.bias": vit.norm.bias,
    }
    if name in top:
        return top[name]
    _, index, rest = name.split(".", 2)
    block = vit.blocks[int(index)]
    per_block = {
        "norm1.weight": block.norm1.weight,
        "norm1.bias": block.norm1.bias,
        "attn.qkv.weight": block.attn.qkv.weight,
        "attn.proj.weight": block.attn.proj.weight,
        "attn.proj.bias": block.attn.proj.bias,
        "gamma_1": block.ls1.gamma,
        "norm2.weight": block.norm2.weight,
        "norm2.bias": block.norm2.bias,
        "mlp.fc1.weight": block.mlp.fc1.weight,
        "mlp.fc1.bias": block.mlp.fc1.bias,
        "mlp.fc2.weight": block.mlp.fc2.weight,
        "mlp.fc2.bias": block.mlp.fc2.bias,
        "gamma_2": block.ls2.gamma,
    }
    dim = encoder.embed_dim
    bias = block.attn.qkv.bias
    per_block |= {"attn.q_bias": bias[:dim], "attn.v_bias": bias[2 * dim :]}
    return per_block[rest]


@pytest.fixture(scope="module")
def sd() -> dict:
    return panderm_state()


def test_every_weight_lands_in_place(sd: dict) -> None:
    encoder = import_panderm(sd, arch="vit_tiny", depth=2, image_size=64)
    assert encoder.spec.pos_embed == "sincos" and encoder.spec.init_values is not None
    for key, tensor in sd.items():
        if key.startswith("encoder."):
            assert torch.equal(expected_location(encoder, key).detach(), tensor), key
    for i in range(2):
        bias = encoder.vit.blocks[i].attn.qkv.bias.detach()
        assert bias.shape == (3 * 192,)
        assert torch.equal(bias[:192], sd[f"encoder.blocks.{i}.attn.q_bias"])
        assert torch.equal(bias[192:384], torch.zeros(192))
        assert torch.equal(bias[384:], sd[f"encoder.blocks.{i}.attn.v_bias"])
    report = encoder.load_report
    assert report.clean and report.missing == []  # the absent mask_token is expected, not missing
    assert sorted(report.ignored) == sorted(HEADS)


def test_forward_matches_hand_written_beit_reference(sd: dict) -> None:
    encoder = import_panderm(sd, arch=None, image_size=64).eval()
    assert encoder.spec.arch == "vit_tiny" and encoder.depth == 2  # inferred from the weights
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = reference_tokens(sd, x, heads=3, depth=2)
        torch.testing.assert_close(encoder.tokens(x), reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(encoder.features(x), reference[:, 0], atol=1e-4, rtol=1e-4)
    assert reference.std() > 0.1  # the comparison is not between two near-constant tensors


def test_vit_base_dims() -> None:
    sd = panderm_state(dim=768, depth=1, grid=2, seed=1)
    encoder = import_panderm(sd, arch="vit_base", depth=1, image_size=32).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.tokens(x), reference_tokens(sd, x, heads=12, depth=1), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("layout", ["model", "state_dict", "unprefixed", "file", "wrapped_file"])
def test_wrappers_and_unprefixed_layout(sd: dict, layout: str, tmp_path: Path) -> None:
    unprefixed = {k.removeprefix("encoder."): v for k, v in sd.items()}
    source = {
        "model": {"model": sd, "epoch": 10},
        "state_dict": {"state_dict": sd},
        "unprefixed": unprefixed,
        "file": tmp_path / "panderm.pth",
        "wrapped_file": tmp_path / "panderm.pth",
    }[layout]
    if layout == "file":
        torch.save(sd, source)
    if layout == "wrapped_file":
        torch.save({"model": unprefixed, "args": {"lr": 1.0}}, source)
    encoder = import_panderm(source, arch="vit_tiny", depth=2, image_size=64)
    reference = import_panderm(sd, arch="vit_tiny", depth=2, image_size=64)
    for key, value in reference.state_dict().items():
        if key != "mask_token":
            assert torch.equal(encoder.state_dict()[key], value), key
    assert sorted(encoder.load_report.ignored) == sorted(HEADS)
    assert encoder.load_report.clean
    if isinstance(source, Path):
        assert encoder.load_report.source == str(source)


def test_panderm_to_timm_mapping(sd: dict) -> None:
    mapped, ignored = panderm_to_timm(sd)
    assert sorted(ignored) == sorted(HEADS)
    assert "vit.blocks.1.ls2.gamma" in mapped and "vit.blocks.0.attn.qkv.bias" in mapped
    assert not any("q_bias" in k or "v_bias" in k or "gamma_" in k for k in mapped)
    # 15 tensors per block minus the two biases merged into one, plus 6 outside the blocks
    assert len(mapped) == 2 * 14 + 6


def test_missing_block_key_names_it(sd: dict) -> None:
    broken = {
        k: v
        for k, v in sd.items()
        if k not in ("encoder.blocks.1.mlp.fc1.weight", "encoder.blocks.0.gamma_1")
    }
    with pytest.raises(CheckpointError) as info:
        import_panderm(broken, arch="vit_tiny", depth=2, image_size=64)
    message = str(info.value)
    assert "vit.blocks.1.mlp.fc1.weight" in message and "vit.blocks.0.ls1.gamma" in message
    assert "blocks.0.gamma_1" in message  # also in the checkpoint's own vocabulary
    assert sorted(info.value.report.missing) == ["vit.blocks.0.ls1.gamma", "vit.blocks.1.mlp.fc1.weight"]


def test_non_strict_import_loads_the_rest(sd: dict, caplog: pytest.LogCaptureFixture) -> None:
    broken = {k: v for k, v in sd.items() if k != "encoder.norm.bias"}
    with caplog.at_level(logging.WARNING):
        encoder = import_panderm(broken, arch="vit_tiny", depth=2, image_size=64, strict=False)
    assert encoder.load_report.missing == ["vit.norm.bias"] and "vit.norm.bias" in caplog.text
    assert torch.equal(encoder.vit.norm.weight.detach(), sd["encoder.norm.weight"])


def test_unknown_encoder_keys_are_unexpected_not_dropped(sd: dict) -> None:
    extra = {**sd, "encoder.blocks.0.attn.relative_position_bias_table": torch.zeros(10, 3)}
    with pytest.raises(CheckpointError, match="relative_position_bias_table"):
        import_panderm(extra, arch="vit_tiny", depth=2, image_size=64)


def test_half_a_bias_pair_raises(sd: dict) -> None:
    broken = {k: v for k, v in sd.items() if k != "encoder.blocks.1.attn.v_bias"}
    with pytest.raises(CheckpointError, match=r"block 1 .*q_bias.*v_bias"):
        import_panderm(broken, arch="vit_tiny", depth=2, image_size=64)


def test_wrong_arch_is_a_shape_mismatch(sd: dict) -> None:
    with pytest.raises(CheckpointError, match="shape mismatch"):
        import_panderm(sd, arch="vit_small", depth=2, image_size=64)
    with pytest.raises(CheckpointError, match="embed dim 100"):
        import_panderm({"encoder.patch_embed.proj.weight": torch.zeros(100, 3, 16, 16)}, arch=None)


def test_missing_pos_embed_is_filled_with_sincos(sd: dict) -> None:
    without = {k: v for k, v in sd.items() if k != "encoder.pos_embed"}
    encoder = import_panderm(without, arch="vit_tiny", depth=2, image_size=64)
    assert encoder.load_report.clean
    torch.testing.assert_close(encoder.vit.pos_embed.detach(), sincos_pos_embed((4, 4), 192))
    assert not encoder.vit.pos_embed.requires_grad


def test_pos_embed_for_another_grid(sd: dict, caplog: pytest.LogCaptureFixture) -> None:
    # A sin-cos table saved for 4x4 is regenerated exactly for 8x8 ...
    fixed = {**sd, "encoder.pos_embed": sincos_pos_embed((4, 4), 192)}
    encoder = import_panderm(fixed, arch="vit_tiny", depth=2, image_size=128)
    torch.testing.assert_close(encoder.vit.pos_embed.detach(), sincos_pos_embed((8, 8), 192))
    # ... while a learnt one is resampled (with a warning), keeping its corner values roughly in place.
    with caplog.at_level(logging.WARNING):
        encoder = import_panderm(sd, arch="vit_tiny", depth=2, image_size=128)
    assert "resampled" in caplog.text
    pos = encoder.vit.pos_embed.detach()
    assert pos.shape == (1, 65, 192)
    assert torch.equal(pos[:, 0], sd["encoder.pos_embed"][:, 0])  # the CLS entry is kept as is
