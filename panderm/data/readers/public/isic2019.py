"""ISIC 2019 (challenge.isic-archive.com/data/#2019) as published: training ground truth, metadata, images.

Layout: ``ISIC_2019_Training_GroundTruth.csv`` (image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK: one-hot
written as ``0.0``/``1.0``), ``ISIC_2019_Training_Metadata.csv`` (image, age_approx, anatom_site_general,
lesion_id, sex), images ``ISIC_2019_Training_Input/<image>.jpg`` (ids such as
``ISIC_0000017_downsampled`` name their files with the suffix); optionally ``ISIC_2019_Test_Metadata.csv``
and ``ISIC_2019_Test_Input/``. The files have CRLF line endings. Any subfolder is searched for images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.public.common import (
    attach_images,
    check_options,
    dataset_folder,
    flag,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
)
from panderm.data.readers.public.splits import FRACTIONS, SPLITS_FILE, saved_splits
from panderm.errors import ManifestError

GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
TEST_METADATA = "ISIC_2019_Test_Metadata.csv"
#: The 8 training classes in the ground truth's column order; `UNK` (0 in every training row) is appended
#: as a ninth class only when some row is labelled UNK.
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNKNOWN = "UNK"


def read_isic2019(
    path: Path,
    *,
    out_dir: Path,
    seed: int = 0,
    missing: str = "error",
    fractions: Sequence[float] = FRACTIONS,
    include_unlabeled_test: bool | str = False,
    **options: Any,
) -> Manifest:
    """The ISIC 2019 training manifest: `label` = the ground truth's one-hot column, metadata joined by image.

    The split is made (no official train/val split exists), grouped by `patient_id`, which is the metadata's
    `lesion_id` where given and the image id otherwise (2084 training images have no lesion id: each then
    stands alone), stratified by label, saved as `out_dir/splits.csv` and reused. `lesion_id` is kept as
    written (empty = NA). The official test images have no public labels: they are left out unless
    `include_unlabeled_test`, which adds the rows of ``ISIC_2019_Test_Metadata.csv`` unlabeled in split
    ``test``. Raises `DataError` for a missing folder or file, `ManifestError` for rows whose one-hot holds
    not exactly one 1, ground-truth rows without metadata, and images missing (``missing="skip"`` drops them).
    """
    check_options(options, (), "isic2019")
    folder = dataset_folder(path, "ISIC 2019")
    source = metadata_file(folder, (GROUND_TRUTH,), "ISIC 2019 ground-truth")
    truth = read_metadata(source)
    columns = [*ISIC2019_CLASSES, UNKNOWN]
    require_columns(truth, ["image", *columns], source)
    meta_path = metadata_file(folder, (METADATA,), "ISIC 2019 training")
    meta = read_metadata(meta_path)
    require_columns(meta, ["image", "lesion_id"], meta_path)
    onehot = truth[columns].apply(pd.to_numeric, errors="coerce").fillna(-1).to_numpy()
    problems = [
        f"row {i + 1}: fields {columns}: expected exactly one 1.0, got {truth.loc[i, columns].tolist()}"
        for i in np.flatnonzero(((onehot == 1).sum(axis=1) != 1) | ~np.isin(onehot, (0, 1)).all(axis=1))
    ]
    known = set(meta["image"])
    problems += [
        f"row {i + 1}: field 'image': {image!r} has no row in {meta_path.name}"
        for i, image in enumerate(truth["image"])
        if image not in known
    ]
    if problems:
        raise ManifestError(str(source), problems)
    table = truth[["image"]].rename(columns={"image": "image_id"})
    table["label"] = np.asarray(columns)[onehot.argmax(axis=1)]
    table = table.merge(meta.rename(columns={"image": "image_id"}), on="image_id", how="left", validate="1:1")
    table["age_approx"] = pd.to_numeric(table["age_approx"], errors="coerce")
    table["patient_id"] = table["lesion_id"].fillna(table["image_id"])
    table["modality"] = "dermoscopy"
    rows = row_numbers(table)
    table = attach_images(table, table["image_id"], folder, source=source, missing=missing, rows=rows)
    split = saved_splits(
        table, out_dir / SPLITS_FILE, labels="label", group="patient_id", fractions=fractions, seed=seed
    )
    table.insert(1, "split", split)
    if flag(include_unlabeled_test, "include_unlabeled_test"):
        table = pd.concat([table, _unlabeled_test(folder, missing)], ignore_index=True)
    classes = ISIC2019_CLASSES + ((UNKNOWN,) if (table["label"] == UNKNOWN).any() else ())
    return build_manifest(table, folder, classes=classes, source=str(source))


def _unlabeled_test(folder: Path, missing: str) -> pd.DataFrame:
    """The official test rows (``ISIC_2019_Test_Metadata.csv``): split test, no label, patient = image."""
    path = metadata_file(folder, (TEST_METADATA,), "ISIC 2019 test")
    test = read_metadata(path)
    require_columns(test, ["image"], path)
    test = test.rename(columns={"image": "image_id"})
    test["age_approx"] = pd.to_numeric(test["age_approx"], errors="coerce") if "age_approx" in test else pd.NA
    test["patient_id"] = test["image_id"]
    test["modality"] = "dermoscopy"
    test = attach_images(test, test["image_id"], folder, source=path, missing=missing)
    test.insert(1, "split", "test")
    return test
