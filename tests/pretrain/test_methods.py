"""Pretraining methods: finite losses, where gradients go, frozen teachers, overfitting one batch, EMA
updates, the predictors' token bookkeeping and `build_method`."""

from __future__ import annotations

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from panderm.errors import ConfigError
from panderm.models.encoder import create_encoder
from panderm.models.teachers import OpenClipTeacher, momentum_schedule
from panderm.pretrain.methods import Mae, Method, MlmClip, MlmEma, build_method
from panderm.pretrain.objectives import PretrainError, check_finite
from panderm.pretrain.predictors import LatentRegressor, PixelDecoder, merge, select
from tests.models.test_teachers import TINY_CLIP, tiny_teacher

B, MASKED = 4, 8  # batch, masked patches of 16
SMALL = {
    "mlm_clip": {"regressor_depth": 1, "positions": "all"},
    "mlm_ema": {"top_k": 2},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
}


def make(name: str):
    """A fresh tiny encoder (vit_tiny, patch 8, 32 px, depth 2) and method, with a fixed batch."""
    torch.manual_seed(0)
    encoder = create_encoder("vit_tiny", 8, 32, depth=2)
    kwargs = dict(SMALL[name])
    if name == "mlm_clip":
        kwargs["teacher"] = tiny_teacher()  # grid 2x2: resampled to the student's 4x4
    method = build_method(name, encoder, **kwargs)
    images = torch.randn(B, 3, 32, 32)
    mask = torch.rand(B, encoder.num_patches).argsort(1) < MASKED
    return encoder, method, images, mask


def teacher_params(method: Method) -> list[nn.Parameter]:
    if isinstance(method, MlmClip):
        return list(method.teacher.visual.parameters())
    if isinstance(method, MlmEma):
        return list(method.teacher.parameters())
    return []


@pytest.mark.parametrize("name", list(SMALL))
def test_loss_is_finite_and_gradients_reach_student_and_heads_only(name):
    encoder, method, images, mask = make(name)
    assert method.name == name
    assert method.mask_mode == {"mae": "drop", "mlm_clip": "drop", "mlm_ema": "replace"}[name]
    out = method(encoder, images, mask, step=0)
    loss = out["loss"]
    assert loss.ndim == 0 and loss.dtype == torch.float32 and check_finite(out, 0)
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    loss.backward()
    assert encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert encoder.vit.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for p in teacher_params(method):
        assert not p.requires_grad and p.grad is None


@pytest.mark.parametrize("name", ["mlm_clip", "mlm_ema"])
def test_teachers_stay_frozen_and_in_eval_mode(name):
    encoder, method, _, _ = make(name)
    method.train()
    nn.ModuleDict({"encoder": encoder, "method": method}).train()
    assert method.training and method.head.training
    assert not method.teacher.training
    inner = method.teacher.visual if name == "mlm_clip" else method.teacher.encoder
    assert not any(m.training for m in inner.modules())


def test_clip_teacher_is_not_part_of_the_method():
    _, method, _, _ = make("mlm_clip")
    names = [n for n, _ in method.named_parameters()] + list(method.state_dict())
    assert names and not any(n.startswith("teacher") for n in names)


@pytest.mark.parametrize("name", list(SMALL))
def test_a_few_steps_overfit_one_batch(name):
    encoder, method, images, mask = make(name)
    params = [p for p in [*encoder.parameters(), *method.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for step in range(10):
        loss = method(encoder, images, mask, step=step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_after_optimizer_step(encoder, step, 10)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_ema_step_moves_teacher_by_the_scheduled_momentum():
    encoder, method, _, _ = make("mlm_ema")
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = {n: p.clone() for n, p in method.teacher.encoder.named_parameters()}
    method.on_after_optimizer_step(encoder, 3, 10)
    m = momentum_schedule(3, 10, method.base_momentum, method.final_momentum)
    assert (method.base_momentum, method.final_momentum) == (0.99, 0.999)  # moves in a short run
    teacher = dict(method.teacher.encoder.named_parameters())
    for n, s in encoder.named_parameters():
        torch.testing.assert_close(teacher[n], m * before[n] + (1 - m) * s.detach(), rtol=0, atol=1e-6)


def test_ema_method_state_round_trips_strictly():
    encoder, method, _, _ = make("mlm_ema")
    method.on_after_optimizer_step(encoder, 0, 10)
    fresh = MlmEma(create_encoder("vit_tiny", 8, 32, depth=2), top_k=2)
    fresh.load_state_dict(method.state_dict(), strict=True)
    for (n, a), b in zip(method.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_mlm_clip_positions_reach_the_loss():
    encoder, _, images, mask = make("mlm_clip")
    method = MlmClip(encoder, tiny_teacher(), positions="masked", regressor_depth=1)
    out = method(encoder, images, mask)
    assert out["alignment"].item() == 0.0 and out["cls"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["reconstruction"].item())


def test_wrong_mask_is_rejected():
    encoder, method, images, mask = make("mae")
    with pytest.raises(PretrainError, match="mask"):
        method(encoder, images, mask[:, :8])


# --- predictors ---------------------------------------------------------------------------------------------


def test_select_and_merge_invert_each_other():
    tokens = torch.randn(2, 6, 3)
    mask = torch.tensor([[True, False, False, True, False, True], [False, True, True, False, False, True]])
    merged = merge(select(tokens, ~mask), select(tokens, mask), mask)
    torch.testing.assert_close(merged, tokens, rtol=0, atol=0)


def test_regressor_and_decoder_shapes():
    regressor = LatentRegressor(64, depth=1, num_heads=2)
    out = regressor(torch.randn(2, 5, 64), torch.randn(2, 5, 64), torch.randn(2, 11, 64))
    assert out.shape == (2, 11, 64)
    decoder = PixelDecoder(64, (4, 4), 8, decoder_dim=32, depth=1, num_heads=2)
    mask = torch.rand(2, 16).argsort(1) < 12
    assert decoder(torch.randn(2, 1 + 4, 64), mask).shape == (2, 16, 8 * 8 * 3)
    with pytest.raises(ConfigError, match="divisible"):
        LatentRegressor(64, num_heads=5)


def test_regressor_predictions_depend_only_on_their_own_position_and_the_context():
    regressor = LatentRegressor(32, depth=1, num_heads=2).eval()
    visible, visible_pos = torch.randn(1, 4, 32), torch.randn(1, 4, 32)
    queries = torch.randn(1, 3, 32)
    full = regressor(visible, visible_pos, queries)
    # queries only cross-attend to the context, never to each other
    torch.testing.assert_close(regressor(visible, visible_pos, queries[:, 1:2]), full[:, 1:2])


# --- build_method -------------------------------------------------------------------------------------------


def test_build_method_from_config_values():
    encoder = create_encoder("vit_tiny", 8, 32, depth=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    teacher_cfg = {"model_name": "ViT-B-16", "image_size": 32, "model_kwargs": TINY_CLIP}
    method = build_method("mlm_clip", encoder, teacher=teacher_cfg, regressor_depth=1)
    assert isinstance(method.teacher, OpenClipTeacher)
    images = torch.randn(1, 3, 32, 32)
    clip_mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    clip_std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    expected = (images * 0.5 + 0.5 - clip_mean) / clip_std  # the student's (0.5, 0.5) was passed on
    torch.testing.assert_close(method.teacher.renormalize(images), expected, rtol=1e-6, atol=1e-6)
    assert isinstance(build_method("mae", encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2), Mae)
    with pytest.raises(ConfigError, match="not one of"):
        build_method("byol", encoder)
    with pytest.raises(ConfigError, match="decoder_width"):
        build_method("mae", encoder, decoder_width=32)
    with pytest.raises(ConfigError, match="top_k"):
        build_method("mlm_ema", encoder, top_k=5)
    with pytest.raises(ConfigError, match="needs an open_clip teacher"):
        build_method("mlm_clip", encoder)
    with pytest.raises(ConfigError, match="teacher=none"):
        build_method("mae", encoder, teacher=method.teacher)


@pytest.mark.parametrize("name", list(SMALL))
def test_methods_run_under_bf16_autocast(name):
    encoder, method, images, mask = make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(encoder, images, mask)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert encoder.vit.patch_embed.proj.weight.grad is not None
