"""Folders of DICOM files and NIfTI volumes as manifests of 2-D pictures (files are read in place).

Each row names a file plus `slice` and `axis` (which 2-D picture of it) and `window` (how intensities become
grey levels), so a dataset loads it with ``load_image(path, slice_index=row.slice, axis=row.axis,
window=row.window)``. Only headers are read here; pixels are decoded when the dataset asks for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from panderm.data.images import DICOM_SUFFIXES, NIFTI_SUFFIXES
from panderm.data.manifest import Manifest, build_manifest
from panderm.data.radiology import Window, format_window, nifti_shape
from panderm.data.readers.folders import Labels, join_labels, relative_to_root
from panderm.errors import ConfigError, DataError, ImageLoadError, ManifestError

logger = logging.getLogger(__name__)

#: DICOM Modality tag values mapped to manifest modalities; other values are lower-cased.
DICOM_MODALITIES = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "MG": "mammography",
    "US": "ultrasound",
    "PT": "pet",
}

Slices = str | int


def choose_slices(count: int, slices: Slices) -> list[int]:
    """Indices among `count` slices: ``"middle"`` (count // 2), ``"all"``, or every `slices`-th from 0.

    Raises `ConfigError` for anything else.
    """
    if isinstance(slices, str):
        if slices == "middle":
            return [count // 2] if count > 0 else []
        if slices == "all":
            return list(range(count))
    elif isinstance(slices, int) and not isinstance(slices, bool) and slices >= 1:
        return list(range(0, count, slices))
    raise ConfigError(f"slices={slices!r}: expected 'middle', 'all' or a positive integer stride")


def _find(root: Path, suffixes: Sequence[str]) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    found = [p for p in root.rglob("*") if p.name.lower().endswith(suffixes) and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _image_id(path: Path, root: Path, suffixes: Sequence[str]) -> str:
    """Relative path without the file suffix (``patient1/IM0001``; the stem for a flat folder)."""
    relative = path.relative_to(root).as_posix()
    lower = relative.lower()
    suffix = next(s for s in sorted(suffixes, key=len, reverse=True) if lower.endswith(s))
    return relative[: -len(suffix)]


def _finish(
    table: pd.DataFrame,
    root: Path,
    *,
    labels: Labels,
    id_column: str,
    label_column: str | None,
    classes: Sequence[str] | int | None,
) -> Manifest:
    if table.empty:
        raise DataError(f"{root}: no image files found")
    if labels is not None:
        key = "patient_id" if id_column == "patient_id" else "image_id"
        table = join_labels(table, labels, key=key, id_column=id_column, label_column=label_column)
    elif label_column is not None:
        raise ConfigError("label_column names a column of `labels`, but no labels were given")
    return build_manifest(table, root, classes=classes, source=str(root))


def read_dicom_folder(
    root: str | os.PathLike[str],
    *,
    labels: Labels = None,
    id_column: str = "image_id",
    label_column: str | None = None,
    window: Window = "auto",
    split: str = "train",
    frames: Slices = "middle",
    classes: Sequence[str] | int | None = None,
) -> Manifest:
    """Manifest of every ``.dcm``/``.dicom`` file under `root` (searched recursively, sorted by path).

    One row per file (per chosen frame of a multi-frame file: `frames` is "middle", "all" or a stride), with
    `patient_id` from PatientID, `modality` from Modality (CT→ct, MR→mri, CR/DX→xray, ...), `image_id` (path
    without suffix), `slice` (frame index), `axis` 0 and `window` (written as "auto", a preset name or
    "center,width"). DICOM objects without pixel rows (reports, structure sets) are skipped. `labels` joins
    by `id_column` (``image_id``, or ``patient_id`` for one label row per patient). Raises `ManifestError`
    listing every unreadable file, `ConfigError` for a bad window or frames value.
    """
    import pydicom

    root = Path(root)
    window_text = format_window(window)
    tags = ["PatientID", "Modality", "NumberOfFrames", "Rows", "Columns"]
    rows, problems, skipped = [], [], 0
    for path in _find(root, DICOM_SUFFIXES):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ...; name the file
            problems.append(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})")
            continue
        if ds.get("Rows") is None or ds.get("Columns") is None:
            skipped += 1
            continue
        patient = str(ds.get("PatientID", "") or "").strip() or None
        tag = str(ds.get("Modality", "") or "").strip().upper()
        modality = DICOM_MODALITIES.get(tag, tag.lower()) if tag else None
        count = int(ds.get("NumberOfFrames", 1) or 1)
        for index in choose_slices(count, frames):
            rows.append(
                {
                    "image": relative_to_root(path, root),
                    "split": split,
                    "image_id": _image_id(path, root, DICOM_SUFFIXES),
                    "patient_id": patient,
                    "modality": modality,
                    "slice": index,
                    "axis": 0,
                    "window": window_text,
                }
            )
    if problems:
        raise ManifestError(str(root), problems)
    if skipped:
        logger.info("%s: skipped %d DICOM file(s) without image pixels", root, skipped)
    return _finish(
        pd.DataFrame(rows),
        root,
        labels=labels,
        id_column=id_column,
        label_column=label_column,
        classes=classes,
    )


def read_nifti_folder(
    root: str | os.PathLike[str],
    *,
    axis: int = 2,
    slices: Slices = "middle",
    labels: Labels = None,
    id_column: str = "image_id",
    label_column: str | None = None,
    split: str = "train",
    modality: str | None = "ct",
    window: Window = "auto",
    classes: Sequence[str] | int | None = None,
) -> Manifest:
    """Manifest of slices of every ``.nii``/``.nii.gz`` volume under `root` (recursive, sorted by path).

    `axis` counts in the LPS orientation `load_nifti` uses (2 axial, 1 coronal, 0 sagittal); `slices` picks
    "middle", "all" or every n-th slice. Rows carry `image_id` (path without suffix), `slice`, `axis`,
    `window` and `modality`. Only headers are read. `labels` joins by `id_column` (one row per volume or per
    patient). Raises `ManifestError` listing every unreadable or non-3-D file, `ConfigError` for bad options.
    """
    root = Path(root)
    if axis not in (0, 1, 2):
        raise ConfigError(f"axis={axis!r}: expected 0, 1 or 2")
    window_text = format_window(window)
    choose_slices(1, slices)  # validate before reading any file
    rows, problems = [], []
    for path in _find(root, NIFTI_SUFFIXES):
        try:
            count = nifti_shape(path)[axis]
        except ImageLoadError as exc:
            problems.append(str(exc))
            continue
        relative, image_id = relative_to_root(path, root), _image_id(path, root, NIFTI_SUFFIXES)
        for index in choose_slices(count, slices):
            rows.append(
                {
                    "image": relative,
                    "split": split,
                    "image_id": image_id,
                    "modality": modality,
                    "slice": index,
                    "axis": axis,
                    "window": window_text,
                }
            )
    if problems:
        raise ManifestError(str(root), problems)
    table = pd.DataFrame(rows)
    if modality is None and not table.empty:
        table = table.drop(columns="modality")
    return _finish(
        table, root, labels=labels, id_column=id_column, label_column=label_column, classes=classes
    )
