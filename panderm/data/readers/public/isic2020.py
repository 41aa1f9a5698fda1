"""ISIC 2020 / SIIM-ISIC Melanoma (doi:10.34970/2020-ds01) as published: ground truth and JPEG images.

Layout: ``ISIC_2020_Training_GroundTruth.csv`` (or ``ISIC_2020_Training_GroundTruth_v2.csv``, or Kaggle's
``train.csv``, same columns: image_name, patient_id, sex, age_approx, anatom_site_general_challenge,
diagnosis, benign_malignant, target) and images ``train/<image_name>.jpg`` (the official
``ISIC_2020_Training_JPEG/train/`` or Kaggle's ``jpeg/train/``: any subfolder is searched; DICOM and
TFRecord copies are ignored). The full ground-truth file ends without a newline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.public.common import (
    attach_images,
    check_options,
    choice,
    dataset_folder,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
)
from panderm.data.readers.public.splits import FRACTIONS, SPLITS_FILE, saved_splits

logger = logging.getLogger(__name__)

GROUND_TRUTH = (
    "ISIC_2020_Training_GroundTruth.csv",
    "ISIC_2020_Training_GroundTruth_v2.csv",
    "train.csv",
)
COLUMNS = ("image_name", "patient_id", "diagnosis", "benign_malignant", "target")
#: label=benign_malignant (the default): the challenge's binary target.
BINARY_CLASSES = ("benign", "malignant")
#: label=diagnosis: the diagnoses the release names, most frequent first; `unknown` (most benign images) is
#: not a diagnosis, so its rows are dropped (their count is logged). Values match ignoring case.
DIAGNOSIS_CLASSES = (
    "nevus",
    "melanoma",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
)
LABELS = ("benign_malignant", "diagnosis")


def read_isic2020(
    path: Path,
    *,
    out_dir: Path,
    seed: int = 0,
    label: str = "benign_malignant",
    missing: str = "error",
    fractions: Sequence[float] = FRACTIONS,
    **options: Any,
) -> Manifest:
    """The ISIC 2020 training manifest; `patient_id` is the dataset's (an empty one: the image alone).

    `label` = ``benign_malignant`` (classes `BINARY_CLASSES`) or ``diagnosis`` (classes
    `DIAGNOSIS_CLASSES`, spelled as there; rows diagnosed ``unknown`` are dropped). The split is made over
    every image, grouped by patient and stratified by `target`, before any row is dropped, so both labels see
    the same patients in the same split; it is saved as `out_dir/splits.csv` and reused. Metadata columns
    are kept (age_approx as float). Raises `DataError` for a missing folder or file, `ConfigError` for an
    unknown `label`, `ManifestError` for images missing (``missing="skip"`` drops them) or unknown labels.
    """
    check_options(options, (), "isic2020")
    choice(label, LABELS, "label", "isic2020")
    folder = dataset_folder(path, "ISIC 2020")
    source = metadata_file(folder, GROUND_TRUTH, "ISIC 2020 ground-truth")
    table = read_metadata(source)
    require_columns(table, COLUMNS, source)
    if "age_approx" in table:
        table["age_approx"] = pd.to_numeric(table["age_approx"], errors="coerce")
    table["patient_id"] = table["patient_id"].fillna(table["image_name"])
    table["modality"] = "dermoscopy"
    rows = row_numbers(table)
    table = attach_images(
        table, table["image_name"], folder, source=source, missing=missing, rows=rows, id_field="image_name"
    )
    split = saved_splits(
        table, out_dir / SPLITS_FILE, labels="target", group="patient_id", fractions=fractions, seed=seed
    )
    table.insert(1, "split", split)
    if label == "benign_malignant":
        table.insert(2, "label", table["benign_malignant"].str.strip().str.lower())
        classes = BINARY_CLASSES
    else:
        canonical = {name.lower(): name for name in DIAGNOSIS_CLASSES}
        text = table["diagnosis"].str.strip()
        unknown = text.str.lower().eq("unknown")
        logger.info(
            "%s: %d image(s) diagnosed 'unknown' dropped (label=diagnosis)", source, int(unknown.sum())
        )
        table = table.loc[~unknown]
        text = text[~unknown]
        table.insert(2, "label", text.str.lower().map(canonical).fillna(text))
        classes = DIAGNOSIS_CLASSES
    return build_manifest(table, folder, classes=classes, source=str(source))
