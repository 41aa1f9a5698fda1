"""CheXpert (Irvin et al., AAAI 2019), v1.0 or v1.0-small, in its published layout: a multi-label manifest.

Layout: ``train.csv`` and ``valid.csv`` with columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14
observations (`OBSERVATIONS`, published order), each 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or
blank (not mentioned). ``Path`` reads ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``; it
is resolved relative to the folder holding the CSVs, with or without that first ``CheXpert-v1.0*`` folder
(kept when such a folder sits beside the CSVs, dropped otherwise: the usual unpacking puts the CSVs inside
it, next to ``train/`` and ``valid/``).

Classes: option ``labels=all`` (default) keeps the 14 observations as published, "No Finding" included (it
is a column with its own labels, as in the CheXpert paper's 14 observations; leave it out of a macro mean
with ``labels=competition`` or by reading per-label AUROCs); ``labels=competition`` keeps the 5 competition
tasks (`COMPETITION`: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion). Uncertain labels
(option ``uncertain``): ``ignore`` (default: the label goes to `uncertain_set`, left out of loss and metrics
for that image), ``ones`` (U-Ones: positive) or ``zeros`` (U-Zeros: negative). Blank = negative.
Option ``frontal_only`` (default true) keeps frontal views only. `patient_id` is the ``patientNNNNN`` of the
path; the official valid.csv is the test split; val is carved from train by patient (``val_fraction``,
default 0.1, seeded) and saved to ``out_dir/splits.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.public.chestxray14 import VAL_FRACTION, carve_val
from panderm.data.readers.public.common import (
    check_options,
    choice,
    dataset_folder,
    flag,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
)
from panderm.data.readers.public.splits import SPLITS_FILE
from panderm.errors import DataError, ManifestError

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
LABEL_SETS = {"all": OBSERVATIONS, "competition": COMPETITION}
OPTIONS = ("uncertain", "frontal_only", "labels", "val_fraction", "check_files")
METADATA = {"Sex": "sex", "Age": "age", "Frontal/Lateral": "view", "AP/PA": "ap_pa"}
VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1}


def _values(table: pd.DataFrame, column: str, rows: pd.Series, problems: list[str]) -> np.ndarray:
    """An observation column as 1 / 0 / -1 (blank = 0), each other cell a problem naming its row."""
    cells = table[column].fillna("0").str.strip()
    coded = cells.map(VALUES)
    for i in table.index[coded.isna()]:
        problems.append(
            f"row {rows[i]}: field {column!r}: {table.at[i, column]!r} is not 1.0, 0.0, -1.0 or blank"
        )
    return coded.fillna(0).to_numpy(dtype=np.int64)


def _read(csv: Path, classes: tuple[str, ...], policy: str) -> pd.DataFrame:
    table = read_metadata(csv)
    require_columns(table, ("Path", "Frontal/Lateral", *classes), csv)
    rows = row_numbers(table)
    problems: list[str] = []
    codes = {name: _values(table, name, rows, problems) for name in classes}
    if problems:
        raise ManifestError(str(csv), problems)
    names = np.asarray(classes, dtype=object)
    matrix = np.stack([codes[name] for name in classes], axis=1)  # (N, C) of 1 / 0 / -1
    positive = (matrix == 1) | ((matrix == -1) & (policy == "ones"))
    uncertain = (matrix == -1) & (policy == "ignore")
    out = table.drop(columns=[c for c in OBSERVATIONS if c in table]).rename(columns=METADATA)
    out["label_set"] = ["|".join(names[row]) for row in positive]
    out["uncertain_set"] = ["|".join(names[row]) for row in uncertain]
    out["row"] = rows.to_numpy()
    patient = out["Path"].str.extract(r"(patient\d+)", expand=False)
    if patient.isna().any():
        first = int(rows[patient.isna()].iloc[0])
        raise ManifestError(str(csv), [f"row {first}: field 'Path': no patientNNNNN folder in the path"])
    out["patient_id"] = patient
    return out


def read_chexpert(path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any) -> Manifest:
    """Manifest of CheXpert from the folder holding ``train.csv`` and ``valid.csv`` (or a folder above it).

    Options (see the module docstring): ``uncertain`` (ignore | ones | zeros), ``frontal_only`` (default
    true), ``labels`` (all | competition), ``val_fraction`` (default 0.1), ``check_files`` (default false:
    image paths are taken as written; true checks that every image exists and opens). Columns: `image`,
    `split`, `label_set`, `uncertain_set`, `patient_id`, `sex`, `age`, `view`, `ap_pa`, `source_row` (row in
    its CSV), modality ``xray``. Raises `DataError` for a missing folder/file/column, `ManifestError` naming
    the row for a bad cell, `ConfigError` for bad options.
    """
    check_options(options, OPTIONS, "chexpert")
    policy = str(options.get("uncertain", "ignore")).strip().lower()
    choice(policy, UNCERTAIN_POLICIES, "uncertain", "chexpert")
    labels = str(options.get("labels", "all")).strip().lower()
    choice(labels, LABEL_SETS, "labels", "chexpert")
    classes = LABEL_SETS[labels]
    folder = dataset_folder(path, "CheXpert")
    train_csv = metadata_file(folder, ["train.csv"], "CheXpert")
    assert train_csv is not None
    valid_csv = train_csv.parent / "valid.csv"
    if not valid_csv.is_file():
        raise DataError(f"{train_csv.parent}: no CheXpert valid.csv beside train.csv")
    root = train_csv.parent
    parts = {"train": _read(train_csv, classes, policy), "test": _read(valid_csv, classes, policy)}
    for split, part in parts.items():
        part["split"] = split
        part["csv"] = (train_csv if split == "train" else valid_csv).name
    table = pd.concat(parts.values(), ignore_index=True)
    if flag(options.get("frontal_only", True), "frontal_only"):
        table = table[table["view"].str.strip().str.lower() == "frontal"].reset_index(drop=True)
    # Path is written from above the release folder; keep that folder only when it sits beside the CSVs
    prefix = table["Path"].str.split("/", n=1).str[0]
    keep = prefix.map(lambda p: (root / p).is_dir() and p.lower() not in ("train", "valid"))
    table["image"] = np.where(keep, table["Path"], table["Path"].str.split("/", n=1).str[-1])
    table = table.drop(columns="Path").rename(columns={"row": "source_row"})
    table["modality"] = "xray"
    train = table["split"] == "train"
    table.loc[train, "split"] = carve_val(
        table[train].assign(any_finding=lambda t: t["label_set"] != ""),
        Path(out_dir) / SPLITS_FILE,
        group="patient_id",
        stratum="any_finding",
        key="image",
        fraction=float(options.get("val_fraction", VAL_FRACTION)),
        seed=seed,
    ).to_numpy()
    check = flag(options.get("check_files", False), "check_files")
    return build_manifest(table, root, classes=classes, source=str(train_csv), check_files=check)
