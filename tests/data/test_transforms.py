"""Transforms: PanDerm-parity eval against torchvision, sizes as parameters, masks move with images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from panderm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    segmentation_train_transform,
    ssl_two_views,
    train_transform,
)


def smooth_image(h: int, w: int) -> np.ndarray:
    """A smooth test image (resampling filters agree closely on smooth content)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(3 * x + 1), np.cos(4 * y), np.sin(2 * (x + y))], axis=-1)
    return ((rgb + 1) * 127.5).astype(np.uint8)


def test_eval_matches_torchvision_resize_crop_normalise():
    image = smooth_image(300, 400)
    ours = eval_transform(224)(image=image)["image"]
    reference = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(Image.fromarray(image))
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().mean() < 0.02


@pytest.mark.parametrize("size", [32, 64, 96])
def test_image_size_is_a_parameter(size):
    image = smooth_image(80, 120)
    assert eval_transform(size)(image=image)["image"].shape == (3, size, size)
    assert train_transform(size)(image=image)["image"].shape == (3, size, size)
    views = ssl_two_views(size)(image=image)["views"]
    assert [v.shape for v in views] == [(3, size, size)] * 2


def test_segmentation_augmentation_moves_mask_and_boxes():
    image = np.zeros((96, 96, 3), np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    image[30:60, 20:50] = 255  # the bright square is the object
    mask[30:60, 20:50] = 1
    transform = segmentation_train_transform(64)
    for seed in range(10):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask, bboxes=np.array([[20, 30, 50, 60]], float), box_labels=[0])
        bright = out["image"].mean(0) > 1.0  # white pixels after ImageNet normalisation
        overlap = (bright & (out["mask"] > 0)).sum() / max(1, (bright | (out["mask"] > 0)).sum())
        assert overlap > 0.8  # the mask still covers the object
        if out["mask"].sum() > 20 and len(out["bboxes"]):
            ys, xs = np.nonzero(out["mask"].numpy())
            x1, y1, x2, y2 = out["bboxes"][0]
            assert x1 - 2 <= xs.min() and xs.max() <= x2 + 2 and y1 - 2 <= ys.min() and ys.max() <= y2 + 2
