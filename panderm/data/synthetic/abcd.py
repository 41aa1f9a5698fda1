"""Hand-crafted ABCD features of a skin lesion, computed from the image and its mask only.

These follow the dermoscopy ABCD rule the way classical computer-aided diagnosis systems measured it:
asymmetry by mirroring the mask about its principal axes, border by compactness, radial-profile spectra and
edge sharpness, colour by variegation and by occupancy of reference dermoscopy colours (after normalising the
image to the surrounding skin, a simple colour-constancy step), and diameter relative to the image. They serve
as the hand-crafted baseline that learned features should beat, and as a check that SynthDerm's labels are
visible in its pixels. Nothing here reads the generator's recorded attributes.
"""

from __future__ import annotations

import cv2
import numpy as np

from panderm.errors import DataError

_FEATURES = (
    "asym_shape_max",  # area fraction not overlapping the mirror image, worse of the two principal axes
    "asym_shape_min",  # the same, better axis
    "asym_color_max",  # mean colour difference (ΔE/100) between mirrored pixel pairs, worse axis
    "asym_color_min",
    "radial_odd",  # odd low-order (1st, 3rd) harmonics of the radial profile: egg/triangle asymmetry
    "compactness",  # perimeter² / (4π area), 1 for a disc
    "radial_cv",  # coefficient of variation of the boundary's distance to the centroid
    "border_roughness",  # radial-profile energy in harmonics >= 4, relative to the mean radius
    "edge_sharpness",  # boundary luminance gradient relative to the lesion-skin luminance step
    "edge_sharpness_max",  # the sharpest of eight border sectors
    "color_std",  # total standard deviation of L*a*b* inside the lesion (/ 10)
    "n_colors",  # reference dermoscopy colours covering at least 5% of the lesion
    "frac_black",
    "frac_blue_grey",
    "frac_red",
    "frac_white",
    "lesion_L",  # mean skin-normalised lightness of the lesion (/ 100)
    "lesion_a",  # mean skin-normalised a* (redness, / 100)
    "lesion_b",  # mean skin-normalised b* (yellowness, / 100)
    "contrast",  # ΔE between the lesion and its surrounding skin (/ 100)
    "texture",  # spread of the lightness Laplacian inside the lesion (dots, cysts, vessels; / 10)
    "diameter",  # equivalent diameter / image width
)

# Reference dermoscopy colours (sRGB) as seen on light skin, and that skin; pixels are normalised so their
# surrounding skin maps to `_REF_SKIN` before the nearest reference colour is looked up.
_REF_SKIN = np.array([236, 204, 184], np.float32)
_REF_NAMES = ("skin", "light_brown", "dark_brown", "black", "blue_grey", "red", "white")
_REF_RGB = np.array(
    [_REF_SKIN, [180, 120, 75], [105, 62, 38], [38, 30, 30], [100, 112, 138], [200, 70, 80], [240, 236, 234]],
    np.float32,
)


def abcd_feature_names() -> tuple[str, ...]:
    """Names of the columns `abcd_features` returns, in order."""
    return _FEATURES


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (…, 3) in 0-255 (any float/uint8) to CIE L*a*b* (L 0-100), float32, same leading shape."""
    flat = np.clip(np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0, 0.0, 1.0)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(*np.shape(rgb)[:-1], 3)


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between `inner` and `outer` dilations of `mask` (outside the lesion), as bool."""

    def dil(r: int) -> np.ndarray:
        if r <= 0:
            return mask.astype(bool)
        return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0

    return dil(outer) & ~dil(inner)


def _aligned(
    mask: np.ndarray, lab: np.ndarray, centroid: np.ndarray, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and Lab image resampled so the centroid is the canvas centre and the major axis horizontal."""
    ys, xs = np.nonzero(mask)
    reach = float(np.sqrt(((xs - centroid[0]) ** 2 + (ys - centroid[1]) ** 2).max())) + 2
    n = 2 * int(np.ceil(reach)) + 1
    rot = cv2.getRotationMatrix2D((float(centroid[0]), float(centroid[1])), float(np.degrees(angle)), 1.0)
    rot[:, 2] += (n - 1) / 2 - centroid  # move the centroid to the exact centre pixel
    m = cv2.warpAffine(mask.astype(np.float32), rot, (n, n), flags=cv2.INTER_LINEAR) >= 0.5
    lab_aligned = cv2.warpAffine(lab, rot, (n, n), flags=cv2.INTER_LINEAR)
    return m, lab_aligned


def abcd_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ABCD features (see `abcd_feature_names`) of the lesion `mask` marks in `image`; float64 (22,).

    `image` is (H, W, 3) uint8 RGB, `mask` (H, W) with non-zero lesion pixels. Raises `DataError` when the
    shapes disagree or the mask is empty.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"abcd_features: image must be (H, W, 3) RGB, got shape {image.shape}")
    if mask.shape != image.shape[:2]:
        raise DataError(f"abcd_features: mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    m = (np.asarray(mask) > 0).astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        raise DataError("abcd_features: the mask is empty (no lesion pixels)")
    h, w = m.shape
    rgb = image.astype(np.float32)
    lab = _lab(rgb)
    inside = m > 0
    eq_diam = float(np.sqrt(4 * area / np.pi))

    # ---- asymmetry: mirror about the principal axes
    ys, xs = np.nonzero(m)
    centroid = np.array([xs.mean(), ys.mean()])
    if area >= 3:
        cov = np.cov(np.stack([xs, ys]).astype(np.float64))
        evals, evecs = np.linalg.eigh(cov)
        major = evecs[:, int(np.argmax(evals))]
        angle = float(np.arctan2(major[1], major[0]))
    else:
        angle = 0.0
    g, lab_g = _aligned(m, lab, centroid, angle)
    g_area = max(1, int(g.sum()))
    shape_asym, color_asym = [], []
    for axis in (0, 1):  # flip rows = mirror about the major axis; flip columns = about the minor axis
        flipped = np.flip(g, axis)
        shape_asym.append(float(np.logical_xor(g, flipped).sum()) / g_area)
        both = g & flipped
        if both.any():
            diff = lab_g - np.flip(lab_g, axis)
            color_asym.append(float(np.sqrt((diff[both] ** 2).sum(1)).mean()) / 100)
        else:
            color_asym.append(0.0)

    # ---- border: compactness, radial profile spectrum, edge sharpness
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    # The pixel staircase inflates a digital outline's length (a disc scores ~1.16); a 3-point circular
    # moving average of the boundary removes it. Perimeter and area come from the same polygon.
    smooth = (np.roll(contour, 1, 0) + contour + np.roll(contour, -1, 0)) / 3
    polygon = smooth.astype(np.float32).reshape(-1, 1, 2)
    perimeter = max(cv2.arcLength(polygon, True), 1.0)
    compactness = perimeter**2 / (4 * np.pi * max(cv2.contourArea(polygon), 1.0))
    d = contour + 0.5 - (centroid + 0.5)
    radius = np.hypot(d[:, 0], d[:, 1])
    theta = np.arctan2(d[:, 1], d[:, 0])
    order = np.argsort(theta)
    grid = np.linspace(-np.pi, np.pi, 64, endpoint=False)
    profile = np.interp(grid, theta[order], radius[order], period=2 * np.pi)
    spectrum = np.abs(np.fft.rfft(profile)) / len(profile)
    mean_r = max(spectrum[0], 1e-6)
    radial_odd = float(np.hypot(spectrum[1], spectrum[3]) / mean_r)
    roughness = float(np.sqrt((spectrum[4:] ** 2).sum()) / mean_r)
    radial_cv = float(radius.std() / max(radius.mean(), 1e-6))

    lum = lab[..., 0]
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3) / 8
    grad = np.hypot(gx, gy)
    k3 = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(m, k3) > 0) & ~(cv2.erode(m, k3) > 0)
    band = max(2, round(0.12 * eq_diam))
    inner = inside & ~(cv2.erode(m, np.ones((2 * band + 1, 2 * band + 1), np.uint8)) > 0) & ~edge
    outer = _ring(m, 1, band + 1)
    ey, ex = np.nonzero(edge)
    sector = ((np.arctan2(ey - centroid[1], ex - centroid[0]) + np.pi) / (np.pi / 4)).astype(int) % 8
    iy, ix = np.nonzero(inner)
    isector = ((np.arctan2(iy - centroid[1], ix - centroid[0]) + np.pi) / (np.pi / 4)).astype(int) % 8
    oy, ox = np.nonzero(outer)
    osector = ((np.arctan2(oy - centroid[1], ox - centroid[0]) + np.pi) / (np.pi / 4)).astype(int) % 8
    sharp = []
    for s in range(8):
        ge = grad[ey[sector == s], ex[sector == s]]
        li, lo = lum[iy[isector == s], ix[isector == s]], lum[oy[osector == s], ox[osector == s]]
        if len(ge) and len(li) and len(lo):
            step = abs(float(np.median(lo)) - float(np.median(li)))
            sharp.append(float(ge.mean()) / (step / band + 1.0) / band)
    sharp_arr = np.asarray(sharp) if sharp else np.zeros(1)

    # ---- colour: normalise to the surrounding skin, then variegation and reference-colour occupancy
    skin_ring = _ring(m, max(2, band), max(4, 3 * band))
    skin_px = rgb[skin_ring] if skin_ring.any() else rgb[~inside] if (~inside).any() else rgb.reshape(-1, 3)
    bright = skin_px[skin_px.sum(1) > np.percentile(skin_px.sum(1), 25)]  # drop hair and vignette
    skin = np.median(bright if len(bright) else skin_px, axis=0)
    normalised = np.clip(rgb[inside] * (_REF_SKIN / np.maximum(skin, 1.0)), 0, 255)
    lab_n = _lab(normalised)
    lab_in = lab[inside]
    color_std = float(np.sqrt(lab_in.var(0).sum())) / 10
    ref_lab = _lab(_REF_RGB)
    nearest = np.argmin(((lab_n[:, None, :] - ref_lab[None]) ** 2).sum(-1), axis=1)
    fractions = np.bincount(nearest, minlength=len(_REF_NAMES)) / len(nearest)
    n_colors = float((fractions[1:] >= 0.05).sum())
    lesion_mean = lab_n.mean(0)
    skin_lab = _lab(_REF_SKIN)
    contrast = float(np.linalg.norm(lesion_mean - skin_lab)) / 100

    lap = cv2.Laplacian(lum, cv2.CV_32F, ksize=3)
    core = cv2.erode(m, k3) > 0
    texture = float(lap[core].std()) / 10 if core.sum() > 4 else 0.0

    features = [
        max(shape_asym),
        min(shape_asym),
        max(color_asym),
        min(color_asym),
        radial_odd,
        compactness,
        radial_cv,
        roughness,
        float(sharp_arr.mean()),
        float(sharp_arr.max()),
        color_std,
        n_colors,
        fractions[_REF_NAMES.index("black")],
        fractions[_REF_NAMES.index("blue_grey")],
        fractions[_REF_NAMES.index("red")],
        fractions[_REF_NAMES.index("white")],
        lesion_mean[0] / 100,
        lesion_mean[1] / 100,
        lesion_mean[2] / 100,
        contrast,
        texture,
        eq_diam / w,
    ]
    del h
    return np.asarray(features, np.float64)
