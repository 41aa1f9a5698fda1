"""Reading image and mask files of every supported format into numpy arrays, with errors naming the file.

Photographs (JPEG/PNG/BMP/TIFF/WebP) go through Pillow; DICOM and NIfTI through `panderm.data.radiology`
(pydicom / MONAI), windowed and sliced to 2-D.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from panderm.errors import ImageLoadError

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def image_kind(path: Path) -> str:
    """ "dicom", "nifti" or "pil" (everything Pillow opens), by file name."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return "pil"


def probe_image(path: str | os.PathLike[str], *, deep: bool = False) -> str | None:
    """Return why `path` cannot be used as an image (missing, empty, not an image), or None if it can.

    The default check reads only the header, which is cheap; `deep=True` decodes the whole file, which also
    catches truncated JPEG/PNG data.
    """
    path = Path(path)
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "file is empty"
    if image_kind(path) != "pil":
        if deep:
            try:
                load_image(path)
            except ImageLoadError as exc:
                return exc.reason
        return None
    try:
        with Image.open(path) as img:
            if deep:
                img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image ({exc})"
    return None


def load_image(path: str | os.PathLike[str], *, mode: str = "RGB", **options: Any) -> np.ndarray:
    """Load an image as uint8: (H, W, 3) for mode "RGB", (H, W) for mode "L".

    `options` go to the radiology loaders (`slice_index`, `axis`, `window`) for DICOM/NIfTI files.
    Raises `ImageLoadError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "file not found")
    kind = image_kind(path)
    if kind == "pil":
        return decode_image(path.read_bytes(), path, mode=mode)
    from panderm.data import radiology

    gray = radiology.load_dicom(path, **options) if kind == "dicom" else radiology.load_nifti(path, **options)
    return np.repeat(gray[..., None], 3, axis=2) if mode == "RGB" else gray


def decode_image(data: bytes, name: str | os.PathLike[str], *, mode: str = "RGB") -> np.ndarray:
    """Decode encoded image bytes (anything Pillow reads) to uint8; `name` is used in the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(name, f"corrupt or unreadable image ({exc})") from exc


def load_mask(
    path: str | os.PathLike[str], shape: tuple[int, int] | None = None, *, threshold: int | None = None
) -> np.ndarray:
    """Load a binary mask as uint8 {0, 1} (H, W).

    By default the file must already be binary: at most two distinct grey values, one of them 0 (e.g.
    {0, 255} or {0, 1}; an empty or a full mask has one value), and the non-zero value is foreground. A
    mask with more values (JPEG artefacts, anti-aliased edges, a multi-class label map) is an error rather
    than being guessed at; `threshold` (0-255) binarises such a mask on purpose: foreground = value >
    threshold, with no check. `shape` (H, W), when given, must match the mask (masks are never silently
    resized). Raises `ImageLoadError` naming the file when the mask is not binary, differs in size, or
    cannot be read.
    """
    mask = load_image(path, mode="L")
    if shape is not None and mask.shape != tuple(shape):
        raise ImageLoadError(
            path, f"mask size {mask.shape[::-1]} (W, H) differs from image size {shape[::-1]}"
        )
    return binarise_mask(mask, path, threshold=threshold)


def binarise_mask(
    mask: np.ndarray, name: str | os.PathLike[str], *, threshold: int | None = None
) -> np.ndarray:
    """The {0, 1} uint8 form of a decoded 8-bit mask under `load_mask`'s policy (binary or an explicit
    `threshold`); `name` (the file) is used in the error message. Raises `ImageLoadError` when not binary."""
    if threshold is not None:
        return (mask > threshold).astype(np.uint8)
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise ImageLoadError(
            name,
            f"mask is not binary: {len(values)} distinct values ({shown}); a mask needs at most two values, "
            "one of them 0 (e.g. 0/255 or 0/1). Re-save it losslessly as PNG with only those values, or "
            "pass threshold= (foreground = value > threshold) to binarise it on purpose",
        )
    return (mask > 0).astype(np.uint8)


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box [x1, y1, x2, y2] (x2/y2 exclusive) around the non-zero pixels of a 2-D mask, or None."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
