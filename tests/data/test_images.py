"""Photograph decoding (`panderm.data.images`): high bit depths, EXIF orientation, the pixel limit against
decompression bombs, and the header checks that agree with the decoder."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.data import images
from panderm.data.images import (
    MAX_PIXELS_ENV,
    decode_image,
    image_size,
    load_image,
    load_mask,
    max_image_pixels,
    portable_image,
    probe_image,
)
from panderm.data.manifest import build_manifest
from panderm.data.readers.folders import mask_boxes
from panderm.errors import ConfigError, ImageLoadError, ManifestError
from tests.data.helpers import write_image

ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(autouse=True)
def pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the variable, and Pillow's global limit is restored after it."""
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def scaled16(values: np.ndarray) -> np.ndarray:
    """The reference 16 -> 8 bit mapping: value * 255 / 65535, rounded."""
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def grey16(mean: float = 50, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(mean * 257, 3000, shape), 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------------ bit depth


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_is_scaled_by_its_full_range(tmp_path: Path, suffix: str) -> None:
    values = grey16()
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(values).save(path)  # Pillow writes both as 16-bit ("I;16")
    expected = scaled16(values)
    rgb = load_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    np.testing.assert_array_equal(load_image(path, mode="L"), expected)
    assert abs(float(rgb.mean()) - 50) < 2  # was 252.8: convert("RGB") saturated every value above 255
    assert probe_image(path, deep=True) is None


def test_16bit_mask_keeps_its_foreground(tmp_path: Path) -> None:
    values = np.zeros((6, 8), np.uint16)
    values[1:4, 2:5] = 65535
    path = tmp_path / "mask16.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_mask(path), (values > 0).astype(np.uint8))


def test_32bit_integer_grey_holding_16bit_values_is_scaled_as_16bit(tmp_path: Path) -> None:
    values = grey16().astype(np.int32)
    path = tmp_path / "grey32.tif"
    Image.fromarray(values).save(path)  # mode "I"
    with Image.open(path) as img:
        assert img.mode == "I"
    np.testing.assert_array_equal(load_image(path, mode="L"), scaled16(values))


@pytest.mark.parametrize("value", [-1, 70000])
def test_32bit_integer_grey_outside_16bit_range_is_refused(tmp_path: Path, value: int) -> None:
    values = grey16().astype(np.int32)
    values[3, 4] = value
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageLoadError, match=rf"wide\.tif: .*32-bit integer.*{value}") as info:
        load_image(path)
    assert probe_image(path, deep=True) == info.value.reason  # validate --deep sees what loading sees
    assert probe_image(path) is None  # the header alone cannot tell


def test_float_grey_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)  # mode "F"
    np.testing.assert_array_equal(load_image(path, mode="L"), np.rint(values * 255).astype(np.uint8))


@pytest.mark.parametrize("value", [1.5, np.nan])
def test_float_grey_outside_unit_range_is_refused(tmp_path: Path, value: float) -> None:
    values = np.full((4, 4), 0.5, np.float32)
    values[0, 0] = value
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageLoadError, match=r"float\.tif: .*floating-point.*\[0, 1\]") as info:
        load_image(path)
    assert probe_image(path, deep=True) == info.value.reason


def rgb16() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 65536, (6, 7, 3), dtype=np.uint16)


def check_rgb16(loaded: np.ndarray, values: np.ndarray) -> None:
    """Pillow keeps the high byte of each 16-bit sample: within one level of value * 255 / 65535."""
    np.testing.assert_array_equal(loaded, (values >> 8).astype(np.uint8))
    assert np.abs(loaded.astype(int) - scaled16(values)).max() <= 1


def test_48bit_rgb_png(tmp_path: Path) -> None:
    values = rgb16()
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), values[..., ::-1])  # OpenCV writes BGR
    check_rgb16(load_image(path), values)


def test_48bit_rgb_tiff(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    values = rgb16()
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    check_rgb16(load_image(path), values)


# ---------------------------------------------------------------------------------------- orientation


def quadrants(height: int = 32, width: int = 48) -> np.ndarray:
    """Four flat colour blocks (smooth enough for JPEG) so any rotation or flip shows."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w], image[:h, w:] = (200, 30, 30), (30, 200, 30)
    image[h:, :w], image[h:, w:] = (30, 30, 200), (220, 220, 40)
    return image


def save_oriented(path: Path, array: np.ndarray, orientation: int | None, **kwargs: object) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes(), **kwargs)
    return path


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2)])
def test_jpeg_exif_orientation_is_applied(tmp_path: Path, orientation: int, turns: int) -> None:
    stored = quadrants()
    tagged = save_oriented(tmp_path / "tagged.jpg", stored, orientation, quality=95)
    plain = save_oriented(tmp_path / "plain.jpg", stored, None, quality=95)
    loaded = load_image(tagged)
    # The tag does not change the compressed data: the tagged file is the plain one, turned.
    np.testing.assert_array_equal(loaded, np.rot90(load_image(plain), turns))
    expected = np.rot90(stored, turns)
    assert loaded.shape == expected.shape
    assert np.abs(loaded.astype(int) - expected).mean() < 6  # JPEG's loss at the colour edges
    assert image_size(tagged) == (loaded.shape[1], loaded.shape[0])
    assert decode_image(tagged.read_bytes(), "x.jpg").shape == loaded.shape


def test_portable_image_shows_other_decoders_what_panderm_decodes(tmp_path: Path) -> None:
    """What a model server gets: plain 8-bit files unchanged; an EXIF-rotated JPEG and a 16-bit PNG as a PNG
    that a decoder ignoring EXIF and bit depth (Pillow's plain convert) shows as `decode_image` does."""
    plain = save_oriented(tmp_path / "plain.jpg", quadrants(), None, quality=95).read_bytes()
    assert portable_image(plain, "plain.jpg") == (plain, None)
    Image.fromarray(quadrants()).save(tmp_path / "plain.png")
    png = (tmp_path / "plain.png").read_bytes()
    assert portable_image(png, "plain.png") == (png, None)
    Image.fromarray(grey16()).save(tmp_path / "grey16.png")
    tagged = save_oriented(tmp_path / "tagged.jpg", quadrants(), 6, quality=95)
    for source in (tagged, tmp_path / "grey16.png"):
        data = source.read_bytes()
        sent, mime = portable_image(data, source.name)
        assert mime == "image/png"
        with Image.open(io.BytesIO(sent)) as naive:
            np.testing.assert_array_equal(np.asarray(naive.convert("RGB")), decode_image(data, source.name))


def test_mask_exif_orientation_is_applied(tmp_path: Path) -> None:
    mask = np.zeros((6, 10), np.uint8)
    mask[1:3, 2:7] = 255
    path = save_oriented(tmp_path / "mask.png", mask, 8)
    np.testing.assert_array_equal(load_mask(path), np.rot90(mask > 0, 1).astype(np.uint8))
    assert image_size(path) == (6, 10)


def test_mask_boxes_compare_with_the_oriented_image_size(tmp_path: Path) -> None:
    image = save_oriented(tmp_path / "photo.jpg", quadrants(24, 32), 6, quality=95)  # shown 24 wide, 32 high
    mask = np.zeros((32, 24), np.uint8)
    mask[4:10, 2:8] = 255
    Image.fromarray(mask).save(tmp_path / "photo_mask.png")
    cells, problems = mask_boxes([image], [tmp_path / "photo_mask.png"])
    assert problems == [] and cells == ["2,4,8,10"]


# ---------------------------------------------------------------------------------------- pixel limit


def large_png(path: Path, size: tuple[int, int] = (400, 300)) -> Path:
    """A flat image: many pixels, few bytes (what a decompression bomb looks like)."""
    Image.new("L", size).save(path)
    return path


def test_default_limit_is_pillows() -> None:
    code = "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    pillow = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert images.DEFAULT_MAX_IMAGE_PIXELS == pillow == max_image_pixels()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [100_000, 50_000], ids=["warning-level", "error-level"])
def test_image_over_the_limit_is_refused_naming_file_pixels_and_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    # 120,000 pixels: above the limit, below Pillow's error level (2x) for 100,000, above it for 50,000
    path = large_png(tmp_path / "bomb.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, str(limit))
    pattern = rf"bomb\.png: .*120,000 pixels.*limit of {limit:,}.*{MAX_PIXELS_ENV}="
    with pytest.raises(ImageLoadError, match=pattern) as info:
        load_image(path)
    with pytest.raises(ImageLoadError, match=pattern):
        decode_image(path.read_bytes(), path)
    with pytest.raises(ImageLoadError, match=pattern):
        image_size(path)
    assert probe_image(path) == info.value.reason == probe_image(path, deep=True)
    table = pd.DataFrame({"image": ["bomb.png"], "split": ["train"]})
    with pytest.raises(ManifestError, match=r"row 1: field 'image': .*bomb\.png: .*120,000 pixels"):
        build_manifest(table, tmp_path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("value", ["0", "none", "None", "200000"])
def test_limit_can_be_raised_or_lifted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    path = large_png(tmp_path / "big.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    with pytest.raises(ImageLoadError):
        load_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    assert load_image(path, mode="L").shape == (300, 400)
    assert probe_image(path, deep=True) is None


@pytest.mark.parametrize("value", ["lots", "-5", "1e9"])
def test_bad_limit_is_a_config_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    with pytest.raises(ConfigError, match=rf"{MAX_PIXELS_ENV}={value}"):
        max_image_pixels()


# -------------------------------------------------------------------------------------- corrupt files


def test_corrupt_bytes_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"shard:3\.jpg: unreadable image"):
        decode_image(b"not an image", "shard:3.jpg")
    good = write_image(tmp_path / "a.png")
    buffer = io.BytesIO(good.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match=r"a\.png: unreadable image"):
        decode_image(buffer.getvalue(), good)
