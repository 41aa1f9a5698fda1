"""SynthDerm: a deterministic synthetic dermatology archive with real structure (the toolkit's default data).

Each lesion gets class-conditional ABCD attributes (Stolz's dermoscopy rule) and is drawn from them:

- **A**symmetry 0-2: the number of the lesion's two axes about which shape or colour is not mirror-symmetric.
  The outline is a polar radius r(θ) whose even cosine terms (elongation) keep both mirror symmetries;
  odd cosine terms break the symmetry about one axis, sine terms the other; colour gradients follow.
- **B**order 0-8: the number of the eight 45° border segments with an abrupt pigment cut-off. Those segments
  get a sharp, jagged edge (high-order Fourier terms scaled by a class roughness); the others fade out.
- **C**olour 1-6: the colours present among `COLORS`, drawn as regions (soft Voronoi-like partition of smooth
  noise fields) and as class signature structures (milia-like cysts are white, arborising vessels red...).
- **D** (for the score): the number (1-5) of Stolz's differential structures present among `STRUCTURES`
  (pigment network, structureless areas, branched streaks, dots, globules). Class signature structures
  (milia-like cysts and comedo-like openings of seborrheic keratosis, arborising vessels and ovoid nests of
  BCC) are drawn in addition and, as in the original rule, not counted.
- The diameter in mm is recorded as `diameter_mm` (it is not the D of the score).

TDS = 1.3·A + 0.1·B + 0.5·C + 0.5·D (benign < 4.75 <= suspicious <= 5.45 < melanoma in the clinical rule).

The attribute distributions overlap between classes, and a few lesions mimic another class (a featureless
early melanoma that looks like a nevus, a dysplastic nevus that looks like a melanoma...): they are drawn with
the other class's attributes but keep their true label, which caps any classifier below 100%.

Every lesion has a dermoscopy image; some also a clinical photograph and a total-body-photography (TBP) tile,
and a `followup_fraction` of lesions a second dermoscopy time point (melanomas grow and change, benign lesions
stay nearly the same). Nuisances of real archives vary independently of the class: Fitzpatrick skin type I-VI,
illumination, hair, rulers, surgical-marker ink, dermatoscope vignetting, gel bubbles, position, rotation,
scale, blur and noise. Pixels are rendered at 2× and area-downsampled (anti-aliasing). All randomness comes
from `numpy.random.default_rng` seeded by (seed, purpose, lesion index[, time point, modality]), so any image
is reproducible on its own and the output does not depend on generation order.

Manifest columns (`MANIFEST_COLUMNS`): image, split, label (class name), patient_id, lesion_id, timepoint,
modality, mask, bbox (tight box of the mask, x2/y2 exclusive), fitzpatrick (1-6), hair, ruler, marker,
asymmetry, border, colors (;-joined), n_colors, structures (;-joined), n_structures, diameter_mm, tds, changed
(follow-up that changed), px_per_mm (image pixels per mm), age, sex, site, event, time. Splits are by patient.

Outcome (`event`, `time`; the same on every row of a lesion): a simulated time to metastasis in years,
exponential with a log-hazard that grows with the lesion's class and its baseline attributes,

    log λ = log 0.15 + β_class + 0.3·(tds − 4.75) + 0.15·(diameter_mm − 6) + 0.8·changed,
    β_class: melanoma 0, bcc −1.5, nevus −3, seborrheic keratosis −3.5,

(`changed`: a follow-up that changed), censored by an independent follow-up time ~ Uniform(0.5, 10) years;
`event` = 1 when metastasis comes first (time = its time), else 0 (time = the follow-up), time rounded to
0.01 year. About 15-20% of lesions have an event (about 70% of melanomas, 20% of BCCs, 1-5% of the others).
Drawn from its own seeded generator (seed, 9, lesion index), so the images do not depend on it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from panderm.data.images import mask_to_box
from panderm.data.manifest import build_manifest, format_boxes, write_table
from panderm.data.synthetic.common import (
    Layer,
    bezier,
    blend,
    downsample,
    fractal_noise,
    gaussian_blur,
    smooth_noise,
    smoothstep,
    to_uint8,
)
from panderm.errors import ConfigError
from panderm.io import atomic_write_json, stamp_matches

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: event/time outcome columns
CLASSES = ("nevus", "melanoma", "seborrheic_keratosis", "bcc")
CLASS_PRIORS = (0.50, 0.20, 0.18, 0.12)
COLORS = ("light_brown", "dark_brown", "black", "blue_grey", "red", "white")
STRUCTURES = ("network", "structureless", "streaks", "dots", "globules")
MODALITIES = ("dermoscopy", "clinical", "tbp")
SITES = ("head_neck", "trunk", "upper_extremity", "lower_extremity")
MANIFEST_COLUMNS = (
    "image", "split", "label", "patient_id", "lesion_id", "timepoint", "modality", "mask", "bbox",
    "fitzpatrick", "hair", "ruler", "marker", "asymmetry", "border", "colors", "n_colors", "structures",
    "n_structures", "diameter_mm", "tds", "changed", "px_per_mm", "age", "sex", "site", "event", "time",
)  # fmt: skip

# Appearance of each colour on Fitzpatrick I skin (sRGB 0-1). Pigments (the first four) act as absorbers,
# so on darker skin they darken with it and the contrast falls; red and white are blended over the skin.
_COLOR_RGB = np.array(
    [[176, 116, 70], [104, 60, 36], [34, 26, 26], [96, 110, 136], [206, 74, 84], [238, 232, 230]], np.float32
) / np.float32(255.0)
_N_PIGMENTS = 4
_PINK = np.array([232, 150, 160], np.float32) / 255.0
_VESSEL = np.array([168, 24, 40], np.float32) / 255.0
_MARKER_INK = np.array([112, 52, 150], np.float32) / 255.0
_SKIN_RGB = (
    np.array(
        [[238, 206, 186], [226, 184, 152], [200, 150, 112], [160, 112, 78], [112, 76, 52], [70, 48, 36]],
        np.float32,
    )
    / 255.0
)
_FITZPATRICK_P = (0.14, 0.24, 0.22, 0.16, 0.13, 0.11)
_LESIONS_PER_PATIENT_P = (0.40, 0.30, 0.18, 0.12)
_MODALITY_P = {"clinical": 0.45, "tbp": 0.35}


@dataclass(frozen=True)
class _ClassSpec:
    """Class-conditional attribute distributions (deliberately overlapping between classes)."""

    asymmetry_p: tuple[float, float, float]
    border_p: float  # per-segment probability of an abrupt cut-off (B ~ Binomial(8, p))
    color_p: tuple[float, ...]  # per colour in COLORS
    min_colors: int
    need_one_of: tuple[str, ...]  # at least one of these colours
    structure_p: tuple[float, ...]  # per structure in STRUCTURES
    min_structures: int
    diameter_mm: tuple[float, float, float, float]  # log-normal median, log sigma, clip low, clip high
    roughness: float  # jaggedness of the abrupt border segments
    variegation: float  # how strongly colour regions follow the noise fields (vs a concentric layout)
    age: tuple[float, float]
    site_p: tuple[float, float, float, float]


_SPECS = {
    "nevus": _ClassSpec(
        (0.62, 0.28, 0.10), 0.12, (0.92, 0.72, 0.06, 0.05, 0.04, 0.03), 1, ("light_brown", "dark_brown"),
        (0.75, 0.35, 0.04, 0.15, 0.35), 1, (4.6, 0.28, 2.5, 9.0), 0.35, 0.6, (36, 14),
        (0.12, 0.48, 0.18, 0.22),
    ),
    "melanoma": _ClassSpec(
        (0.08, 0.30, 0.62), 0.62, (0.70, 0.90, 0.72, 0.68, 0.38, 0.42), 3, ("black", "blue_grey"),
        (0.70, 0.75, 0.50, 0.70, 0.50), 3, (8.5, 0.32, 4.5, 16.0), 1.0, 1.8, (58, 15),
        (0.14, 0.44, 0.16, 0.26),
    ),
    "seborrheic_keratosis": _ClassSpec(
        (0.30, 0.45, 0.25), 0.55, (0.85, 0.80, 0.45, 0.05, 0.08, 0.62), 1, ("light_brown", "dark_brown"),
        (0.10, 0.70, 0.02, 0.30, 0.20), 1, (8.0, 0.30, 4.0, 15.0), 0.22, 0.9, (64, 12),
        (0.22, 0.56, 0.12, 0.10),
    ),
    "bcc": _ClassSpec(
        (0.25, 0.45, 0.30), 0.35, (0.25, 0.15, 0.08, 0.70, 0.95, 0.70), 2, ("red",),
        (0.00, 0.90, 0.05, 0.30, 0.50), 1, (6.2, 0.32, 3.0, 13.0), 0.55, 1.2, (66, 12),
        (0.62, 0.22, 0.08, 0.08),
    ),
}  # fmt: skip


# Lesions that look like another class (featureless early melanoma, dysplastic nevus, irritated SK,
# pigmented BCC): their ABCD attributes and appearance come from the class they mimic, their label does not.
# These set the realistic ceiling of any classifier on this data.
_MIMICS = {
    "nevus": (0.07, ("melanoma",)),
    "melanoma": (0.14, ("nevus", "seborrheic_keratosis")),
    "seborrheic_keratosis": (0.08, ("melanoma", "nevus")),
    "bcc": (0.07, ("melanoma", "nevus")),
}


@dataclass(frozen=True)
class _Patient:
    index: int
    patient_id: str
    fitzpatrick: int
    skin_rgb: np.ndarray  # (3,) base skin colour, sRGB 0-1
    age: int
    sex: str
    hairiness: float  # probability that an image of this patient shows hair


@dataclass(frozen=True)
class _Lesion:
    """One lesion at one time point: its label, ABCD attributes and the seed of its appearance."""

    index: int
    lesion_id: str
    patient: int
    label: str
    asymmetry: int
    abrupt: tuple[int, ...]  # indices (0-7) of the border segments with an abrupt cut-off; B = len
    colors: tuple[str, ...]
    structures: tuple[str, ...]
    diameter_mm: float
    site: str
    seed: int
    look: str  # the class whose appearance the lesion has: its label, except for mimics
    growth: float = 0.0  # extra border jaggedness gained since baseline (follow-up melanomas)

    @property
    def border(self) -> int:
        return len(self.abrupt)

    @property
    def tds(self) -> float:
        """Total dermoscopy score 1.3·A + 0.1·B + 0.5·C + 0.5·D (D = number of differential structures)."""
        return round(
            1.3 * self.asymmetry + 0.1 * self.border + 0.5 * len(self.colors) + 0.5 * len(self.structures), 2
        )


# --------------------------------------------------------------------------------------------------- planning
def _sample_lesion(index: int, patient: int, label: str, seed: int) -> _Lesion:
    rng = np.random.default_rng([seed, 3, index])
    look = label
    p_mimic, mimics = _MIMICS[label]
    if rng.random() < p_mimic:
        look = mimics[int(rng.integers(len(mimics)))]
    spec = _SPECS[look]
    asymmetry = int(rng.choice(3, p=spec.asymmetry_p))
    border = int(rng.binomial(8, spec.border_p))
    abrupt = tuple(sorted(int(s) for s in rng.permutation(8)[:border]))
    present = rng.random(len(COLORS)) < np.asarray(spec.color_p)
    order = rng.permutation(len(COLORS))  # fill-up order when a constraint is not met
    if not any(present[COLORS.index(c)] for c in spec.need_one_of):
        options = [COLORS.index(c) for c in spec.need_one_of]
        present[options[int(rng.integers(len(options)))]] = True
    for i in sorted(order, key=lambda i: -spec.color_p[i]):
        if present.sum() >= spec.min_colors:
            break
        present[i] = True
    structures = rng.random(len(STRUCTURES)) < np.asarray(spec.structure_p)
    for i in sorted(rng.permutation(len(STRUCTURES)), key=lambda i: -spec.structure_p[i]):
        if structures.sum() >= spec.min_structures:
            break
        structures[i] = True
    median, sigma, lo, hi = spec.diameter_mm
    diameter = float(np.clip(median * np.exp(sigma * rng.standard_normal()), lo, hi))
    site = SITES[int(rng.choice(len(SITES), p=_SPECS[label].site_p))]
    return _Lesion(
        index=index,
        lesion_id=f"SD-L{index + 1:05d}",
        patient=patient,
        label=label,
        asymmetry=asymmetry,
        abrupt=abrupt,
        colors=tuple(c for c, p in zip(COLORS, present, strict=True) if p),
        structures=tuple(s for s, p in zip(STRUCTURES, structures, strict=True) if p),
        diameter_mm=round(diameter, 2),
        site=site,
        seed=int(rng.integers(2**31)),
        look=look,
    )


def _follow_up(lesion: _Lesion, seed: int) -> tuple[_Lesion, bool]:
    """The lesion at its second time point: melanomas grow and change, benign lesions barely move."""
    rng = np.random.default_rng([seed, 4, lesion.index])
    if lesion.label != "melanoma":
        return replace(lesion, diameter_mm=round(lesion.diameter_mm * rng.uniform(0.99, 1.04), 2)), False
    missing = [c for c in ("black", "blue_grey", "red", "white", "dark_brown") if c not in lesion.colors]
    colors = lesion.colors
    if missing:
        new = missing[int(rng.integers(len(missing)))] if rng.random() < 0.5 else missing[0]
        colors = tuple(c for c in COLORS if c in (*lesion.colors, new))
    extra = [s for s in range(8) if s not in lesion.abrupt]
    n_new = min(len(extra), int(rng.integers(1, 4)))
    abrupt = tuple(sorted((*lesion.abrupt, *rng.permutation(extra)[:n_new].tolist())))
    structures = lesion.structures
    absent = [s for s in STRUCTURES if s not in structures]
    if absent and rng.random() < 0.5:
        structures = tuple(
            s for s in STRUCTURES if s in (*structures, absent[int(rng.integers(len(absent)))])
        )
    changed = replace(
        lesion,
        asymmetry=min(2, lesion.asymmetry + int(rng.random() < 0.5)),
        abrupt=abrupt,
        colors=colors,
        structures=structures,
        diameter_mm=round(lesion.diameter_mm * rng.uniform(1.2, 1.5), 2),
        growth=float(rng.uniform(0.3, 0.7)),
    )
    return changed, True


# Outcome model (see the module docstring): log-hazard per year of metastasis.
_BASE_HAZARD = 0.15
_CLASS_LOG_HAZARD = {"melanoma": 0.0, "bcc": -1.5, "nevus": -3.0, "seborrheic_keratosis": -3.5}
_TDS_EFFECT, _DIAMETER_EFFECT, _CHANGED_EFFECT = 0.3, 0.15, 0.8
_FOLLOW_UP_YEARS = (0.5, 10.0)


def _outcome(lesion: _Lesion, changed: bool, seed: int) -> tuple[int, float]:
    """(event, time in years) of a lesion at baseline: exponential time to metastasis, uniform censoring."""
    rng = np.random.default_rng([seed, 9, lesion.index])
    log_hazard = (
        np.log(_BASE_HAZARD)
        + _CLASS_LOG_HAZARD[lesion.label]
        + _TDS_EFFECT * (lesion.tds - 4.75)
        + _DIAMETER_EFFECT * (lesion.diameter_mm - 6.0)
        + _CHANGED_EFFECT * float(changed)
    )
    metastasis = rng.exponential(1.0 / np.exp(log_hazard))
    follow_up = rng.uniform(*_FOLLOW_UP_YEARS)
    event = metastasis <= follow_up
    return int(event), round(float(metastasis if event else follow_up), 2)


def _plan(n_patients: int, seed: int) -> tuple[list[_Patient], list[_Lesion]]:
    """Patients and their baseline lesions; guarantees class and skin-type coverage for larger archives."""
    rng = np.random.default_rng([seed, 0])
    counts = rng.choice(np.arange(1, 5), size=n_patients, p=_LESIONS_PER_PATIENT_P)
    owner = np.repeat(np.arange(n_patients), counts)
    labels = rng.choice(len(CLASSES), size=len(owner), p=CLASS_PRIORS)
    if n_patients >= 30:  # every class in at least 4 patients, so the split can put each class everywhere
        for c in range(len(CLASSES)):
            have = set(owner[labels == c].tolist())
            for p in rng.permutation(n_patients):
                if len(have) >= 4:
                    break
                if p not in have:
                    lesions = np.flatnonzero(owner == p)
                    common = lesions[labels[lesions] == np.bincount(labels).argmax()]
                    target = common[0] if len(common) else lesions[0]
                    if np.sum(labels == labels[target]) > 8:  # do not starve the class we take from
                        labels[target] = c
                        have.add(int(p))
    fitz = rng.choice(np.arange(1, 7), size=n_patients, p=_FITZPATRICK_P)
    if n_patients >= 6:  # every skin type present: recode patients of the commonest types
        for t in range(1, 7):
            if not np.any(fitz == t):
                donors = np.flatnonzero(fitz == np.bincount(fitz).argmax())
                fitz[donors[int(rng.integers(len(donors)))]] = t
    patients = []
    for p in range(n_patients):
        classes = labels[owner == p]
        mean_age = max(_SPECS[CLASSES[c]].age[0] for c in classes)
        jitter = 1.0 + 0.04 * rng.standard_normal() + 0.015 * rng.standard_normal(3)
        patients.append(
            _Patient(
                index=p,
                patient_id=f"SD-P{p + 1:04d}",
                fitzpatrick=int(fitz[p]),
                skin_rgb=np.clip(_SKIN_RGB[fitz[p] - 1] * jitter, 0.05, 1.0),
                age=int(np.clip(mean_age + 12 * rng.standard_normal(), 18, 95)),
                sex=str(rng.choice(["female", "male"])),
                hairiness=float(rng.uniform(0.05, 0.7)),
            )
        )
    lesions = [_sample_lesion(i, int(owner[i]), CLASSES[labels[i]], seed) for i in range(len(owner))]
    return patients, lesions


def _assign_splits(
    patients: list[_Patient], lesions: list[_Lesion], fractions: tuple[float, float, float], seed: int
) -> dict[int, str]:
    """Patient-level split: first one patient per (class, missing split), rarest class first, then fill up."""
    rng = np.random.default_rng([seed, 5])
    names = ("train", "val", "test")
    classes_of: dict[int, set[str]] = {p.index: set() for p in patients}
    for lesion in lesions:
        classes_of[lesion.patient].add(lesion.label)
    split: dict[int, str] = {}
    by_rarity = sorted(CLASSES, key=lambda c: sum(c in s for s in classes_of.values()))
    for c in by_rarity:
        holders = [int(p) for p in rng.permutation(len(patients)) if c in classes_of[int(p)]]
        if len(holders) < 3:
            continue  # too few patients to cover every split; the fill-up below still places them
        covered = {split[p] for p in holders if p in split}
        free = [p for p in holders if p not in split]
        for name in ("test", "val", "train"):
            if fractions[names.index(name)] > 0 and name not in covered and free:
                split[free.pop()] = name
    target = np.round(np.asarray(fractions) * len(patients)).astype(int)
    for p in rng.permutation(len(patients)):
        if int(p) in split:
            continue
        have = np.array([sum(s == n for s in split.values()) for n in names])
        split[int(p)] = names[int(np.argmax(target - have))]
    return split


# ---------------------------------------------------------------------------------------------- appearance
_NT = 720  # samples of the polar radius table
_G = 48  # lesion-space noise grid over normalised coordinates [-2, 2]^2
_THETA = np.linspace(-np.pi, np.pi, _NT, endpoint=False).astype(np.float32)


@dataclass(frozen=True)
class _Texture:
    """Everything random about a lesion's look, drawn once from its seed (shared by all its images)."""

    stack: np.ndarray  # (_G, _G, 8) smooth fields: 6 colour logits, network warp, blotch
    elongation: float
    odd: np.ndarray  # (2,) cos θ, cos 3θ amplitudes (break the symmetry about one axis)
    sine: np.ndarray  # (2,) sin 2θ, sin 3θ amplitudes (break the other)
    jag: np.ndarray  # (_NT,) unit-std high-order border profile
    fade: float  # edge width of gradual segments, in lesion radii
    color_dir: np.ndarray  # (6,) colour gradient weights (colour asymmetry)
    dir_angle: float
    points: np.ndarray  # (64, 4) candidate element positions: radial fraction, angle, size, aspect
    pitch_mm: float  # pigment network pitch
    sectors: np.ndarray  # (8,) random sector order for streaks
    opacity: float


@functools.lru_cache(maxsize=256)
def _texture(seed: int) -> _Texture:
    """The lesion's look from its seed (cached: every image and time point of a lesion shares it)."""
    rng = np.random.default_rng(seed)
    stack = smooth_noise(rng, (_G, _G), 5.0, channels=8) + 0.5 * smooth_noise(rng, (_G, _G), 11.0, channels=8)
    k = np.arange(4, 24, dtype=np.float32)
    jag = ((k**-1.1)[:, None] * np.cos(k[:, None] * _THETA + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
    jag = (jag / jag.std()).astype(np.float32)
    points = np.stack(
        [np.sqrt(rng.random(64)), rng.uniform(-np.pi, np.pi, 64), rng.random(64), rng.uniform(0.5, 1.0, 64)],
        1,
    ).astype(np.float32)
    return _Texture(
        stack=stack.astype(np.float32),
        elongation=float(rng.uniform(0.0, 0.18)),
        odd=rng.uniform([0.16, 0.07], [0.26, 0.12]).astype(np.float32),
        sine=rng.uniform([0.10, 0.07], [0.18, 0.12]).astype(np.float32) * rng.choice([-1, 1], 2),
        jag=jag,
        fade=float(rng.uniform(0.15, 0.32)),
        color_dir=rng.standard_normal(6).astype(np.float32),
        dir_angle=float(rng.uniform(0, 2 * np.pi)),
        points=points,
        pitch_mm=float(rng.uniform(0.32, 0.5)),
        sectors=rng.permutation(8),
        opacity=float(rng.uniform(0.8, 1.0)),
    )


@functools.lru_cache(maxsize=256)
def _vessels(seed: int) -> list[np.ndarray]:
    """Arborising vessels: branching trees as (n, 3) polylines (x, y in lesion radii, relative width)."""
    rng = np.random.default_rng([seed, 1])
    t = np.linspace(0.0, 1.0, 8)[:, None]
    vessels = []
    for _ in range(5):
        a = rng.uniform(0, 2 * np.pi)
        todo = [
            (rng.uniform(0.1, 0.55) * np.array([np.cos(a), np.sin(a)]), rng.uniform(0, 2 * np.pi), 1.0, 0)
        ]
        while todo:
            p, ang, width, depth = todo.pop()
            end = p + rng.uniform(0.2, 0.35) * 0.8**depth * np.array([np.cos(ang), np.sin(ang)])
            mid = (p + end) / 2 + rng.normal(0, 0.04, 2)
            curve = (1 - t) ** 2 * p + 2 * (1 - t) * t * mid + t**2 * end
            if np.max(np.hypot(curve[:, 0], curve[:, 1])) < 0.85:
                vessels.append(np.concatenate([curve, np.full((len(curve), 1), width)], 1).astype(np.float32))
            if depth < 3:  # each branch splits in two thinner ones
                for turn in (-1, 1):
                    todo.append((end, ang + turn * rng.uniform(0.3, 0.8), width * 0.65, depth + 1))
    return vessels


def _radius_table(lesion: _Lesion, tex: _Texture) -> tuple[np.ndarray, np.ndarray]:
    """Outline r(θ) (mean 1) and edge width w(θ) (both in lesion radii) sampled on `_THETA`."""
    t = _THETA
    r = 1.0 + tex.elongation * np.cos(2 * t) + 0.025 * np.cos(4 * t)
    if lesion.asymmetry >= 1:
        r = r + tex.odd[0] * np.cos(t) + tex.odd[1] * np.cos(3 * t)
    if lesion.asymmetry >= 2:
        r = r + tex.sine[0] * np.sin(2 * t) + tex.sine[1] * np.sin(3 * t)
    segment = ((t + np.pi) // (np.pi / 4)).astype(int) % 8
    abrupt = np.isin(segment, lesion.abrupt).astype(np.float32)
    # Smooth the segment indicator around the circle so jagged and smooth stretches blend.
    kernel = np.hanning(41).astype(np.float32)
    padded = np.concatenate([abrupt[-20:], abrupt, abrupt[:20]])
    abrupt = np.convolve(padded, kernel / kernel.sum(), mode="valid").astype(np.float32)
    rough = _SPECS[lesion.look].roughness + lesion.growth
    r = r + 0.06 * rough * abrupt * tex.jag
    r = (r / r.mean()).astype(np.float32)
    width = (tex.fade * (1 - abrupt) + 0.03 * abrupt).astype(np.float32)
    return r, width


def _skin_colors(skin: np.ndarray) -> np.ndarray:
    """Apparent colour (6, 3) of each of `COLORS` on skin of mean colour `skin` (3,)."""
    out = np.empty((len(COLORS), 3), np.float32)
    transmission = np.clip(_COLOR_RGB[:_N_PIGMENTS] / _SKIN_RGB[0], 0.02, 1.0)
    out[:_N_PIGMENTS] = skin * transmission**1.1
    # Blue-grey is dermal pigment seen through the skin: keep it bluish on every skin type.
    out[3] = 0.5 * out[3] + 0.5 * _COLOR_RGB[3] * np.clip(skin.mean() / _SKIN_RGB[0].mean(), 0.45, 1.0)
    out[4] = 0.25 * skin + 0.75 * _COLOR_RGB[4]
    out[5] = 0.15 * skin + 0.85 * _COLOR_RGB[5]
    return out


def _darkest(lesion: _Lesion, palette: np.ndarray) -> np.ndarray:
    """The darkest pigment the lesion has (black, else dark brown, else a shade of light brown)."""
    for name in ("black", "dark_brown"):
        if name in lesion.colors:
            return palette[COLORS.index(name)]
    return palette[COLORS.index("light_brown")] * 0.75


def _brown(lesion: _Lesion, palette: np.ndarray) -> np.ndarray:
    """Dark brown if the lesion has it, else a darker shade of its light brown."""
    if "dark_brown" in lesion.colors or "light_brown" not in lesion.colors:
        return palette[COLORS.index("dark_brown")]
    return palette[COLORS.index("light_brown")] * 0.8


def _draw_lesion(
    canvas: np.ndarray,
    lesion: _Lesion,
    tex: _Texture,
    skin: np.ndarray,
    center: tuple[float, float],
    radius_px: float,
    angle: float,
    detail: float,
) -> np.ndarray:
    """Paint the lesion into `canvas` (S, S, 3) in place; return its boolean mask (S, S).

    `radius_px` is the lesion radius in canvas pixels, `angle` its rotation, `detail` (0-1) how much fine
    structure the modality resolves (1 = dermoscopy).
    """
    size = canvas.shape[0]
    rtab, wtab = _radius_table(lesion, tex)
    extent = radius_px * float(rtab.max()) * 1.02 + 3
    cx, cy = center
    x0, x1 = max(0, int(cx - extent)), min(size, int(np.ceil(cx + extent)) + 1)
    y0, y1 = max(0, int(cy - extent)), min(size, int(np.ceil(cy + extent)) + 1)
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (xs * ca + ys * sa) / np.float32(radius_px)
    v = (-xs * sa + ys * ca) / np.float32(radius_px)
    rho = np.hypot(u, v)
    idx = ((np.arctan2(v, u) + np.pi) * (_NT / (2 * np.pi))).astype(np.int32) % _NT
    rr, ww = rtab[idx], np.maximum(wtab[idx], 1.2 / radius_px)
    inside = rho < rr
    alpha = smoothstep(-ww / 2, ww / 2, rr - rho)
    rel = rho / rr  # 0 at the centre, 1 on the outline, whatever the shape
    scale = np.float32((_G - 1) / 4.0)
    fields = cv2.remap(
        tex.stack, (u + 2) * scale, (v + 2) * scale, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    fields = fields.reshape(*u.shape, -1)
    palette = _skin_colors(skin)
    spec = _SPECS[lesion.look]
    region = _region_colors(lesion, tex, fields, u, v, rel, palette, skin, spec.variegation)
    region *= 1.0 + 0.04 * fields[..., 6:7]  # mottling inside the lesion
    crop = canvas[y0:y1, x0:x1]
    blend(crop, region, alpha * np.float32(tex.opacity))

    ppm = radius_px * 2 / lesion.diameter_mm  # canvas pixels per mm

    def at(a: float, b: float) -> tuple[float, float]:
        """Crop drawing coordinates (OpenCV: pixel centres at integers) of lesion point (a, b) in radii."""
        return (
            cx - x0 - 0.5 + radius_px * (a * float(ca) - b * float(sa)),
            cy - y0 - 0.5 + radius_px * (a * float(sa) + b * float(ca)),
        )

    if detail > 0.3:
        _draw_structures(crop, lesion, tex, fields, u, v, rel, alpha, palette, ppm, detail, at)
    _draw_signatures(crop, lesion, tex, fields, rel, alpha, palette, at, radius_px, angle, ppm)
    mask = np.zeros(canvas.shape[:2], bool)
    mask[y0:y1, x0:x1] = inside
    return mask


def _region_colors(
    lesion: _Lesion,
    tex: _Texture,
    fields: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    rel: np.ndarray,
    palette: np.ndarray,
    skin: np.ndarray,
    variegation: float,
) -> np.ndarray:
    """Soft partition of the lesion into colour regions (softmax over per-colour logits) -> (h, w, 3)."""
    label = lesion.look
    # Which colours fill regions (the rest appear as structures): white/black are structures in SK,
    # red (vessels) and blue-grey (nests) are structures in BCC, which has a pink translucent body.
    region = [c for c in lesion.colors if not (label == "seborrheic_keratosis" and c in ("white", "black"))]
    if label == "bcc":
        region = [c for c in region if c not in ("red", "blue_grey")]
    colors = [palette[COLORS.index(c)] for c in region]
    logits = []
    proj = np.float32(0.0)
    if lesion.asymmetry == 1:
        proj = u  # colour gradient along the axis whose mirror symmetry the outline already breaks
    elif lesion.asymmetry == 2:
        proj = u * np.float32(np.cos(tex.dir_angle)) + v * np.float32(np.sin(tex.dir_angle))
    radial = {
        "nevus": {"dark_brown": -2.5, "black": -4.0, "blue_grey": -3.0, "light_brown": 2.0},
        "melanoma": {"blue_grey": -1.5, "white": -0.5, "black": 0.5},
        "seborrheic_keratosis": {"dark_brown": 0.8},
        "bcc": {},
    }[label]
    bias = {"nevus": {"black": -1.2, "blue_grey": -0.8, "red": -1.2, "white": -1.5}, "bcc": {"white": -0.6}}
    for c in region:
        i = COLORS.index(c)
        logit = variegation * fields[..., i] + bias.get(label, {}).get(c, 0.0) + radial.get(c, 0.0) * rel
        logit = logit + 1.6 * tex.color_dir[i] * proj
        logits.append(logit)
    if label == "bcc":  # the pink body dominates
        pink = (0.55 * _PINK + 0.45 * skin).astype(np.float32)
        colors.append(pink)
        logits.append(np.full(u.shape, 1.4, np.float32) + 0.5 * fields[..., 4])
    if not logits:
        return np.broadcast_to(palette[0], (*u.shape, 3)).copy()
    stacked = np.stack(logits, 0) * np.float32(2.5)  # temperature: fairly crisp region borders
    stacked -= stacked.max(0, keepdims=True)
    weights = np.exp(stacked)
    weights /= weights.sum(0, keepdims=True)
    return np.einsum("khw,kc->hwc", weights, np.asarray(colors, np.float32))


def _draw_structures(
    crop: np.ndarray,
    lesion: _Lesion,
    tex: _Texture,
    fields: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    rel: np.ndarray,
    alpha: np.ndarray,
    palette: np.ndarray,
    ppm: float,
    detail: float,
    at: Callable[[float, float], tuple[float, float]],
) -> None:
    """Stolz's differential structures (network, structureless, streaks, dots, globules) inside the lesion."""
    mel = lesion.look == "melanoma"
    radius_mm = lesion.diameter_mm / 2
    dark = _darkest(lesion, palette)
    brown = _brown(lesion, palette)
    if lesion.look == "bcc" and "blue_grey" in lesion.colors:
        dark = palette[COLORS.index("blue_grey")]
    blotch = np.zeros_like(alpha)
    if "structureless" in lesion.structures and lesion.look in ("nevus", "melanoma"):
        if mel:  # an eccentric structureless blotch
            level = fields[..., 7] + 0.8 * (u * np.cos(tex.dir_angle) + v * np.sin(tex.dir_angle))
            blotch = smoothstep(0.4, 0.9, level) * (rel < 0.95)
        else:  # a homogeneous centre
            blotch = smoothstep(0.55, 0.3, rel)
        blend(crop, (dark if mel else brown) * 0.9, blotch * alpha * 0.8)
    if "network" in lesion.structures:
        pitch = tex.pitch_mm / radius_mm  # in lesion radii
        warp = (0.35 if mel else 0.12) * pitch * fields[..., 6]
        gu, gv = np.pi * (u + warp) / pitch, np.pi * (v - warp) / pitch
        holes = np.minimum(np.abs(np.sin(gu)), np.abs(np.sin(gv)))
        thick = 0.35 + (0.25 * fields[..., 7] if mel else 0.0)
        lines = smoothstep(thick, np.float32(0.08), holes)
        strength = (0.55 if mel else 0.45) * detail * (1 - blotch)
        if mel:
            strength = strength * smoothstep(-0.6, 0.2, fields[..., 7])  # patchy, broken-up network
        else:
            strength = strength * smoothstep(1.05, 0.6, rel)  # fades towards the periphery
        blend(crop, dark * 0.8, lines * strength * alpha)
    pts = tex.points
    layer_dark, layer_glob = Layer(crop.shape[:2]), Layer(crop.shape[:2])
    if "dots" in lesion.structures:
        n = 24 if mel else 14
        for rf, th, sz, _ in pts[:n]:
            rf = 0.45 + 0.5 * rf if mel else 0.55 * rf  # melanoma: peripheral irregular dots; nevus: central
            x, y = at(rf * np.cos(th), rf * np.sin(th))
            layer_dark.circle(x, y, max(1.0, (0.05 + 0.06 * sz * (2 if mel else 1)) * ppm), 0.9)
    if "globules" in lesion.structures:
        for j, (rf, th, sz, _) in enumerate(pts[24:40]):
            if mel:
                rf = 0.3 + 0.6 * rf
            else:
                rf, th = 0.78, np.float32(j * np.pi / 8 + 0.2 * (rf - 0.5))  # a regular rim of globules
            x, y = at(rf * np.cos(th), rf * np.sin(th))
            layer_glob.circle(x, y, max(1.0, (0.12 + 0.12 * sz * (2 if mel else 1)) * ppm), 0.85)
    if "streaks" in lesion.structures:
        sectors = tex.sectors[: 2 if mel else 8]
        for j, (rf, th, sz, _) in enumerate(pts[40:64]):
            sector = sectors[j % len(sectors)]
            th = -np.pi + (sector + rf) * np.pi / 4
            tip = th + 0.05 * (sz - 0.5)
            ends = [at(0.72 * np.cos(th), 0.72 * np.sin(th)), at(0.97 * np.cos(tip), 0.97 * np.sin(tip))]
            layer_dark.polyline(np.array(ends), max(1.0, 0.09 * ppm), 0.85)
    if layer_glob.data.any():
        glob_color = palette[COLORS.index("blue_grey")] if lesion.look == "bcc" else brown * 0.9
        blend(crop, glob_color, layer_glob.alpha() * alpha)
    if layer_dark.data.any():
        blend(crop, dark, layer_dark.alpha() * alpha)


def _draw_signatures(
    crop: np.ndarray,
    lesion: _Lesion,
    tex: _Texture,
    fields: np.ndarray,
    rel: np.ndarray,
    alpha: np.ndarray,
    palette: np.ndarray,
    at: Callable[[float, float], tuple[float, float]],
    radius_px: float,
    angle: float,
    ppm: float,
) -> None:
    """Class signature structures: SK cysts/openings/fissures, BCC vessels/nests/pearly rim."""
    pts = tex.points
    if lesion.look == "seborrheic_keratosis":
        # Cerebriform fissures and a waxy surface: dark ridges along the zero set of a noise field.
        fissure = smoothstep(0.25, 0.0, np.abs(fields[..., 7] + 0.3 * fields[..., 6]))
        blend(crop, _brown(lesion, palette) * 0.85, fissure * alpha * 0.45)
        if "white" in lesion.colors:
            milia = Layer(crop.shape[:2])
            for rf, th, sz, _ in pts[:18]:
                x, y = at(0.85 * rf * np.cos(th), 0.85 * rf * np.sin(th))
                milia.circle(x, y, max(1.0, (0.08 + 0.12 * sz) * ppm), 0.95)
            blend(crop, palette[5], milia.alpha() * alpha)
        openings = Layer(crop.shape[:2])
        n_open = 16 if "black" in lesion.colors else 6
        for rf, th, sz, asp in pts[20 : 20 + n_open]:
            x, y = at(0.85 * rf * np.cos(th), 0.85 * rf * np.sin(th))
            size = max(1.0, (0.1 + 0.14 * sz) * ppm)
            openings.ellipse(x, y, (size, size * asp), float(np.degrees(th)), 0.9)
        ink = _darkest(lesion, palette) * (1.0 if "black" in lesion.colors else 0.7)
        blend(crop, ink, openings.alpha() * alpha)
    elif lesion.look == "bcc":
        # Pearly, slightly raised rim.
        blend(crop, palette[5], smoothstep(0.7, 0.95, rel) * smoothstep(1.05, 0.95, rel) * alpha * 0.25)
        if "blue_grey" in lesion.colors:
            nests = Layer(crop.shape[:2])
            for rf, th, sz, asp in pts[40:47]:
                x, y = at(0.7 * rf * np.cos(th), 0.7 * rf * np.sin(th))
                size = max(1.5, (0.12 + 0.16 * sz) * radius_px)
                nests.ellipse(x, y, (size, size * asp), float(np.degrees(th + angle)), 0.85)
            blend(crop, palette[3], gaussian_blur(nests.alpha(), max(0.5, 0.033 * radius_px)) * alpha)
        if "red" in lesion.colors:
            vessels = Layer(crop.shape[:2])
            for curve in _vessels(lesion.seed):
                xy = np.array([at(a, b) for a, b in curve[:, :2]])
                vessels.polyline(xy, max(1.0, 0.14 * ppm * curve[0, 2]), 0.95)
            blend(crop, _VESSEL, vessels.alpha() * alpha)


def _fov_mm(modality: str, extent_mm: float, size: int, rng: np.random.Generator) -> float:
    """Field of view (mm across) for a modality, clamped so the lesion covers a sensible fraction of it."""
    lo_px = 4.0 / size  # the smallest lesion stays a few pixels wide
    if modality == "dermoscopy":
        fov, lo, hi = rng.uniform(10.0, 18.0), 0.3, 0.8
    elif modality == "clinical":
        fov, lo, hi = rng.uniform(28.0, 55.0), max(0.09, lo_px), 0.45
    else:
        fov, lo, hi = rng.uniform(60.0, 110.0), max(0.05, lo_px), 0.22
    return extent_mm / float(np.clip(extent_mm / fov, lo, hi))


def _skin(patient: _Patient, size: int, modality: str, ppm: float, rng: np.random.Generator) -> np.ndarray:
    """Skin background (S, S, 3): base colour, mottling, erythema and (clinical/TBP) skin furrows.

    Skin has no sharp detail, so it is drawn at half the canvas resolution and upsampled.
    """
    half = size // 2
    shape = (half, half)
    base = patient.skin_rgb * (1.0 + 0.02 * rng.standard_normal() + 0.01 * rng.standard_normal(3))
    mottle = fractal_noise(rng, shape, (3.0, 9.0), (0.025, 0.015))
    redness = smooth_noise(rng, shape, 4.0)
    skin = np.empty((half, half, 3), np.float32)
    skin[:] = base.astype(np.float32)
    skin *= (1.0 + mottle)[..., None]
    skin += (0.02 * redness)[..., None] * np.array([1.0, -0.6, -0.5], np.float32)
    if modality != "dermoscopy":
        # Skin furrows: two crossing families of faint lines with ~0.8 mm pitch, bent by noise.
        y, x = np.ogrid[0:half, 0:half]
        x, y = x.astype(np.float32) * np.float32(2 / ppm), y.astype(np.float32) * np.float32(2 / ppm)
        bend = 0.4 * smooth_noise(rng, shape, 3.0)
        t1, t2 = rng.uniform(0, np.pi, 2)
        f1 = np.abs(np.sin(np.pi * (x * np.cos(t1) + y * np.sin(t1) + bend) / 0.7))
        f2 = np.abs(np.sin(np.pi * (x * np.cos(t2) + y * np.sin(t2) - bend) / 0.9))
        skin *= (1.0 - 0.05 * smoothstep(0.25, 0.0, np.minimum(f1, f2)))[..., None]
    return cv2.resize(skin, (size, size), interpolation=cv2.INTER_LINEAR)


def _draw_hair(
    canvas: np.ndarray, patient: _Patient, ppm: float, modality: str, rng: np.random.Generator
) -> None:
    size = canvas.shape[0]
    layer = Layer((size, size))
    n = int(rng.integers(4, 22)) if modality == "dermoscopy" else int(rng.integers(6, 30))
    width_mm = rng.uniform(0.05, 0.09)
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.4, 1.2) * size
        p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15, 2) * length
        layer.polyline(bezier(p0, p1, p2, 32), max(1.0, width_mm * ppm), rng.uniform(0.75, 0.95))
    light = patient.fitzpatrick <= 2 and rng.random() < 0.3
    color = np.array([0.55, 0.42, 0.28] if light else [0.10, 0.07, 0.06], np.float32)
    blend(canvas, color, layer.alpha())


def _draw_ruler(canvas: np.ndarray, ppm: float, rng: np.random.Generator) -> None:
    """A ruler along one edge: a pale band with 1 mm ticks (coarser where 1 mm is too few pixels)."""
    size = canvas.shape[0]
    band = int(rng.uniform(0.07, 0.11) * size)
    step_mm = next(s for s in (1, 2, 5, 10, 20) if s * ppm >= 4)
    bar = np.full((band, size, 3), rng.uniform(0.82, 0.95), np.float32)
    bar[..., 2] *= rng.uniform(0.85, 1.0)  # slightly yellowish plastic
    ticks = Layer((band, size))
    offset = rng.uniform(0, step_mm * ppm)
    for j, x in enumerate(np.arange(offset, size, step_mm * ppm)):
        length = band * (0.7 if j % 5 == 0 else 0.4)
        ticks.polyline(np.array([[x, 0.0], [x, length]]), max(1.0, 0.08 * size / 64), 1.0)
    blend(bar, np.zeros(3, np.float32), ticks.alpha())
    side = int(rng.integers(4))
    bar = np.rot90(bar, side)
    if side == 0:
        canvas[:band] = bar
    elif side == 1:
        canvas[:, :band] = bar
    elif side == 2:
        canvas[-band:] = bar
    else:
        canvas[:, -band:] = bar


def _draw_marker(
    canvas: np.ndarray, center: tuple[float, float], extent_px: float, ppm: float, rng: np.random.Generator
) -> None:
    """Purple surgical-marker ink: a dotted ring around the lesion or a few dots beside it."""
    size = canvas.shape[0]
    layer = Layer((size, size))
    ring = extent_px * rng.uniform(1.25, 1.6)
    dot = max(1.5, rng.uniform(0.3, 0.6) * ppm)
    if rng.random() < 0.6:
        n = int(rng.integers(8, 16))
        for a in np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 1):
            jitter = rng.normal(0, 0.05) * ring
            layer.circle(
                center[0] + (ring + jitter) * np.cos(a), center[1] + (ring + jitter) * np.sin(a), dot, 0.8
            )
    else:
        for _ in range(int(rng.integers(2, 5))):
            a = rng.uniform(0, 2 * np.pi)
            layer.circle(center[0] + ring * np.cos(a), center[1] + ring * np.sin(a), dot * 1.5, 0.85)
    blend(canvas, _MARKER_INK, gaussian_blur(layer.alpha(), 0.6 * size / 128))


def _draw_background_nevi(
    canvas: np.ndarray, patient: _Patient, center: tuple[float, float], extent_px: float, ppm: float,
    rng: np.random.Generator,
) -> None:  # fmt: skip
    """TBP tiles: a few small benign nevi and, on fair skin, freckles, kept away from the target lesion."""
    size = canvas.shape[0]
    palette = _skin_colors(patient.skin_rgb)
    layer_nevi, layer_freckles = Layer((size, size)), Layer((size, size))
    for _ in range(int(rng.integers(2, 8))):
        x, y = rng.uniform(0.05, 0.95, 2) * size
        if np.hypot(x - center[0], y - center[1]) > extent_px + 2.5 * ppm:
            layer_nevi.circle(x, y, max(1.0, rng.uniform(0.8, 2.0) * ppm), rng.uniform(0.6, 0.9))
    if patient.fitzpatrick <= 3 and rng.random() < 0.6:
        for _ in range(int(rng.integers(10, 40))):
            x, y = rng.uniform(0, 1, 2) * size
            if np.hypot(x - center[0], y - center[1]) > extent_px + 1.5 * ppm:
                layer_freckles.circle(x, y, max(1.0, rng.uniform(0.3, 0.7) * ppm), rng.uniform(0.3, 0.6))
    blend(canvas, palette[1], gaussian_blur(layer_nevi.alpha(), 1.0))
    blend(canvas, palette[0], gaussian_blur(layer_freckles.alpha(), 1.0))


def _draw_bubbles(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Immersion-gel bubbles: thin bright rims with a highlight."""
    size = canvas.shape[0]
    rim, glint = Layer((size, size)), Layer((size, size))
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(0.1, 0.9, 2) * size
        r = rng.uniform(0.02, 0.07) * size
        cv2.circle(
            rim.data, (int(x * 16), int(y * 16)), int(r * 16), 200, max(1, int(size / 128)), cv2.LINE_AA, 4
        )
        glint.circle(x - 0.35 * r, y - 0.35 * r, max(1.0, 0.2 * r), 0.7)
    blend(canvas, np.ones(3, np.float32), 0.6 * rim.alpha() + glint.alpha())


def _illumination(size: int, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative light field (S, S): gradient, flash hot spot (clinical) and lens fall-off.

    The field is smooth, so it is evaluated on a 32×32 grid and upsampled.
    """
    n = 32
    y, x = np.ogrid[0:n, 0:n]
    x, y = (x.astype(np.float32) + 0.5) / n - 0.5, (y.astype(np.float32) + 0.5) / n - 0.5
    a = rng.uniform(0, 2 * np.pi)
    gradient = {"dermoscopy": 0.12, "clinical": 0.3, "tbp": 0.2}[modality] * rng.uniform(0, 1)
    light = 1.0 + gradient * (x * np.cos(a) + y * np.sin(a))
    if modality == "clinical":
        fx, fy = rng.uniform(-0.3, 0.3, 2)
        light = light + rng.uniform(0.05, 0.25) * np.exp(-((x - fx) ** 2 + (y - fy) ** 2) / (2 * 0.18**2))
    light = light * (1.0 - rng.uniform(0.0, 0.25) * (x**2 + y**2) * 2)
    return cv2.resize(light.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def _dermatoscope_vignette(size: int, rng: np.random.Generator) -> np.ndarray:
    """Transmission (S, S) of the dermatoscope's circular field: ~1 inside, dark outside the lens circle."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size) - 0.5
    cx, cy = rng.uniform(-0.04, 0.04, 2)
    radius = rng.uniform(0.5, 0.62)
    d = np.hypot(x - cx, y - cy)
    return (0.06 + 0.94 * smoothstep(radius + 0.015, radius - 0.015, d)).astype(np.float32)


def _render_image(
    lesion: _Lesion, patient: _Patient, modality: str, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Render one image of `lesion` in `modality`.

    Returns the RGB image (H, W, 3) uint8, the binary mask (H, W) uint8 {0, 1} and the acquisition metadata
    (`hair`, `ruler`, `marker`, `px_per_mm`). H = W = `image_size`.
    """
    ss = 2
    size = image_size * ss
    tex = _texture(lesion.seed)
    rtab, _ = _radius_table(lesion, tex)
    radius_mm = lesion.diameter_mm / 2
    extent_mm = 2 * radius_mm * float(rtab.max())
    fov = _fov_mm(modality, extent_mm, image_size, rng)
    ppm = size / fov
    radius_px = radius_mm * ppm
    extent_px = radius_px * float(rtab.max())
    margin = extent_px + 0.03 * size
    if modality == "dermoscopy":
        jitter = min(0.2 * size, max(0.0, size / 2 - margin))
        center = (size / 2 + rng.uniform(-jitter, jitter), size / 2 + rng.uniform(-jitter, jitter))
    else:
        center = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    angle = float(rng.uniform(0, 2 * np.pi))

    canvas = _skin(patient, size, modality, ppm, rng)
    if modality == "tbp":
        _draw_background_nevi(canvas, patient, center, extent_px, ppm, rng)
    detail = {"dermoscopy": 1.0, "clinical": 0.45, "tbp": 0.0}[modality]
    mask = _draw_lesion(canvas, lesion, tex, canvas.mean((0, 1)), center, radius_px, angle, detail)

    hair = rng.random() < patient.hairiness * (1.0 if modality == "dermoscopy" else 0.6)
    ruler = rng.random() < {"dermoscopy": 0.12, "clinical": 0.2, "tbp": 0.05}[modality]
    marker = rng.random() < {"dermoscopy": 0.1, "clinical": 0.15, "tbp": 0.0}[modality]
    if marker:
        _draw_marker(canvas, center, extent_px, ppm, rng)
    if hair:
        _draw_hair(canvas, patient, ppm, modality, rng)
    if modality == "dermoscopy" and rng.random() < 0.15:
        _draw_bubbles(canvas, rng)
    canvas *= _illumination(size, modality, rng)[..., None]
    if ruler:
        _draw_ruler(canvas, ppm, rng)
    if modality == "dermoscopy" and rng.random() < 0.55:
        canvas *= _dermatoscope_vignette(size, rng)[..., None]
    # Devices and exposure differ between clinics: a global gain and a colour cast per image.
    # Colour casts run mostly along the warm-cool axis (colour temperature), a little along green-magenta.
    temperature, tint = rng.normal(0, 0.07), rng.normal(0, 0.02)
    cast = np.exp(temperature * np.array([1.0, 0.0, -1.0]) + tint * np.array([-0.5, 1.0, -0.5]))
    canvas *= (np.exp(rng.normal(0, 0.2)) * cast).astype(np.float32)
    # A camera's soft highlight roll-off instead of hard clipping of over-exposed skin.
    knee = np.float32(0.8)
    over = canvas > knee
    canvas[over] = knee + (1 - knee) * np.tanh((canvas[over] - knee) / (1 - knee))

    blur = {"dermoscopy": (0.3, 0.8), "clinical": (0.8, 2.0), "tbp": (1.0, 2.0)}[modality]
    canvas = gaussian_blur(canvas, rng.uniform(*blur))
    image = downsample(canvas, image_size)
    if modality == "tbp":  # TBP tiles are cut from a low-resolution body photograph
        low = max(8, image_size // 2)
        image = cv2.resize(downsample(image, low), (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    sigma = {"dermoscopy": 0.008, "clinical": 0.015, "tbp": 0.02}[modality] * rng.uniform(0.5, 1.5)
    image = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    mask_small = downsample(mask.astype(np.float32), image_size) >= 0.5
    if not mask_small.any():  # a tiny lesion still owns the pixel at its centre
        mask_small[min(image_size - 1, int(center[1] / ss)), min(image_size - 1, int(center[0] / ss))] = True
    meta = {
        "hair": bool(hair),
        "ruler": bool(ruler),
        "marker": bool(marker),
        "px_per_mm": round(image_size / fov, 3),
    }
    return to_uint8(image), mask_small.astype(np.uint8), meta


# ------------------------------------------------------------------------------------------------ archive
def _check_params(
    n_patients: int, image_size: int, followup_fraction: float, splits: tuple[float, ...]
) -> None:
    problems = []
    if int(n_patients) < 1:
        problems.append(f"n_patients must be >= 1 (got {n_patients})")
    if not 32 <= int(image_size) <= 1024:
        problems.append(f"image_size must be in 32..1024 pixels (got {image_size})")
    if not 0.0 <= followup_fraction <= 1.0:
        problems.append(f"followup_fraction must be in [0, 1] (got {followup_fraction})")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6 or splits[0] <= 0:
        problems.append(
            f"splits must be three non-negative fractions (train > 0) summing to 1 (got {splits})"
        )
    if problems:
        raise ConfigError("generate_synthderm: " + "; ".join(problems))


def generate_synthderm(
    out_dir: str | os.PathLike[str],
    *,
    n_patients: int = 120,
    image_size: int = 128,
    seed: int = 0,
    followup_fraction: float = 0.25,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    modalities: Sequence[str] = MODALITIES,
) -> Path:
    """Write a SynthDerm archive (images/, masks/, manifest.csv) under `out_dir`; return the manifest path.

    `modalities` limits which images are written (dermoscopy always is): the others' images are not rendered,
    and every written image is the one the full archive has.

    Images are square PNGs of `image_size` pixels; masks are {0, 255} PNGs of the same size. The archive is
    deterministic for a `seed`, and an existing archive whose ``generator.json`` stamp records the same
    parameters (and generator version) is reused without writing anything. Raises `ConfigError` for invalid
    parameters and `ManifestError` if the written archive fails validation (a bug).
    """
    out = Path(out_dir)
    splits = tuple(float(s) for s in splits)
    _check_params(n_patients, image_size, followup_fraction, splits)
    if unknown := sorted(set(modalities) - set(MODALITIES)):
        raise ConfigError(f"generate_synthderm: modalities {unknown} unknown (choose from {MODALITIES})")
    params = {
        "generator": "synthderm",
        "version": GENERATOR_VERSION,
        "n_patients": int(n_patients),
        "image_size": int(image_size),
        "seed": int(seed),
        "followup_fraction": float(followup_fraction),
        "splits": list(splits),
        "modalities": [m for m in MODALITIES if m in modalities or m == "dermoscopy"],
    }
    manifest_path, stamp_path = out / "manifest.csv", out / "generator.json"
    if manifest_path.is_file() and stamp_matches(stamp_path, params):
        log.debug("reusing SynthDerm archive at %s", out)
        return manifest_path
    stamp_path.unlink(missing_ok=True)  # the archive is invalid until the new stamp is written
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    patients, lesions = _plan(int(n_patients), int(seed))
    split_of = _assign_splits(patients, lesions, splits, int(seed))
    rng = np.random.default_rng([int(seed), 6])
    extra = {m: rng.random(len(lesions)) < p for m, p in _MODALITY_P.items()}
    n_follow = round(followup_fraction * len(lesions))
    follow = set(rng.permutation(len(lesions))[:n_follow].tolist())

    rows = []
    for lesion in lesions:
        patient = patients[lesion.patient]
        shots = [(lesion, 0, "dermoscopy", False)]
        shots += [
            (lesion, 0, m, False) for m in ("clinical", "tbp") if extra[m][lesion.index] and m in modalities
        ]
        grew = False
        if lesion.index in follow:
            later, grew = _follow_up(lesion, int(seed))
            shots.append((later, 1, "dermoscopy", grew))
        event, time = _outcome(lesion, grew, int(seed))
        for state, timepoint, modality, changed in shots:
            image_rng = np.random.default_rng(
                [int(seed), 1, lesion.index, timepoint, MODALITIES.index(modality)]
            )
            image, mask, meta = _render_image(state, patient, modality, int(image_size), image_rng)
            name = f"{lesion.lesion_id}_t{timepoint}_{modality}"
            Image.fromarray(image).save(out / "images" / f"{name}.png", compress_level=1)
            Image.fromarray(mask * np.uint8(255)).save(out / "masks" / f"{name}_mask.png", compress_level=1)
            rows.append(
                {
                    "image": f"images/{name}.png",
                    "split": split_of[patient.index],
                    "label": state.label,
                    "patient_id": patient.patient_id,
                    "lesion_id": lesion.lesion_id,
                    "timepoint": timepoint,
                    "modality": modality,
                    "mask": f"masks/{name}_mask.png",
                    "bbox": format_boxes([mask_to_box(mask)]),
                    "fitzpatrick": patient.fitzpatrick,
                    "hair": meta["hair"],
                    "ruler": meta["ruler"],
                    "marker": meta["marker"],
                    "asymmetry": state.asymmetry,
                    "border": state.border,
                    "colors": ";".join(state.colors),
                    "n_colors": len(state.colors),
                    "structures": ";".join(state.structures),
                    "n_structures": len(state.structures),
                    "diameter_mm": state.diameter_mm,
                    "tds": state.tds,
                    "changed": changed,
                    "px_per_mm": meta["px_per_mm"],
                    "age": patient.age,
                    "sex": patient.sex,
                    "site": state.site,
                    "event": event,
                    "time": time,
                }
            )
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    build_manifest(table, out, classes=CLASSES, source=str(manifest_path))
    write_table(table, manifest_path)
    _remove_stale(out, {Path(r).name for r in table["image"]} | {Path(r).name for r in table["mask"]})
    atomic_write_json(stamp_path, params)
    return manifest_path


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete generator-named PNGs left by an earlier, different generation (never other files)."""
    for folder in ("images", "masks"):
        for path in (out / folder).glob("SD-L*.png"):
            if path.name not in keep:
                path.unlink()
