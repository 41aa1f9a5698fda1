"""DICOM and NIfTI images as 2-D uint8 pictures: modality rescale, intensity windowing, frame/slice choice.

DICOM goes through pydicom (modality LUT, the file's own VOI LUT or window, MONOCHROME1 inversion); NIfTI
through MONAI's `LoadImage` (nibabel reader), reoriented to LPS so that an axial slice shows like a DICOM
image: anterior at the top, the patient's right on the left of the picture.

A window is given as ``None``/``"auto"`` (the file's own window, else the 1st-99th percentile range), a preset
name from `WINDOWS`, a ``(center, width)`` pair or the string ``"center,width"``; the string forms are what a
manifest's `window` column holds.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.errors import ConfigError, ImageLoadError

logger = logging.getLogger(__name__)

#: CT windows in Hounsfield units as (center, width).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

AUTO = "auto"
PERCENTILES = (1.0, 99.0)

Window = str | Sequence[float] | None


def _is_missing(value: object) -> bool:
    """True for None, NaN, pandas NA and blank strings (how empty manifest cells arrive)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return np.ndim(value) == 0 and bool(pd.isna(value))


def parse_window(window: Window) -> tuple[float, float] | None:
    """Normalise a window spec to ``(center, width)``, or None for "auto" (file window / percentiles).

    Accepts None, NaN or ``"auto"``, a preset name from `WINDOWS` (any case), ``"center,width"`` or a pair of
    numbers. Raises `ConfigError` for an unknown name, a malformed string or a width that is not positive.
    """
    if _is_missing(window):
        return None
    if isinstance(window, str):
        text = window.strip().lower()
        if text == AUTO:
            return None
        if text in WINDOWS:
            return WINDOWS[text]
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        if len(parts) != 2:
            raise ConfigError(
                f"window {window!r}: expected 'auto', a preset {sorted(WINDOWS)} or 'center,width'"
            )
        try:
            center, width = (float(p) for p in parts)
        except ValueError as exc:
            raise ConfigError(f"window {window!r}: center and width must be numbers") from exc
    else:
        try:
            center, width = (float(v) for v in window)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"window {window!r}: expected a (center, width) pair") from exc
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise ConfigError(f"window {window!r}: center must be finite and width positive")
    return center, width


def format_window(window: Window) -> str:
    """The manifest form of a window: ``"auto"``, a preset name or ``"center,width"``; validates it."""
    parsed = parse_window(window)
    if parsed is None:
        return AUTO
    if isinstance(window, str) and window.strip().lower() in WINDOWS:
        return window.strip().lower()
    return ",".join(f"{v:g}" for v in parsed)


def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map intensities linearly so that ``center ± width/2`` spans 0..255, clipped; returns uint8.

    ``array`` is any real array (e.g. Hounsfield units); HU -600 in the lung window (-600, 1500) gives 128.
    Raises `ConfigError` when `width` is not positive.
    """
    # Hand-written: pydicom's windowing needs a Dataset and returns the stored bit range, not 0..255.
    if not width > 0:
        raise ConfigError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    scaled = (np.asarray(array, dtype=np.float64) - low) / width * 255.0  # divide first: midpoints stay exact
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def percentile_window(array: np.ndarray) -> tuple[float, float]:
    """(center, width) spanning the 1st-99th percentile of `array` (width 1 for a flat image)."""
    low, high = np.percentile(np.asarray(array, dtype=np.float64), PERCENTILES)
    return (low + high) / 2.0, max(float(high - low), 1.0)


def _window_or_percentiles(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    center, width = window if window is not None else percentile_window(values)
    return apply_window(values, center, width)


def _index_option(path: Path, name: str, value: object) -> int | None:
    """An optional integer option that may come from a manifest cell (NaN/NA = not given)."""
    if _is_missing(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageLoadError(path, f"{name}={value!r} is not an integer") from None
    if not number.is_integer():
        raise ImageLoadError(path, f"{name}={value!r} is not an integer")
    return int(number)


def _parse_window_for(path: Path, window: Window) -> tuple[float, float] | None:
    try:
        return parse_window(window)
    except ConfigError as exc:
        raise ImageLoadError(path, str(exc)) from exc


# --------------------------------------------------------------------------------------------- DICOM


def _file_voi(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The file's own VOI LUT or window (pydicom's `apply_voi_lut`) rescaled to uint8; None if it has none."""
    from pydicom.pixels import apply_voi_lut

    lut_items = ds.get("VOILUTSequence") or []
    has_lut = bool(lut_items) and "LUTDescriptor" in lut_items[0] and "LUTData" in lut_items[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    if has_lut:
        # A VOI LUT is indexed by integer modality values; its output range is the range of its entries.
        values = np.rint(values).astype(np.int64)
        entries, first = int(lut_items[0].LUTDescriptor[0]) or 2**16, int(lut_items[0].LUTDescriptor[1])
        probe = np.arange(first, first + entries, dtype=np.int64)
    else:
        # pydicom maps a window onto the stored value range; its ends are the images of -inf and +inf.
        probe = np.array([-np.inf, np.inf])
    try:
        out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        ends = np.asarray(apply_voi_lut(probe, ds, prefer_lut=True), dtype=np.float64)
    except (ValueError, NotImplementedError, IndexError, AttributeError) as exc:
        # a broken window in the header should not make the pixels unusable: fall back to percentiles
        logger.info("ignoring the file's VOI LUT/window (%s: %s)", type(exc).__name__, exc)
        return None
    low, high = float(ends.min()), float(ends.max())
    if high <= low:
        return None
    return apply_window(out, (low + high) / 2.0, high - low)


def load_dicom(
    path: str | os.PathLike[str],
    *,
    window: Window = None,
    frame: int | None = None,
    slice_index: int | None = None,
    axis: int | None = None,
) -> np.ndarray:
    """Read one DICOM image as a (H, W) uint8 picture.

    Stored values go through the modality LUT (RescaleSlope/Intercept, e.g. to Hounsfield units), then the
    window (see the module docstring; "auto" uses the file's VOI LUT or WindowCenter/WindowWidth, else
    the 1st-99th percentiles). MONOCHROME1 images are inverted so that bright means dense. Multi-frame files
    give frame `frame` (alias `slice_index`, as a manifest row passes it; default the middle frame); `axis`
    may only be None or 0, the frame axis. Colour images are converted to luminance. Raises `ImageLoadError`
    naming the file when it is not DICOM, has no decodable pixels, or the frame is out of range.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, pixel_array

    path = Path(path)
    spec = _parse_window_for(path, window)
    index = _index_option(path, "frame", frame)
    if index is None:
        index = _index_option(path, "slice_index", slice_index)
    if _index_option(path, "axis", axis) not in (None, 0):
        raise ImageLoadError(path, f"DICOM frames lie along axis 0, got axis={axis!r}")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise ImageLoadError(path, "DICOM file has no pixel data (PixelData element missing)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if index is None:
        index = frames // 2
    if not 0 <= index < frames:
        raise ImageLoadError(path, f"frame {index} is out of range: the file has {frames} frame(s)")
    try:  # decode only the frame asked for
        pixels = pixel_array(ds, index=index if frames > 1 else None)
    except Exception as exc:  # decoders raise many types; the user needs the file and the transfer syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageLoadError(
            path, f"cannot decode pixel data (transfer syntax {syntax}; {type(exc).__name__}: {exc})"
        ) from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        return _colour_to_gray(pixels, ds, photometric)

    try:
        values = apply_modality_lut(pixels, ds)
        out = _file_voi(values, ds) if spec is None else None
    except (ValueError, AttributeError, NotImplementedError, IndexError) as exc:
        raise ImageLoadError(path, f"invalid modality LUT ({type(exc).__name__}: {exc})") from exc
    if out is None:
        out = _window_or_percentiles(values, spec)
    if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
        out = 255 - out
    return out


def _colour_to_gray(pixels: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """Palette/RGB pixels (pydicom already converts YBR to RGB) to 8-bit luminance (ITU-R 601, via Pillow)."""
    from PIL import Image
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.dtype != np.uint8:  # >8-bit colour: scale the stored range down to 8 bits
        bits = int(ds.get("BitsStored", 16) or 16)
        pixels = (pixels.astype(np.float64) * (255.0 / (2**bits - 1))).round().clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., :3]), mode="RGB").convert("L"))


# --------------------------------------------------------------------------------------------- NIfTI


@functools.lru_cache(maxsize=1)
def _nifti_loader() -> Any:
    """One MONAI loader per process (building it instantiates every reader, which logs about nvImageCodec)."""
    from monai.transforms import LoadImage

    noisy = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LoadImage(image_only=True, reader="NibabelReader", ensure_channel_first=True)
    finally:
        noisy.setLevel(level)


# Keyed by the file's identity so that consecutive slices of one volume decode it once, and a rewritten file
# is read again. One volume only: CT volumes are hundreds of MB.
@functools.lru_cache(maxsize=1)
def _lps_volume(path: str, mtime_ns: int, size: int) -> np.ndarray:
    from monai.transforms import Orientation

    try:
        image = _nifti_loader()(path)
    except Exception as exc:  # MONAI wraps reader failures in RuntimeError and others; name the file
        raise ImageLoadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    channels, spatial = int(image.shape[0]), tuple(int(s) for s in image.shape[1:])
    if len(spatial) != 3 or channels != 1:
        # MONAI moved a 4th (time/channel) axis to the front; report the shape as stored
        shape = spatial if channels == 1 else (*spatial, channels)
        raise ImageLoadError(path, f"not a 3-D volume: shape {shape}")
    volume = Orientation(axcodes="LPS", labels=None)(image)[0]
    array = np.ascontiguousarray(volume.numpy())
    array.flags.writeable = False  # shared by later calls through the cache
    return array


def nifti_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Shape of a NIfTI volume in the LPS orientation `load_nifti` slices, read from the header only.

    Raises `ImageLoadError` naming the file when it is unreadable or not a 3-D volume.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        order = nib.orientations.io_orientation(image.affine)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ...; name the file
        raise ImageLoadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ImageLoadError(path, f"not a 3-D volume: shape {shape}")
    out = [0, 0, 0]
    for axis, (target, _flip) in enumerate(order[:3]):
        out[int(target)] = shape[axis]
    return out[0], out[1], out[2]


def load_nifti(
    path: str | os.PathLike[str],
    *,
    slice_index: int | None = None,
    axis: int | None = 2,
    window: Window = None,
) -> np.ndarray:
    """Read one slice of a 3-D NIfTI volume as a (H, W) uint8 picture.

    The volume is reoriented to LPS (x to the patient's left, y posterior, z superior), so `axis` 2 is
    axial, 1 coronal and 0 sagittal, and `slice_index` counts along that axis (default the middle slice). For
    display, axial slices have rows = y (anterior at the top) and columns = x (the patient's right on the
    left); coronal and sagittal slices have rows = z with superior at the top. The window is applied as in
    `load_dicom` ("auto" = the slice's 1st-99th percentiles). Raises `ImageLoadError` naming the file when it
    is unreadable, not 3-D, or the slice or axis is out of range.
    """
    path = Path(path)
    spec = _parse_window_for(path, window)
    index = _index_option(path, "slice_index", slice_index)
    axis_value = _index_option(path, "axis", axis)
    axis_value = 2 if axis_value is None else axis_value
    if axis_value not in (0, 1, 2):
        raise ImageLoadError(path, f"axis={axis!r} is out of range: a volume has axes 0, 1, 2")
    if not path.is_file():
        raise ImageLoadError(path, "file not found")
    stat = path.stat()
    volume = _lps_volume(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    count = volume.shape[axis_value]
    if index is None:
        index = count // 2
    if not 0 <= index < count:
        raise ImageLoadError(
            path,
            f"slice {index} is out of range along axis {axis_value}: the volume has {count} slices there",
        )
    plane = np.take(volume, index, axis=axis_value)
    # plane axes are the two remaining LPS axes in order; put the later one on the rows
    picture = plane.T if axis_value == 2 else plane.T[::-1]
    return _window_or_percentiles(np.ascontiguousarray(picture), spec)
