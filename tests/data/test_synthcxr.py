"""SynthCXR: determinism, reuse, manifest structure, finding geometry, learnability from simple features."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from panderm.data.images import load_image, load_mask, mask_to_box
from panderm.data.manifest import parse_boxes, read_manifest
from panderm.data.synthetic.synthcxr import CLASSES, COLUMNS, generate_synthcxr
from panderm.errors import ConfigError


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` (relative path -> hash)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    path = generate_synthcxr(tmp_path_factory.mktemp("cxr"), n_patients=60, image_size=64, seed=3)
    return path, pd.read_csv(path, dtype={"bbox": str})


# ----------------------------------------------------------------------------------------- determinism, reuse


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = generate_synthcxr(tmp_path / "a", n_patients=12, image_size=48, seed=5)
    second = generate_synthcxr(tmp_path / "b", n_patients=12, image_size=48, seed=5)
    a, b = _digest(first.parent), _digest(second.parent)
    assert len(a) > 2 * 12  # manifest, stamp, one image and one mask per study
    assert a == b


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = generate_synthcxr(tmp_path / "a", n_patients=12, image_size=48, seed=5)
    b = generate_synthcxr(tmp_path / "b", n_patients=12, image_size=48, seed=6)
    assert a.read_bytes() != b.read_bytes()
    shared = set(pd.read_csv(a)["image"]) & set(pd.read_csv(b)["image"])
    assert shared
    differing = [name for name in shared if (a.parent / name).read_bytes() != (b.parent / name).read_bytes()]
    assert len(differing) == len(shared)


def test_matching_stamp_reuses_folder_and_changed_parameter_regenerates(tmp_path: Path) -> None:
    manifest = generate_synthcxr(tmp_path, n_patients=10, image_size=40, seed=1)
    stamp = json.loads((tmp_path / "generator.json").read_text())
    assert (
        stamp["n_patients"] == 10
        and stamp["image_size"] == 40
        and stamp["seed"] == 1
        and stamp["version"] >= 1
    )
    image = tmp_path / pd.read_csv(manifest)["image"].iat[0]
    before = manifest.stat().st_mtime_ns, image.stat().st_mtime_ns

    assert generate_synthcxr(tmp_path, n_patients=10, image_size=40, seed=1) == manifest
    assert (manifest.stat().st_mtime_ns, image.stat().st_mtime_ns) == before

    generate_synthcxr(tmp_path, n_patients=10, image_size=48, seed=1)
    assert manifest.stat().st_mtime_ns != before[0]
    assert load_image(image, mode="L").shape == (48, 48)
    assert json.loads((tmp_path / "generator.json").read_text())["image_size"] == 48


def test_fewer_patients_removes_stale_files(tmp_path: Path) -> None:
    generate_synthcxr(tmp_path, n_patients=10, image_size=40)
    manifest = generate_synthcxr(tmp_path, n_patients=4, image_size=40)
    table = pd.read_csv(manifest)
    on_disk = {f"{p.parent.name}/{p.name}" for p in tmp_path.glob("*/*.png")}
    assert on_disk == set(table["image"]) | set(table["mask"])
    assert table["patient_id"].nunique() == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_patients": 0},
        {"image_size": 16},
        {"seed": -1},
        {"splits": (0.5, 0.3, 0.3)},
        {"splits": (0.0, 0.5, 0.5)},
    ],
)
def test_bad_parameters_raise_config_error(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        generate_synthcxr(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "manifest.csv").exists()


# ------------------------------------------------------------------------------------------------- structure


def test_manifest_loads_with_expected_columns(cxr: tuple[Path, pd.DataFrame]) -> None:
    path, table = cxr
    manifest = read_manifest(path, classes=CLASSES, deep=True)
    assert manifest.classes == CLASSES
    assert list(table.columns) == list(COLUMNS)
    assert set(table["modality"]) == {"xray"} and set(table["view"]) == {"PA"}
    assert table["patient_id"].str.fullmatch(r"SC-P\d{4}").all()
    assert table["patient_id"].nunique() == 60
    studies = table.groupby("patient_id")["study"].agg(["min", "max", "count"])
    assert (studies["min"] == 1).all() and studies["max"].between(1, 2).all()
    assert (studies["count"] == studies["max"]).all()
    assert 1.1 < len(table) / 60 < 1.6  # some patients have a follow-up study
    assert set(table["sex"]) == {"F", "M"} and table["age"].between(18, 95).all()
    assert set(table["marker_side"]) == {"L", "R"}
    assert set(table["device"]) <= {"none", "ecg", "tube"} and (table["device"] != "none").any()
    counts = table["label"].value_counts()
    assert counts.idxmax() == "normal" and set(counts.index) == set(CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_in_every_split_without_patient_leakage(tmp_path: Path, seed: int) -> None:
    table = pd.read_csv(generate_synthcxr(tmp_path, n_patients=40, image_size=32, seed=seed))
    for split in ("train", "val", "test"):
        assert set(table.loc[table["split"] == split, "label"]) == set(CLASSES), split
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    patients = table.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert patients["train"] == pytest.approx(0.7, abs=0.12)


def test_masks_are_binary_lungs_of_image_size(cxr: tuple[Path, pd.DataFrame]) -> None:
    path, table = cxr
    for row in table.itertuples():
        image = load_image(path.parent / row.image, mode="L")
        raw = load_image(path.parent / row.mask, mode="L")
        assert image.shape == raw.shape == (64, 64)
        assert set(np.unique(raw)) == {0, 255}
        lungs = raw > 0
        # Two lung fields, one each side of the image centre, together a sizeable part of the film.
        assert 0.15 < lungs.mean() < 0.6
        assert lungs[:, :28].sum() > 0.25 * lungs.sum() and lungs[:, 36:].sum() > 0.25 * lungs.sum()
        # Lungs are dark: their median is well below the median of the rest of the body-bearing film.
        assert np.median(image[lungs]) + 20 < np.median(image[~lungs & (image > 40)])


def test_finding_boxes_and_ctr_follow_the_labels(cxr: tuple[Path, pd.DataFrame]) -> None:
    path, table = cxr
    for row in table.itertuples():
        boxes = parse_boxes(row.bbox)
        lungs = load_mask(path.parent / row.mask)
        lx1, ly1, lx2, ly2 = mask_to_box(lungs)
        if row.label == "normal":
            assert boxes == [] and row.ctr < 0.5 and pd.isna(row.finding_side)
        elif row.label == "cardiomegaly":
            assert row.ctr > 0.5 and len(boxes) == 1 and row.finding_side == "both"
            x1, _, x2, _ = boxes[0]
            # The heart box spans the recorded share of the thoracic width (the lungs' outer extent).
            assert (x2 - x1) / (lx2 - lx1) == pytest.approx(row.ctr, abs=0.06)
        else:
            assert row.ctr < 0.5 and 1 <= len(boxes) <= 2
            midline = (lx1 + lx2) / 2
            # PA view: the patient's right lung is on the image left.
            on_image_left = {x2 <= midline + 2 for x1, _, x2, _ in boxes}
            on_image_right = {x1 >= midline - 2 for x1, _, x2, _ in boxes}
            if row.finding_side == "right":
                assert on_image_left == {True}
            elif row.finding_side == "left":
                assert on_image_right == {True}
            else:
                assert row.finding_side == "both" and len(boxes) == 2
            for x1, y1, x2, y2 in boxes:
                assert lx1 - 1 <= x1 < x2 <= lx2 + 1 and ly1 - 1 <= y1 < y2 <= ly2 + 1
                if row.label == "effusion":  # fluid collects at the lung bases
                    assert y2 >= ly2 - 3 and y1 > (ly1 + ly2) / 2


def test_boxes_mark_denser_lung(cxr: tuple[Path, pd.DataFrame]) -> None:
    """Inside a pneumonia or effusion box the aerated lung is brighter than the rest of the same lung mask."""
    path, table = cxr
    rows = table[table["label"].isin(["pneumonia", "effusion"])]
    brighter = []
    for row in rows.itertuples():
        image = load_image(path.parent / row.image, mode="L").astype(float)
        lungs = load_mask(path.parent / row.mask).astype(bool)
        inside = np.zeros_like(lungs)
        for x1, y1, x2, y2 in parse_boxes(row.bbox):
            inside[int(y1) : int(y2), int(x1) : int(x2)] = True
        brighter.append(image[lungs & inside].mean() > image[lungs & ~inside].mean() + 8)
    assert len(brighter) >= 10 and np.mean(brighter) >= 0.9


# ---------------------------------------------------------------------------------------------- learnability


def _features(image: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Hand-made radiograph features: lung-zone brightness/texture, basal opacity and a profile-based CTR.

    Intensities are rescaled so the aerated lung is 0 and the surrounding soft tissue is 1, which removes most
    of the exposure variation.
    """
    film = image.astype(np.float32)
    x1, y1, x2, y2 = mask_to_box(lungs)
    thorax = np.zeros_like(lungs)
    thorax[y1:y2, x1:x2] = True
    air, tissue = np.median(film[lungs]), np.median(film[thorax & ~lungs])
    z = (film - air) / max(tissue - air, 1.0)
    columns = np.arange(film.shape[1])[None, :]
    feats, zone_means = [], []
    for side in (columns < (x1 + x2) / 2, columns >= (x1 + x2) / 2):
        lung = lungs & side
        rows = np.flatnonzero(lung.any(axis=1))
        top, bottom = rows[0], rows[-1] + 1
        for k in range(3):
            zone = lung.copy()
            zone[: top + (bottom - top) * k // 3] = False
            zone[top + (bottom - top) * (k + 1) // 3 :] = False
            feats += [z[zone].mean(), z[zone].std()]
            zone_means.append(z[zone].mean())
        base = lung.copy()
        base[: bottom - max(2, (bottom - top) // 6)] = False
        feats.append(z[base].mean())
    zone_means = np.array(zone_means)
    feats += [zone_means.max() - np.median(zone_means), np.abs(zone_means[:3] - zone_means[3:]).max()]
    # CTR: the bright central run of the column profile through the lower third of the thorax.
    profile = z[y1 + (y2 - y1) * 2 // 3 : y2 - (y2 - y1) // 10, x1:x2].mean(axis=0)
    quarter = len(profile) // 4
    centre = quarter + int(np.argmax(profile[quarter : 3 * quarter]))
    bright = profile > 0.55
    left = right = centre
    while left > 0 and bright[left - 1]:
        left -= 1
    while right < len(bright) - 1 and bright[right + 1]:
        right += 1
    feats.append((right - left + 1) / (x2 - x1))
    return np.asarray(feats, dtype=np.float32)


def test_findings_are_learnable_from_simple_features(tmp_path: Path) -> None:
    path = generate_synthcxr(tmp_path, n_patients=150, image_size=64, seed=11)
    table = pd.read_csv(path)
    features = np.stack(
        [
            _features(
                load_image(path.parent / r.image, mode="L"), load_mask(path.parent / r.mask).astype(bool)
            )
            for r in table.itertuples()
        ]
    )
    labels = table["label"].map(CLASSES.index).to_numpy()
    train = (table["split"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    model.fit(features[train], labels[train])
    score = balanced_accuracy_score(labels[~train], model.predict(features[~train]))
    print(f"SynthCXR hand-made features: balanced accuracy on val+test = {score:.3f} (chance 0.25)")
    assert score >= 0.55
    # The profile CTR tracks the recorded CTR.
    assert np.corrcoef(features[:, -1], table["ctr"])[0, 1] > 0.3
