"""SynthCXR: synthetic PA chest radiographs with learnable findings, lung masks and finding boxes.

Each image is rendered from a small anatomical model in *patient coordinates* (``u`` towards the image right,
``v`` down, the thorax spanning roughly [-1, 1]): body outline, two lung fields bounded by the chest wall,
the mediastinum, the heart and the diaphragm domes, plus ribs, clavicles, spine, trachea, hila and vessel
markings. The parts add up to a density map that goes through an exposure curve, blur and film noise, as a
radiograph would. Findings change that model the way they change a film: pneumonia adds one or two patchy,
textured opacities inside a lung; cardiomegaly widens the heart so that the cardiothoracic ratio (CTR) exceeds
0.5 (all other images have CTR < 0.5); an effusion fills a lung base with a homogeneous opacity whose meniscus
rises laterally and blunts the costophrenic angle. Nuisances (patient size, position and rotation, inspiration
depth, exposure, noise, an "L"/"R" side marker, ECG leads and tubes) are drawn independently of the label.

Conventions: every image is a PA view, so the patient's right is on the image left; `finding_side` names the
patient's side ("right", "left" or "both"; "both" for cardiomegaly, empty for normal). Lung masks are
anatomical (the lung fields above the diaphragm, outside the heart and the mediastinum) and include any
opacity or fluid inside them. Everything is drawn here with numpy and OpenCV.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from panderm.data.images import mask_to_box
from panderm.data.manifest import build_manifest, format_boxes, write_table
from panderm.errors import ConfigError
from panderm.io import atomic_write, atomic_write_json, stamp_matches

log = logging.getLogger(__name__)

CLASSES = ("normal", "pneumonia", "cardiomegaly", "effusion")
CLASS_PRIORS = (0.45, 0.25, 0.15, 0.15)
COLUMNS = (
    "image",
    "split",
    "label",
    "patient_id",
    "study",
    "modality",
    "view",
    "mask",
    "bbox",
    "ctr",
    "finding_side",
    "sex",
    "age",
    "marker_side",
    "device",
)
GENERATOR_VERSION = 1
MIN_IMAGE_SIZE = 32
# Normal hearts and cardiomegaly come from disjoint CTR ranges with a gap around the 0.5 threshold, so the
# label is unambiguous while both ranges still reach the borderline cases a reader sees.
NORMAL_CTR = (0.37, 0.47)
ENLARGED_CTR = (0.54, 0.65)
_OWN_FILE = re.compile(r"SC-P\d+_s\d+(_lungs)?\.png")


def generate_synthcxr(
    out_dir: str | Path,
    *,
    n_patients: int = 150,
    image_size: int = 128,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Path:
    """Write images/, masks/ and manifest.csv under `out_dir`; return the manifest path.

    Patients (`SC-P0001`, ...) get one or two studies; each study is one grayscale `image_size`² PNG with a
    lung mask (`masks/<name>_lungs.png`, values {0, 255}). `splits` are the train/val/test fractions of
    *patients*, stratified by class, so no patient spans two splits and, from 40 patients on, every class is
    in every split. The same arguments always give byte-identical files; a folder whose `generator.json` stamp
    matches the arguments is returned as it is. Raises `ConfigError` for out-of-range arguments and
    `ManifestError` if the written manifest fails validation (a bug).
    """
    params = _check_params(n_patients, image_size, seed, splits)
    out = Path(out_dir)
    manifest_path, stamp_path = out / "manifest.csv", out / "generator.json"
    if manifest_path.is_file() and stamp_matches(stamp_path, params):
        return manifest_path
    # A regeneration that dies halfway must not leave a stamp that vouches for the old files.
    stamp_path.unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    rows = []
    index = 0
    for patient in _make_patients(n_patients, seed, splits):
        for study in range(1, len(patient.labels) + 1):
            rng = np.random.default_rng([seed, 2, index])
            index += 1
            label = patient.labels[study - 1]
            film = _render_study(patient, label, rng, image_size)
            name = f"{patient.pid}_s{study}"
            image_rel, mask_rel = f"images/{name}.png", f"masks/{name}_lungs.png"
            _write_png(out / image_rel, film.image)
            _write_png(out / mask_rel, film.lungs.astype(np.uint8) * 255)
            rows.append(
                {
                    "image": image_rel,
                    "split": patient.split,
                    "label": label,
                    "patient_id": patient.pid,
                    "study": study,
                    "modality": "xray",
                    "view": "PA",
                    "mask": mask_rel,
                    "bbox": format_boxes(film.boxes),
                    "ctr": round(film.ctr, 4),
                    "finding_side": film.finding_side,
                    "sex": patient.sex,
                    "age": patient.age,
                    "marker_side": film.marker_side,
                    "device": film.device,
                }
            )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    build_manifest(table, out, classes=CLASSES)
    write_table(table, manifest_path)
    _remove_stale_files(out, set(table["image"]) | set(table["mask"]))
    atomic_write_json(stamp_path, params)
    log.info("SynthCXR: wrote %d images of %d patients to %s", len(table), n_patients, out)
    return manifest_path


# ----------------------------------------------------------------------------------------------- parameters


def _check_params(n_patients: int, image_size: int, seed: int, splits: Sequence[float]) -> dict[str, object]:
    """Validate the arguments and return them as the JSON stamp (a plain dict)."""
    problems = []
    if not isinstance(n_patients, int | np.integer) or n_patients < 1:
        problems.append(f"n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(image_size, int | np.integer) or image_size < MIN_IMAGE_SIZE:
        problems.append(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    fractions = [float(f) for f in splits] if len(splits) == 3 else []
    if not fractions or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        problems.append(
            f"splits must be 3 fractions (train > 0, val, test >= 0) summing to 1, got {splits!r}"
        )
    if problems:
        raise ConfigError("generate_synthcxr: " + "; ".join(problems))
    return {
        "generator": "synthcxr",
        "version": GENERATOR_VERSION,
        "n_patients": int(n_patients),
        "image_size": int(image_size),
        "seed": int(seed),
        "splits": fractions,
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    # PNG without metadata is a pure function of the pixels, which keeps reruns byte-identical.
    atomic_write(path, lambda tmp: Image.fromarray(array, mode="L").save(tmp, format="PNG"))


def _remove_stale_files(out: Path, keep: set[str]) -> None:
    """Delete PNGs an earlier run with other parameters wrote (only names this generator produces)."""
    for folder in ("images", "masks"):
        for path in (out / folder).iterdir():
            if _OWN_FILE.fullmatch(path.name) and f"{folder}/{path.name}" not in keep:
                path.unlink()


# ------------------------------------------------------------------------------------------------- patients


@dataclass(frozen=True)
class _Patient:
    """Per-patient constants: identity, split, study labels and body habitus (patient units)."""

    pid: str
    split: str
    labels: tuple[str, ...]  # one per study; the first is the patient's condition
    sex: str
    age: int
    body_half: float  # half-width of the torso
    thorax_half: float  # inner half-width of the right hemithorax at its widest
    left_ratio: float  # left/right hemithorax width (the heart side is a little narrower)
    apex: float  # v of the lung apices
    mediastinum: float  # half-width of the upper mediastinum
    ctr: float  # cardiothoracic ratio
    heart_aspect: float  # long/short axis of the cardiac ellipse
    heart_angle: float  # tilt of the long axis (radians, down towards the image right)
    right_border: float  # share of the heart width right of the midline


def _quota(n: int, priors: Sequence[float]) -> list[int]:
    """Integer counts proportional to `priors` summing to n (largest remainder), keeping rare classes."""
    raw = np.asarray(priors) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _split_counts(n: int, splits: Sequence[float]) -> list[int]:
    """Train/val/test counts for one class; with >= 3 patients every split with a fraction > 0 gets one."""
    val, test = round(n * splits[1]), round(n * splits[2])
    if n >= 3:
        val, test = max(val, int(splits[1] > 0)), max(test, int(splits[2] > 0))
    while n - val - test < 1 and val + test > 0:  # train always keeps at least one patient
        if val >= test:
            val -= 1
        else:
            test -= 1
    return [n - val - test, val, test]


def _make_patients(n_patients: int, seed: int, splits: Sequence[float]) -> list[_Patient]:
    """Draw every patient: class quotas, a class-stratified patient split, study labels and habitus."""
    rng = np.random.default_rng([seed, 0])
    classes = np.repeat(np.arange(len(CLASSES)), _quota(n_patients, CLASS_PRIORS))
    classes = classes[rng.permutation(n_patients)]
    split_of = np.empty(n_patients, dtype=object)
    for c in range(len(CLASSES)):
        members = rng.permutation(np.flatnonzero(classes == c))
        bounds = np.cumsum(_split_counts(len(members), splits))
        for name, part in zip(("train", "val", "test"), np.split(members, bounds[:2]), strict=True):
            split_of[part] = name

    patients = []
    for i in range(n_patients):
        prng = np.random.default_rng([seed, 1, i])
        label = CLASSES[classes[i]]
        labels = [label]
        if prng.random() < 0.35:  # a follow-up study: chronic findings persist, acute ones may resolve
            keep = {"normal": 0.9, "pneumonia": 0.5, "cardiomegaly": 1.0, "effusion": 0.6}[label]
            labels.append(label if prng.random() < keep else ("pneumonia" if label == "normal" else "normal"))
        sex = "F" if prng.random() < 0.5 else "M"
        age = int(np.clip(prng.normal(56 + 8 * (label == "cardiomegaly"), 16), 18, 95))
        size = prng.normal(0.0, 1.0)  # one habitus factor links body and thorax size
        thorax = float(np.clip(0.72 + 0.035 * size - 0.02 * (sex == "F"), 0.62, 0.8))
        ctr_range = ENLARGED_CTR if label == "cardiomegaly" else NORMAL_CTR
        patients.append(
            _Patient(
                pid=f"SC-P{i + 1:04d}",
                split=str(split_of[i]),
                labels=tuple(labels),
                sex=sex,
                age=age,
                body_half=float(np.clip(thorax + 0.11 + 0.03 * size + prng.normal(0, 0.015), 0.74, 0.97)),
                thorax_half=thorax,
                left_ratio=float(prng.uniform(0.92, 0.99)),
                apex=float(prng.uniform(-0.82, -0.74)),
                mediastinum=float(prng.uniform(0.085, 0.115)),
                ctr=float(prng.uniform(*ctr_range)),
                heart_aspect=float(prng.uniform(1.15, 1.4)),
                heart_angle=math.radians(prng.uniform(22, 38)),
                right_border=float(prng.uniform(0.3, 0.38)),
            )
        )
    return patients


# ------------------------------------------------------------------------------------------------ anatomy


@dataclass(frozen=True)
class _Hemithorax:
    """One side of the chest in mirrored coordinates (xr = distance from the midline towards that side)."""

    sign: int  # -1: patient right (image left), +1: patient left (image right)
    width: float  # inner chest-wall distance from the midline at the widest level
    medial: float  # mediastinal border above the heart
    cp: float  # v of the costophrenic angle (the lowest point of the lung field, laterally)
    dome: float  # v of the top of the diaphragm dome
    dome_x: float  # xr of the top of the dome
    apex: float
    knob: float  # aortic knob bulge into this lung (left side only)

    def diaphragm(self, xr: np.ndarray | float) -> np.ndarray | float:
        """v of the diaphragm: a parabola through the dome top that reaches `cp` at the chest wall."""
        curvature = (self.cp - self.dome) / (self.width - self.dome_x) ** 2
        return self.dome + curvature * (xr - self.dome_x) ** 2

    def medial_border(self, v: np.ndarray) -> np.ndarray:
        bulge = self.knob * np.exp(-(((v + 0.33) / 0.07) ** 2)) + 0.4 * self.knob * np.exp(
            -(((v + 0.17) / 0.06) ** 2)
        )
        return self.medial + bulge

    def lung_distance(self, xr: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the lung field's outline (positive inside), patient units."""
        centre_x = self.medial + 0.22 * (self.width - self.medial)
        centre_v = self.cp - 0.03  # the widest level sits just above the costophrenic angle
        half_w = self.width - centre_x
        dx = (xr - centre_x) / half_w
        # Above the widest level the lateral border curves in to a narrow apex; below it is nearly straight.
        dv = np.where(v < centre_v, (centre_v - v) / (centre_v - self.apex), (v - centre_v) / 0.45)
        f = np.abs(dx) ** 2 + np.abs(dv) ** np.where(v < centre_v, 1.6, 2.0)
        d_outline = (1.0 - np.sqrt(f)) * 0.5 * half_w
        d_medial = xr - self.medial_border(v)
        d_base = self.diaphragm(xr) - v
        return np.minimum(np.minimum(d_outline, d_medial), d_base)


@dataclass(frozen=True)
class _Heart:
    """The cardiac silhouette: a tilted ellipse whose lower part hides below the diaphragm."""

    cu: float
    cv: float
    a: float  # long semi-axis
    b: float  # short semi-axis
    angle: float
    half_width: float  # horizontal half-extent of the ellipse
    half_height: float  # vertical half-extent of the ellipse

    def distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the cardiac ellipse (positive inside), patient units."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        p = ((u - self.cu) * c + (v - self.cv) * s) / self.a
        q = (-(u - self.cu) * s + (v - self.cv) * c) / self.b
        return (1.0 - np.sqrt(p * p + q * q)) * self.b

    def pedicle_distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The great vessels and left atrium above the heart, which merge its top into the mediastinum.

        Narrower than the heart and centred over it, so it never changes the cardiac width (the CTR).
        """
        du = (u - self.cu + 0.15 * self.half_width) / (0.45 * self.half_width)
        dv = (v - self.cv + 1.1 * self.half_height) / (0.9 * self.half_height)
        return (1.0 - np.sqrt(du * du + dv * dv)) * 0.45 * self.half_width


def _sides(patient: _Patient, cp: float, dome_height: float, rng: np.random.Generator) -> list[_Hemithorax]:
    """The right (index 0) and left hemithorax for one study; `cp` and `dome_height` set the inspiration."""
    right_w = patient.thorax_half
    left_w = patient.thorax_half * patient.left_ratio
    # The right hemidiaphragm sits a little higher (the liver pushes it up).
    right_cp = cp - rng.uniform(0.0, 0.04)
    return [
        _Hemithorax(
            -1,
            right_w,
            patient.mediastinum,
            right_cp,
            right_cp - dome_height,
            0.45 * right_w,
            patient.apex,
            0.0,
        ),
        _Hemithorax(
            1,
            left_w,
            patient.mediastinum,
            cp,
            cp - dome_height * rng.uniform(0.8, 1.0),
            0.5 * left_w,
            patient.apex + rng.uniform(0.0, 0.03),
            rng.uniform(0.04, 0.07),
        ),
    ]


def _diaphragm_at(sides: list[_Hemithorax], u: np.ndarray | float) -> np.ndarray:
    u = np.asarray(u, dtype=float)
    return np.where(u < 0, sides[0].diaphragm(-u), sides[1].diaphragm(u))


def _heart(patient: _Patient, sides: list[_Hemithorax]) -> _Heart:
    """Size the heart so that its widest extent over the thoracic width is exactly the patient's CTR."""
    thorax = sides[0].width + sides[1].width
    half_width = 0.5 * patient.ctr * thorax
    c, s = math.cos(patient.heart_angle), math.sin(patient.heart_angle)
    a = half_width / math.sqrt(c * c + (s / patient.heart_aspect) ** 2)
    b = a / patient.heart_aspect
    half_height = math.sqrt((a * s) ** 2 + (b * c) ** 2)
    cu = half_width - patient.right_border * 2 * half_width
    # The extreme points of a tilted ellipse lie `offset` below (left border) or above (right border) its
    # centre; both must stay above the diaphragm, or the visible width (and so the CTR) would shrink.
    offset = (a * a - b * b) * s * c / half_width
    cv = float(_diaphragm_at(sides, cu)) - 0.4 * half_height
    cv = min(cv, float(_diaphragm_at(sides, cu + half_width)) - offset - 0.03)
    cv = min(cv, float(_diaphragm_at(sides, cu - half_width)) + offset - 0.03)
    return _Heart(cu, cv, a, b, patient.heart_angle, half_width, half_height)


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Film:
    image: np.ndarray  # (S, S) uint8
    lungs: np.ndarray  # (S, S) bool
    boxes: list[tuple[int, int, int, int]]
    ctr: float
    finding_side: str
    marker_side: str
    device: str


class _View:
    """Maps patient coordinates to pixels for one study (zoom, shift, rotation)."""

    def __init__(self, size: int, scale: float, shift: tuple[float, float], rotation: float) -> None:
        self.size, self.scale, self.shift = size, scale, shift
        self.cos, self.sin = math.cos(rotation), math.sin(rotation)
        axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        x, y = np.meshgrid((axis - shift[0]) / scale, (axis - shift[1]) / scale)
        # float32 halves the cost of every full-grid operation; the geometry needs no more precision.
        self.u = (self.cos * x + self.sin * y).astype(np.float32)
        self.v = (-self.sin * x + self.cos * y).astype(np.float32)
        self.pixel = 2.0 / (size * scale)  # one pixel in patient units

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(N,) patient coordinates -> (N, 2) pixel coordinates (x, y), pixel centres at integers."""
        x = (self.cos * u - self.sin * v) * self.scale + self.shift[0]
        y = (self.sin * u + self.cos * v) * self.scale + self.shift[1]
        return np.stack([(x + 1) / 2 * self.size - 0.5, (y + 1) / 2 * self.size - 0.5], axis=1)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Minimum of two signed distances with the corner rounded over about `k` (polynomial smooth min)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    """Smooth inside indicator from a signed distance (edge `width` in the same units)."""
    return 0.5 * (1.0 + np.tanh(distance / width))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation, (size, size) float32."""
    field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


class _Canvas:
    """Anti-aliased polylines drawn at 4x resolution and averaged down (OpenCV only anti-aliases 8-bit)."""

    factor = 4

    def __init__(self, view: _View) -> None:
        self.view = view
        self.image = np.zeros((view.size * self.factor,) * 2, np.uint8)

    def line(self, u: np.ndarray, v: np.ndarray, width_px: float, value: int = 255) -> None:
        """Draw an open polyline through patient coordinates `u`, `v` (N,), `width_px` output pixels wide."""
        points = (self.view.to_pixels(np.asarray(u), np.asarray(v)) + 0.5) * self.factor - 0.5
        thickness = max(1, round(width_px * self.factor))
        pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits
        cv2.polylines(self.image, [pts], False, int(value), thickness, cv2.LINE_AA, shift=4)

    def segments(self, table: np.ndarray) -> None:
        """Draw separate segments, rows (u1, v1, u2, v2, width_px, value), with one coordinate transform."""
        ends = self.view.to_pixels(table[:, [0, 2]].ravel(), table[:, [1, 3]].ravel())
        ends = np.round(((ends + 0.5) * self.factor - 0.5) * 16).astype(np.int64).reshape(-1, 4)
        for (x1, y1, x2, y2), width, value in zip(ends.tolist(), table[:, 4], table[:, 5], strict=True):
            thickness = max(1, round(width * self.factor))
            cv2.line(self.image, (x1, y1), (x2, y2), int(value), thickness, cv2.LINE_AA, shift=4)

    def ring(self, u: float, v: float, radius_px: float, width_px: float, value: int = 255) -> None:
        """Draw a circle outline centred at patient coordinates (u, v), sizes in output pixels."""
        centre = (self.view.to_pixels(np.array([u]), np.array([v]))[0] + 0.5) * self.factor - 0.5
        cv2.circle(
            self.image,
            tuple(int(c) for c in np.round(centre * 16)),
            round(radius_px * self.factor * 16),
            int(value),
            max(1, round(width_px * self.factor)),
            cv2.LINE_AA,
            shift=4,
        )

    def result(self) -> np.ndarray:
        """The drawing at output size as float32 coverage in [0, 1]."""
        size = self.view.size
        return cv2.resize(self.image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _render_study(patient: _Patient, label: str, rng: np.random.Generator, size: int) -> _Film:
    """Render one PA film of `patient` showing `label`; all randomness comes from `rng`."""
    view = _View(
        size,
        scale=rng.uniform(0.9, 1.03),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.06)),
        rotation=math.radians(rng.uniform(-4.0, 4.0)),
    )
    u, v, px = view.u, view.v, view.pixel
    # Inspiration depth moves the diaphragm: deep breaths give tall lungs and flat domes.
    inspiration = rng.uniform(0.0, 1.0)
    sides = _sides(patient, 0.42 + 0.2 * inspiration, 0.17 - 0.05 * inspiration, rng)
    heart = _heart(patient, sides)
    edge = 0.8 * px

    # --- soft tissue: torso (thicker in the middle, so darker at the flanks), neck and shoulders
    bw = patient.body_half
    # The shoulder line slopes down from the neck; the flanks taper a little towards the waist.
    flank = bw * (1.0 - 0.06 * np.clip(v - 0.4, 0.0, None))
    shoulder_line = -0.96 + 0.24 * np.clip((np.abs(u) - 0.2) / (bw - 0.2), 0.0, 1.2) ** 1.5
    torso = _smooth_min(flank - np.abs(u), v - shoulder_line, 0.04)
    neck = np.minimum(0.23 - np.abs(u), -0.6 - v)
    # Upper arms hang beside the chest, separated from it by a strip of air.
    arm_u = bw + 0.035 + rng.uniform(0.0, 0.04)
    arm_across = np.minimum(np.abs(u) - arm_u, arm_u + 0.24 - np.abs(u))
    arm = _smooth_min(arm_across, v + 0.68, 0.08)
    body = _soft(np.maximum(torso, neck), edge)
    density = 0.42 * _soft(arm, edge) * np.sqrt(np.clip(arm_across / 0.12, 0.0, 1.0))
    thickness = np.clip(1.0 - (u / (bw + 0.04)) ** 2, 0.0, 1.0) ** 0.4
    density += 0.52 * body * (0.3 + 0.7 * thickness)

    # --- lungs (air), heart, abdomen below the diaphragm
    heart_d = heart.distance(u, v)
    below = v - _diaphragm_at(sides, u)
    mediastinum_d = -_smooth_min(-heart_d, -heart.pedicle_distance(u, v), 0.06)
    lung_d = [np.minimum(side.lung_distance(side.sign * u, v), -mediastinum_d) for side in sides]
    lung_soft = [_soft(d, edge) for d in lung_d]
    lungs = np.maximum(lung_d[0], lung_d[1]) > 0
    air = np.maximum(lung_soft[0], lung_soft[1])
    lateral = np.clip(np.abs(u) / patient.thorax_half, 0.0, 1.0)
    density -= air * (0.34 + 0.06 * lateral)  # more lung, less chest wall in front of it laterally
    density += 0.05 * _soft(heart_d, edge) * _soft(-below, edge)
    if rng.random() < 0.7:  # gastric bubble under the left dome
        bubble_u = sides[1].dome_x + rng.uniform(-0.1, 0.1)
        bubble_v = float(sides[1].diaphragm(bubble_u)) + rng.uniform(0.06, 0.1)
        bubble = 1.0 - np.hypot((u - bubble_u) / rng.uniform(0.07, 0.12), (v - bubble_v) / 0.05)
        density -= 0.12 * _soft(bubble * 0.05, edge) * _soft(below - 0.02, edge)
    trachea_u = rng.uniform(-0.02, 0.02)
    trachea = np.minimum(0.036 - np.abs(u - trachea_u - 0.04 * (v + 0.35)), -0.35 - v)
    density -= 0.13 * _soft(trachea, edge)

    # --- hila and vessel markings, fanning out from the hila and fading towards the periphery
    canvas = _Canvas(view)
    segments = []
    for side in sides:
        hilum_u = side.sign * (patient.mediastinum + rng.uniform(0.06, 0.09))
        hilum_v = -0.13 + 0.04 * side.sign + rng.uniform(-0.03, 0.03)
        density += 0.07 * np.exp(-(((u - hilum_u) / 0.06) ** 2 + ((v - hilum_v) / 0.09) ** 2))
        for angle in np.linspace(-75, 75, 8) + rng.uniform(-8, 8, 8):
            segments += _vessel_segments(rng, hilum_u, hilum_v, side.sign, math.radians(angle), size / 58)
    canvas.segments(np.array(segments))
    density += 0.06 * canvas.result() * air

    # --- bones: posterior and anterior ribs, clavicles, spine
    density += _skeleton(view, sides, patient, rng)

    # --- breast shadows add a soft basal density in women, a nuisance for basal findings
    if patient.sex == "F":
        for side in sides:
            xr = side.sign * u
            blob = 1.0 - np.hypot((xr - 0.62 * side.width) / 0.3, (v - side.cp + 0.12) / 0.22)
            density += rng.uniform(0.03, 0.06) * _soft(blob, 0.15) * body

    # --- findings
    boxes: list[tuple[int, int, int, int]] = []
    finding_side = ""
    if label == "pneumonia":
        density, boxes, finding_side = _pneumonia(density, lung_soft, lung_d, view, rng)
    elif label == "effusion":
        density, boxes, finding_side = _effusion(density, lung_d, sides, view, rng)
    elif label == "cardiomegaly":
        box = mask_to_box((heart_d > 0) & (below < 0))
        boxes = [box] if box else []
        finding_side = "both"

    # --- support devices
    device = str(rng.choice(["none", "ecg", "tube"], p=[0.76, 0.14, 0.10]))
    if device != "none":
        density += 0.35 * _device(device, view, sides, rng)

    image = _expose(density, rng, size)
    marker_side = "L" if rng.random() < 0.5 else "R"
    _burn_marker(image, marker_side, rng)
    return _Film(image, lungs, boxes, patient.ctr, finding_side, marker_side, device)


def _vessel_segments(
    rng: np.random.Generator, u0: float, v0: float, sign: int, angle: float, width: float
) -> list[tuple[float, float, float, float, float, int]]:
    """One vessel tree as segments (u1, v1, u2, v2, width_px, value): a tapering, gently curving branch
    with one or two side branches."""
    length = rng.uniform(0.25, 0.45)
    theta = angle + rng.uniform(-0.4, 0.4) * np.linspace(0.0, 1.0, 7)
    u = u0 + np.concatenate([[0.0], np.cumsum(sign * np.cos(theta[1:]) * length / 6)])
    v = v0 + np.concatenate([[0.0], np.cumsum(np.sin(theta[1:]) * length / 6)])
    # Taper: thick and dense near the hilum, thin and faint at the periphery.
    segments = [
        (u[k], v[k], u[k + 1], v[k + 1], width * (1 - k / 7), int(255 * (1 - k / 8))) for k in range(6)
    ]
    for k in rng.choice(np.arange(2, 5), size=rng.integers(1, 3), replace=False):
        branch = theta[k] + rng.choice([-1, 1]) * rng.uniform(0.4, 0.8)
        reach = length * rng.uniform(0.3, 0.5)
        end_u, end_v = u[k] + sign * math.cos(branch) * reach, v[k] + math.sin(branch) * reach
        segments.append((u[k], v[k], end_u, end_v, width * 0.45, 150))
    return segments


def _band(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Bone cross-section: flat-topped with brighter cortical edges (distance to the bone's centre line)."""
    t2 = np.square(distance / half_width)
    return np.exp(-(t2 * t2 * t2)) * (0.75 + 0.25 * np.minimum(t2, 1.0))


def _skeleton(
    view: _View, sides: list[_Hemithorax], patient: _Patient, rng: np.random.Generator
) -> np.ndarray:
    """Bone density (S, S): posterior and anterior ribs, clavicles and the spine."""
    u, v = view.u, view.v
    bones = np.zeros_like(u)
    xr = np.abs(u)
    width = max(s.width for s in sides)
    t = xr / width
    lowest = max(s.cp for s in sides) + 0.12
    spacing = (lowest - patient.apex) / 9.5
    start = patient.apex - 0.02 + rng.uniform(-0.01, 0.01)
    # Posterior ribs leave the spine, rise slightly and sweep down along the lateral chest wall.
    lateral_fade = _soft(width + 0.06 - xr, 0.02) * _soft(xr - 0.05, 0.02)
    for k in range(10):
        level = start + (k + rng.uniform(-0.12, 0.12)) * spacing
        curve = level + width * (0.55 + 0.04 * k + rng.uniform(-0.05, 0.05)) * (1.25 * t**2 - 0.55 * t)
        bones += 0.075 * _band(v - curve, 0.022 + 0.0012 * k) * lateral_fade
    # Anterior ribs run from the lateral wall down towards the sternum and fade where cartilage takes over.
    medial_fade = _soft(xr - 0.25 * width, 0.06) * _soft(width + 0.04 - xr, 0.02)
    for k in range(7):
        level = start + 0.18 + k * spacing * 1.05
        curve = level + 0.32 * width * np.clip(1.0 - t, 0.0, None) ** 1.3 - 0.05
        bones += 0.035 * _band(v - curve, 0.024) * medial_fade
    # Clavicles: an S-shaped bar from the sternal notch out to the shoulder.
    clavicle_v = patient.apex + 0.1 + rng.uniform(-0.02, 0.02)
    s = np.clip((xr - 0.05) / 0.6, 0.0, 1.0)
    curve = clavicle_v + 0.06 - 0.13 * s + 0.03 * np.sin(math.pi * s)
    bones += 0.16 * _band(v - curve, 0.03) * _soft(xr - 0.06, 0.02) * _soft(0.68 - xr, 0.03)
    # Spine: vertebral bodies with darker disc spaces, seen faintly through the mediastinum.
    period = spacing * 1.05
    vertebrae = 0.7 + 0.3 * (np.cos(2 * math.pi * (v - start) / period) > -0.7)
    bones += 0.07 * _band(u, 0.065) * vertebrae
    return bones


def _pneumonia(
    density: np.ndarray,
    lung_soft: list[np.ndarray],
    lung_d: list[np.ndarray],
    view: _View,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], str]:
    """One or two fluffy consolidations inside a lung; returns the density, their boxes and the side."""
    size = view.size
    n = 2 if rng.random() < 0.35 else 1
    chosen_sides = []
    boxes = []
    coarse = _smooth_noise(rng, size, size / 22)
    fine = _smooth_noise(rng, size, size / 70)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    opacity = np.zeros_like(density)
    for attempt in range(12):  # a blob centred near the lung edge is mostly cut off: redraw it
        if len(boxes) == n:
            break
        side = int(rng.random() < 0.45)  # 0: right lung, slightly more often (larger, more vertical bronchus)
        inside = lung_d[side] > min(1.5 * view.pixel, 0.5 * float(lung_d[side].max()))
        rows = np.flatnonzero(inside.any(axis=1))
        zone = rng.choice(3, p=[0.2, 0.3, 0.5])  # upper / middle / lower thirds, bases most often
        lo, hi = rows[0] + (rows[-1] - rows[0]) * np.array([zone, zone + 1]) / 3
        for x1, y1, x2, y2 in boxes:  # a second opacity goes elsewhere, so the two stay distinct
            inside &= ~((xx >= x1 - 2) & (xx < x2 + 2) & (yy >= y1 - 2) & (yy < y2 + 2))
        ys, xs = np.nonzero(inside & (yy >= lo) & (yy <= hi))
        if len(ys) == 0:
            ys, xs = np.nonzero(inside)
            if len(ys) == 0:
                continue
        pick = rng.integers(len(ys))
        radius = rng.uniform(0.1, 0.17, 2) / view.pixel
        blob = np.exp(-0.5 * (((xx - xs[pick]) / radius[0]) ** 2 + ((yy - ys[pick]) / radius[1]) ** 2))
        # Noise modulates the blob (not the background), giving ragged, fluffy edges but no far-off specks.
        patch = np.clip((blob * (1.0 + 0.4 * coarse) - 0.25) * 4.0, 0.0, 1.0) * lung_soft[side]
        small = (patch > 0.5).sum() < 0.35 * math.pi * radius[0] * radius[1]
        if patch.max() < 0.5 or (small and attempt < 10):
            continue
        patch = patch / patch.max() * (0.7 + 0.3 * np.clip(fine, -1.5, 1.5) / 1.5)
        opacity = np.maximum(opacity, patch * rng.uniform(0.8, 1.0))
        boxes.append(mask_to_box(patch > 0.3))
        chosen_sides.append(side)
    names = {0: "right", 1: "left"}
    finding = "both" if len(set(chosen_sides)) == 2 else names[chosen_sides[0]] if chosen_sides else ""
    return density + 0.3 * opacity, boxes, finding


def _effusion(
    density: np.ndarray,
    lung_d: list[np.ndarray],
    sides: list[_Hemithorax],
    view: _View,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], str]:
    """Fluid layering in one or both costophrenic recesses with a meniscus rising along the chest wall."""
    u, v = view.u, view.v
    draw = rng.random()
    chosen = [0] if draw < 0.45 else [1] if draw < 0.8 else [0, 1]
    boxes, filled = [], []
    for index in chosen:
        side = sides[index]
        xr = side.sign * u
        depth = rng.uniform(0.25, 0.5)  # fluid height above the costophrenic angle at the chest wall
        top = side.cp - depth
        reach = np.clip((xr - side.medial) / (side.width - side.medial), 0.0, 1.2)
        meniscus = top + depth * rng.uniform(0.2, 0.4) * (1.0 - reach**2)
        fluid = _soft(v - meniscus, 0.02) * (0.8 + 0.2 * np.clip((v - meniscus) / 0.15, 0.0, 1.0))
        # Fluid replaces air in the lower lung field; as dense as the abdomen, it hides the dome outline.
        layer = fluid * _soft(lung_d[index], view.pixel)
        box = mask_to_box((layer > 0.5) & (lung_d[index] > 0))
        if box is None:
            continue
        density = density + 0.36 * layer
        boxes.append(box)
        filled.append(index)
    names = {(0,): "right", (1,): "left", (0, 1): "both"}
    return density, boxes, names.get(tuple(filled), "")


def _device(kind: str, view: _View, sides: list[_Hemithorax], rng: np.random.Generator) -> np.ndarray:
    """A radiopaque wire: an ECG lead (electrode + curving lead) or a nasogastric tube."""
    canvas = _Canvas(view)
    width = max(1.0, 1.3 * view.size / 128)
    t = np.linspace(0.0, 1.0, 24)
    if kind == "ecg":
        for _ in range(rng.integers(1, 4)):
            eu, ev = rng.uniform(-0.6, 0.6), rng.uniform(-0.7, 0.3)
            end = np.array([rng.choice([-1.2, 1.2]), rng.uniform(-1.0, 1.0)])
            ctrl = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8)])
            curve = np.outer((1 - t) ** 2, [eu, ev]) + np.outer(2 * t * (1 - t), ctrl) + np.outer(t**2, end)
            canvas.line(curve[:, 0], curve[:, 1], width)
            canvas.ring(eu, ev, 0.035 / view.pixel, width * 1.5)
    else:
        stomach_v = float(sides[1].diaphragm(sides[1].dome_x)) + 0.15
        knots_u = np.array([0.0, 0.01, 0.03, 0.1, sides[1].dome_x])
        knots_v = np.array([-1.2, -0.4, 0.15, stomach_v - 0.05, stomach_v])
        path_v = np.interp(t * 4, np.arange(5), knots_v)
        path_u = np.interp(t * 4, np.arange(5), knots_u) + rng.uniform(-0.02, 0.02)
        canvas.line(path_u, path_v, width * 1.2, 200)
    return canvas.result()


def _expose(density: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Film response: exponential attenuation, window/level and gamma, heel effect, blur, grain; -> uint8."""
    mu = rng.uniform(1.6, 2.6)
    film = (1.0 - np.exp(-mu * np.clip(density, 0.0, None))) / (1.0 - math.exp(-mu * 0.9))
    contrast, level = rng.uniform(0.85, 1.2), rng.uniform(-0.07, 0.07)
    film = np.clip(contrast * (film - 0.5) + 0.5 + level, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    heel = 1.0 + rng.uniform(-0.06, 0.06) * np.linspace(-1.0, 1.0, size)[None, :]
    film = film * heel + 0.02 * _smooth_noise(rng, size, size / 10)
    film = cv2.GaussianBlur(film.astype(np.float32), (0, 0), 0.45 * size / 128 + 0.2)
    grain = rng.uniform(0.008, 0.03) * (0.5 + 0.5 * np.sqrt(np.clip(film, 0.0, 1.0)))
    film = film + grain * rng.standard_normal(film.shape)
    return np.clip(np.round(film * 255.0), 0, 255).astype(np.uint8)


def _burn_marker(image: np.ndarray, side: str, rng: np.random.Generator) -> None:
    """Burn the lead side marker ("R" image left, "L" image right) into a top corner of `image`, in place."""
    size = image.shape[0]
    scale = 0.45 * size / 128
    thickness = max(1, round(size / 128))
    (w, h), _ = cv2.getTextSize(side, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = round(size * rng.uniform(0.03, 0.07))
    x = margin if side == "R" else size - margin - w
    cv2.putText(
        image,
        side,
        (x, margin + h),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        int(rng.integers(225, 256)),
        thickness,
        cv2.LINE_AA,
    )
