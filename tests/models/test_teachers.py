"""Teachers: the open_clip teacher (frozen, eval-only, re-normalisation, tokens vs open_clip's own forward,
grid resampling, local weights) and the EMA teacher (exact update, data2vec targets, momentum schedule)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from panderm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from panderm.errors import ConfigError
from panderm.models.encoder import create_encoder
from panderm.models.teachers import EMATeacher, OpenClipTeacher, momentum_schedule

# A tiny CLIP (1 block, width 64, patch 16) as config overrides of a built-in name: builds in milliseconds.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1},
}


def tiny_teacher(image_size: int = 32, **kwargs) -> OpenClipTeacher:
    """A random-init tiny open_clip teacher (grid (image_size/16)^2, width 64, projection 32)."""
    model_kwargs = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": image_size}}
    return OpenClipTeacher("ViT-B-16", image_size=image_size, model_kwargs=model_kwargs, **kwargs)


@pytest.fixture(scope="module")
def teacher() -> OpenClipTeacher:
    torch.manual_seed(0)
    return tiny_teacher()


def test_teacher_is_frozen_hidden_and_always_eval(teacher):
    assert list(teacher.parameters()) == [] and teacher.state_dict() == {}
    assert all(not p.requires_grad for p in teacher.visual.parameters())
    holder = nn.ModuleDict({"teacher": teacher, "head": nn.Linear(2, 2)})
    holder.train()
    teacher.train(True)
    assert not teacher.training and not teacher.visual.training
    assert all(not m.training for m in teacher.visual.modules())
    assert "teacher" not in "".join(holder.state_dict())


def test_teacher_moves_with_to():
    teacher = tiny_teacher()
    nn.Sequential(teacher).to(torch.float64)
    assert teacher.visual.conv1.weight.dtype == torch.float64
    assert teacher(torch.randn(1, 3, 32, 32)).dtype == torch.float32


def test_renormalisation_matches_manual(teacher):
    images = torch.randn(2, 3, 32, 32)

    def column(values):
        return torch.tensor(values).view(1, 3, 1, 1)

    pixels = images * column(IMAGENET_STD) + column(IMAGENET_MEAN)
    expected = (pixels - column(OPENAI_DATASET_MEAN)) / column(OPENAI_DATASET_STD)
    torch.testing.assert_close(teacher.renormalize(images), expected, rtol=1e-6, atol=1e-6)
    # a student normalised like CLIP needs no change
    same = tiny_teacher(student_mean=OPENAI_DATASET_MEAN, student_std=OPENAI_DATASET_STD)
    torch.testing.assert_close(same.renormalize(images), images, rtol=1e-6, atol=1e-6)


def open_clip_forward(teacher: OpenClipTeacher, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's own forward: (projected pooled CLS, unprojected patch tokens after ln_post)."""
    visual = teacher.visual
    visual.output_tokens = True
    try:
        return visual(teacher.renormalize(images))
    finally:
        visual.output_tokens = False


def test_tokens_match_open_clip_forward(teacher):
    images = torch.randn(2, 3, 32, 32)
    tokens = teacher(images)
    assert tokens.shape == (2, 1 + 4, 64) and teacher.embed_dim == 64 and teacher.grid_size == (2, 2)
    pooled, patch_tokens = open_clip_forward(teacher, images)
    torch.testing.assert_close(tokens[:, 1:], patch_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens[:, :1] @ teacher.visual.proj, pooled[:, None], rtol=1e-5, atol=1e-5)

    projected = tiny_teacher(project=True)
    out = projected(images)
    assert out.shape == (2, 5, 32) and projected.embed_dim == 32
    pooled, patch_tokens = open_clip_forward(projected, images)
    torch.testing.assert_close(out[:, 0], pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], patch_tokens @ projected.visual.proj, rtol=1e-5, atol=1e-5)


def test_images_are_resized_to_the_teacher_size(teacher):
    images = torch.randn(2, 3, 64, 64)
    expected = teacher(F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False))
    torch.testing.assert_close(teacher(images), expected)


@pytest.mark.parametrize("grid", [(2, 2), (4, 4), (3, 5), (1, 1)])
def test_tokens_for_grid_shapes(teacher, grid):
    images = torch.randn(2, 3, 32, 32)
    out = teacher.tokens_for_grid(images, grid)
    assert out.shape == (2, 1 + grid[0] * grid[1], teacher.embed_dim)
    full = teacher(images)
    torch.testing.assert_close(out[:, 0], full[:, 0])
    if grid == (2, 2):
        torch.testing.assert_close(out, full)
    if grid == (1, 1):  # bilinear downsampling by 2 of a 2x2 map averages it
        torch.testing.assert_close(out[:, 1], full[:, 1:].mean(1), rtol=1e-5, atol=1e-5)


def test_tokens_for_grid_keeps_a_constant_map_constant(teacher, monkeypatch):
    constant = torch.cat([torch.zeros(1, 1, 3), torch.ones(1, 4, 3) * torch.tensor([1.0, 2.0, 3.0])], dim=1)
    monkeypatch.setattr(OpenClipTeacher, "forward", lambda self, images: constant)
    out = teacher.tokens_for_grid(torch.zeros(1, 3, 32, 32), (5, 3))
    torch.testing.assert_close(out[:, 1:], constant[:, 1:2].expand(1, 15, 3))


def test_local_weights_load_and_missing_weights_fail(tmp_path):
    torch.manual_seed(1)
    source = open_clip.create_model("ViT-B-16", force_image_size=32, pretrained_text=False, **TINY_CLIP)
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)
    loaded = tiny_teacher(weights=path)
    for name, value in source.visual.state_dict().items():
        torch.testing.assert_close(loaded.visual.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="not a file"):
        tiny_teacher(weights=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="no-such-clip"):
        OpenClipTeacher("no-such-clip")
    with pytest.raises(ConfigError, match="hf-hub"):
        OpenClipTeacher("hf-hub:org/model")


# --- EMA teacher ------------------------------------------------------------------------------------------


@pytest.fixture
def student():
    torch.manual_seed(0)
    return create_encoder("vit_tiny", 8, 32, depth=2)


def test_ema_teacher_is_a_frozen_eval_copy(student):
    ema = EMATeacher(student)
    assert all(not p.requires_grad for p in ema.parameters())
    ema.train()
    assert not ema.training and not ema.encoder.training
    with torch.no_grad():
        student.vit.patch_embed.proj.weight.add_(1.0)
    assert not torch.equal(ema.encoder.vit.patch_embed.proj.weight, student.vit.patch_embed.proj.weight)
    ema.copy_from(student)
    assert torch.equal(ema.encoder.vit.patch_embed.proj.weight, student.vit.patch_embed.proj.weight)


def test_ema_update_follows_the_formula_exactly(student):
    ema = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in ema.encoder.named_parameters()}
    ema.update(student, 0.9)
    for name, s in student.named_parameters():
        expected = 0.9 * before[name] + 0.1 * s.detach()
        torch.testing.assert_close(dict(ema.encoder.named_parameters())[name], expected, rtol=0, atol=1e-6)
    ema.update(student, 1.0)  # momentum 1 keeps the teacher
    ema.update(student, 0.0)  # momentum 0 copies the student
    for name, s in student.named_parameters():
        torch.testing.assert_close(dict(ema.encoder.named_parameters())[name], s.detach(), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="differ"):
        ema.update(create_encoder("vit_tiny", 8, 32, depth=1), 0.5)


def test_ema_targets_are_averaged_layer_normed_blocks(student):
    ema = EMATeacher(student)
    images = torch.randn(2, 3, 32, 32)
    _, (h0, h1) = student.eval().tokens(images, return_layers=[0, 1])

    def instance_norm(h):  # over channels, no affine, computed by hand
        mean = h.mean(-1, keepdim=True)
        return (h - mean) / (h.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()

    targets = ema(images, 2)
    assert targets.shape == (2, 1 + 16, 192) and not targets.requires_grad
    torch.testing.assert_close(targets, (instance_norm(h0) + instance_norm(h1)) / 2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ema(images, 1), instance_norm(h1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ema(images, [-1]), ema(images, 1))
    with pytest.raises(ConfigError, match="top-k"):
        ema(images, 3)


def test_momentum_schedule_is_a_half_cosine():
    assert momentum_schedule(0, 100) == pytest.approx(0.996)
    assert momentum_schedule(100, 100) == pytest.approx(1.0)
    assert momentum_schedule(50, 100, base=0.9, final=1.0) == pytest.approx(0.95)
    assert momentum_schedule(500, 100) == pytest.approx(1.0)
    values = [momentum_schedule(s, 10) for s in range(11)]
    assert values == sorted(values)
    assert momentum_schedule(5, 0) == 0.996
