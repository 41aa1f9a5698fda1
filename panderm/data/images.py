"""Reading image and mask files of every supported format into numpy arrays, with errors naming the file.

Photographs (JPEG/PNG/BMP/TIFF/WebP) go through Pillow, and every decode in panderm goes through
`decode_image` (bytes) or `load_image` (a file), so these rules hold everywhere (datasets, shards, masks,
`data validate --deep`, the MLLM code):

- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`), so a portrait photo tagged "rotate 90" loads
  as portrait; masks too. `image_size` gives the oriented size from the header alone.
- Greyscale deeper than 8 bits is scaled to uint8 by the full range of its bit depth, never clipped:
  16-bit ("I;16*"; 16-bit PNG/TIFF/PGM) as round(value * 255 / 65535). Pillow's 32-bit integer mode "I" (how
  some Pillow versions open 16-bit PNGs, and how 16/32-bit integer TIFFs open) is scaled the same way when
  its values lie in 0..65535; outside that range (signed or truly 32-bit data) there is no single right
  mapping and the image is refused. Floating-point "F" images are taken as intensities in [0, 1] (value *
  255, rounded); NaN, infinities or values outside [0, 1] are refused. For 16-bit-per-channel colour
  (48-bit RGB PNG/TIFF) Pillow itself keeps the high byte of each sample (value >> 8, within one level of
  value * 255 / 65535).
- Images with more pixels than `max_image_pixels()` (Pillow's default of about 89.5 million unless the
  environment variable PANDERM_MAX_IMAGE_PIXELS says otherwise; 0 or "none" = no limit) are refused before
  their pixels are decoded: a few hundred kilobytes of PNG can otherwise expand to gigabytes.

DICOM and NIfTI go through `panderm.data.radiology` (pydicom / MONAI), windowed and sliced to 2-D.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from panderm.errors import ConfigError, ImageLoadError

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_PIXELS_ENV = "PANDERM_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS: int | None = Image.MAX_IMAGE_PIXELS  # Pillow's default, before panderm sets it
DEEP_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_kind(path: Path) -> str:
    """ "dicom", "nifti" or "pil" (everything Pillow opens), by file name."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return "pil"


def max_image_pixels() -> int | None:
    """The most pixels (width x height) a photograph may have, or None for no limit.

    `PANDERM_MAX_IMAGE_PIXELS` when set (a whole number; 0 or "none" lifts the limit), else Pillow's default
    (`DEFAULT_MAX_IMAGE_PIXELS`). It is read at every decode, so it also holds in DataLoader workers and in
    every command, and each decode sets Pillow's `Image.MAX_IMAGE_PIXELS` to it (set the variable, not
    Pillow's attribute). Raises `ConfigError` for a value that is not a whole number >= 0.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if value.lower() == "none":
        return None
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={value}: not a pixel count; set a whole number of pixels (e.g. "
            f"{MAX_PIXELS_ENV}=200000000), or 0 / none for no limit"
        )
    return int(value) or None


def _over_limit(pixels: int | None, limit: int, size: tuple[int, int] | None = None) -> str:
    """The reason an image over the pixel limit is refused, with the setting that raises the limit."""
    what = f"{pixels:,} pixels" if pixels is not None else f"more than {2 * limit:,} pixels"
    if size is not None:
        what += f" ({size[0]}x{size[1]})"
    needed = pixels if pixels is not None else 2 * limit + 1
    step = 10 ** max(len(str(needed)) - 2, 0)
    enough = -(-needed // step) * step  # rounded up to two significant digits
    return (
        f"image of {what} is over the limit of {limit:,} pixels that guards against decompression bombs "
        f"(small files that expand to huge images); if the image is genuine, raise the limit with the "
        f"environment variable {MAX_PIXELS_ENV} (0 or none: no limit), e.g. "
        f"`{MAX_PIXELS_ENV}={enough} panderm ...`"
    )


def _open(source: str | os.PathLike[str] | bytes, name: str | os.PathLike[str]) -> Image.Image:
    """`Image.open` of a file or of encoded bytes, header only, refusing images over `max_image_pixels()`.

    Close the result (use it in a ``with``). Raises `ImageLoadError` naming `name`.
    """
    limit = max_image_pixels()
    # Pillow's own check (a warning above its limit, an error above twice it) then agrees with ours.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        # Pillow refuses before the size is readable; its message is the only place holding the count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageLoadError(name, _over_limit(int(found[1]) if found else None, limit or 0)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(name, f"unreadable image ({exc})") from exc
    if limit is not None and img.width * img.height > limit:
        img.close()
        raise ImageLoadError(name, _over_limit(img.width * img.height, limit, img.size))
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) from what the header holds; 1 when there is none."""
    # PngImageFile.getexif decodes every pixel to look for an eXIf chunk after the image data; a header
    # check takes only one before it (where the PNG specification asks for it).
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return int(img.getexif().get(ExifTags.Base.Orientation, 1))


def probe_image(path: str | os.PathLike[str], *, deep: bool = False) -> str | None:
    """Return why `path` cannot be used as an image (missing, empty, not an image, over the pixel limit), or
    None if it can.

    The default check reads only the header, which is cheap; `deep=True` decodes the whole file exactly as
    `load_image` does (so it also catches truncated JPEG/PNG data and refused bit depths).
    """
    path = Path(path)
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "file is empty"
    try:
        if deep:
            load_image(path)
        elif image_kind(path) == "pil":
            _open(path, path).close()
    except ImageLoadError as exc:
        return exc.reason
    return None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a photograph as `load_image` returns it (EXIF orientation applied), from the
    header only. Raises `ImageLoadError` naming the file when it is unreadable or over the pixel limit."""
    with _open(path, path) as img:
        width, height = img.size
        try:
            turned = _orientation(img) in _TRANSPOSED
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(path, f"unreadable EXIF data ({exc})") from exc
    return (height, width) if turned else (width, height)


def load_image(path: str | os.PathLike[str], *, mode: str = "RGB", **options: Any) -> np.ndarray:
    """Load an image as uint8: (H, W, 3) for mode "RGB", (H, W) for mode "L".

    Photographs are decoded by `decode_image` (see the module docstring for orientation, bit depth and the
    pixel limit). `options` go to the radiology loaders (`slice_index`, `axis`, `window`) for DICOM/NIfTI
    files. Raises `ImageLoadError` naming the file when it is missing, truncated, not an image, over the
    pixel limit or of a bit depth with no single 8-bit form.
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
    """Decode encoded image bytes (anything Pillow reads) to uint8 in Pillow `mode` ("RGB": (H, W, 3), "L":
    (H, W)): EXIF orientation applied, deep greyscale scaled to 8 bits (module docstring). `name` (the file
    or shard member) is used in the error message. Raises `ImageLoadError` as `load_image` does."""
    with _open(data, name) as img:
        try:
            ImageOps.exif_transpose(img, in_place=True)  # decodes the pixels
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(name, f"unreadable image ({exc})") from exc
        if img.mode in DEEP_GREY_MODES:
            return _as_mode(Image.fromarray(_grey_to_uint8(np.asarray(img), img.mode, name)), mode)
        return _as_mode(img, mode)


def portable_image(data: bytes, name: str | os.PathLike[str]) -> tuple[bytes, str | None]:
    """Encoded bytes that any decoder shows as `decode_image` does: `data` itself (and None) when it has no
    EXIF rotation and 8-bit samples, else a PNG of `decode_image`'s RGB pixels (and "image/png"). What is sent
    to a model server, which would otherwise see a phone photo unrotated or a 16-bit image clipped, in other
    coordinates or pixels than every local loader. Raises `ImageLoadError` as `decode_image` does."""
    with _open(data, name) as img:
        try:
            plain = _orientation(img) == 1 and img.mode not in DEEP_GREY_MODES
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(name, f"unreadable EXIF data ({exc})") from exc
    if plain:
        return data, None
    out = io.BytesIO()
    Image.fromarray(decode_image(data, name)).save(out, format="PNG")
    return out.getvalue(), "image/png"


def _as_mode(img: Image.Image, mode: str) -> np.ndarray:
    return np.asarray(img if img.mode == mode else img.convert(mode))


def _grey_to_uint8(values: np.ndarray, mode: str, name: str | os.PathLike[str]) -> np.ndarray:
    """8-bit form of a greyscale image deeper than 8 bits (Pillow `mode` "I;16*", "I" or "F"), by the full
    range of its bit depth; raises `ImageLoadError` where that range is unknown (module docstring)."""
    if values.size == 0:
        return values.astype(np.uint8)
    if mode == "F":
        finite = np.isfinite(values)
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 0)
        if not finite.all() or low < 0 or high > 1:
            bad = f", {int((~finite).sum())} not finite" if not finite.all() else ""
            raise ImageLoadError(
                name,
                f"floating-point image with values from {low:g} to {high:g}{bad}, outside [0, 1]: there is "
                "no single right way to show it in 8 bits; rescale it to [0, 1], or save it as an 8- or "
                "16-bit PNG",
            )
        return np.rint(values * 255).astype(np.uint8)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ImageLoadError(
            name,
            f"32-bit integer image with values from {low} to {high}, outside the 16-bit range 0..65535: "
            "there is no single right way to show it in 8 bits; rescale it and save it as an 8- or 16-bit "
            "PNG",
        )
    return np.rint(values * (255 / 65535)).astype(np.uint8)


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
            "binarise it on purpose (foreground = value > threshold): data.mask_threshold=127 on the command "
            "line, --mask-threshold 127 for `panderm data validate`, threshold= in Python",
        )
    return (mask > 0).astype(np.uint8)


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box [x1, y1, x2, y2] (x2/y2 exclusive) around the non-zero pixels of a 2-D mask, or None."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
