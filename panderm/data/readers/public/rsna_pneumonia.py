"""RSNA Pneumonia Detection Challenge (Kaggle, 2018) in its published layout.

::

    <path>/stage_2_train_labels.csv            patientId,x,y,width,height,Target: one row per box;
                                                a negative image has one row with empty box fields
    <path>/stage_2_train_images/<patientId>.dcm 1024x1024 8-bit MONOCHROME2 chest radiographs
    <path>/stage_2_detailed_class_info.csv     optional: patientId,class, one row per labels row
    <path>/stage_2_test_images/<patientId>.dcm  unlabeled; read only with include_test_images=True

One manifest row per image (a patientId is one image), label `Target` (classes ``normal``, ``opacity``), the
image's boxes joined in `bbox` (x1,y1,x2,y2 pixels of the 1024x1024 DICOM, ``;`` between boxes), modality
``xray``, group = patientId. There is no official validation split, so a patient-grouped stratified split
is made and saved (`splits.saved_splits`) under `out_dir`. The DICOMs are read where they lie by
`panderm.data.radiology.load_dicom`; the manifest's `window` column (default ``127.5,255``) maps the 8-bit
stored values onto 0..255 unchanged instead of stretching each image by its percentiles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest, build_manifest, format_boxes
from panderm.data.radiology import Window, format_window
from panderm.data.readers.public.common import check_options
from panderm.data.readers.public.splits import SPLITS_FILE, saved_splits
from panderm.errors import DataError, ManifestError
from panderm.io import read_csv

logger = logging.getLogger(__name__)

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_INFO_FILE = "stage_2_detailed_class_info.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
DICOM = ".dcm"
CLASSES = ("normal", "opacity")  # Target 0 / 1
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX_FIELDS = ("x", "y", "width", "height")
#: 8-bit stored values shown as they are: center 127.5, width 255 maps 0..255 onto 0..255.
IDENTITY_WINDOW = "127.5,255"
LIST_LIMIT = 20


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT])
    return shown + (f", ... and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else "")


def read_rsna_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per patientId of ``stage_2_train_labels.csv``, in the file's order: `patient_id`, `label`
    (Target, 0/1), `bbox` (``x1,y1,x2,y2`` per box, x2 = x + width, joined by ``;``; empty for a negative),
    `n_boxes`. Raises `DataError` when the file is missing or lacks a column, `ManifestError` listing every
    bad row (1-based data rows): empty patientId, Target not 0/1, a positive without a full box (width and
    height > 0), a negative with box fields, a patient with both Targets."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RSNA labels file not found (expected {LABELS_FILE} in the dataset folder)")
    raw = read_csv(path, text=True).fillna("")
    missing = [c for c in LABEL_COLUMNS if c not in raw]
    if missing:
        raise DataError(
            f"{path}: no column(s) {missing} (columns: {list(raw.columns)}); expected {list(LABEL_COLUMNS)}"
        )
    raw = raw[list(LABEL_COLUMNS)].apply(lambda column: column.str.strip())
    raw.index = pd.RangeIndex(1, len(raw) + 1)  # 1-based data rows, as messages name them
    target = pd.to_numeric(raw["Target"], errors="coerce")
    numbers = raw[list(BOX_FIELDS)].apply(pd.to_numeric, errors="coerce")
    filled = raw[list(BOX_FIELDS)] != ""
    problems: dict[int, str] = {}

    def report(mask: pd.Series, message: object) -> None:
        for row in mask[mask].index:
            problems.setdefault(int(row), f"row {row}: {message(row) if callable(message) else message}")

    patient = raw["patientId"]
    report(patient == "", "field 'patientId' is empty")
    report(~target.isin([0, 1]), lambda r: f"field 'Target': {raw.at[r, 'Target']!r} is not 0 or 1")
    negative, positive = target == 0, target == 1
    report(negative & filled.any(axis=1), lambda r: f"a Target 0 row has a box ({patient[r]})")
    report(
        positive & numbers.isna().any(axis=1),
        lambda r: (
            f"field(s) {[f for f in BOX_FIELDS if pd.isna(numbers.at[r, f])]}: a Target 1 row needs a "
            f"numeric box ({patient[r]})"
        ),
    )
    report(
        positive & ((numbers["width"] <= 0) | (numbers["height"] <= 0)),
        lambda r: (
            f"fields 'width'/'height': a Target 1 box of {raw.at[r, 'width']}x{raw.at[r, 'height']} "
            f"is empty ({patient[r]})"
        ),
    )
    mixed = target.groupby(patient).transform("nunique") > 1
    report(mixed & (patient != ""), lambda r: f"field 'Target': {patient[r]} has rows with Target 0 and 1")
    if problems:
        raise ManifestError(str(path), [problems[r] for r in sorted(problems)])
    corners = pd.DataFrame(
        {
            "x1": numbers["x"],
            "y1": numbers["y"],
            "x2": numbers["x"] + numbers["width"],
            "y2": numbers["y"] + numbers["height"],
        }
    )[positive]
    cells = pd.Series([format_boxes([box]) for box in corners.to_numpy()], index=corners.index)
    grouped = pd.DataFrame({"patient_id": patient, "label": target.astype(int)}).groupby(
        "patient_id", sort=False
    )
    table = grouped["label"].first().reset_index()
    # a dict of lists: pandas' groupby(...).agg(";".join) takes a python call per group (~1 s for 6k groups)
    boxes: dict[str, list[str]] = {}
    for name, cell in zip(patient[positive].tolist(), cells.tolist(), strict=True):
        boxes.setdefault(name, []).append(cell)
    names = table["patient_id"].tolist()
    table["bbox"] = [";".join(boxes.get(name, ())) for name in names]
    table["n_boxes"] = [len(boxes.get(name, ())) for name in names]
    return table


def read_class_info(path: str | os.PathLike[str], patients: list[str]) -> pd.Series:
    """The `class` of each of `patients` from ``stage_2_detailed_class_info.csv`` (one class per patient).

    Raises `DataError` when a column is missing, `ManifestError` listing patients without a class row and
    patients with rows of two classes.
    """
    path = Path(path)
    raw = read_csv(path, text=True).fillna("")
    missing = [c for c in ("patientId", "class") if c not in raw]
    if missing:
        raise DataError(f"{path}: no column(s) {missing} (columns: {list(raw.columns)})")
    raw = raw.assign(patientId=raw["patientId"].str.strip(), **{"class": raw["class"].str.strip()})
    per_patient = raw.groupby("patientId", sort=False)["class"].unique()
    problems = []
    mixed = [p for p, classes in per_patient.items() if len(classes) > 1]
    if mixed:
        problems.append(f"{len(mixed)} patientId(s) have rows of more than one class: {_listing(mixed)}")
    absent = [p for p in patients if p not in per_patient.index]
    if absent:
        problems.append(f"{len(absent)} patientId(s) of {LABELS_FILE} have no class row: {_listing(absent)}")
    if problems:
        raise ManifestError(str(path), problems)
    return pd.Series([per_patient[p][0] for p in patients], name="detailed_class")


def _dicom_stems(folder: Path) -> set[str]:
    """Stems of the ``<patientId>.dcm`` files in `folder` (one directory listing, not a stat per patient)."""
    if not folder.is_dir():
        return set()
    return {name[: -len(DICOM)] for name in os.listdir(folder) if name.endswith(DICOM)}


def read_rsna_pneumonia(
    path: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    include_test_images: bool = False,
    window: Window = IDENTITY_WINDOW,
    check_files: bool = True,
    **unknown: Any,
) -> Manifest:
    """Manifest of the RSNA Pneumonia folder `path` (layout in the module docstring), rooted at `path`.

    Columns: `image` (``stage_2_train_images/<patientId>.dcm``), `split`, `label` (``normal``/``opacity``),
    `patient_id`, `modality` (``xray``), `bbox`, `n_boxes`, `window`, and `detailed_class` when
    ``stage_2_detailed_class_info.csv`` is present. The split is patient-grouped and stratified by label,
    made with `seed` and saved as ``<out_dir>/splits.csv`` (reused as is on a rerun).
    `include_test_images` adds the unlabeled ``stage_2_test_images`` as rows with split ``train`` and no label
    (for pretraining; a probe refuses unlabeled rows). Raises `DataError`/`ManifestError` naming the file,
    row and field: a bad labels row, labelled patients without a DICOM (listed), a bad class-info file.
    """
    check_options(unknown, ("check_files", "include_test_images", "window"), "rsna_pneumonia")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: RSNA Pneumonia folder not found")
    table = read_rsna_labels(root / LABELS_FILE)
    if (root / CLASS_INFO_FILE).is_file():
        table["detailed_class"] = read_class_info(root / CLASS_INFO_FILE, table["patient_id"].tolist())
    present = _dicom_stems(root / TRAIN_IMAGES)
    absent = [p for p in table["patient_id"] if p not in present]
    if absent:
        raise ManifestError(
            str(root / LABELS_FILE),
            [
                f"{len(absent)} of {len(table)} patientId(s) have no DICOM "
                f"{TRAIN_IMAGES}/<patientId>.dcm: {_listing(absent)}"
            ],
        )
    table.insert(0, "image", [f"{TRAIN_IMAGES}/{p}{DICOM}" for p in table["patient_id"]])
    table["split"] = saved_splits(
        table, Path(out_dir) / SPLITS_FILE, labels="label", group="patient_id", key="image", seed=seed
    ).to_numpy()
    table["label"] = table["label"].map(lambda t: CLASSES[t])
    if include_test_images:
        stems = sorted(_dicom_stems(root / TEST_IMAGES))
        if not stems:
            raise DataError(f"{root / TEST_IMAGES}: no DICOM files, but include_test_images=True")
        test = pd.DataFrame(
            {
                "image": [f"{TEST_IMAGES}/{p}{DICOM}" for p in stems],
                "patient_id": stems,
                "split": "train",
                "n_boxes": 0,
                "bbox": "",
            }
        )
        table = pd.concat([table, test], ignore_index=True)
        table["label"] = table["label"].astype(object).where(table["label"].notna(), "")
    table["modality"] = "xray"
    table["window"] = format_window(window)
    logger.info(
        "%s: %d images (%d with opacity, %d boxes)",
        root,
        len(table),
        int((table["label"] == CLASSES[1]).sum()),
        int(table["n_boxes"].sum()),
    )
    return build_manifest(
        table, root, classes=CLASSES, source=str(root / LABELS_FILE), check_files=check_files
    )
