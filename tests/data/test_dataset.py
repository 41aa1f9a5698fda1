"""ManifestDataset: samples, masks/boxes through transforms, corrupt images (error or skip + log)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from panderm.data.dataset import BadImageLog, ManifestDataset, collate
from panderm.data.images import load_mask, mask_to_box
from panderm.data.manifest import build_manifest
from panderm.data.transforms import eval_transform, segmentation_eval_transform, ssl_two_views
from panderm.errors import ConfigError, ImageLoadError
from tests.data.helpers import small_folder, write_image, write_mask, write_truncated_jpeg


@pytest.fixture
def manifest(tmp_path):
    return build_manifest(small_folder(tmp_path), tmp_path, classes=["nevus", "melanoma"])


def test_raw_samples(manifest):
    dataset = ManifestDataset(manifest)
    sample = dataset[1]
    assert sample["image"].shape == (24, 32, 3) and sample["image"].dtype == np.uint8
    assert sample["label"] == 1 and sample["id"] == "images/img1.png"
    assert set(np.unique(sample["mask"])) == {0, 1}
    assert mask_to_box(sample["mask"]) == (4, 5, 20, 15)
    assert sample["boxes"] == [[4.0, 5.0, 20.0, 15.0]]


def test_boxes_and_masks_move_with_the_image(manifest):
    dataset = ManifestDataset(manifest, segmentation_eval_transform(64))
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (64, 64)
    # The box scales by 64/32 in x and 64/24 in y, and still encloses the resized mask.
    x1, y1, x2, y2 = sample["boxes"][0]
    np.testing.assert_allclose([x1, y1, x2, y2], [8, 5 * 64 / 24, 40, 15 * 64 / 24], atol=1e-4)
    mx1, my1, mx2, my2 = mask_to_box(np.asarray(sample["mask"]))
    assert abs(mx1 - x1) <= 1 and abs(my1 - y1) <= 1.5 and abs(mx2 - x2) <= 1 and abs(my2 - y2) <= 1.5


def test_dataloader_batches_with_views(manifest):
    loader = DataLoader(ManifestDataset(manifest, ssl_two_views(32)), batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (3, 3, 32, 32)
    assert not torch.equal(batch["views"][0], batch["views"][1])
    assert batch["label"].tolist() == [0, 1, 0] and batch["skipped"] == 0
    assert [b.shape for b in batch["boxes"]] == [(1, 4)] * 3


def test_corrupt_image_raises_naming_file(tmp_path):
    write_truncated_jpeg(tmp_path / "bad.jpg")
    write_image(tmp_path / "good.png")
    table = pd.DataFrame({"image": ["good.png", "bad.jpg"], "split": "train", "label": [0, 1]})
    manifest = build_manifest(table, tmp_path)  # header-only validation lets it through
    dataset = ManifestDataset(manifest, eval_transform(16))
    assert dataset[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ImageLoadError, match=r"bad\.jpg: unreadable image") as info:
        dataset[1]
    assert info.value.path == str(tmp_path / "bad.jpg")


def test_corrupt_image_skipped_counted_and_listed(tmp_path):
    write_truncated_jpeg(tmp_path / "bad.jpg")
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    table = pd.DataFrame({"image": ["0.png", "bad.jpg", "1.png", "2.png"], "split": "train", "label": 0})
    log_path = tmp_path / "run" / "skipped_images.csv"
    dataset = ManifestDataset(
        build_manifest(table, tmp_path), eval_transform(16), on_bad_image="skip", bad_image_log=log_path
    )
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 1
    assert sum(len(b["image"]) for b in batches if "image" in b) == 3
    entries = BadImageLog(log_path).entries()
    assert [path for path, _ in entries] == [str(tmp_path / "bad.jpg")]


def test_mask_size_mismatch_is_an_error(tmp_path):
    write_image(tmp_path / "a.png", size=(32, 24))
    write_mask(tmp_path / "a_mask.png", size=(30, 24))
    table = pd.DataFrame({"image": ["a.png"], "split": ["train"], "mask": ["a_mask.png"]})
    with pytest.raises(ImageLoadError, match=r"a_mask\.png: mask size \(30, 24\) \(W, H\) differs"):
        ManifestDataset(build_manifest(table, tmp_path))[0]


def _save_png(path, values: np.ndarray):
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("foreground", [1, 255])
def test_binary_and_empty_masks_load_as_zero_one(tmp_path, foreground):
    values = np.zeros((6, 8), np.uint8)
    values[1:4, 2:5] = foreground
    mask = load_mask(_save_png(tmp_path / "m.png", values), shape=(6, 8))
    assert mask.dtype == np.uint8 and mask.sum() == 9 and set(np.unique(mask)) == {0, 1}
    empty = load_mask(_save_png(tmp_path / "empty.png", np.zeros((6, 8))))
    assert empty.shape == (6, 8) and empty.sum() == 0
    full = load_mask(_save_png(tmp_path / "full.png", np.full((6, 8), 255)))
    assert full.sum() == 48


def test_non_binary_mask_is_an_error_naming_the_file(tmp_path):
    values = np.zeros((6, 8), np.uint8)
    values[1:4, 2:5] = 255
    values[1, 1], values[4, 4] = 12, 200  # e.g. anti-aliased edge pixels
    path = _save_png(tmp_path / "soft_mask.png", values)
    with pytest.raises(
        ImageLoadError, match=r"soft_mask\.png: mask is not binary: 4 distinct values \(0, 12, 200, 255\)"
    ):
        load_mask(path)
    with pytest.raises(ImageLoadError, match="threshold="):
        load_mask(path)
    # two values but neither is 0 (e.g. 1/2 labels): still not binary in the 0/foreground sense
    with pytest.raises(ImageLoadError, match="2 distinct values"):
        load_mask(_save_png(tmp_path / "labels.png", np.where(values > 0, 2, 1)))


def test_mask_threshold_binarises_without_the_check(tmp_path):
    values = np.zeros((6, 8), np.uint8)
    values[1:4, 2:5] = 255
    values[1, 1], values[4, 4] = 12, 200
    path = _save_png(tmp_path / "soft_mask.png", values)
    mask = load_mask(path, threshold=127)
    np.testing.assert_array_equal(mask, (values > 127).astype(np.uint8))
    assert load_mask(path, threshold=0).sum() == 11


def test_bad_policy_name_is_a_config_error(manifest):
    with pytest.raises(ConfigError, match="on_bad_image='ignore'"):
        ManifestDataset(manifest, on_bad_image="ignore")


def test_batches_mixing_rows_with_and_without_masks(tmp_path):
    table = small_folder(tmp_path)
    table.loc[1, "mask"] = None  # e.g. ISIC's unlabeled test images have no mask
    dataset = ManifestDataset(build_manifest(table, tmp_path), segmentation_eval_transform(16))
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["mask"][1] is None and batch["mask"][0].shape == batch["mask"][2].shape == (16, 16)
