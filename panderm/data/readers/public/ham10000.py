"""HAM10000 (Tschandl et al., Sci Data 2018) as published on Harvard Dataverse (doi:10.7910/DVN/DBW86T).

Layout: ``HAM10000_metadata.csv`` (columns lesion_id, image_id, dx, dx_type, age, sex, localization) and the
images ``<image_id>.jpg``, which the release splits between ``HAM10000_images_part_1/`` and
``HAM10000_images_part_2/``; any subfolder of the dataset folder is searched (ids matched ignoring case).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.folders import ISIC2018_CLASSES
from panderm.data.readers.public.common import (
    attach_images,
    check_options,
    dataset_folder,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
)
from panderm.data.readers.public.splits import FRACTIONS, SPLITS_FILE, saved_splits

logger = logging.getLogger(__name__)

METADATA = ("HAM10000_metadata.csv", "HAM10000_metadata")  # Dataverse serves it with and without .csv
#: The 7 `dx` codes in the order of the ISIC 2018 Task 3 ground-truth columns (HAM10000 is its training set).
HAM10000_CLASSES = ISIC2018_CLASSES
#: Full names of the `dx` codes, as the paper gives them (kept per row as `dx_name`).
DX_NAMES = {
    "akiec": "actinic keratoses and intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def read_ham10000(
    path: Path,
    *,
    out_dir: Path,
    seed: int = 0,
    missing: str = "error",
    fractions: Sequence[float] = FRACTIONS,
    **options: Any,
) -> Manifest:
    """The HAM10000 manifest: one row per image, `label` = `dx` (classes `HAM10000_CLASSES`), `patient_id` =
    `lesion_id` (HAM10000 has no patient ids; a lesion's images stay together), modality dermoscopy.

    Metadata kept: lesion_id, image_id, dx, dx_name, dx_type, age (float, NA when empty), sex and
    localization as written (``unknown`` stays a value). There is no official split: a lesion-grouped split
    stratified by `dx` (`fractions` train/val/test, `seed`) is made once and saved as `out_dir/splits.csv`,
    then reused. Raises `DataError` when the folder or metadata file is missing, `ManifestError` listing the
    images the metadata names but the folder lacks (``missing="skip"`` drops them, logging how many) and
    any row with an unknown `dx`.
    """
    check_options(options, (), "ham10000")
    folder = dataset_folder(path, "HAM10000")
    source = metadata_file(folder, METADATA, "HAM10000")
    meta = read_metadata(source)
    require_columns(meta, COLUMNS, source)
    meta.insert(0, "label", meta["dx"].str.strip().str.lower())
    meta["dx_name"] = meta["label"].map(DX_NAMES)
    meta["age"] = pd.to_numeric(meta["age"], errors="coerce")
    meta["patient_id"] = meta["lesion_id"].fillna(meta["image_id"])  # no lesion id: the image stands alone
    meta["modality"] = "dermoscopy"
    rows = row_numbers(meta)
    table = attach_images(meta, meta["image_id"], folder, source=source, missing=missing, rows=rows)
    table.insert(
        1,
        "split",
        saved_splits(
            table, out_dir / SPLITS_FILE, labels="label", group="patient_id", fractions=fractions, seed=seed
        ),
    )
    return build_manifest(table, folder, classes=HAM10000_CLASSES, source=str(source))
