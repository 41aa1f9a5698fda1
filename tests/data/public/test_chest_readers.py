"""ChestX-ray14, CheXpert and ChestMNIST readers on tiny fixtures in their published layouts.

The real ChestX-ray14 `Data_Entry_2017.csv` is not available here: its fixture is written from the published
description (column names, the trailing empty column of the 2017 file, `|`-joined `Finding Labels` with
"No Finding"), with the first rows as the NIH release lists them. The box part is tested on the REAL
`BBox_List_2017.csv` in ../shared/data/layouts/chestxray14, with images named as it lists them.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from panderm.data.readers.medmnist import read_medmnist
from panderm.data.readers.public import read_public
from panderm.data.readers.public.chestxray14 import CLASSES
from panderm.data.readers.public.chexpert import COMPETITION, OBSERVATIONS
from panderm.data.readers.public.splits import crossing_groups
from panderm.errors import ConfigError, ManifestError
from tests.conftest import shared_path


def bbox_file():
    return shared_path("layouts", "chestxray14", "BBox_List_2017.csv")


HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
FIRST_ROWS = [  # the release's first rows (image, findings, follow-up, patient, age, sex, view, w, h, sx, sy)
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,",
    "00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168,",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,",
    "00000003_000.png,Hernia,0,3,81,F,PA,2582,2991,0.143,0.143,",
]


def real_boxes():
    """Independent parse of the real BBox file: image -> [(finding, (x1, y1, x2, y2)), ...] in file order."""
    boxes: dict[str, list] = {}
    with open(bbox_file(), newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for image, finding, x, y, w, h, *_ in reader:
            x, y, w, h = map(float, (x, y, w, h))
            finding = "Infiltration" if finding == "Infiltrate" else finding
            boxes.setdefault(image, []).append((finding, (x, y, x + w, y + h)))
    return boxes


def write_chestxray14(folder, *, extra_rows=()):
    """The layout: Data_Entry (first release rows, 40 made-up train_val patients, the boxed test images),
    official lists, images split over images/ and images_001/images/ (empty files: never decoded here)."""
    rows = list(FIRST_ROWS)
    rng = np.random.default_rng(0)
    for p in range(90001, 90041):
        for f in range(2):
            names = [c for c in CLASSES if rng.random() < 0.15] or ["No Finding"]
            rows.append(f"{p:08d}_{f:03d}.png,{'|'.join(names)},{f},{p},40,F,AP,2500,2048,0.14,0.14,")
    boxed = sorted(real_boxes())
    for name in boxed:
        patient = int(name.split("_")[0])
        rows.append(f"{name},Atelectasis,0,{patient},50,M,PA,1024,1024,0.14,0.14,")
    rows += list(extra_rows)
    (folder / "Data_Entry_2017.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    names = [r.split(",")[0] for r in rows]
    test = set(boxed) | {"00000003_000.png"}
    (folder / "test_list.txt").write_text("\n".join(n for n in names if n in test) + "\n")
    (folder / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test))
    (folder / "images").mkdir()
    (folder / "images_001" / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        (folder / ("images" if i % 2 else "images_001/images") / name).touch()
    (folder / "BBox_List_2017.csv").write_bytes(bbox_file().read_bytes())
    return names, test


@pytest.fixture(scope="module")
def chestxray14(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cxr14")
    names, test = write_chestxray14(folder)
    manifest = read_public("chestxray14", folder, out_dir=folder / "out")
    return folder, names, test, manifest


@pytest.mark.shared_data
def test_chestxray14_counts_labels_and_official_split(chestxray14):
    _, names, test, manifest = chestxray14
    table = manifest.table.set_index("image_index")
    assert manifest.is_multilabel and manifest.classes == CLASSES and len(manifest) == len(names)
    assert set(table.index[table["split"] == "test"]) == test
    assert (table["split"] == "val").sum() > 0 and (table["split"] == "train").sum() > 0
    assert crossing_groups(manifest.table, "patient_id") == []
    targets = pd.DataFrame(manifest.targets(), index=manifest.table["image_index"], columns=CLASSES)
    assert targets.loc["00000001_001.png"].pipe(lambda r: set(r.index[r == 1])) == {
        "Cardiomegaly",
        "Emphysema",
    }
    assert targets.loc["00000002_000.png"].sum() == 0  # No Finding = empty set
    assert table.loc["00000001_000.png", "age"] == "58" and table.loc["00000001_000.png", "sex"] == "M"
    assert table.loc["00000001_002.png", "width"] == "2500"
    assert {p.split("/")[0] for p in manifest.table["image"]} == {"images", "images_001"}


@pytest.mark.shared_data
def test_chestxray14_boxes_come_from_the_real_bbox_file(chestxray14):
    _, _, _, manifest = chestxray14
    expected = real_boxes()
    assert sum(len(v) for v in expected.values()) == 984
    table = manifest.table
    boxed = table["bbox"].notna() & (table["bbox"] != "")
    assert set(table.loc[boxed, "image_index"]) == set(expected)
    for i in np.flatnonzero(boxed.to_numpy()):
        want = expected[table["image_index"].iat[i]]
        got = manifest.boxes(i)
        assert len(got) == len(want)
        np.testing.assert_allclose(np.array(got), np.array([b for _, b in want]), atol=0.006)
        assert table["bbox_labels"].iat[i].split("|") == [f for f, _ in want]
    assert "Infiltrate" not in "|".join(table.loc[boxed, "bbox_labels"])
    assert all(set(lbl.split("|")) <= set(CLASSES) for lbl in table.loc[boxed, "bbox_labels"])


@pytest.mark.shared_data
def test_chestxray14_split_is_saved_and_reused(chestxray14, tmp_path):
    folder, _, _, manifest = chestxray14
    again = read_public("chestxray14", folder, out_dir=folder / "out", seed=5)
    assert again.table["split"].tolist() == manifest.table["split"].tolist()
    other = read_public("chestxray14", folder, out_dir=tmp_path, val_fraction=0.2)
    assert (other.table["split"] == "val").sum() > (manifest.table["split"] == "val").sum()


@pytest.mark.shared_data
def test_chestxray14_unknown_finding_names_row_and_name(tmp_path):
    write_chestxray14(tmp_path, extra_rows=["00099999_000.png,Pneumonia|Covid,0,99999,30,F,PA,1,1,0.1,0.1,"])
    with pytest.raises(ManifestError) as info:
        read_public("chestxray14", tmp_path, out_dir=tmp_path / "out")
    rows = len(FIRST_ROWS) + 80 + len(real_boxes()) + 1
    assert f"row {rows}: field 'Finding Labels': 'Covid'" in str(info.value)


# ---------------------------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]


def chexpert_row(patient, study, view, frontal, values, split="train"):
    cells = {name: "" for name in OBSERVATIONS} | values
    path = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view{view}_{frontal.lower()}.jpg"
    return [
        path,
        "Female",
        "60",
        frontal,
        "AP" if frontal == "Frontal" else "",
        *(cells[n] for n in OBSERVATIONS),
    ]


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chexpert")
    rng = np.random.default_rng(0)
    train = [
        # the hand-made row: Cardiomegaly uncertain, Edema positive, Pleural Effusion negative, others blank
        chexpert_row(1, 1, 1, "Frontal", {"Cardiomegaly": "-1.0", "Edema": "1.0", "Pleural Effusion": "0.0"}),
        chexpert_row(1, 1, 2, "Lateral", {"Edema": "1.0"}),
    ]
    for p in range(2, 42):
        values = {n: str(rng.choice(["1.0", "0.0", "-1.0", ""])) for n in COMPETITION}
        train.append(chexpert_row(p, 1, 1, "Frontal", values))
    valid = [chexpert_row(64541 + p, 1, 1, "Frontal", {"No Finding": "1.0"}, "valid") for p in range(4)]
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        with open(folder / name, "w", newline="") as handle:
            csv.writer(handle).writerows([CHEXPERT_HEADER, *rows])
    return folder


def hand_row(manifest):
    i = manifest.table.index[manifest.table["image"] == "train/patient00001/study1/view1_frontal.jpg"][0]
    return dict(zip(manifest.classes, manifest.targets()[i], strict=True))


@pytest.mark.parametrize(("policy", "cardiomegaly"), [("ignore", np.nan), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertainty_policies_on_a_hand_made_row(chexpert, tmp_path, policy, cardiomegaly):
    manifest = read_public("chexpert", chexpert, out_dir=tmp_path, uncertain=policy)
    row = hand_row(manifest)
    np.testing.assert_equal(row["Cardiomegaly"], cardiomegaly)
    assert row["Edema"] == 1.0 and row["Pleural Effusion"] == 0.0 and row["Fracture"] == 0.0  # blank = 0
    assert manifest.classes == OBSERVATIONS


def test_chexpert_counts_splits_views_and_patients(chexpert, tmp_path):
    manifest = read_public("chexpert", chexpert, out_dir=tmp_path)
    table = manifest.table
    assert len(manifest) == 41 + 4  # the lateral view is left out
    assert (table["split"] == "test").sum() == 4 and (table["split"] == "val").sum() > 0
    assert crossing_groups(table, "patient_id") == []
    assert table.loc[table["split"] == "test", "label_set"].eq("No Finding").all()
    everything = read_public("chexpert", chexpert, out_dir=tmp_path / "b", frontal_only=False)
    assert len(everything) == 46
    competition = read_public("chexpert", chexpert, out_dir=tmp_path / "c", labels="competition")
    assert competition.classes == COMPETITION and competition.targets().shape == (45, 5)


def test_chexpert_paths_resolve_with_or_without_the_release_folder(chexpert, tmp_path):
    inside = read_public("chexpert", chexpert, out_dir=tmp_path / "a")
    assert inside.table["image"].iat[0].startswith("train/patient")
    (chexpert / "CheXpert-v1.0-small").mkdir(exist_ok=True)  # the CSVs beside the release folder
    try:
        beside = read_public("chexpert", chexpert, out_dir=tmp_path / "b")
    finally:
        (chexpert / "CheXpert-v1.0-small").rmdir()
    assert beside.table["image"].iat[0].startswith("CheXpert-v1.0-small/train/patient")


def test_chexpert_bad_options_and_cells(chexpert, tmp_path):
    with pytest.raises(ConfigError, match="uncertain"):
        read_public("chexpert", chexpert, out_dir=tmp_path, uncertain="maybe")
    with pytest.raises(ConfigError, match="unknown option"):
        read_public("chexpert", chexpert, out_dir=tmp_path, policy="ones")
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = [CHEXPERT_HEADER, chexpert_row(1, 1, 1, "Frontal", {"Edema": "2.0"})]
    for name in ("train.csv", "valid.csv"):
        with open(bad / name, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    with pytest.raises(ManifestError, match=r"row 1: field 'Edema': '2\.0'"):
        read_public("chexpert", bad, out_dir=tmp_path / "o")


# --------------------------------------------------------------------------------------------- ChestMNIST


def test_chestmnist_labels_become_label_sets(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.random((n, 14)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    manifest = read_medmnist(tmp_path / "chestmnist.npz", tmp_path / "out")
    assert manifest.is_multilabel and manifest.classes[:3] == ("atelectasis", "cardiomegaly", "effusion")
    expected = np.concatenate([arrays[f"{s}_labels"] for s in ("train", "val", "test")]).astype(np.float32)
    np.testing.assert_array_equal(manifest.targets(), expected)
    again = read_medmnist(tmp_path / "chestmnist.npz", tmp_path / "out")  # the export is reused
    np.testing.assert_array_equal(again.targets(), expected)


def test_chexpert_through_the_data_config(chexpert, tmp_path):
    from hydra import compose, initialize_config_dir

    from panderm.config import register_configs
    from panderm.data.sources import load_data
    from panderm.paths import config_dir

    register_configs()
    with initialize_config_dir(str(config_dir("probe")), version_base="1.3"):
        cfg = compose(
            "probe",
            overrides=[
                "data=chexpert",
                f"data.path={chexpert}",
                f"data.out_dir={tmp_path}",
                "+data.options.uncertain=ones",
            ],
        )
    manifest = load_data(cfg.data, tmp_path)
    assert hand_row(manifest)["Cardiomegaly"] == 1.0
