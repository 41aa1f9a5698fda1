"""Objectives: zero at the optimum, scale (in)variance, masked-only, hand values, layout, NaN policy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from panderm.errors import ConfigError, PandermError
from panderm.pretrain.objectives import (
    NonFiniteLossError,
    PretrainError,
    check_finite,
    cosine_loss,
    mae_loss,
    mlm_clip_loss,
    mlm_ema_loss,
    normalize_patches,
    patchify,
    unpatchify,
)

B, N, D, K = 3, 16, 8, 6  # batch, patches, dim, masked per row


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randn(B, 1 + N, D, generator=g),
        "patches": torch.randn(B, N, D, generator=g),
        "images": torch.randn(B, 3, 16, 16, generator=g),  # 4x4 grid of 4x4 patches
        "mask": torch.rand(B, N, generator=g).argsort(1) < K,
    }


def perturb_visible(x: torch.Tensor, mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """A copy of x with random values at visible patch positions (x has `offset` prefix tokens)."""
    y = x.clone()
    y[:, offset:][~mask] = torch.randn_like(y[:, offset:][~mask])
    return y


# --- zero at the optimum ---------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["masked", "all", "all+cls"])
def test_mlm_clip_identical_is_zero(data, positions):
    out = mlm_clip_loss(data["tokens"], data["tokens"], data["mask"], positions=positions)
    for name in ("loss", "reconstruction", "alignment", "cls"):
        assert abs(out[name].item()) < 1e-6, name


@pytest.mark.parametrize("kind", ["smooth_l1", "mse", "cosine"])
def test_mlm_ema_identical_is_zero(data, kind):
    assert abs(mlm_ema_loss(data["patches"], data["patches"], data["mask"], loss=kind).item()) < 1e-6


def test_cosine_and_mae_identical_are_zero(data):
    assert abs(cosine_loss(data["patches"], data["patches"]).item()) < 1e-6
    images, mask = data["images"], data["mask"]
    target = patchify(images, 4)
    assert mae_loss(target, images, mask, 4, norm_pix=False).item() < 1e-10
    assert mae_loss(normalize_patches(target), images, mask, 4, norm_pix=True).item() < 1e-10


# --- scale invariance -------------------------------------------------------------------------------------


def test_cosine_losses_are_scale_invariant_but_regression_is_not(data):
    tokens, patches, mask = data["tokens"], data["patches"], data["mask"]
    assert cosine_loss(3.0 * patches, patches).item() < 1e-6
    assert mlm_clip_loss(0.1 * tokens, tokens, mask, positions="all+cls")["loss"].item() < 1e-6
    assert mlm_ema_loss(5.0 * patches, patches, mask, loss="cosine").item() < 1e-6
    assert mlm_ema_loss(5.0 * patches, patches, mask, loss="mse").item() > 1.0
    assert mlm_ema_loss(5.0 * patches, patches, mask, loss="smooth_l1").item() > 0.1


# --- masked positions only --------------------------------------------------------------------------------


def test_visible_predictions_do_not_change_masked_losses(data):
    tokens, patches, images, mask = data["tokens"], data["patches"], data["images"], data["mask"]
    target_tokens = torch.randn_like(tokens)
    pred_tokens = tokens
    changed = perturb_visible(pred_tokens, mask, offset=1)

    def clip(pred, positions):
        return mlm_clip_loss(pred, target_tokens, mask, positions=positions)["loss"].item()

    assert clip(changed, "masked") == pytest.approx(clip(pred_tokens, "masked"), abs=1e-7)
    assert abs(clip(changed, "all") - clip(pred_tokens, "all")) > 1e-3

    target = torch.randn_like(patches)
    for kind in ("smooth_l1", "mse", "cosine"):
        before = mlm_ema_loss(patches, target, mask, loss=kind).item()
        after = mlm_ema_loss(perturb_visible(patches, mask), target, mask, loss=kind).item()
        assert after == pytest.approx(before, abs=1e-7), kind

    pred_pixels = torch.randn(B, N, 4 * 4 * 3)
    for norm_pix in (True, False):
        before = mae_loss(pred_pixels, images, mask, 4, norm_pix=norm_pix).item()
        after = mae_loss(perturb_visible(pred_pixels, mask), images, mask, 4, norm_pix=norm_pix).item()
        assert after == pytest.approx(before, abs=1e-7)


def test_cls_term_only_with_all_cls(data):
    tokens, mask = data["tokens"], data["mask"]
    pred = tokens.clone()
    pred[:, 0] = -pred[:, 0]  # opposite CLS: cosine distance 2
    for positions in ("masked", "all"):
        out = mlm_clip_loss(pred, tokens, mask, positions=positions)
        assert out["cls"].item() == 0.0 and out["loss"].item() < 1e-6
    out = mlm_clip_loss(pred, tokens, mask, positions="all+cls", alignment_weight=0.5)
    assert out["cls"].item() == pytest.approx(2.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(1.0, abs=1e-6)


# --- hand-computed values ---------------------------------------------------------------------------------


def test_cosine_loss_hand_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert cosine_loss(e1[None], e2[None]).item() == pytest.approx(1.0)  # orthogonal
    assert cosine_loss(e1[None], -e1[None]).item() == pytest.approx(2.0)  # opposite
    pred = torch.stack([e1, e1, e1])
    target = torch.stack([e1, e2, -e1])
    assert cosine_loss(pred, target).item() == pytest.approx((0 + 1 + 2) / 3)
    weight = torch.tensor([False, True, True])
    assert cosine_loss(pred, target, weight).item() == pytest.approx(1.5)
    assert cosine_loss(pred, target, torch.zeros(3)).item() == 0.0  # empty selection


def test_mlm_clip_hand_value():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # one image, CLS + 2 patches; patch 0 masked (orthogonal), patch 1 visible (opposite), CLS opposite
    pred = torch.stack([e1, e1, e1])[None]
    target = torch.stack([-e1, e2, -e1])[None]
    mask = torch.tensor([[True, False]])
    out = mlm_clip_loss(
        pred, target, mask, positions="all+cls", reconstruction_weight=0.5, alignment_weight=2.0
    )
    assert out["reconstruction"].item() == pytest.approx(1.0)
    assert out["alignment"].item() == pytest.approx(2.0)
    assert out["cls"].item() == pytest.approx(2.0)
    assert out["loss"].item() == pytest.approx(0.5 * 1.0 + 2.0 * (2.0 + 2.0))
    out = mlm_clip_loss(pred, target, mask, positions="masked", reconstruction_weight=0.5)
    assert out["loss"].item() == pytest.approx(0.5) and out["alignment"].item() == 0.0


def test_mlm_ema_hand_values():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 3.0], [10.0, 10.0]]])
    mask = torch.tensor([[True, False]])
    # smooth L1 with beta 2: |d|<2 -> d^2/(2*2); else |d| - 1
    assert mlm_ema_loss(pred, target, mask, beta=2.0).item() == pytest.approx((0.25 + 2.0) / 2)
    assert mlm_ema_loss(pred, target, mask, loss="mse").item() == pytest.approx((1 + 9) / 2)


# --- patch layout -----------------------------------------------------------------------------------------


def test_patchify_layout_by_hand():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = 2
    patches = patchify(images, p)
    assert patches.shape == (2, 2 * 3, p * p * 3)
    for b in range(2):
        for row in range(2):
            for col in range(3):
                for dy in range(p):
                    for dx in range(p):
                        for c in range(3):
                            got = patches[b, row * 3 + col, (dy * p + dx) * 3 + c]
                            assert got == images[b, c, row * p + dy, col * p + dx]


def test_patchify_matches_unfold_and_round_trips():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    # F.unfold lists the same patches in the same row-major order, channel-slowest inside a patch
    reference = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)
    reordered = patches.reshape(2, 6, 4, 4, 3).permute(0, 1, 4, 2, 3).reshape(2, 6, 48)
    torch.testing.assert_close(reordered, reference, rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patches, 4, grid=(2, 3)), images, rtol=0, atol=0)
    square = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(unpatchify(patchify(square, 4), 4), square, rtol=0, atol=0)
    with pytest.raises(PretrainError):
        patchify(torch.randn(1, 3, 10, 8), 4)
    with pytest.raises(PretrainError):
        unpatchify(patches, 4)  # 6 patches are not a square grid


def test_norm_pix_matches_manual_normalisation(data):
    images, mask = data["images"], data["mask"]
    pred = torch.randn(B, N, 48)
    target = patchify(images, 4).double().numpy()
    mean = target.mean(-1, keepdims=True)
    var = ((target - mean) ** 2).mean(-1, keepdims=True)
    normed = torch.from_numpy((target - mean) / (var + 1e-6) ** 0.5)
    per_patch = ((pred.double() - normed) ** 2).mean(-1)
    expected = per_patch[mask].mean().item()
    assert mae_loss(pred, images, mask, 4, norm_pix=True).item() == pytest.approx(expected, rel=1e-5)
    raw = ((pred.double() - torch.from_numpy(target)) ** 2).mean(-1)[mask].mean().item()
    assert mae_loss(pred, images, mask, 4, norm_pix=False).item() == pytest.approx(raw, rel=1e-5)


# --- dtypes, errors, non-finite policy --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32_losses(data, dtype):
    tokens, patches, mask = data["tokens"].to(dtype), data["patches"].to(dtype), data["mask"]
    images = data["images"].to(dtype)
    losses = [
        cosine_loss(patches, patches.flip(0)),
        *mlm_clip_loss(tokens, tokens.flip(0), mask, positions="all+cls").values(),
        *(mlm_ema_loss(patches, patches.flip(0), mask, loss=k) for k in ("smooth_l1", "mse", "cosine")),
        mae_loss(torch.randn(B, N, 48, dtype=dtype), images, mask, 4),
    ]
    for loss in losses:
        assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)


def test_bad_options_and_shapes_raise(data):
    tokens, patches, mask = data["tokens"], data["patches"], data["mask"]
    with pytest.raises(ConfigError, match="positions"):
        mlm_clip_loss(tokens, tokens, mask, positions="visible")
    with pytest.raises(ConfigError, match="loss"):
        mlm_ema_loss(patches, patches, mask, loss="l1")
    with pytest.raises(PretrainError, match="shape"):
        cosine_loss(patches, patches[:, :3])
    with pytest.raises(PretrainError, match="mask"):
        mlm_ema_loss(patches, patches, mask.float())
    assert issubclass(NonFiniteLossError, PandermError)


def test_check_finite_raises_naming_step_and_term():
    good = torch.tensor(1.0)
    assert check_finite(good, 3) is True
    assert check_finite({"loss": good, "reconstruction": good}, 3) is True
    with pytest.raises(NonFiniteLossError, match=r"step 7.*loss=nan") as err:
        check_finite(torch.tensor(math.nan), 7)
    assert err.value.step == 7
    terms = {"loss": torch.tensor(math.inf), "reconstruction": good, "alignment": torch.tensor(math.inf)}
    with pytest.raises(NonFiniteLossError, match="step 12") as err:
        check_finite(terms, 12)
    assert set(err.value.terms) == {"loss", "alignment"}
    assert "alignment=inf" in str(err.value) and "reconstruction" not in str(err.value)


def test_check_finite_skip_policy(caplog):
    assert check_finite({"loss": torch.tensor(math.nan)}, 5, policy="skip") is False
    assert "step 5" in caplog.text
    assert check_finite(torch.tensor(0.5), 5, policy="skip") is True
    with pytest.raises(ConfigError):
        check_finite(torch.tensor(0.5), 5, policy="ignore")
