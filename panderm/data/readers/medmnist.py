"""MedMNIST ``.npz`` files as a manifest: the arrays are exported once as PNG files, then reused.

A MedMNIST file holds ``{train,val,test}_images`` ((N, H, W) grayscale or (N, H, W, 3) RGB uint8, any size:
28/64/128/224) and ``{split}_labels`` ((N,) or (N, 1); (N, C) of 0/1 for a multi-label set such as
ChestMNIST, whose rows become a `label_set` of the positive names). Every image becomes
``out_dir/images/<split>_<index:05d>.png`` and ``out_dir/manifest.csv`` lists them; a stamp file records
which npz (size, mtime, hash of its first MB) and which parameters produced the export, so a second call
with the same input reads the manifest instead of writing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from panderm.data.manifest import SPLITS, Manifest, build_manifest, read_manifest
from panderm.errors import DataError, ManifestError
from panderm.io import atomic_write_json, stamp_matches

logger = logging.getLogger(__name__)

STAMP_NAME = "export_stamp.json"
MANIFEST_NAME = "manifest.csv"
IMAGES_DIR = "images"
EXPORT_VERSION = 1  # bump when the export format changes, so old exports are redone
_HASHED_BYTES = 1 << 20
_EXPORTED = re.compile(r"^(train|val|test)_\d{5,}\.png$")


@dataclass(frozen=True)
class MedMNISTSet:
    """What the file name tells about a MedMNIST set: class names (MedMNIST order) and modality."""

    classes: tuple[str, ...] | None
    modality: str | None


#: Every MedMNIST v2 2-D set by file-name prefix (``<set>.npz`` = 28 px, ``<set>_64/_128/_224.npz``), with
#: class names in the order of the medmnist package's INFO table and the imaging modality.
KNOWN_SETS: dict[str, MedMNISTSet] = {
    "pathmnist": MedMNISTSet(
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth_muscle",
            "normal_colon_mucosa",
            "cancer_associated_stroma",
            "colorectal_adenocarcinoma_epithelium",
        ),
        "pathology",
    ),
    "chestmnist": MedMNISTSet(  # multi-label: one column per finding, in this order
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        "xray",
    ),
    "dermamnist": MedMNISTSet(("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), "dermoscopy"),
    "octmnist": MedMNISTSet(("cnv", "dme", "drusen", "normal"), "oct"),
    "pneumoniamnist": MedMNISTSet(("normal", "pneumonia"), "xray"),
    # ordinal diabetic-retinopathy grades 0-4 (MedMNIST names them "0".."4"); named so that a split
    # without grade 4 still has five classes
    "retinamnist": MedMNISTSet(tuple(f"grade_{g}" for g in range(5)), "fundus"),
    "breastmnist": MedMNISTSet(("malignant", "normal_benign"), "ultrasound"),
    "bloodmnist": MedMNISTSet(
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature_granulocytes",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        "microscopy",
    ),
    "tissuemnist": MedMNISTSet(
        (
            "collecting_duct_connecting_tubule",
            "distal_convoluted_tubule",
            "glomerular_endothelial_cells",
            "interstitial_endothelial_cells",
            "leukocytes",
            "podocytes",
            "proximal_tubule_segments",
            "thick_ascending_limb",
        ),
        "microscopy",
    ),
    **{
        name: MedMNISTSet(
            (
                "bladder",
                "femur_left",
                "femur_right",
                "heart",
                "kidney_left",
                "kidney_right",
                "liver",
                "lung_left",
                "lung_right",
                "pancreas",
                "spleen",
            ),
            "ct",
        )
        for name in ("organamnist", "organcmnist", "organsmnist")
    },
}


def known_set(file_name: str) -> MedMNISTSet:
    """The known set whose name starts `file_name` (case-insensitive), else no classes and no modality."""
    name = file_name.lower()
    for prefix in sorted(KNOWN_SETS, key=len, reverse=True):
        if name.startswith(prefix):
            return KNOWN_SETS[prefix]
    return MedMNISTSet(None, None)


def read_medmnist(
    npz_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | int | None = None,
) -> Manifest:
    """Manifest of a MedMNIST ``.npz``, exporting its images as PNG into `out_dir` (once).

    Columns: `image` (``images/<split>_<index:05d>.png``, relative to `out_dir`), `split`, `label`, `index`
    (position in the npz split) and `modality` for known sets. `classes` defaults to the known names of the
    set (by file-name prefix, see `KNOWN_SETS`), else integer classes 0..max. A second call with the same npz
    (size, mtime, first-MB hash) and parameters reuses the export. Raises `DataError` naming the file when it
    cannot be read, keys are missing (listing those found) or arrays have unexpected shapes; `ManifestError`
    when labels fall outside `classes`. Multi-label sets ((N, C) labels of 0/1, e.g. ChestMNIST) get a
    `label_set` column (the positive names joined by ``|``) instead of `label`; `classes` are then the C
    names (the known set's, else "0".."C-1").
    """
    npz_path, out_dir = Path(npz_path), Path(out_dir)
    if not npz_path.is_file():
        raise DataError(f"{npz_path}: file not found")
    info = known_set(npz_path.name)
    requested = classes if classes is not None else info.classes
    stamp = _stamp(npz_path, requested)
    reused = _reuse(out_dir, stamp)
    if reused is not None:
        return reused

    splits = _load_arrays(npz_path)
    multilabel = any(labels.ndim == 2 for _, labels in splits.values())
    if multilabel and requested is None:
        width = next(labels.shape[1] for _, labels in splits.values())
        requested = [str(i) for i in range(width)]
    elif requested is None:
        top = max((int(labels.max()) for _, labels in splits.values() if len(labels)), default=-1)
        requested = top + 1
    (out_dir / STAMP_NAME).unlink(missing_ok=True)  # an interrupted export must not look complete
    table = _export(splits, out_dir, list(requested) if multilabel else None)
    if info.modality is not None:
        table["modality"] = info.modality
    manifest = build_manifest(table, out_dir, classes=requested, source=str(npz_path), check_files=False)
    manifest.save(out_dir / MANIFEST_NAME)
    atomic_write_json(out_dir / STAMP_NAME, {**stamp, "classes": list(manifest.classes or ())})
    logger.info("%s: exported %d images to %s", npz_path, len(manifest), out_dir)
    return manifest


def _stamp(npz_path: Path, classes: Sequence[str] | int | None) -> dict[str, Any]:
    stat = npz_path.stat()
    with npz_path.open("rb") as handle:
        head = hashlib.sha256(handle.read(_HASHED_BYTES)).hexdigest()
    return {
        "npz": os.path.abspath(npz_path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_first_mb": head,
        "params": {"classes": classes if classes is None or isinstance(classes, int) else list(classes)},
        "version": EXPORT_VERSION,
    }


def _reuse(out_dir: Path, stamp: dict[str, Any]) -> Manifest | None:
    """The earlier export when its stamp matches and its manifest still validates, else None."""
    stamp_path, manifest_path = out_dir / STAMP_NAME, out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    if not stamp_matches(stamp_path, stamp):
        logger.info("%s: no export stamp matching %s; exporting", out_dir, stamp["npz"])
        return None
    try:
        saved = json.loads(stamp_path.read_text(encoding="utf-8"))
        return read_manifest(manifest_path, out_dir, classes=saved.get("classes"))
    except (ManifestError, DataError) as exc:
        logger.warning("%s: earlier export is damaged (%s); exporting again", out_dir, exc)
        return None


def _load_arrays(npz_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images (N,H,W[,3]) uint8, labels (N,) int64)}; raises `DataError` naming file and keys."""
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            keys = sorted(data.files)
            present = [s for s in SPLITS if f"{s}_images" in data.files or f"{s}_labels" in data.files]
            missing = [
                f"{s}_{kind}"
                for s in present
                for kind in ("images", "labels")
                if f"{s}_{kind}" not in data.files
            ]
            if not present or missing:
                wanted = missing or [f"{s}_images/{s}_labels" for s in SPLITS]
                raise DataError(f"{npz_path}: missing MedMNIST key(s) {wanted}; keys found: {keys}")
            arrays = {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in present}
    except DataError:
        raise
    except Exception as exc:  # zipfile/numpy raise many types for a damaged file; name it
        raise DataError(f"{npz_path}: cannot be read as an .npz file ({type(exc).__name__}: {exc})") from exc
    return {s: _check_split(npz_path, s, images, labels) for s, (images, labels) in arrays.items()}


def _check_split(
    npz_path: Path, split: str, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(
            f"{npz_path}: {split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 3)"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{npz_path}: {split}_images has dtype {images.dtype}; expected uint8")
    if labels.ndim == 2 and labels.shape[1] > 1:  # multi-label: one 0/1 column per finding (ChestMNIST)
        if len(labels) != len(images):
            raise DataError(f"{npz_path}: {split} has {len(images)} images but {len(labels)} label rows")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{npz_path}: {split}_labels has shape {labels.shape} but values other than 0/1")
        return images, labels.astype(np.int64)
    if labels.ndim > 2:
        raise DataError(f"{npz_path}: {split}_labels has shape {labels.shape}; expected (N,) or (N, 1)")
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{npz_path}: {split} has {len(images)} images but {len(labels)} labels")
    if len(labels) and (
        not np.issubdtype(labels.dtype, np.number)
        or not np.all(np.equal(np.mod(labels, 1), 0))
        or labels.min() < 0
    ):
        raise DataError(f"{npz_path}: {split}_labels must be non-negative integers")
    return images, labels.astype(np.int64)


def _export(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: Path, names: list[str] | None = None
) -> pd.DataFrame:
    """Write every image as PNG (Pillow, low compression: speed over size) and return the manifest rows;
    with `names` (multi-label) the (N, C) labels become `label_set` cells of those names."""
    folder = out_dir / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[Any]] = {"image": [], "split": [], "label": [], "index": []}
    written = set()
    for split, (images, labels) in splits.items():
        for index in range(len(images)):
            name = f"{split}_{index:05d}.png"
            Image.fromarray(images[index]).save(folder / name, compress_level=1)
            written.add(name)
        rows["image"] += [f"{IMAGES_DIR}/{split}_{i:05d}.png" for i in range(len(images))]
        rows["split"] += [split] * len(images)
        if names is None:
            rows["label"] += labels.tolist()
        else:
            rows["label"] += ["|".join(n for n, v in zip(names, row, strict=True) if v) for row in labels]
        rows["index"] += list(range(len(images)))
    # images of an earlier, larger export of another npz would otherwise linger beside the new ones
    for entry in os.scandir(folder):
        if _EXPORTED.match(entry.name) and entry.name not in written:
            os.unlink(entry.path)
    table = pd.DataFrame(rows)
    return table if names is None else table.rename(columns={"label": "label_set"})
