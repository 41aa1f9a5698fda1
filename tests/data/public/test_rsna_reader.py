"""RSNA Pneumonia reader on the real stage_2_train_labels.csv with tiny generated DICOMs for ~60 patients."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from panderm.config import DataConfig
from panderm.data.dataset import ManifestDataset
from panderm.data.manifest import parse_boxes
from panderm.data.readers.public import read_public
from panderm.data.readers.public.rsna_pneumonia import read_rsna_labels, read_rsna_pneumonia
from panderm.data.readers.public.splits import crossing_groups
from panderm.data.sources import load_data
from panderm.errors import ConfigError, DataError, ManifestError
from tests.conftest import shared_path

pytestmark = pytest.mark.shared_data

SIZE = 32
# patients taken from the real file, in file order: negatives and positives with 1, 2, 3 and 4 boxes
TAKE = {0: 30, 1: 15, 2: 10, 3: 4, 4: 1}


def labels_file() -> Path:
    return shared_path("layouts", "rsna_pneumonia", "stage_2_train_labels.csv")


def raw_rows() -> tuple[str, list[str], dict[str, list[dict[str, str]]]]:
    """Header, the file's lines, and its rows by patientId (read with the csv module: the reference)."""
    text = labels_file().read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in csv.DictReader(lines):
        by_patient[row["patientId"]].append(row)
    return lines[0], lines[1:], by_patient


def pixels_of(index: int) -> np.ndarray:
    """A distinct 8-bit picture per patient: a gradient shifted by its index."""
    grid = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 4 + index
    return (grid % 256).astype(np.uint8)


def write_rsna_dicom(path: Path, patient: str, pixels: np.ndarray) -> None:
    """An uncompressed 8-bit MONOCHROME2 chest radiograph with the tags the RSNA files carry."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The dataset folder: the real file's lines of the chosen patients, byte for byte, and their DICOMs."""
    header, lines, by_patient = raw_rows()
    wanted: dict[int, list[str]] = defaultdict(list)
    for patient, rows in by_patient.items():
        boxes = 0 if rows[0]["Target"] == "0" else len(rows)
        if len(wanted[boxes]) < TAKE[boxes]:
            wanted[boxes].append(patient)
    chosen = [p for group in wanted.values() for p in group]
    assert sum(len(g) for g in wanted.values()) == sum(TAKE.values())
    root = tmp_path_factory.mktemp("rsna")
    kept = set(chosen)
    (root / "stage_2_train_labels.csv").write_text(
        header + "".join(line for line in lines if line.split(",", 1)[0] in kept), encoding="utf-8"
    )
    for index, patient in enumerate(chosen):
        write_rsna_dicom(root / "stage_2_train_images" / f"{patient}.dcm", patient, pixels_of(index))
    return {"root": root, "chosen": chosen, "by_patient": by_patient, "wanted": wanted}


def expected_boxes(rows: list[dict[str, str]]) -> list[tuple[float, float, float, float]]:
    """x1,y1,x2,y2 from the csv module's rows: x2 = x + width, y2 = y + height; none for Target 0."""
    if rows[0]["Target"] == "0":
        return []
    out = []
    for r in rows:
        x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
        out.append((x, y, x + w, y + h))
    return out


def test_whole_real_labels_file_one_row_per_patient() -> None:
    _, lines, by_patient = raw_rows()
    table = read_rsna_labels(labels_file())
    assert len(lines) == 30227 and len(table) == len(by_patient) == 26684
    positives = [p for p, rows in by_patient.items() if rows[0]["Target"] == "1"]
    assert int(table["label"].sum()) == len(positives) == 6012
    assert int(table["n_boxes"].sum()) == sum(len(by_patient[p]) for p in positives) == 9555
    assert table["patient_id"].tolist() == list(by_patient)  # the file's order
    for patient, cell in zip(table["patient_id"], table["bbox"], strict=True):
        assert parse_boxes(cell) == expected_boxes(by_patient[patient])


def test_hand_checked_rows() -> None:
    table = read_rsna_labels(labels_file()).set_index("patient_id")
    # first lines of the file, read by eye: two boxes 264,152 213x379 and 562,152 256x453
    assert parse_boxes(table.at["00436515-870c-4b36-a041-de91049b9ab4", "bbox"]) == [
        (264, 152, 477, 531),
        (562, 152, 818, 605),
    ]
    assert parse_boxes(table.at["00704310-78a8-4b38-8475-49f4573b2dbb", "bbox"]) == [
        (323, 577, 483, 681),
        (695, 575, 857, 712),
    ]
    assert table.at["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "bbox"] == ""
    assert table.at["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "label"] == 0


def test_manifest_counts_labels_boxes_and_split(fixture: dict, tmp_path: Path) -> None:
    root, chosen, by_patient = fixture["root"], fixture["chosen"], fixture["by_patient"]
    manifest = read_rsna_pneumonia(root, out_dir=tmp_path)
    table = manifest.table
    assert len(table) == len(chosen) == 60
    assert manifest.classes == ("normal", "opacity")
    assert set(table["modality"]) == {"xray"}
    names = manifest.label_names()
    for i, patient in enumerate(table["patient_id"]):
        rows = by_patient[patient]
        assert table["image"].iat[i] == f"stage_2_train_images/{patient}.dcm"
        assert names.iat[i] == ("opacity" if rows[0]["Target"] == "1" else "normal")
        assert manifest.boxes(i) == expected_boxes(rows)
        assert table["n_boxes"].iat[i] == len(expected_boxes(rows))
    assert sorted(table["n_boxes"].value_counts().items()) == sorted(TAKE.items())
    # patient-grouped split, saved and reused whatever the seed
    assert set(table["split"]) == {"train", "val", "test"}
    assert crossing_groups(table, "patient_id") == []
    assert table["patient_id"].is_unique
    for split in ("train", "test"):
        assert set(names[table["split"] == split]) == {"normal", "opacity"}  # stratified
    assert (tmp_path / "splits.csv").is_file()
    again = read_rsna_pneumonia(root, out_dir=tmp_path, seed=5)
    assert again.table["split"].tolist() == table["split"].tolist()


def test_class_info_joined_when_present(fixture: dict, tmp_path: Path) -> None:
    root, chosen, by_patient = fixture["root"], fixture["chosen"], fixture["by_patient"]
    folder = tmp_path / "rsna"
    folder.mkdir()
    (folder / "stage_2_train_images").symlink_to(root / "stage_2_train_images")
    (folder / "stage_2_train_labels.csv").write_bytes((root / "stage_2_train_labels.csv").read_bytes())
    # published layout: one class row per labels row, same order; positives "Lung Opacity"
    classes = {}
    for j, patient in enumerate(chosen):
        positive = by_patient[patient][0]["Target"] == "1"
        classes[patient] = (
            "Lung Opacity" if positive else ("Normal" if j % 2 else "No Lung Opacity / Not Normal")
        )
    kept = [
        line.split(",", 1)[0] for line in (root / "stage_2_train_labels.csv").read_text().splitlines()[1:]
    ]
    lines = ["patientId,class\n", *(f"{p},{classes[p]}\n" for p in kept)]
    (folder / "stage_2_detailed_class_info.csv").write_text("".join(lines), encoding="utf-8")
    manifest = read_rsna_pneumonia(folder, out_dir=tmp_path / "out")
    got = dict(zip(manifest.table["patient_id"], manifest.table["detailed_class"], strict=True))
    assert got == classes
    # a patient without a class row is named
    without_first = [line for line in lines if not line.startswith(chosen[0])]
    (folder / "stage_2_detailed_class_info.csv").write_text("".join(without_first), encoding="utf-8")
    with pytest.raises(
        ManifestError, match=f"1 patientId.s. of stage_2_train_labels.csv have no class row: {chosen[0]}"
    ):
        read_rsna_pneumonia(folder, out_dir=tmp_path / "out")


def test_missing_dicoms_are_named(fixture: dict, tmp_path: Path) -> None:
    root, chosen = fixture["root"], fixture["chosen"]
    folder = tmp_path / "rsna"
    (folder / "stage_2_train_images").mkdir(parents=True)
    (folder / "stage_2_train_labels.csv").write_bytes((root / "stage_2_train_labels.csv").read_bytes())
    for patient in chosen[1:]:
        (folder / "stage_2_train_images" / f"{patient}.dcm").symlink_to(
            root / "stage_2_train_images" / f"{patient}.dcm"
        )
    with pytest.raises(ManifestError) as caught:
        read_rsna_pneumonia(folder, out_dir=tmp_path / "out")
    assert "1 of 60 patientId(s) have no DICOM" in str(caught.value) and chosen[0] in str(caught.value)
    # the full real file beside 60 DICOMs: every other patient is missing, counted and partly listed
    (folder / "stage_2_train_labels.csv").write_bytes(labels_file().read_bytes())
    with pytest.raises(ManifestError, match=r"26625 of 26684 patientId\(s\) have no DICOM"):
        read_rsna_pneumonia(folder, out_dir=tmp_path / "out")


def test_bad_label_rows_are_reported_with_row_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "rsna"
    folder.mkdir()
    (folder / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "a,,,,,0\n"
        "b,10.0,20.0,,5.0,1\n"  # a positive without width
        "c,1.0,2.0,3.0,4.0,0\n"  # a negative with a box
        "d,,,,,2\n",  # Target out of range
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as caught:
        read_rsna_labels(folder / "stage_2_train_labels.csv")
    text = str(caught.value)
    assert "3 problem(s)" in text
    assert "row 2: field(s) ['width']" in text and "row 3:" in text and "row 4: field 'Target'" in text


def test_load_data_and_pixels(fixture: dict, tmp_path: Path) -> None:
    root, chosen = fixture["root"], fixture["chosen"]
    cfg = DataConfig(name="rsna_pneumonia", source="rsna_pneumonia", path=str(root), out_dir=str(tmp_path))
    manifest = load_data(cfg, tmp_path)
    direct = read_public("rsna_pneumonia", root, out_dir=tmp_path)
    assert manifest.table.equals(direct.table)
    dataset = ManifestDataset(manifest)
    for i in (0, len(chosen) - 1):
        sample = dataset[i]
        index = chosen.index(manifest.table["patient_id"].iat[i])
        assert sample["image"].shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(sample["image"][..., 0], pixels_of(index))  # stored values unchanged
        assert sample["boxes"] == [list(b) for b in manifest.boxes(i)]


def test_test_images_only_when_asked(fixture: dict, tmp_path: Path) -> None:
    root, chosen = fixture["root"], fixture["chosen"]
    folder = tmp_path / "rsna"
    folder.mkdir()
    for name in ("stage_2_train_labels.csv", "stage_2_train_images"):
        (folder / name).symlink_to(root / name)
    for index in (0, 1):
        write_rsna_dicom(folder / "stage_2_test_images" / f"t{index}.dcm", f"t{index}", pixels_of(index))
    assert len(read_rsna_pneumonia(folder, out_dir=tmp_path / "out")) == len(chosen)
    manifest = read_rsna_pneumonia(folder, out_dir=tmp_path / "out", include_test_images=True)
    extra = manifest.table[manifest.table["image"].str.startswith("stage_2_test_images/")]
    assert sorted(extra["patient_id"]) == ["t0", "t1"]
    assert extra["label"].isna().all() and set(extra["split"]) == {"train"}
    assert manifest.unlabeled_rows() == extra["row"].tolist()


def test_unknown_option_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['include_test'\]"):
        read_public("rsna_pneumonia", tmp_path, out_dir=tmp_path, include_test=True)
    with pytest.raises(DataError, match=r"stage_2_train_labels\.csv"):
        read_public("rsna_pneumonia", tmp_path, out_dir=tmp_path)
