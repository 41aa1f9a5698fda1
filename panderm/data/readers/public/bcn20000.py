"""BCN20000 (Combalia et al. 2019; Hernández-Pérez et al., Sci Data 2024) as published with a metadata CSV.

No copy of the metadata file was at hand when this reader was written: its layout follows the dataset's
published description, and the names it is not sure of are accepted in their documented alternatives.
Metadata: a CSV in the folder (or below) named ``bcn_*.csv`` / ``bcn20000_metadata*.csv`` /
``*metadata*.csv``, with an image column (`bcn_filename`, or `isic_id` / `image` in ISIC-archive exports,
with or without ``.jpg``), `diagnosis` (codes such as ``NV`` or names such as ``nevus``, any case), and
optionally `lesion_id`, `age_approx`, `anatom_site_general`, `capture_date`, `sex` and `split` (train/test
in the official release). Images ``<id>.jpg`` anywhere under the folder.
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
    dataset_folder,
    first_column,
    flag,
    read_metadata,
    row_numbers,
)
from panderm.data.readers.public.splits import FRACTIONS, SPLITS_FILE, saved_splits
from panderm.errors import DataError

logger = logging.getLogger(__name__)

ID_COLUMNS = ("bcn_filename", "isic_id", "image")
DIAGNOSIS_COLUMNS = ("diagnosis", "dx")
#: The 8 diagnostic classes BCN20000 shares with ISIC 2019 (its training part), in ISIC 2019's order.
BCN20000_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
#: Diagnosis spellings (lower case) -> class: the codes themselves and the names ISIC-archive exports use.
DIAGNOSIS_NAMES = {
    "melanoma": "MEL",
    "nevus": "NV",
    "melanocytic nevus": "NV",
    "basal cell carcinoma": "BCC",
    "actinic keratosis": "AK",
    "seborrheic keratosis": "BKL",
    "solar lentigo": "BKL",
    "lichenoid keratosis": "BKL",
    "benign keratosis": "BKL",
    "dermatofibroma": "DF",
    "vascular lesion": "VASC",
    "squamous cell carcinoma": "SCC",
    **{code.lower(): code for code in BCN20000_CLASSES},
}


def _metadata(folder: Path) -> Path:
    """The metadata CSV: the first by name preference (bcn_*, bcn20000_metadata*, *metadata*) and path."""
    csvs = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".csv" and p.is_file())
    for test in (
        lambda n: n.startswith("bcn20000_metadata"),
        lambda n: n.startswith("bcn_") and "test" not in n,
        lambda n: "metadata" in n,
    ):
        chosen = [p for p in csvs if test(p.name.lower())]
        if chosen:
            return chosen[0]
    raise DataError(
        f"{folder}: no BCN20000 metadata CSV (bcn20000_metadata*.csv, bcn_*.csv or *metadata*.csv) in this "
        f"folder or below; CSVs found: {[p.name for p in csvs] or 'none'}"
    )


def read_bcn20000(
    path: Path,
    *,
    out_dir: Path,
    seed: int = 0,
    missing: str = "error",
    fractions: Sequence[float] = FRACTIONS,
    include_unlabeled: bool | str = False,
    **options: Any,
) -> Manifest:
    """The BCN20000 manifest: `label` = `diagnosis` mapped to `BCN20000_CLASSES` (codes or names, any case;
    the raw value is kept as `diagnosis`), `patient_id` = `lesion_id` (the image where empty: BCN20000
    publishes no patient ids), modality dermoscopy.

    The official `split` column is used when it gives labelled rows in both train and test; otherwise a
    lesion-grouped split stratified by label is made over the labelled rows, saved as `out_dir/splits.csv`
    and reused. Rows without a diagnosis are dropped (count logged) unless `include_unlabeled`, which keeps
    them unlabeled in their official split (``test`` without one). Raises `DataError` for a missing folder,
    file or column, `ManifestError` for unknown diagnoses and missing images (``missing="skip"`` drops them).
    """
    check_options(options, (), "bcn20000")
    keep_unlabelled = flag(include_unlabeled, "include_unlabeled")
    folder = dataset_folder(path, "BCN20000")
    source = _metadata(folder)
    table = read_metadata(source)
    id_column = first_column(table, ID_COLUMNS, source, "image id")
    diagnosis = first_column(table, DIAGNOSIS_COLUMNS, source, "diagnosis")
    text = table[diagnosis].str.strip()
    table.insert(0, "label", text.str.lower().map(DIAGNOSIS_NAMES).fillna(text))
    if "age_approx" in table:
        table["age_approx"] = pd.to_numeric(table["age_approx"], errors="coerce")
    lesions = table["lesion_id"] if "lesion_id" in table else pd.Series(pd.NA, index=table.index)
    table["patient_id"] = lesions.fillna(table[id_column])
    table["modality"] = "dermoscopy"
    official = table.pop("split").str.strip().str.lower() if "split" in table else None
    if official is not None:
        table["official_split"] = official
    rows = row_numbers(table)
    table = attach_images(
        table, table[id_column], folder, source=source, missing=missing, rows=rows, id_field=id_column
    )
    labelled = table["label"].notna()
    unlabelled = table.loc[~labelled]
    table = table.loc[labelled]
    if official is not None and {"train", "test"} <= set(table["official_split"]):
        split = table["official_split"]
    else:
        split = saved_splits(
            table, out_dir / SPLITS_FILE, labels="label", group="patient_id", fractions=fractions, seed=seed
        )
    table.insert(1, "split", split)
    if len(unlabelled) and keep_unlabelled:
        unlabelled = unlabelled.copy()
        given = (
            unlabelled["official_split"] if official is not None else pd.Series(pd.NA, index=unlabelled.index)
        )
        unlabelled.insert(1, "split", given.fillna("test"))
        table = pd.concat([table, unlabelled], ignore_index=True)
    elif len(unlabelled):
        logger.info(
            "%s: %d row(s) without a diagnosis dropped (include_unlabeled=false)", source, len(unlabelled)
        )
    return build_manifest(table, folder, classes=BCN20000_CLASSES, source=str(source))
