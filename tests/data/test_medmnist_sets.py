"""Every 2-D MedMNIST v2 set is known (class names in MedMNIST's order, modality) and reads at every size."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panderm.data.readers.medmnist import KNOWN_SETS, known_set, read_medmnist

# The reference, transcribed from the medmnist package (medmnist/info.py, INFO[set]["label"] and
# "n_channels") and the MedMNIST v2 paper's modality column: set -> (labels in order, channels, modality).
MEDMNIST_INFO: dict[str, tuple[tuple[str, ...], int, str]] = {
    "pathmnist": (
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        3,
        "pathology",  # Colon Pathology
    ),
    "chestmnist": (
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        1,
        "xray",  # Chest X-Ray
    ),
    "dermamnist": (
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        3,
        "dermoscopy",  # Dermatoscope
    ),
    "octmnist": (
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        1,
        "oct",  # Retinal OCT
    ),
    "pneumoniamnist": (("normal", "pneumonia"), 1, "xray"),  # Chest X-Ray
    "retinamnist": (("0", "1", "2", "3", "4"), 3, "fundus"),  # Fundus Camera; ordinal grades
    "breastmnist": (("malignant", "normal, benign"), 1, "ultrasound"),  # Breast Ultrasound
    "bloodmnist": (
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        3,
        "microscopy",  # Blood Cell Microscope
    ),
    "tissuemnist": (
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        1,
        "microscopy",  # Kidney Cortex Microscope
    ),
    **{
        name: (
            (
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
            1,
            "ct",  # Abdominal CT
        )
        for name in ("organamnist", "organcmnist", "organsmnist")
    },
}
# panderm's short names where they are not the slug of MedMNIST's (the usual abbreviations of each dataset)
ABBREVIATIONS = {
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),  # HAM10000's dx codes
    "octmnist": ("cnv", "dme", "drusen", "normal"),
    "retinamnist": tuple(f"grade_{g}" for g in range(5)),
}
# MedMNIST+ file names: <set>.npz is 28 px; the larger sizes carry a suffix (MedMNIST v3 also reads _28)
SIZES = {28: ("", "_28"), 64: ("_64",), 128: ("_128",), 224: ("_224",)}


def slug(label: str) -> str:
    """MedMNIST's label text as a lower-case identifier; a parenthesised gloss is dropped."""
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"\(.*\)", "", label.lower())).strip("_")


def expected_names(name: str) -> tuple[str, ...]:
    labels = MEDMNIST_INFO[name][0]
    return ABBREVIATIONS.get(name, tuple(slug(label) for label in labels))


def test_every_2d_set_is_known_with_medmnist_classes_and_modality() -> None:
    assert set(KNOWN_SETS) == set(MEDMNIST_INFO)
    for name, (labels, _, modality) in MEDMNIST_INFO.items():
        info = KNOWN_SETS[name]
        assert info.classes == expected_names(name), name
        assert len(info.classes) == len(labels) and info.modality == modality, name
        for suffixes in SIZES.values():
            for suffix in suffixes:
                assert known_set(f"{name}{suffix}.npz") == info
                assert known_set(f"{name.upper()}{suffix}.NPZ") == info


def tiny_npz(path: Path, name: str, size: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A MedMNIST-layout npz: {split}_images (N, size, size[, 3]) uint8, {split}_labels (N, 1); every class
    in train, two images each in val and test."""
    labels_of, channels, _ = MEDMNIST_INFO[name]
    rng = np.random.default_rng(seed)
    counts = {"train": len(labels_of), "val": 2, "test": 2}
    arrays = {}
    for split, n in counts.items():
        shape = (n, size, size) + ((3,) if channels == 3 else ())
        labels = rng.permutation(len(labels_of)) if split == "train" else rng.integers(0, len(labels_of), n)
        arrays[split] = (rng.integers(0, 256, shape, dtype=np.uint8), labels.reshape(-1, 1).astype(np.uint8))
    np.savez(
        path,
        **{
            f"{split}_{kind}": a
            for split, pair in arrays.items()
            for kind, a in zip(("images", "labels"), pair, strict=True)
        },
    )
    return arrays


# ChestMNIST's labels are one column per finding (multi-label): its reading is tested with that support
SINGLE_LABEL = [n for n in MEDMNIST_INFO if n != "chestmnist"]


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_every_set_reads_at_every_size(name: str, size: int, tmp_path: Path) -> None:
    suffix = SIZES[size][-1] if size != 28 else ""
    arrays = tiny_npz(tmp_path / f"{name}{suffix}.npz", name, size, seed=size)
    manifest = read_medmnist(tmp_path / f"{name}{suffix}.npz", tmp_path / "out")
    table = manifest.table
    assert manifest.classes == expected_names(name)
    assert set(table["modality"]) == {MEDMNIST_INFO[name][2]}
    for split, (images, labels) in arrays.items():
        rows = table[table["split"] == split].sort_values("index")
        assert rows["label"].astype(int).tolist() == labels.reshape(-1).tolist()
        last = rows.index[-1]
        stored = np.asarray(Image.open(manifest.image_path(last)))
        np.testing.assert_array_equal(stored, images[int(table["index"].iat[last])])
