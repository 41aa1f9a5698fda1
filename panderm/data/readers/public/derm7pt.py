"""Derm7pt, the seven-point checklist dataset (Kawahara et al., IEEE JBHI 2019), release_v0 (derm.cs.sfu.ca).

Layout: ``meta/meta.csv`` (one row per case: diagnosis, the 7-point criteria, clinical fields, the paths of
its clinical and dermoscopic images under ``images/`` in columns ``clinic`` and ``derm``, case_id, notes) and
``meta/{train,valid,test}_indexes.csv`` (column ``indexes``: 0-based row positions into meta.csv, not
``case_num``), the official split. The release spells folder and file names in mixed case (``NEL/Nel026.jpg``
for ``NEL/NEL026.JPG`` on disk, ``FCl/Fcl068.jpg`` for folder ``FCL``), so paths are matched ignoring case.
In 9 cases (see ``notes``) the clinical image was missing and ``clinic`` names the dermoscopic image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.public.common import (
    check_options,
    choice,
    dataset_folder,
    flag,
    metadata_file,
    missing_policy,
    read_metadata,
    require_columns,
)
from panderm.errors import ConfigError, DataError, ManifestError
from panderm.io import read_csv

logger = logging.getLogger(__name__)

# The 5 diagnosis classes of the paper (and of its loader's ArgenzianoDatasetGroupInfrequent): every
# melanoma subtype is MEL, every nevus NEV, and dermatofibroma, lentigo, melanosis, miscellaneous and
# vascular lesion are MISC.
DIAGNOSIS_CLASSES = ("BCC", "NEV", "MEL", "MISC", "SK")
DIAGNOSIS_GROUPS = {
    "basal cell carcinoma": "BCC",
    **dict.fromkeys(
        (
            "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
            "recurrent nevus", "reed or spitz nevus",
        ),
        "NEV",
    ),
    **dict.fromkeys(
        (
            "melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)", "melanoma metastasis",
        ),
        "MEL",
    ),
    **dict.fromkeys(("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"), "MISC"),
    "seborrheic keratosis": "SK",
}  # fmt: skip
# The 7-point criteria: the values meta.csv uses, and the paper's grouping of the rare ones (the classes of
# its criteria tasks): option grouped=true (default) labels with the grouped classes, grouped=false with
# the values as written.
CRITERIA: dict[str, dict[str, str]] = {
    "pigment_network": {"absent": "absent", "typical": "typical", "atypical": "atypical"},
    "streaks": {"absent": "absent", "regular": "regular", "irregular": "irregular"},
    "pigmentation": {
        "absent": "absent", "diffuse regular": "regular", "localized regular": "regular",
        "diffuse irregular": "irregular", "localized irregular": "irregular",
    },
    "regression_structures": {
        "absent": "absent", "blue areas": "present", "white areas": "present", "combinations": "present",
    },
    "dots_and_globules": {"absent": "absent", "regular": "regular", "irregular": "irregular"},
    "blue_whitish_veil": {"absent": "absent", "present": "present"},
    "vascular_structures": {
        "absent": "absent", "arborizing": "regular", "comma": "regular", "hairpin": "regular",
        "within regression": "regular", "wreath": "regular", "dotted": "irregular",
        "linear irregular": "irregular",
    },
}  # fmt: skip
IMAGE_TYPES = {"derm": ("derm",), "clinic": ("clinic",), "both": ("derm", "clinic")}
MODALITY = {"derm": "dermoscopy", "clinic": "clinical"}
INDEX_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
OPTIONS = ("image_type", "label", "grouped", "missing")


def criterion_classes(criterion: str, grouped: bool = True) -> tuple[str, ...]:
    """The classes of a 7-point criterion task, grouped as in the paper or as written in meta.csv."""
    values = CRITERIA[criterion].values() if grouped else CRITERIA[criterion]
    return tuple(dict.fromkeys(values))


def read_derm7pt(path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any) -> Manifest:
    """Manifest of Derm7pt from its folder (``meta/`` and ``images/``), in the official split of the index
    files (`out_dir` and `seed` are unused: nothing is drawn).

    Options: ``image_type`` = ``derm`` (default; modality dermoscopy), ``clinic`` (clinical; the 9 cases
    whose clinical image is the dermoscopic one keep modality dermoscopy) or ``both`` (a dermoscopic and a
    clinical row per case, sharing `lesion_id`; those 9 cases get the dermoscopic row only). ``label`` =
    ``diagnosis`` (default; `DIAGNOSIS_CLASSES`, the raw diagnosis kept in column `diagnosis`) or one of
    the 7-point `CRITERIA` (classes grouped as in the paper unless ``grouped=false``). Every meta.csv column
    is kept. ``missing=skip`` drops images that are not under ``images/`` (logged). Raises `DataError` for a
    missing folder, metadata or index file or bad indexes, `ManifestError` for unknown values or absent
    images (naming the case), `ConfigError` for bad options.
    """
    check_options(options, OPTIONS, "derm7pt")
    image_type = str(options.get("image_type", "derm"))
    choice(image_type, IMAGE_TYPES, "image_type", "derm7pt")
    label = str(options.get("label", "diagnosis"))
    if label != "diagnosis" and label not in CRITERIA:
        raise ConfigError(f"data.options.label={label!r}: expected diagnosis or one of {list(CRITERIA)}")
    grouped = flag(options.get("grouped", True), "grouped")
    missing = missing_policy(options.get("missing", "error"))
    folder = dataset_folder(path, "Derm7pt")
    source = metadata_file(folder, ["meta.csv"], "Derm7pt")
    assert source is not None
    images = folder / "images"
    if not images.is_dir():
        raise DataError(f"{folder}: Derm7pt folder has no images/ (the release's images/<group>/<file>)")
    cases = read_metadata(source)
    require_columns(cases, ("case_num", "diagnosis", "clinic", "derm", *CRITERIA), source)
    cases.insert(0, "row", np.arange(1, len(cases) + 1))
    cases["split"] = _official_split(source.parent, len(cases)).to_numpy()
    if cases["split"].isna().any():
        logger.warning(
            "%s: %d case(s) in no index file are left out", source, int(cases["split"].isna().sum())
        )
        cases = cases[cases["split"].notna()]
    classes, problems = _labels(cases, label, grouped)
    if problems:
        raise ManifestError(str(source), problems)
    cases["lesion_id"] = "case_" + cases["case_num"].astype(str)
    table = _image_rows(cases, image_type)
    table["image"], absent = _resolve(table, images, folder)
    if absent.any():
        if missing == "error":
            raise ManifestError(
                str(source),
                [
                    f"row {r}: field {f!r}: case {c}: no file images/{p} under {images} (matched ignoring "
                    "case); set data.options.missing=skip to drop such images"
                    for r, f, c, p in table.loc[absent, ["row", "field", "case_num", "path"]].itertuples(
                        index=False
                    )
                ],
            )
        logger.warning(
            "%s: %d image(s) absent from %s skipped (missing=skip)", source, int(absent.sum()), images
        )
        table = table[~absent]
    table = table.drop(columns=["row", "field", "path"])
    return build_manifest(table, folder, classes=classes, source=str(source))


def _official_split(meta: Path, n_cases: int) -> pd.Series:
    """The split of each meta.csv row from the three index files (0-based positions); NA where none names it.
    Raises `DataError` naming the file for a missing file, an index out of range or one in two files."""
    split = pd.Series(pd.NA, index=range(n_cases), dtype="object")
    for name, file in INDEX_FILES.items():
        path = meta / file
        if not path.is_file():
            raise DataError(f"{meta}: Derm7pt index file {file} not found (the official split needs it)")
        indexes = pd.to_numeric(
            read_csv(path, text=True).get("indexes", pd.Series(dtype=str)), errors="coerce"
        )
        if indexes.empty or indexes.isna().any() or not indexes.between(0, n_cases - 1).all():
            raise DataError(f"{path}: column 'indexes' must hold 0-based row positions 0..{n_cases - 1}")
        taken = split.iloc[indexes.astype(int)]
        if taken.notna().any():
            raise DataError(
                f"{path}: row position(s) {list(taken.index[taken.notna()])} are also in another file"
            )
        split.iloc[indexes.astype(int)] = name
    return split


def _labels(cases: pd.DataFrame, label: str, grouped: bool) -> tuple[tuple[str, ...], list[str]]:
    """Set `cases["label"]` for the task; returns its classes and a problem per unknown value."""
    if label == "diagnosis":
        column, mapping, classes = "diagnosis", DIAGNOSIS_GROUPS, DIAGNOSIS_CLASSES
    else:
        column, classes = label, criterion_classes(label, grouped)
        mapping = CRITERIA[label] if grouped else {v: v for v in CRITERIA[label]}
    values = cases[column].str.strip()
    cases["label"] = values.map(mapping)
    unknown = cases["label"].isna() & values.notna()
    problems = [
        f"row {r}: field {column!r}: {v!r} is not a known value ({sorted(mapping)})"
        for r, v in zip(cases.loc[unknown, "row"], values[unknown], strict=True)
    ]
    return classes, problems


def _image_rows(cases: pd.DataFrame, image_type: str) -> pd.DataFrame:
    """One row per image: `field` (clinic/derm), `path` (as meta.csv writes it), `modality`."""
    same = cases["clinic"].str.lower() == cases["derm"].str.lower()
    parts = []
    for field in IMAGE_TYPES[image_type]:
        part = cases.copy()
        if field == "clinic" and image_type == "both":
            part = part[~same]  # the dermoscopic row already carries that file
        part["field"], part["path"] = field, part[field]
        part["modality"] = MODALITY[field]
        if field == "clinic":
            part.loc[same.loc[part.index], "modality"] = "dermoscopy"
        parts.append(part)
    if same.any():
        logger.info(
            "derm7pt: %d case(s) have the dermoscopic image as clinical image (see notes)", int(same.sum())
        )
    return pd.concat(parts).sort_values(["row", "field"], ascending=[True, False], kind="stable")


def _resolve(table: pd.DataFrame, images: Path, folder: Path) -> tuple[pd.Series, pd.Series]:
    """Image paths relative to `folder` for `table["path"]`, matched ignoring case, and the absent mask.

    Written here because no library matches relative paths case-insensitively on a case-sensitive file
    system: one walk of `images` indexes every file by its lower-case relative path (an exact match wins).
    """
    by_lower: dict[str, list[str]] = {}
    for directory, _, files in os.walk(images):
        for name in files:
            relative = Path(directory, name).relative_to(images).as_posix()
            by_lower.setdefault(relative.lower(), []).append(relative)
    resolved = []
    for written in table["path"].astype(str).str.strip():
        candidates = by_lower.get(written.lower(), [])
        match = written if written in candidates else (sorted(candidates)[0] if candidates else None)
        resolved.append(None if match is None else (Path("images") / match).as_posix())
    series = pd.Series(resolved, index=table.index, dtype="object")
    return series, series.isna()
