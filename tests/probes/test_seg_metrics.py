"""Segmentation metrics (MONAI) against hand arithmetic, scikit-learn and a brute-force scipy HD95; the
post-processing against scipy labelling and hole filling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.metrics import f1_score, jaccard_score

from panderm.errors import ProbeError
from probes.segmentation.metrics import postprocess, segmentation_metrics, summarise


def random_blobs(n: int, size: int, seed: int, level: float = 0.55) -> np.ndarray:
    """(n, size, size) bool: smoothed noise above a level, i.e. several blobs with ragged edges and holes."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 2, 2))
    noise = (noise - noise.min(axis=(1, 2), keepdims=True)) / np.ptp(noise, axis=(1, 2), keepdims=True)
    return noise > level


def brute_hd95(pred: np.ndarray, true: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Symmetric HD95 as MONAI defines it: boundary = mask xor its erosion; the 95th percentile of each
    directed set of nearest boundary distances; the larger of the two."""
    edges = [np.argwhere(m ^ ndimage.binary_erosion(m)) * np.asarray(spacing) for m in (pred, true)]
    d = cdist(edges[0], edges[1])
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hand_computed_dice_and_iou():
    pred = np.zeros((1, 4, 4), bool)
    true = np.zeros((1, 4, 4), bool)
    pred[0, 0, 0:4] = True  # 4 pixels: row 0
    true[0, 0, 1:4] = True  # 5 pixels: row 0 cols 1-3 and (1, 2), (1, 3)
    true[0, 1, 2:4] = True
    # overlap = 3 (row 0 cols 1-3); Dice = 2*3 / (4+5) = 2/3; IoU = 3 / (4+5-3) = 1/2
    row = segmentation_metrics(pred, true).iloc[0]
    assert row["dice"] == pytest.approx(2 / 3, abs=1e-6)
    assert row["iou"] == pytest.approx(0.5, abs=1e-6)
    assert (row["pred_area"], row["true_area"]) == (4, 5)
    # boundary of true: all 5 pixels (none survives erosion); pred->true distances: (0,0)->(0,1) = 1, others 0
    # 95th percentile of [1, 0, 0, 0] (linear) = 0.85; true->pred: (1,2),(1,3) -> 1, others 0 -> 1.0
    assert row["hd95"] == pytest.approx(1.0, abs=1e-6)


def test_empty_mask_policy_and_summary_counts():
    pred = np.zeros((4, 4, 4), np.uint8)
    true = np.zeros((4, 4, 4), np.uint8)
    pred[1, 0, 0] = 1  # image 1: empty truth, non-empty prediction
    true[2, 0, 0] = 1  # image 2: non-empty truth, empty prediction
    pred[3, :2, :2] = true[3, :2, :2] = 1  # image 3: perfect
    frame = segmentation_metrics(pred, true)
    assert frame["dice"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert frame["iou"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert frame["hd95"].isna().tolist() == [True, True, True, False]
    assert frame.loc[3, "hd95"] == 0.0
    summary = summarise(frame)
    assert summary["n_images"] == 4 and summary["n_hd95_undefined"] == 3
    assert summary["dice"] == 0.5 and summary["dice_median"] == 0.5 and summary["hd95"] == 0.0


def test_all_hd95_undefined_summarises_to_nan():
    frame = segmentation_metrics(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool))
    summary = summarise(frame)
    assert np.isnan(summary["hd95"]) and summary["n_hd95_undefined"] == 2 and summary["dice"] == 1.0


def test_bad_inputs_are_probe_errors():
    with pytest.raises(ProbeError, match=r"pred \(2, 4, 4\) vs target \(2, 4, 5\)"):
        segmentation_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ProbeError, match=r"expected binary masks \(N, H, W\)"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ProbeError, match="must be bool or 0/1"):
        segmentation_metrics(np.full((1, 2, 2), 0.7), np.ones((1, 2, 2)))
    with pytest.raises(ProbeError, match="missing column"):
        summarise(segmentation_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)))[["dice"]])


def test_random_masks_match_sklearn_and_brute_force_hd95():
    pred, true = random_blobs(20, 32, seed=0), random_blobs(20, 32, seed=1)
    frame = segmentation_metrics(pred, true)
    for i in range(20):
        p, t = pred[i].ravel(), true[i].ravel()
        assert frame.loc[i, "dice"] == pytest.approx(f1_score(t, p), abs=1e-6)
        assert frame.loc[i, "iou"] == pytest.approx(jaccard_score(t, p), abs=1e-6)
        assert frame.loc[i, "hd95"] == pytest.approx(brute_hd95(pred[i], true[i]), abs=1e-4)
        assert (frame.loc[i, "pred_area"], frame.loc[i, "true_area"]) == (p.sum(), t.sum())


def test_spacing_scales_hd95_and_torch_input_agrees():
    pred, true = random_blobs(5, 24, seed=2), random_blobs(5, 24, seed=3)
    scaled = segmentation_metrics(pred, true, spacing=(2.0, 0.5))
    for i in range(5):
        assert scaled.loc[i, "hd95"] == pytest.approx(brute_hd95(pred[i], true[i], (2.0, 0.5)), abs=1e-4)
    from_torch = segmentation_metrics(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(true))
    np.testing.assert_allclose(from_torch.to_numpy(), segmentation_metrics(pred, true).to_numpy())


def test_postprocess_drops_small_blob_and_fills_hole():
    mask = np.zeros((1, 10, 10), np.uint8)
    mask[0, 1:6, 1:6] = 1  # 5x5 lesion ...
    mask[0, 3, 3] = 0  # ... with a one-pixel hole
    mask[0, 8, 7:9] = 1  # a 2-pixel speck elsewhere
    expected = np.zeros((1, 10, 10), np.uint8)
    expected[0, 1:6, 1:6] = 1
    out = postprocess(mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, expected)
    as_tensor = postprocess(torch.from_numpy(mask.astype(bool)))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.bool
    np.testing.assert_array_equal(as_tensor.numpy(), expected.astype(bool))


def test_postprocess_keeps_empty_masks_empty():
    masks = np.zeros((3, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    out = postprocess(masks)
    assert not out[0].any() and not out[2].any() and out[1].sum() == 4


def test_postprocess_matches_scipy_on_random_blobs():
    masks = random_blobs(12, 48, seed=4, level=0.5)
    out = postprocess(masks)
    for i, m in enumerate(masks):
        labels, count = ndimage.label(m, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        largest = labels == 1 + int(np.argmax(sizes)) if count else m
        np.testing.assert_array_equal(out[i], ndimage.binary_fill_holes(largest), err_msg=f"image {i}")
    assert (out.reshape(12, -1).sum(1) > 0).all()


def test_metrics_equal_monai_on_random_masks():
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    pred, true = random_blobs(12, 48, seed=3), random_blobs(12, 48, seed=4, level=0.5)
    pred[0] = False  # an empty prediction
    true[1] = False  # an empty truth
    ours = segmentation_metrics(pred, true)

    def one_hot(m):
        t = torch.as_tensor(m)
        return torch.stack([~t, t], 1).float()

    dice = compute_dice(one_hot(pred), one_hot(true), include_background=False, ignore_empty=False)[:, 0]
    iou = compute_iou(one_hot(pred), one_hot(true), include_background=False, ignore_empty=False)[:, 0]
    np.testing.assert_allclose(ours["dice"], dice.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["iou"], iou.numpy(), atol=1e-6)
    both = slice(2, None)
    hd = compute_hausdorff_distance(
        one_hot(pred[both]), one_hot(true[both]), include_background=False, percentile=95
    )[:, 0]
    np.testing.assert_allclose(ours["hd95"][2:], hd.numpy(), atol=1e-4)
    assert ours["hd95"][:2].isna().all()
