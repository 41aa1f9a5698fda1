"""Longitudinal change probe: pairing, targets, pair features, and the probe's scores and outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from panderm.errors import ConfigError, ProbeError
from panderm.io import read_csv
from panderm.report import Report
from probes.cases import TaskContext
from probes.longitudinal import build_pairs, pair_features, pair_targets, run_longitudinal


def _random_table(rng: np.random.Generator, n_lesions: int = 40) -> pd.DataFrame:
    """Lesions of patients in one split each, 1-4 images per modality at distinct shuffled time points,
    plus images without a lesion id."""
    rows = []
    for k in range(n_lesions):
        patient, split = f"P{k // 3}", ["train", "val", "test"][(k // 3) % 3]
        for modality in ("dermoscopy", "clinical"):
            for t in rng.permutation(10)[: rng.integers(1, 5)]:
                rows.append((f"L{k}", patient, split, modality, int(t)))
    rows += [(None, "P99", "train", "dermoscopy", 0)] * 3
    order = rng.permutation(len(rows))
    table = pd.DataFrame(rows, columns=["lesion_id", "patient_id", "split", "modality", "timepoint"])
    table = table.iloc[order].reset_index(drop=True)
    return table.assign(image=[f"img{i}.png" for i in range(len(table))])


def _expected_pairs(table: pd.DataFrame, modality: str | None, mode: str) -> set[tuple[int, int]]:
    """Brute force: sort each lesion's (and modality's) images by time point and pair them."""
    expected = set()
    for (_, mod), group in table.dropna(subset=["lesion_id"]).groupby(["lesion_id", "modality"]):
        if modality is not None and mod != modality:
            continue
        order = sorted(group.index, key=lambda i: table.at[i, "timepoint"])
        for j in range(1, len(order)):
            expected.add((order[j - 1] if mode == "consecutive" else order[0], order[j]))
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("modality", ["dermoscopy", None])
@pytest.mark.parametrize("mode", ["consecutive", "baseline"])
def test_pairs_stay_within_lesion_modality_and_split(seed: int, modality: str | None, mode: str) -> None:
    table = _random_table(np.random.default_rng(seed))
    pairs = build_pairs(table, modality=modality, mode=mode)
    b, a = pairs["before"].to_numpy(), pairs["after"].to_numpy()
    for column in ("lesion_id", "modality", "split", "patient_id"):
        assert (table[column].to_numpy()[b] == table[column].to_numpy()[a]).all()
    assert (table["timepoint"].to_numpy()[b] < table["timepoint"].to_numpy()[a]).all()
    if modality is not None:
        assert (table["modality"].to_numpy()[a] == modality).all()
    assert set(zip(b.tolist(), a.tolist(), strict=True)) == _expected_pairs(table, modality, mode)
    assert len(pairs) == len(_expected_pairs(table, modality, mode))
    assert (pairs["lesion"].to_numpy() == table["lesion_id"].to_numpy()[a]).all()
    assert (pairs["split"].to_numpy() == table["split"].to_numpy()[a]).all()


def test_dates_and_ordinals_order_alike() -> None:
    table = _random_table(np.random.default_rng(3))
    dates = pd.Timestamp("2019-12-30") + pd.to_timedelta(table["timepoint"] * 40, unit="D")
    dated = table.assign(timepoint=dates.dt.strftime("%Y-%m-%d"))
    ordinal, by_date = build_pairs(table), build_pairs(dated)
    pd.testing.assert_frame_equal(ordinal[["before", "after"]], by_date[["before", "after"]])
    assert by_date["t_before"].iloc[0] == dated["timepoint"].iloc[by_date["before"].iloc[0]]


def test_consecutive_and_baseline_by_hand() -> None:
    table = pd.DataFrame(
        {
            "lesion_id": ["A", "A", "A", "B", "C", "C"],
            "patient_id": ["p", "p", "p", "p", "q", "q"],
            "split": ["train"] * 6,
            "modality": ["dermoscopy"] * 4 + ["dermoscopy", "clinical"],
            "timepoint": [5, 1, 3, 0, 0, 1],
        }
    )
    consecutive = build_pairs(table, mode="consecutive")
    baseline = build_pairs(table, mode="baseline")
    assert list(zip(consecutive["before"], consecutive["after"], strict=True)) == [(1, 2), (2, 0)]
    assert list(zip(baseline["before"], baseline["after"], strict=True)) == [(1, 2), (1, 0)]
    assert list(baseline["t_before"]) == [1, 1] and list(baseline["t_after"]) == [3, 5]
    with pytest.raises(ConfigError, match="mode"):
        build_pairs(table, mode="sideways")
    with pytest.raises(ConfigError, match="timepoint"):
        build_pairs(table.drop(columns="timepoint"))


def test_lesion_across_splits_is_an_error_naming_it() -> None:
    table = pd.DataFrame(
        {
            "image": ["a0.png", "a1.png", "b0.png"],
            "lesion_id": ["A", "A", "B"],
            "split": ["train", "test", "train"],
            "modality": ["dermoscopy"] * 3,
            "timepoint": [0, 1, 0],
        }
    )
    with pytest.raises(ProbeError, match=r"lesion 'A'.*a0\.png, a1\.png"):
        build_pairs(table)


def test_unorderable_time_points_are_an_error() -> None:
    table = pd.DataFrame(
        {"lesion_id": ["A", "A"], "split": ["train"] * 2, "modality": ["dermoscopy"] * 2, "timepoint": [1, 1]}
    )
    with pytest.raises(ProbeError, match="lesion 'A'"):
        build_pairs(table)


def test_pair_features_by_hand() -> None:
    x = np.array([[1.0, 2.0], [4.0, 8.0], [0.0, -1.0]])
    pairs = pd.DataFrame({"before": [0, 2], "after": [1, 0]})
    np.testing.assert_allclose(pair_features(x, pairs, "difference"), [[3, 6], [1, 3]])
    np.testing.assert_allclose(pair_features(x, pairs, "concat"), [[1, 2, 4, 8], [0, -1, 1, 2]])
    np.testing.assert_allclose(pair_features(x, pairs, "both"), [[3, 6, 1, 2, 4, 8], [1, 3, 0, -1, 1, 2]])
    with pytest.raises(ConfigError, match="combine"):
        pair_features(x, pairs, "ratio")


def test_pair_targets_read_the_follow_up_row() -> None:
    table = pd.DataFrame(
        {
            "image": ["a0", "a1", "b0", "b1"],
            "changed": [False, "yes", "0", "maybe"],
            "label": [1, 1, 0, 0],
        }
    )
    pairs = pd.DataFrame({"before": [0, 2], "after": [1, 3]})
    with pytest.raises(ProbeError, match=r"'changed'.*b1"):
        pair_targets(table, pairs)
    np.testing.assert_array_equal(pair_targets(table, pairs.iloc[:1]), [1])
    classes = ["nevus", "melanoma"]
    y = pair_targets(table, pairs, target="label", positive="melanoma", classes=classes)
    np.testing.assert_array_equal(y, [1, 0])
    with pytest.raises(ConfigError, match="positive"):
        pair_targets(table, pairs, target="label", classes=classes)
    with pytest.raises(ConfigError, match="melanocytic"):
        pair_targets(table, pairs, target="label", positive="melanocytic", classes=classes)


def _shift_fixture(seed: int, *, informative: bool, n_lesions: int = 240, dim: int = 8):
    """Two time points per lesion; half the lesions change. With `informative`, changed lesions move along
    a fixed direction between time points and unchanged ones do not; otherwise every lesion moves alike."""
    rng = np.random.default_rng(seed)
    changed = rng.random(n_lesions) < 0.5
    base = rng.normal(size=(n_lesions, dim)) * 3.0
    shift = np.zeros(dim)
    shift[0] = 2.0
    moved = changed if informative else np.ones(n_lesions, dtype=bool)
    later = base + moved[:, None] * shift + rng.normal(scale=0.3, size=(n_lesions, dim))
    features = np.concatenate([base + rng.normal(scale=0.3, size=base.shape), later]).astype(np.float32)
    lesions = [f"L{k}" for k in range(n_lesions)]
    patients = [f"P{k // 2}" for k in range(n_lesions)]
    split = np.array(["train", "val", "test", "test"])[(np.arange(n_lesions) // 2) % 4]
    table = pd.DataFrame(
        {
            "image": [f"L{k}_t{t}.png" for t in (0, 1) for k in range(n_lesions)],
            "lesion_id": lesions * 2,
            "patient_id": patients * 2,
            "split": np.concatenate([split, split]),
            "modality": "dermoscopy",
            "timepoint": np.repeat([0, 1], n_lesions),
            "changed": np.concatenate([np.zeros(n_lesions, dtype=bool), changed]),
            "sex": np.tile(["f", "m"], n_lesions),
        }
    )
    return features, table


def _context(tmp_path, **kwargs) -> TaskContext:
    return TaskContext(run_dir=tmp_path, report=Report("t"), classes=["a", "b"], bootstrap=50, **kwargs)


def test_difference_detects_change_and_matches_sklearn(tmp_path) -> None:
    seen = {}

    def fairness(y, proba, rows):
        seen.update(y=y, proba=proba, rows=rows)
        return {"sex": "scored"}

    x, table = _shift_fixture(0, informative=True)
    context = _context(tmp_path, fairness=fairness, plots=False)
    metrics = run_longitudinal(x, table, context=context)
    written = read_csv(tmp_path / "predictions.csv")
    assert len(written) == (table["split"] == "test").sum() // 2 and set(written["split"]) == {"test"}
    auroc = roc_auc_score(written["target"], written["score"])
    assert metrics["values"]["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert auroc > 0.9
    lo, hi = metrics["ci95"]["intervals"]["auroc"]
    assert lo <= auroc <= hi
    assert metrics["subgroups"] == {"sex": "scored"}
    assert list(seen["rows"]["image"]) == list(written["after_image"])
    np.testing.assert_allclose(seen["proba"][:, 1], written["score"])
    assert "Longitudinal" in context.report.markdown()


def test_target_free_shift_scores_near_chance(tmp_path) -> None:
    x, table = _shift_fixture(1, informative=False)
    metrics = run_longitudinal(x, table, context=_context(tmp_path, plots=False), combine="difference")
    assert abs(metrics["values"]["auroc"] - 0.5) < 0.15


def test_folds_group_patients_and_score_every_pair_once(tmp_path) -> None:
    x, table = _shift_fixture(2, informative=True, n_lesions=80)
    metrics = run_longitudinal(x, table, context=_context(tmp_path, plots=False), folds=4, combine="both")
    written = read_csv(tmp_path / "predictions.csv")
    assert sorted(written["lesion"]) == sorted(table["lesion_id"].unique())
    assert (written.groupby("patient")["fold"].nunique() == 1).all()
    assert set(written["fold"]) == {0, 1, 2, 3}
    assert metrics["n"] == len(written)
    assert metrics["values"]["auroc"] == pytest.approx(roc_auc_score(written["target"], written["score"]))


def test_pairs_figure_is_written(tmp_path) -> None:
    x, table = _shift_fixture(3, informative=True, n_lesions=40)
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(table["image"]):
        Image.fromarray(np.full((8, 8, 3), i % 256, dtype=np.uint8)).save(images / name)
    run = tmp_path / "run"
    context = _context(run, image_path=lambda p: images / p)
    run_longitudinal(x, table, context=context, figure_pairs=2)
    assert (run / "figures" / "pairs.png").stat().st_size > 0
    assert (run / "figures" / "roc.png").is_file()
    assert "figures/pairs.png" in context.report.markdown()
