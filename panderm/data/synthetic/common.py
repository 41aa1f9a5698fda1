"""Drawing helpers shared by the synthetic generators: smooth noise, layers, blending, downsampling.

Everything works on float32 arrays in [0, 1] (colour images are (H, W, 3)); anti-aliased shapes are drawn with
OpenCV into uint8 layers (its anti-aliasing only works at 8 bits) and converted to float alpha.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# OpenCV drawing takes integer coordinates; with `shift` bits it reads them as fixed point (sub-pixel).
DRAW_SHIFT = 4
_SCALE = float(1 << DRAW_SHIFT)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: float, channels: int | None = None
) -> np.ndarray:
    """Smooth random field of `shape` (H, W) (or (H, W, channels)) with about `cells` blobs across the width.

    A coarse grid of normal values is upsampled bicubically (margins cropped so the field has no border
    artefacts); each channel is standardised to mean 0, std 1. Returns float32.
    """
    h, w = shape
    n = 1 if channels is None else channels
    gx = max(2, int(np.ceil(cells))) + 3
    gy = max(2, int(np.ceil(cells * h / w))) + 3
    grid = rng.standard_normal((gy, gx, n)).astype(np.float32)
    # Upsample a slightly larger canvas and crop one grid cell off each side to drop edge effects.
    big_w, big_h = round(w * gx / (gx - 2)), round(h * gy / (gy - 2))
    field = cv2.resize(grid, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    if field.ndim == 2:
        field = field[..., None]
    ox, oy = (big_w - w) // 2, (big_h - h) // 2
    field = field[oy : oy + h, ox : ox + w]
    field = field - field.mean(axis=(0, 1), keepdims=True)
    field = field / (field.std(axis=(0, 1), keepdims=True) + 1e-6)
    return field[..., 0] if channels is None else np.ascontiguousarray(field)


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: Sequence[float], gains: Sequence[float]
) -> np.ndarray:
    """Sum of `smooth_noise` octaves (one per entry of `cells`, weighted by `gains`); float32 (H, W)."""
    out = np.zeros(shape, np.float32)
    for c, g in zip(cells, gains, strict=True):
        out += g * smooth_noise(rng, shape, c)
    return out


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 (x <= edge0) to 1 (x >= edge1), float32."""
    t = np.clip((x - edge0) / (np.asarray(edge1) - edge0 + 1e-12), 0.0, 1.0).astype(np.float32)
    return t * t * (3.0 - 2.0 * t)


def blend(canvas: np.ndarray, color: Sequence[float] | np.ndarray, alpha: np.ndarray) -> None:
    """In place: ``canvas = canvas * (1 - alpha) + color * alpha``; canvas (H, W, 3), alpha (H, W) in [0, 1].

    `color` is an RGB triple or a per-pixel (H, W, 3) array.
    """
    color = np.asarray(color, np.float32)
    if alpha.size > 4096:  # sparse layers (hair, ink, dots): touch only the rows/columns they cover
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        if len(rows) == 0:
            return
        window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        canvas, alpha = canvas[window], alpha[window]
        if color.ndim == 3:
            color = color[window]
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += color * a


class Layer:
    """An anti-aliased uint8 drawing layer (H, W) with float (sub-pixel) coordinates; `alpha()` in [0, 1]."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.data = np.zeros(shape, np.uint8)

    def circle(self, x: float, y: float, radius: float, value: float = 1.0) -> None:
        """Filled disc centred at (x, y) pixels; `value` is its opacity in [0, 1]."""
        cv2.circle(
            self.data,
            (int(x * _SCALE), int(y * _SCALE)),
            max(1, int(radius * _SCALE)),
            int(255 * value),
            -1,
            cv2.LINE_AA,
            DRAW_SHIFT,
        )

    def ellipse(
        self, x: float, y: float, axes: tuple[float, float], angle_deg: float, value: float = 1.0
    ) -> None:
        """Filled ellipse centred at (x, y) with semi-axes `axes` (pixels) rotated by `angle_deg`."""
        cv2.ellipse(
            self.data,
            (int(x * _SCALE), int(y * _SCALE)),
            (max(1, int(axes[0] * _SCALE)), max(1, int(axes[1] * _SCALE))),
            angle_deg,
            0,
            360,
            int(255 * value),
            -1,
            cv2.LINE_AA,
            DRAW_SHIFT,
        )

    def polyline(
        self, points: np.ndarray, thickness: float, value: float = 1.0, closed: bool = False
    ) -> None:
        """Anti-aliased polyline through `points` (N, 2) (x, y pixels) of `thickness` pixels (>= 1)."""
        pts = np.round(np.asarray(points) * _SCALE).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(
            self.data, [pts], closed, int(255 * value), max(1, round(thickness)), cv2.LINE_AA, DRAW_SHIFT
        )

    def alpha(self) -> np.ndarray:
        return self.data.astype(np.float32) * (1.0 / 255.0)


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    """Points (n, 2) of the quadratic Bézier curve from p0 to p2 with control point p1."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (no-op for sigma <= 0); keeps dtype and shape."""
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def downsample(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-average resize to `size` (W, H, or one int for square): the anti-aliasing step of supersampling.

    Returns the resized image with the input dtype.
    """
    w, h = (size, size) if isinstance(size, int) else size
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8 with rounding and clipping."""
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
