"""Segmentation heads: shapes on odd grids, default layers, frozen vs fine-tuned training, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import UNETR
from monai.networks.nets import unetr as unetr_module
from torch import nn

from panderm.errors import ConfigError, ProbeError
from panderm.models.checkpoints import CheckpointError
from panderm.models.encoder import create_encoder
from panderm.models.seg_heads import (
    HEADS,
    SEGMENTER_FORMAT,
    UNETRHead,
    build_segmentation_model,
    default_layers,
    load_segmenter,
    save_segmenter,
)
from probes.encoders import load_probe_encoder


def _encoder(patch: int = 8, size: int = 32, depth: int = 2, **kwargs):
    torch.manual_seed(0)
    return create_encoder("vit_tiny", patch_size=patch, image_size=size, depth=depth, **kwargs)


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize(
    ("patch", "size", "depth", "classes"),
    [(8, 48, 4, 2), (8, 40, 2, 3), (16, 112, 4, 2), (16, 64, 2, 3)],  # grids 6, 5, 7, 4
)
def test_output_is_at_image_size(head: str, patch: int, size: int, depth: int, classes: int) -> None:
    model = build_segmentation_model(_encoder(patch, size, depth), head, num_classes=classes)
    assert model.layers == default_layers(head, depth, patch)
    with torch.no_grad():
        assert model(_images(size)).shape == (2, classes, size, size)


def test_default_layers_match_published_lists() -> None:
    assert default_layers("fpn_upernet", 12, 16) == [3, 5, 7, 11]  # PanDerm / BEiT ViT-B
    assert default_layers("fpn_upernet", 24, 16) == [7, 11, 15, 23]  # ViT-L
    assert default_layers("unetr", 12, 16) == [2, 5, 8, 11]  # UNETR paper: z3, z6, z9, z12
    assert default_layers("unetr", 12, 8) == [3, 7, 11]
    assert default_layers("linear", 12, 16) == [11]
    assert default_layers("linear", 12, 16, linear_layers=4) == [8, 9, 10, 11]
    assert default_layers("fpn_upernet", 2, 16) == [0, 0, 0, 1]  # tiny encoders repeat blocks


def test_last_four_linear_head_concatenates_four_maps() -> None:
    model = build_segmentation_model(_encoder(depth=2), "linear", layers=[-4 % 2, 0, -2, -1])
    assert model.layers == [0, 0, 0, 1]
    assert model.head.norm.num_features == 4 * 192
    assert model(_images(32)).shape == (2, 2, 32, 32)


def test_encoder_runs_once_on_distinct_blocks() -> None:
    model = build_segmentation_model(_encoder(depth=2), "fpn_upernet")
    calls = []
    original = model.encoder.intermediates

    def spy(x, layers):
        calls.append(list(layers))
        return original(x, layers)

    model.encoder.intermediates = spy
    model.eval()(_images(32))
    assert calls == [[0, 1]]


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        build_segmentation_model(_encoder(patch=14, size=28), "unetr")
    with pytest.raises(ConfigError, match="exactly 4 layers"):
        build_segmentation_model(_encoder(), "fpn_upernet", layers=[0, 1, 1])
    with pytest.raises(ConfigError, match="exactly 3 layers"):
        build_segmentation_model(_encoder(), "unetr", layers=[0, 1])
    with pytest.raises(ConfigError, match="fpn_upernet"):
        build_segmentation_model(_encoder(), "upernet")
    with pytest.raises(ConfigError, match="widht"):
        build_segmentation_model(_encoder(), "fpn_upernet", widht=64)
    with pytest.raises(ConfigError, match="out of range"):
        build_segmentation_model(_encoder(), "linear", layers=[2])
    with pytest.raises(ConfigError, match="intermediates"):
        build_segmentation_model(torch.nn.Linear(2, 2), "linear")


def _train_steps(model, size: int, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    target = torch.randint(0, 2, (2, size, size), generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(_images(size)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("head", HEADS)
def test_frozen_encoder_stays_bit_identical(head: str) -> None:
    model = build_segmentation_model(_encoder(drop_path_rate=0.5), head, frozen=True)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.named_parameters()}
    _train_steps(model, 32)
    assert model.training and not any(m.training for m in model.encoder.modules())
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    assert all(not torch.equal(p, head_before[k]) for k, p in model.head.named_parameters())


def test_finetuned_encoder_changes() -> None:
    model = build_segmentation_model(_encoder(), "linear", frozen=False)
    before = {k: v.clone() for k, v in model.encoder.named_parameters() if v.requires_grad}
    _train_steps(model, 32)
    assert model.encoder.training
    assert all(not torch.equal(p, before[k]) for k, p in model.encoder.named_parameters() if p.requires_grad)
    # parameters intermediates never uses stay frozen (no trainable parameter without a gradient)
    assert not model.encoder.mask_token.requires_grad and not model.encoder.vit.norm.weight.requires_grad


@pytest.mark.parametrize("head", HEADS)
def test_every_trainable_parameter_gets_a_gradient(head: str) -> None:
    model = build_segmentation_model(_encoder(pos_embed="sincos"), head, frozen=False).train()
    model(_images(32)).square().mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(f"head.{n}" in trainable for n, _ in model.head.named_parameters())
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum()] == []
    assert not model.encoder.vit.pos_embed.requires_grad  # a fixed sin-cos table stays fixed


class _GivenTokens(nn.Module):
    """Stands in for MONAI's ViT inside `UNETR` (which needs einops): returns preset hidden states."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.outputs: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.outputs


def test_unetr_head_matches_monai_unetr_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MONAI UNETR's decoder weights, our head gives MONAI's output for the same hidden states."""
    monkeypatch.setattr(unetr_module, "ViT", _GivenTokens)
    torch.manual_seed(0)
    reference = UNETR(
        in_channels=3, out_channels=2, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4,
        spatial_dims=2,
    ).eval()  # fmt: skip
    head = UNETRHead(48, 2, layers=[3, 6, 9, 11], patch_size=16, feature_size=8).eval()
    renames = {"encoder1.": "stem.", "decoder2.": "ups.3.", "decoder3.": "ups.2.", "decoder4.": "ups.1."}
    renames |= {
        "encoder2.": "skips.0.",
        "encoder3.": "skips.1.",
        "encoder4.": "skips.2.",
        "decoder5.": "ups.0.",
    }
    state = {}
    for key, value in reference.state_dict().items():
        prefix = next((p for p in [*renames, "out."] if key.startswith(p)), None)
        assert prefix is not None, key
        state[renames.get(prefix, prefix) + key.removeprefix(prefix)] = value
    head.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(3)
    hidden = [torch.randn(2, 4, 48, generator=generator) for _ in range(12)]  # (B, 2×2 patches, D)
    last = torch.randn(2, 4, 48, generator=generator)
    reference.vit.outputs = (last, hidden)
    x = _images(32)
    with torch.no_grad():
        maps = [reference.proj_feat(h) for h in (hidden[3], hidden[6], hidden[9], last)]
        torch.testing.assert_close(head(maps, x), reference(x))


def test_save_load_round_trip(tmp_path) -> None:
    model = build_segmentation_model(
        _encoder(depth=2), "fpn_upernet", num_classes=3, frozen=False, channels=32
    )
    _train_steps(model, 32, steps=1)  # moves BatchNorm statistics and weights away from init
    weights = save_segmenter(model, tmp_path / "seg", recipe={"lr": 0.01, "head": "fpn_upernet"})
    meta = json.loads((tmp_path / "seg.json").read_text())
    assert meta["format"] == SEGMENTER_FORMAT and meta["format_version"] == 1
    assert meta["head"] == "fpn_upernet" and meta["layers"] == [0, 0, 0, 1] and meta["num_classes"] == 3
    assert meta["head_options"] == {"channels": 32, "pool_scales": [1, 2, 3, 6], "dropout": 0.1}
    assert meta["frozen"] is False and meta["encoder_spec"]["depth"] == 2 and meta["recipe_hash"]
    loaded = load_segmenter(weights)
    assert not loaded.training and loaded.frozen is False and loaded.head_options == model.head_options
    x = _images(32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))

    # a head that does not fit the weights fails, naming the file
    meta["head_options"]["channels"] = 16
    (tmp_path / "seg.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"seg\.safetensors"):
        load_segmenter(tmp_path / "seg")

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_segmenter(tmp_path / "seg.json")


@pytest.mark.parametrize("head", HEADS)
def test_timm_encoder_works_with_every_head(head: str, tmp_path) -> None:
    encoder = load_probe_encoder("timm:vit_tiny_patch16_224", image_size=64)
    model = build_segmentation_model(encoder, head, num_classes=2)
    assert model.layers == default_layers(head, 12, 16)
    with torch.no_grad():
        assert model.eval()(_images(64)).shape == (2, 2, 64, 64)
    save_segmenter(model, tmp_path / "seg")
    loaded = load_segmenter(tmp_path / "seg")
    assert type(loaded.encoder) is type(encoder) and loaded.encoder.spec == encoder.spec
    with torch.no_grad():
        x = _images(64)
        assert torch.equal(loaded(x), model.eval()(x))


def test_timm_intermediates_count_from_the_end_and_refuse_non_vits() -> None:
    encoder = load_probe_encoder("timm:vit_tiny_patch16_224", image_size=32)
    x = _images(32, batch=1)
    with torch.no_grad():
        a, b, c = encoder.intermediates(x, [-1, 3, 11])
    assert a.shape == (1, 192, 2, 2) and torch.equal(a, c) and not torch.equal(a, b)
    with pytest.raises(ProbeError, match="out of range"):
        encoder.intermediates(x, [12])
    with pytest.raises(ProbeError, match="ViT"):
        load_probe_encoder("timm:resnet18").intermediates(x, [0])
