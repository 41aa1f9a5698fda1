"""Readers: MedMNIST npz, image folders with masks, ISIC layouts and PH2.

Tests marked `shared_data` check counts, shapes and labels against the SOURCE.md files of ../shared/data;
the others build tiny fake trees in tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.data.images import load_image, load_mask
from panderm.data.manifest import build_manifest
from panderm.data.readers import read_image_folder, read_isic, read_medmnist, read_ph2
from panderm.data.readers.medmnist import STAMP_NAME
from panderm.errors import DataError, ManifestError
from tests.conftest import shared_path


def class_counts(manifest, split: str) -> dict[str, int]:
    names = manifest.label_names()[manifest.table["split"] == split]
    return {str(k): int(v) for k, v in names.value_counts().items()}


def raw_box(path: Path) -> tuple[int, int, int, int]:
    """Independent box: rows/columns holding any non-zero pixel (x2/y2 exclusive)."""
    array = np.asarray(Image.open(path).convert("L"))
    rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ------------------------------------------------------------------------------------ MedMNIST (shared)

MEDMNIST = {
    "pneumonia": ("pneumoniamnist", "pneumoniamnist_reconstructed_full.npz"),
    "breast": ("breastmnist", "breastmnist.npz"),
    "derma": ("dermamnist_jpeg", "dermamnist_28_jpeg.npz"),
}


@pytest.fixture(scope="module")
def medmnist_exports(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, tuple[Path, Path, object]] = {}

    def get(name: str):
        if name not in cache:
            npz = shared_path(*MEDMNIST[name])
            out = tmp_path_factory.mktemp(name)
            cache[name] = (npz, out, read_medmnist(npz, out))
        return cache[name]

    return get


@pytest.mark.shared_data
def test_pneumoniamnist_counts(medmnist_exports) -> None:
    _, _, manifest = medmnist_exports("pneumonia")
    assert manifest.classes == ("normal", "pneumonia")
    assert class_counts(manifest, "train") == {"normal": 1214, "pneumonia": 3494}
    assert class_counts(manifest, "val") == {"normal": 135, "pneumonia": 389}
    assert class_counts(manifest, "test") == {"normal": 234, "pneumonia": 390}
    assert set(manifest.table["modality"]) == {"xray"}


@pytest.mark.shared_data
def test_breastmnist_counts_with_1d_labels(medmnist_exports) -> None:
    _, _, manifest = medmnist_exports("breast")
    assert manifest.classes == ("malignant", "normal_benign")
    assert class_counts(manifest, "train") == {"malignant": 147, "normal_benign": 399}
    assert class_counts(manifest, "val") == {"malignant": 21, "normal_benign": 57}
    assert class_counts(manifest, "test") == {"malignant": 42, "normal_benign": 114}


@pytest.mark.shared_data
def test_dermamnist_counts_rgb(medmnist_exports) -> None:
    _, _, manifest = medmnist_exports("derma")
    assert manifest.classes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    expected = {
        "train": [228, 359, 769, 80, 779, 4693, 99],
        "val": [33, 52, 110, 12, 111, 671, 14],
        "test": [66, 103, 220, 23, 223, 1341, 29],
    }
    for split, counts in expected.items():
        assert class_counts(manifest, split) == dict(zip(manifest.classes, counts, strict=True))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(MEDMNIST))
def test_medmnist_images_equal_the_arrays(medmnist_exports, name: str) -> None:
    npz, out, manifest = medmnist_exports(name)
    table = manifest.table
    with np.load(npz) as data:
        for split in ("train", "val", "test"):
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
            rows = table.index[table["split"] == split]
            assert len(rows) == len(images)
            assert table.loc[rows, "index"].tolist() == list(range(len(images)))
            assert table.loc[rows, "label"].tolist() == labels.tolist()
            for index in (0, len(images) // 2, len(images) - 1):
                row = rows[index]
                assert table.at[row, "image"] == f"images/{split}_{index:05d}.png"
                mode = "RGB" if images.ndim == 4 else "L"
                np.testing.assert_array_equal(load_image(manifest.image_path(row), mode=mode), images[index])
    saved = pd.read_csv(out / "manifest.csv")
    assert list(saved.columns[:4]) == ["image", "split", "label", "index"]


@pytest.mark.shared_data
def test_medmnist_second_call_reuses_the_export(medmnist_exports) -> None:
    npz, out, first = medmnist_exports("breast")
    files = [out / "manifest.csv", out / STAMP_NAME, *sorted((out / "images").iterdir())]
    before = {f: f.stat().st_mtime_ns for f in files}
    again = read_medmnist(npz, out)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.classes == first.classes


# ---------------------------------------------------------------------------------- MedMNIST (synthetic)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_medmnist_any_size_rgb_and_integer_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    npz = write_npz(
        tmp_path / "custom.npz",
        train_images=train,
        train_labels=np.array([0, 2, 1, 2, 0]),
        test_images=test,
        test_labels=np.array([[1], [2]]),
    )
    manifest = read_medmnist(npz, tmp_path / "out")
    assert manifest.classes == ("0", "1", "2") and len(manifest) == 7
    assert "modality" not in manifest.table
    np.testing.assert_array_equal(load_image(manifest.image_path(6), mode="RGB"), test[1])
    named = read_medmnist(npz, tmp_path / "named", classes=("a", "b", "c"))
    assert named.label_names().tolist() == ["a", "c", "b", "c", "a", "b", "c"]


def test_medmnist_changed_npz_is_exported_again(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    npz = write_npz(tmp_path / "breastmnist_small.npz", train_images=images, train_labels=np.array([0, 1, 1]))
    out = tmp_path / "out"
    read_medmnist(npz, out)
    images[2] = 200
    write_npz(npz, train_images=images[1:], train_labels=np.array([1, 0]))
    os.utime(npz, ns=(1, 1))  # a different mtime even on coarse file systems
    manifest = read_medmnist(npz, out)
    assert len(manifest) == 2 and manifest.label_names().tolist() == ["normal_benign", "malignant"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["train_00000.png", "train_00001.png"]
    assert load_image(manifest.image_path(1), mode="L").max() == 200


def test_medmnist_errors_name_file_and_keys(tmp_path: Path) -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    # multi-label sets are read (tests/data/public/test_chest_readers.py); labels other than 0/1 are not
    multi = write_npz(tmp_path / "chestmnist.npz", train_images=images, train_labels=np.full((2, 14), 2))
    with pytest.raises(DataError, match=r"chestmnist\.npz.*train_labels.*other than 0/1"):
        read_medmnist(multi, tmp_path / "a")
    missing = write_npz(tmp_path / "half.npz", train_images=images, val_images=images)
    with pytest.raises(
        DataError, match=r"half\.npz.*train_labels.*val_labels.*keys found: \['train_images', 'val_images'\]"
    ):
        read_medmnist(missing, tmp_path / "b")
    unrelated = write_npz(tmp_path / "other.npz", x=images)
    with pytest.raises(DataError, match=r"other\.npz.*keys found: \['x'\]"):
        read_medmnist(unrelated, tmp_path / "c")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"garbage\.npz"):
        read_medmnist(garbage, tmp_path / "d")
    bad_shape = write_npz(
        tmp_path / "shape.npz", train_images=np.zeros((2, 4, 4, 2), np.uint8), train_labels=np.zeros(2)
    )
    with pytest.raises(DataError, match=r"shape\.npz.*train_images has shape \(2, 4, 4, 2\)"):
        read_medmnist(bad_shape, tmp_path / "e")
    with pytest.raises(ManifestError, match="outside the classes"):
        read_medmnist(
            write_npz(tmp_path / "pneumoniamnist_x.npz", train_images=images, train_labels=np.array([0, 5])),
            tmp_path / "f",
        )


# -------------------------------------------------------------------------------- generic image folders


def save_image(
    path: Path, size: tuple[int, int] = (8, 6), colour: tuple[int, int, int] = (200, 100, 50)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def save_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros(size[::-1], dtype=np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = 255
    Image.fromarray(array).save(path)
    return path


def test_image_folder_masks_in_same_folder_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "lesions"
    save_image(folder / "a.png")
    save_image(folder / "b.JPG")
    save_image(folder / "c.png")
    save_mask(folder / "a_mask.png", (1, 2, 4, 5))
    save_mask(folder / "b_lesion.bmp", (0, 0, 8, 6))
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b.jpg", "c"],
            "dx": ["mel", "nev", "nev"],
            "patient": ["p1", "p2", "p2"],
            "age": [40, 50, 60],
        }
    )
    manifest = read_image_folder(
        folder, masks_dir=folder, labels=labels, label_column="dx", patient_column="patient"
    )
    table = manifest.table
    assert table["image"].tolist() == ["a.png", "b.JPG", "c.png"]
    assert table["mask"].tolist() == ["a_mask.png", "b_lesion.bmp", ""]
    assert (
        manifest.boxes(0) == [(1, 2, 4, 5)]
        and manifest.boxes(1) == [(0, 0, 8, 6)]
        and manifest.boxes(2) == []
    )
    assert manifest.label_names().tolist() == ["mel", "nev", "nev"]
    assert table["patient_id"].tolist() == ["p1", "p2", "p2"] and table["age"].tolist() == [40, 50, 60]
    assert set(table["split"]) == {"train"}
    no_boxes = read_image_folder(folder, masks_dir=folder, boxes_from_masks=False)
    assert "bbox" not in no_boxes.table and no_boxes.table["mask"].tolist()[0] == "a_mask.png"


def test_image_folder_label_table_sets_split_and_patients(tmp_path: Path) -> None:
    for name in "abc":
        save_image(tmp_path / f"{name}.png")
    labels = pd.DataFrame(
        {
            "image_id": list("abc"),
            "label": [0, 1, 0],
            "split": ["train", "val", "test"],
            "patient_id": ["p1", "p2", "p2"],
        }
    )
    with pytest.raises(ManifestError, match="patient 'p2' appears in more than one split"):
        read_image_folder(tmp_path, labels=labels)
    labels["patient_id"] = ["p1", "p2", "p3"]
    manifest = read_image_folder(tmp_path, labels=labels, split="test")
    assert manifest.table["split"].tolist() == ["train", "val", "test"]
    assert manifest.classes == ("0", "1")


def test_image_folder_reports_unmatched_labels_together(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        save_image(tmp_path / "images" / f"{name}.jpg")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ["a", "b", "b", "d", "e"], "label": [0, 1, 1, 1, 0]}).to_csv(
        labels, index=False
    )
    with pytest.raises(ManifestError) as info:
        read_image_folder(tmp_path / "images", labels=labels)
    message = str(info.value)
    assert "labels.csv" in message
    assert "1 image(s) without a label row: c" in message
    assert "2 label row(s) without an image: d, e" in message
    assert "1 id(s) appear in more than one label row: b" in message
    with pytest.raises(DataError, match=r"labels\.csv: no column 'diagnosis'"):
        read_image_folder(tmp_path / "images", labels=labels, label_column="diagnosis")


def test_image_folder_sibling_masks_root_and_size_check(tmp_path: Path) -> None:
    save_image(tmp_path / "data" / "images" / "x1.png")
    save_image(tmp_path / "data" / "images" / "x2.png")
    save_mask(tmp_path / "data" / "masks" / "x1_segmentation.png", (2, 1, 5, 3))
    save_mask(tmp_path / "data" / "masks" / "x2.png", (0, 0, 2, 2))  # bare stem in a separate folder
    manifest = read_image_folder(
        tmp_path / "data" / "images", masks_dir=tmp_path / "data" / "masks", split="val"
    )
    assert manifest.root == tmp_path / "data"
    assert manifest.table["image"].tolist() == ["images/x1.png", "images/x2.png"]
    assert manifest.table["mask"].tolist() == ["masks/x1_segmentation.png", "masks/x2.png"]
    assert manifest.table["bbox"].tolist() == ["2,1,5,3", "0,0,2,2"]
    save_mask(tmp_path / "data" / "masks" / "x2.png", (0, 0, 2, 2), size=(9, 6))
    with pytest.raises(ManifestError, match=r"x2\.png.*mask size \(9, 6\).*differs from image size \(8, 6\)"):
        read_image_folder(tmp_path / "data" / "images", masks_dir=tmp_path / "data" / "masks")


# ------------------------------------------------------------------------------------- ISIC (shared)


@pytest.fixture(scope="module")
def isic2017():
    return read_isic(shared_path("isic2017_seg_256"))


@pytest.mark.shared_data
def test_isic2017_counts_and_masks(isic2017) -> None:
    manifest = isic2017
    table = manifest.table
    assert manifest.classes == ("nevus", "melanoma", "seborrheic_keratosis")
    assert class_counts(manifest, "train") == {"melanoma": 374, "seborrheic_keratosis": 254, "nevus": 1372}
    assert class_counts(manifest, "val") == {"melanoma": 30, "seborrheic_keratosis": 42, "nevus": 78}
    test = table[table["split"] == "test"]
    assert len(test) == 600 and test["label"].isna().all()
    assert test["image"].str.startswith("test_unlabeled/images/").all()
    labelled = table[table["label"].notna()]
    assert len(labelled) == 2150
    assert (labelled["mask"].str.len() > 0).all() and (labelled["bbox"].str.len() > 0).all()
    assert {"age_approximate", "sex", "melanoma", "seborrheic_keratosis"} <= set(table.columns)
    for i in range(len(table)):
        with Image.open(manifest.image_path(i)) as image:
            assert image.size == (256, 256)


@pytest.mark.shared_data
def test_isic2017_masks_binary_and_boxes(isic2017) -> None:
    manifest = isic2017
    labelled = np.flatnonzero(manifest.table["label"].notna().to_numpy())
    for i in labelled[:: len(labelled) // 12]:
        path = manifest.mask_path(int(i))
        raw = np.asarray(Image.open(path))
        assert set(np.unique(raw)) <= {0, 255}
        mask = load_mask(path, shape=(256, 256))
        assert set(np.unique(mask)) <= {0, 1} and mask.any()
        assert manifest.boxes(int(i)) == [tuple(float(v) for v in raw_box(path))]


# ---------------------------------------------------------------------------------- ISIC (fake trees)


def test_isic_split_folder_layout(tmp_path: Path) -> None:
    for split, names in (("train", ("ISIC_1", "ISIC_2")), ("val", ("ISIC_3",))):
        for name in names:
            save_image(tmp_path / split / "images" / f"{name}.jpg")
            save_mask(tmp_path / split / "masks" / f"{name}_segmentation.png", (1, 1, 3, 3))
    save_image(tmp_path / "test_unlabeled" / "images" / "ISIC_9.jpg")
    pd.DataFrame(
        {"image_id": ["ISIC_1", "ISIC_2"], "diagnosis": ["melanoma", "nevus"], "sex": ["male", "female"]}
    ).to_csv(tmp_path / "train_labels.csv", index=False)
    pd.DataFrame({"image_id": ["ISIC_3"], "melanoma": [0], "seborrheic_keratosis": [1]}).to_csv(
        tmp_path / "val_labels.csv", index=False
    )
    manifest = read_isic(tmp_path)
    assert manifest.table["split"].tolist() == ["train", "train", "val", "test"]
    assert manifest.label_names().tolist()[:3] == ["melanoma", "nevus", "seborrheic_keratosis"]
    assert manifest.table["mask"].tolist()[:3] == [
        "train/masks/ISIC_1_segmentation.png",
        "train/masks/ISIC_2_segmentation.png",
        "val/masks/ISIC_3_segmentation.png",
    ]
    assert manifest.boxes(2) == [(1, 1, 3, 3)] and manifest.mask_path(3) is None
    assert manifest.table["sex"].tolist()[:2] == ["male", "female"]


def fake_2017(root: Path) -> Path:
    data = root / "ISIC-2017_Training_Data"
    for i, box in zip((1, 2, 3), ((0, 0, 2, 2), (1, 1, 4, 3), (2, 0, 8, 6)), strict=True):
        save_image(data / f"ISIC_000000{i}.jpg")
        save_mask(root / "ISIC-2017_Training_Part1_GroundTruth" / f"ISIC_000000{i}_segmentation.png", box)
    save_mask(data / "ISIC_0000001_superpixels.png", (0, 0, 8, 6))
    pd.DataFrame(
        {
            "image_id": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"],
            "age_approximate": [30, 45, 60],
            "sex": ["male", "female", "unknown"],
        }
    ).to_csv(data / "ISIC-2017_Training_Data_metadata.csv", index=False)
    pd.DataFrame(
        {
            "image_id": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"],
            "melanoma": [1.0, 0.0, 0.0],
            "seborrheic_keratosis": [0.0, 1.0, 0.0],
        }
    ).to_csv(root / "ISIC-2017_Training_Part3_GroundTruth.csv", index=False)
    save_image(root / "ISIC-2017_Validation_Data" / "ISIC_0000010.jpg")
    pd.DataFrame({"image_id": ["ISIC_0000010"], "melanoma": [0.0], "seborrheic_keratosis": [1.0]}).to_csv(
        root / "ISIC-2017_Validation_Part3_GroundTruth.csv", index=False
    )
    save_image(root / "ISIC-2017_Test_v2_Data" / "ISIC_0000020.jpg")
    return root


def test_isic_official_2017(tmp_path: Path) -> None:
    manifest = read_isic(fake_2017(tmp_path))
    table = manifest.table
    assert table["image_id"].tolist() == [
        "ISIC_0000001",
        "ISIC_0000002",
        "ISIC_0000003",
        "ISIC_0000010",
        "ISIC_0000020",
    ]
    assert table["split"].tolist() == ["train", "train", "train", "val", "test"]
    assert manifest.label_names().tolist()[:4] == [
        "melanoma",
        "seborrheic_keratosis",
        "nevus",
        "seborrheic_keratosis",
    ]
    assert pd.isna(manifest.label_names().iat[4])
    assert table["mask"].tolist()[:3] == [
        f"ISIC-2017_Training_Part1_GroundTruth/ISIC_000000{i}_segmentation.png" for i in (1, 2, 3)
    ]
    assert [manifest.boxes(i) for i in range(3)] == [[(0, 0, 2, 2)], [(1, 1, 4, 3)], [(2, 0, 8, 6)]]
    assert table["age_approximate"].tolist()[:3] == [30, 45, 60] and table["sex"].tolist()[0] == "male"
    assert set(table["modality"]) == {"dermoscopy"}


def test_isic_official_2016_and_year_choice(tmp_path: Path) -> None:
    root = tmp_path
    save_image(root / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000000.jpg")
    save_image(root / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000001.jpg")
    save_mask(
        root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000000_Segmentation.png", (1, 1, 3, 3)
    )
    save_mask(
        root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000001_Segmentation.png", (0, 0, 1, 1)
    )
    (root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text(
        "ISIC_0000000,benign\nISIC_0000001,malignant\n"
    )
    save_image(root / "ISBI2016_ISIC_Part3_Test_Data" / "ISIC_0000003.jpg")
    (root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text("ISIC_0000003,1.0\n")
    manifest = read_isic(root)
    assert manifest.classes == ("benign", "malignant")
    assert manifest.label_names().tolist() == ["benign", "malignant", "malignant"]
    assert manifest.table["split"].tolist() == ["train", "train", "test"]
    assert manifest.boxes(0) == [(1, 1, 3, 3)] and manifest.mask_path(2) is None

    fake_2017(root)
    with pytest.raises(DataError, match=r"\[2016, 2017\].*pass year="):
        read_isic(root)
    assert len(read_isic(root, year=2016)) == 3 and len(read_isic(root, year=2017)) == 5
    with pytest.raises(DataError, match="no ISIC 2018"):
        read_isic(root, year=2018)


def test_isic_official_2018_tasks(tmp_path: Path) -> None:
    root = tmp_path
    save_image(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg")
    save_mask(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", (2, 2, 6, 5))
    for name in ("ISIC_0024306", "ISIC_0024307"):
        save_image(root / "ISIC2018_Task3_Training_Input" / f"{name}.jpg")
    truth = root / "ISIC2018_Task3_Training_GroundTruth"
    truth.mkdir()
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    onehot = pd.DataFrame([[0.0, 1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1.0]], columns=columns)
    onehot.insert(0, "image", ["ISIC_0024306", "ISIC_0024307"])
    onehot.to_csv(truth / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    pd.DataFrame(
        {
            "image": ["ISIC_0024306", "ISIC_0024307"],
            "lesion_id": ["HAM_1", "HAM_2"],
            "diagnosis_confirm_type": ["histopathology", "consensus"],
        }
    ).to_csv(root / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    both = read_isic(root)
    assert both.classes == ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
    assert len(both) == 3 and both.boxes(0) == [(2, 2, 6, 5)]
    classification = read_isic(root, task="classification")
    assert classification.label_names().tolist() == ["nv", "vasc"]
    assert classification.table["patient_id"].tolist() == ["HAM_1", "HAM_2"]
    segmentation = read_isic(root, task="segmentation")
    assert len(segmentation) == 1 and not segmentation.has_labels

    onehot.loc[1, "VASC"] = 0.0
    onehot.to_csv(truth / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    with pytest.raises(
        ManifestError,
        match=r"(?s)Task3_Training_GroundTruth\.csv.*row 2: .*\(0, 0, 0, 0, 0, 0, 0\) is not one-hot",
    ):
        read_isic(root)


def test_isic_unknown_layout(tmp_path: Path) -> None:
    save_image(tmp_path / "pictures" / "a.jpg")
    with pytest.raises(DataError, match="no ISIC layout found"):
        read_isic(tmp_path)


# ------------------------------------------------------------------------------------------- PH2 (shared)


@pytest.mark.shared_data
def test_ph2_rows_labels_and_sizes() -> None:
    root = shared_path("ph2")
    manifest = read_ph2(root)
    assert len(manifest) == 200 and set(manifest.table["split"]) == {"test"}
    assert manifest.classes == ("common_nevus", "atypical_nevus", "melanoma")
    assert class_counts(manifest, "test") == {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
    assert (manifest.label_names() == manifest.table["clinical_diagnosis"]).all()
    sizes = []
    for i in range(len(manifest)):
        with Image.open(manifest.image_path(i)) as image:
            sizes.append(image.size)
        assert manifest.boxes(i)  # every PH2 mask has a lesion
    widths, heights = zip(*sizes, strict=True)
    # SOURCE.md says "761x569 to 769x577"; widths agree, but IMD030 is 763x553 (checked with Pillow)
    assert (min(widths), max(widths), min(heights), max(heights)) == (761, 769, 553, 577)
    assert sizes[manifest.table.index[manifest.table["image_id"] == "IMD030"][0]] == (763, 553)
    for i in (0, 99, 199):
        mask = load_mask(manifest.mask_path(i), shape=sizes[i][::-1])  # same size as its image
        assert manifest.boxes(i) == [tuple(float(v) for v in raw_box(manifest.mask_path(i)))]
        assert set(np.unique(mask)) == {0, 1}


@pytest.mark.shared_data
def test_ph2_stratified_split() -> None:
    root = shared_path("ph2")
    manifest = read_ph2(root, fractions=(0.6, 0.2, 0.2), seed=0, boxes_from_masks=False)
    assert class_counts(manifest, "train") == {"common_nevus": 48, "atypical_nevus": 48, "melanoma": 24}
    for split in ("val", "test"):
        assert class_counts(manifest, split) == {"common_nevus": 16, "atypical_nevus": 16, "melanoma": 8}
    again = read_ph2(root, fractions=(0.6, 0.2, 0.2), seed=0, boxes_from_masks=False)
    assert again.table["split"].tolist() == manifest.table["split"].tolist()
    other = read_ph2(root, fractions=(0.6, 0.2, 0.2), seed=1, boxes_from_masks=False)
    assert other.table["split"].tolist() != manifest.table["split"].tolist()
    # the split manifest passes validation as a saved table too (no duplicates, known splits)
    build_manifest(manifest.table.drop(columns="row"), root, classes=manifest.classes)
