"""Multi-view methods (DINO, iBOT, SimCLR): views and masks in, finite losses, where gradients go, the EMA
teacher and centres moving as scheduled, strict state round trips, and the data2vec 2.0 targets of mlm_ema."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from panderm.data.transforms import MultiView
from panderm.models.encoder import create_encoder
from panderm.models.teachers import EMATeacher, momentum_schedule
from panderm.pretrain.methods import Dino, Ibot, Mae, SimClr, build_method
from panderm.pretrain.methods.base import PROBE_FEATURES
from panderm.pretrain.module import PretrainModule
from panderm.pretrain.objectives import PretrainError

B = 4
SMALL = {
    "dino": {"num_prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2},
    "ibot": {"num_prototypes": 64, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2},
    "simclr": {"proj_dim": 16, "hidden_dim": 32},
}


def make(name: str, **options):
    """A tiny encoder (vit_tiny/8 at 32 px, depth 2), the method, its views and masks (seeded)."""
    torch.manual_seed(0)
    encoder = create_encoder("vit_tiny", 8, 32, depth=2)
    method = build_method(name, encoder, **{**SMALL[name], **options})
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    if name != "simclr":
        views += [torch.randn(B, 3, 16, 16, generator=g) for _ in range(method.local_crops)]
    mask = None
    if method.num_masks:
        mask = torch.rand(B, method.num_masks, encoder.num_patches, generator=g).argsort(-1) < 5
    return encoder, method, views, mask


@pytest.mark.parametrize("name", list(SMALL))
def test_loss_is_finite_and_gradients_reach_student_and_heads_only(name):
    encoder, method, views, mask = make(name)
    out = method(encoder, views, mask, step=0, total_steps=10)
    assert out["loss"].ndim == 0 and out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert encoder.vit.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    assert (encoder.mask_token.grad is not None) == (name == "ibot")  # only iBOT feeds mask tokens
    for n, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert n.startswith("teacher") and p.grad is None, n


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_distillation_logs_monitors_and_moves_the_centre(name):
    encoder, method, views, mask = make(name)
    assert torch.equal(method.center, torch.zeros(64))
    out = method(encoder, views, mask, step=0, total_steps=10)
    assert 0 < out["teacher_entropy"] <= torch.log(torch.tensor(64.0)) + 1e-5
    assert out["teacher_temp"].item() == pytest.approx(0.04)  # the warm-up starts at warmup_teacher_temp
    assert method.center.abs().sum() > 0
    if name == "ibot":
        assert {"patch", "patch_teacher_entropy"} <= set(out) and method.patch_center.abs().sum() > 0


def test_ibot_with_a_separate_patch_head():
    encoder, method, views, mask = make("ibot", separate_patch_head=True)
    out = method(encoder, views, mask, step=0, total_steps=10)
    out["loss"].backward()
    assert method.patch_head.prototypes.grad.abs().sum() > 0
    assert not torch.equal(method.patch_head.prototypes, method.head.prototypes)
    before = method.teacher_patch_head.prototypes.clone()
    with torch.no_grad():
        method.patch_head.prototypes.add_(1.0)
    method.on_after_optimizer_step(encoder, 0, 10)
    m = momentum_schedule(0, 10, method.base_momentum, method.final_momentum)
    expected = m * before + (1 - m) * method.patch_head.prototypes.detach()
    torch.testing.assert_close(method.teacher_patch_head.prototypes, expected)


def test_dino_with_sinkhorn_and_koleo():
    encoder, method, views, _ = make("dino", centering="sinkhorn", koleo_weight=0.1)
    out = method(encoder, views, None, step=5, total_steps=10)
    assert torch.isfinite(out["koleo"]) and torch.equal(method.center, torch.zeros(64))  # no centre


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_ema_step_moves_teacher_and_head_by_the_scheduled_momentum(name):
    encoder, method, _, _ = make(name)
    with torch.no_grad():
        for p in [*encoder.parameters(), *method.head.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    before = {n: p.clone() for n, p in method.named_parameters() if n.startswith("teacher")}
    method.on_after_optimizer_step(encoder, 3, 10)
    m = momentum_schedule(3, 10, method.base_momentum, method.final_momentum)
    params = dict(method.named_parameters())
    students = {**{f"teacher.encoder.{n}": p for n, p in encoder.named_parameters()}}
    students |= {f"teacher_head.{n}": p for n, p in method.head.named_parameters()}
    assert set(students) == set(before)
    for n, s in students.items():
        torch.testing.assert_close(params[n], m * before[n] + (1 - m) * s.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_state_round_trips_strictly(name):
    encoder, method, views, mask = make(name)
    method(encoder, views, mask, step=0, total_steps=10)
    fresh = build_method(name, create_encoder("vit_tiny", 8, 32, depth=2), **SMALL[name])
    fresh.load_state_dict(method.state_dict(), strict=True)
    for (n, a), b in zip(method.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_ibot_patch_term_reads_masked_positions_only():
    encoder, method, views, mask = make("ibot")
    none = torch.zeros_like(mask)
    assert method(encoder, views, none, step=0, total_steps=10)["patch"].item() == 0.0
    assert method.patch_center.abs().sum() == 0  # nothing masked: the centre stays
    assert method(encoder, views, mask, step=0, total_steps=10)["patch"].item() > 0
    with pytest.raises(PretrainError, match="masks of shape"):
        method(encoder, views, mask[:, 0])


@pytest.mark.parametrize("name", ["dino", "simclr"])
def test_probe_features_are_the_first_views_cls_and_spare_the_probe_a_forward(name, monkeypatch):
    """The online probe trains on the method's detached CLS of the first view: the encoder's own features of
    that view (unmasked, final norm), so the module runs no extra forward for it."""
    encoder, method, views, mask = make(name)
    out = method(encoder, views, mask, step=0, total_steps=10)
    features = out[PROBE_FEATURES]
    assert not features.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(features, encoder.features(views[0]))
    module = PretrainModule(encoder, method, num_classes=3)
    monkeypatch.setattr(module, "_total_steps", lambda: 10)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    called, outputs = [], []
    monkeypatch.setattr(encoder, "features", lambda *a, **k: called.append(1))
    forward = method.forward
    monkeypatch.setattr(method, "forward", lambda *a, **k: outputs.append(forward(*a, **k)) or outputs[-1])
    batch = {"image": views[0], "views": views, "label": torch.tensor([0, 1, 2, -1])}
    loss = module.training_step(batch, 0)
    assert called == [] and PROBE_FEATURES not in outputs[0]  # popped, so never logged as a term
    seen = outputs[0]["loss"]
    expected = F.cross_entropy(module.probe(features[:3]), batch["label"][:3])
    torch.testing.assert_close(loss, seen + expected)


def test_simclr_is_symmetric_in_its_views_and_learns_one_batch():
    encoder, method, views, _ = make("simclr")
    a = method(encoder, views, None)["loss"]
    b = method(encoder, views[::-1], None)["loss"]
    torch.testing.assert_close(a, b)
    params = [p for p in [*encoder.parameters(), *method.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(8):
        loss = method(encoder, views, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_views_and_errors():
    encoder, method, views, _ = make("dino")
    transform = method.view_transform(32)
    assert isinstance(transform, MultiView) and len(transform.views) == 2 + method.local_crops
    out = transform(image=(torch.rand(40, 48, 3) * 255).numpy().astype("uint8"))
    assert [tuple(v.shape) for v in out["views"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    with pytest.raises(PretrainError, match="list of at least"):
        method(encoder, views[0], None)
    assert isinstance(build_method("ibot", encoder, num_prototypes=32, patch_weight=0.5), Ibot)
    assert isinstance(build_method("simclr", encoder), SimClr) and isinstance(
        build_method("dino", encoder), Dino
    )


def test_data2vec2_targets_are_instance_normalised_ffn_outputs():
    torch.manual_seed(0)
    student = create_encoder("vit_tiny", 8, 32, depth=3)
    teacher = EMATeacher(student)
    images = torch.randn(2, 3, 32, 32)
    captured = []
    hooks = [
        b.mlp.register_forward_hook(lambda _m, _i, o: captured.append(o)) for b in student.vit.blocks[1:]
    ]
    with torch.no_grad():
        student.tokens(images)
    for h in hooks:
        h.remove()
    expected = torch.stack(
        [
            (c - c.mean(1, keepdim=True)) / (c.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
            for c in captured
        ]
    ).mean(0)
    got = teacher(images, 2, source="ffn", norm="instance", final_norm=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    final = teacher(images, 2, source="ffn", norm="instance", final_norm=True)
    torch.testing.assert_close(
        final, F.layer_norm(expected, expected.shape[-1:], eps=1e-6), rtol=1e-4, atol=1e-4
    )


def test_mae_decoder_is_sized_from_the_encoder():
    method = Mae(create_encoder("vit_tiny", 8, 32, depth=12))
    blocks = method.decoder.blocks if hasattr(method.decoder, "blocks") else None
    assert blocks is not None and len(blocks) == 4
    assert sum(p.numel() for p in method.decoder.parameters()) < 0.5 * sum(
        p.numel() for p in create_encoder("vit_tiny", 8, 32, depth=12).parameters()
    )
