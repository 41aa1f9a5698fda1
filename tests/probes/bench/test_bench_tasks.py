"""`panderm bench` for the task types beyond single-label classification, end to end through the CLI on
data generated here: few-shot and label-efficiency curves (the leaderboard value is the mean over the curve
or, with `curve_point`, the curve at that point, read from each cell's metrics.json), and multi-label tasks
on a ChestMNIST-style npz (macro AUROC with its CI; pairwise paired bootstrap of macro AUROC checked against
a brute-force bootstrap with scikit-learn). Suites are written into a temporary config folder found through
`hydra.searchpath`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from panderm.cli import main
from panderm.errors import ProbeError
from panderm.io import read_csv
from panderm.stats import paired_bootstrap
from probes.bench.leaderboard import MULTILABEL_NOTE, CellPredictions, cell_value, resampled_metric

CURVES = """
name: curves
tasks:
  - name: shots
    type: fewshot
    data: {source: synthderm, name: synth, n_patients: 30, image_size: 32}
    probe_options: {fewshot: {shots: [1, 2], n_episodes: 3}}
  - name: fractions
    type: label_efficiency
    data: {source: synthderm, name: synth, n_patients: 30, image_size: 32}
    probe_options: {label_efficiency: {fractions: [0.5, 1.0], seeds: [0, 1], fit: prototype}}
"""
MULTILABEL = """
name: chest
tasks:
  - name: chest
    type: multilabel
    data: {{source: medmnist, name: chestmnist, path: "{path}"}}
    probes: [linear_sweep]
"""
ML_ENCODERS = ("pixels@8", "random:vit_tiny/8@32,depth=1")
N_BOOT = 40  # the brute-force reference calls scikit-learn 14 x 2 times per resample


def _bench(configs: Path, run: Path, suite: str, encoders: list[str], *extra: str) -> tuple[int, dict]:
    listed = ",".join(f"'{e}'" for e in encoders)
    code = main(
        [
            "bench",
            f"hydra.searchpath=[file://{configs}]",
            f"suite={suite}",
            f"encoders=[{listed}]",
            f"hydra.run.dir={run}",
            "progress=false",
            "plots=false",
            "bootstrap=100",
            f"n_boot={N_BOOT}",
            *extra,
        ]
    )
    return code, json.loads((run / "metrics.json").read_text())


def _suite(configs: Path, name: str, text: str) -> None:
    (configs / "suite").mkdir(parents=True, exist_ok=True)
    (configs / "suite" / f"{name}.yaml").write_text(text)


def _cell_metrics(run: Path, task: str) -> dict:
    (path,) = (run / "cells" / task).rglob("metrics.json")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ curves


@pytest.mark.slow
def test_fewshot_and_label_efficiency_run_and_the_leaderboard_reads_their_curves(tmp_path, capsys):
    _suite(tmp_path / "configs", "curves", CURVES)
    run = tmp_path / "run"
    code, metrics = _bench(tmp_path / "configs", run, "curves", ["pixels@8"], "limit=40")
    assert code == 0, metrics
    assert (metrics["cells"], metrics["ran"], metrics["failed"]) == (2, 2, 0)
    board = pd.read_csv(run / "leaderboard.csv").set_index("task")
    curves = {task: pd.DataFrame(_cell_metrics(run, task)["curve"]) for task in ("shots", "fractions")}
    assert curves["shots"]["shot"].tolist() == [1, 2] and curves["fractions"]["fraction"].tolist() == [
        0.5,
        1.0,
    ]
    for task, curve in curves.items():  # default: the mean over the curve's points
        assert board.loc[task, "value"] == pytest.approx(curve["balanced_accuracy_mean"].mean(), abs=1e-12)
        assert board.loc[task, "summary"] == "mean over the curve" and np.isnan(board.loc[task, "ci_low"])
    table = pd.read_csv(next((run / "cells" / "shots").rglob("curve.csv")))
    assert table["balanced_accuracy_mean"].tolist() == pytest.approx(
        curves["shots"]["balanced_accuracy_mean"]
    )

    # a curve point: the same cells (the point only changes how the leaderboard reads them), nothing re-run
    points = ["suite.tasks.0.curve_point=2", "suite.tasks.1.curve_point=0.5"]
    code, metrics = _bench(tmp_path / "configs", run, "curves", ["pixels@8"], "limit=40", *points)
    assert code == 0 and (metrics["ran"], metrics["skipped"]) == (0, 2)
    board = pd.read_csv(run / "leaderboard.csv").set_index("task")
    shots, fractions = curves["shots"].set_index("shot"), curves["fractions"].set_index("fraction")
    assert board.loc["shots", "value"] == shots.loc[2, "balanced_accuracy_mean"]
    assert board.loc["fractions", "value"] == fractions.loc[0.5, "balanced_accuracy_mean"]
    assert board.loc["shots", "summary"] == "shot=2" and board.loc["fractions", "summary"] == "fraction=0.5"
    assert "balanced_accuracy, shot=2" in (run / "leaderboard.md").read_text()

    # a point the curve lacks is refused before any cell runs, naming the task and its points
    capsys.readouterr()
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"
    bad = [f"hydra.run.dir={tmp_path / 'bad'}", "suite.tasks.0.curve_point=3"]
    code = main(["bench", searchpath, "suite=curves", "encoders=[pixels@8]", *bad])
    error = capsys.readouterr().err
    assert code == 1 and "'shots'" in error and "curve_point=3" in error and "[1.0, 2.0]" in error


def test_curve_point_the_cell_lacks_is_an_error_naming_the_task_and_its_points():
    metrics = {
        "curve": [
            {"fraction": 0.1, "balanced_accuracy_mean": 0.4},
            {"fraction": 1.0, "balanced_accuracy_mean": 0.6},
        ]
    }
    record = {"task": "eff", "type": "label_efficiency", "metric": "balanced_accuracy", "folder": "cells/x"}
    assert cell_value(metrics, {**record, "curve_point": math.nan})[0] == pytest.approx(0.5)
    assert cell_value(metrics, {**record, "curve_point": 0.1})[0] == 0.4
    with pytest.raises(ProbeError, match=r"task 'eff': curve_point=0.5 .*fractions: \[0.1, 1.0\]"):
        cell_value(metrics, {**record, "curve_point": 0.5})


# ------------------------------------------------------------------------------------------- multi-label


def _sklearn_macro(y: np.ndarray, proba: np.ndarray, defined: list[int]):
    """Macro AUROC over `defined` labels on a resample (unknown targets left out), scikit-learn per label."""

    def statistic(rows: np.ndarray) -> float:
        values = []
        for k in defined:
            known = rows[~np.isnan(y[rows, k])]
            values.append(roc_auc_score(y[known, k], proba[known, k]))  # ValueError: one class only
        return float(np.mean(values))

    return statistic


def test_resampled_macro_auroc_leaves_out_unknown_targets_like_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random((30, 4)) < 0.4).astype(float)
    y[rng.random(y.shape) < 0.2] = np.nan  # unknown (e.g. CheXpert's uncertain) targets
    y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 0.0)  # a label with no positive: left out of the mean
    proba = np.round(rng.random(y.shape), 1)  # ties
    indices = rng.integers(0, 30, (50, 30))
    ours = resampled_metric("auroc_macro", CellPredictions(np.arange(30), y, proba, None), indices)
    reference = _sklearn_macro(y, proba, [0, 1, 2])
    for rows, value in zip(indices, ours, strict=True):
        try:
            expected = reference(rows)
        except ValueError:
            expected = np.nan
        assert value == pytest.approx(expected, abs=1e-12, nan_ok=True)
    assert np.isfinite(ours).sum() > 40


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> Path:
    """ChestMNIST-style npz (14 findings, 28x28 grayscale; finding k brightens row band k) run with two
    cheap encoders through `panderm bench`."""
    root = tmp_path_factory.mktemp("chest")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60), ("val", 16), ("test", 40)):
        labels = (rng.random((n, 14)) < 0.3).astype(np.uint8)
        labels[:2, :] = [[1] * 14, [0] * 14]  # every finding has both classes in every split
        images = rng.integers(0, 120, (n, 28, 28)).astype(np.int64)
        for k in range(14):
            images[labels[:, k] == 1, 2 * k : 2 * k + 2, :] += 100
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.clip(0, 255).astype(np.uint8), labels
    np.savez(root / "chestmnist_tiny.npz", **arrays)
    _suite(root / "configs", "chest", MULTILABEL.format(path=root / "chestmnist_tiny.npz"))
    code, metrics = _bench(root / "configs", root / "run", "chest", list(ML_ENCODERS))
    assert code == 0 and (metrics["cells"], metrics["failed"]) == (2, 0), metrics
    return root / "run"


def _predictions(folder: Path) -> pd.DataFrame:
    frame = read_csv(folder / "predictions.csv", text=("filename", "label_set", "uncertain_set"))
    assert (frame["uncertain_set"] == "").all()
    return frame.sort_values("filename")


@pytest.mark.slow
def test_multilabel_leaderboard_and_pairwise_bootstrap(multilabel_run):
    """One test for the run both checks read (a module fixture would be built once per xdist worker)."""
    check_leaderboard_reads_macro_auroc_and_its_ci(multilabel_run)
    check_pairwise_bootstrap_matches_brute_force_and_leaves_out_delong(multilabel_run)


def check_leaderboard_reads_macro_auroc_and_its_ci(multilabel_run):
    board = pd.read_csv(multilabel_run / "leaderboard.csv").set_index("encoder")
    cells = pd.read_csv(multilabel_run / "cells.csv").set_index("encoder")
    for encoder in ML_ENCODERS:
        folder = Path(cells.loc[encoder, "folder"])
        test = json.loads((folder / "metrics.json").read_text())["test"]
        row = board.loc[encoder]
        assert row["metric"] == "auroc_macro" and row["value"] == test["values"]["auroc_macro"]
        assert [row["ci_low"], row["ci_high"]] == test["ci95"]["intervals"]["auroc_macro"]
        frame = _predictions(folder)  # independent: scikit-learn on the written predictions
        classes = json.loads((folder / "metrics.json").read_text())["classes"]
        truth = np.array([[name in cell.split("|") for name in classes] for cell in frame["label_set"]])
        proba = frame[[f"probability_{name}" for name in classes]].to_numpy()
        assert row["value"] == pytest.approx(roc_auc_score(truth, proba, average="macro"), abs=1e-12)


def check_pairwise_bootstrap_matches_brute_force_and_leaves_out_delong(multilabel_run):
    (pair,) = pd.read_csv(multilabel_run / "pairwise.csv").to_dict("records")
    assert pair["note"] == MULTILABEL_NOTE and "p_delong" not in pair
    cells = pd.read_csv(multilabel_run / "cells.csv").set_index("encoder")
    data = {}
    for encoder in (pair["encoder_a"], pair["encoder_b"]):
        folder = Path(cells.loc[encoder, "folder"])
        frame = _predictions(folder)
        classes = json.loads((folder / "metrics.json").read_text())["classes"]
        y = np.array([[float(n in c.split("|")) for n in classes] for c in frame["label_set"]])
        data[encoder] = (y, frame[[f"probability_{n}" for n in classes]].to_numpy())
    (ya, pa), (yb, pb) = data[pair["encoder_a"]], data[pair["encoder_b"]]
    assert np.array_equal(ya, yb)
    labels = list(range(14))
    # the same resamples of whole images for both encoders, scored with scikit-learn
    reference = paired_bootstrap(
        _sklearn_macro(ya, pa, labels), _sklearn_macro(yb, pb, labels), len(ya), n_boot=N_BOOT, seed=0
    )
    assert pair["n_images"] == len(ya) == 40
    assert pair["difference"] == pytest.approx(reference.difference, abs=1e-12)
    assert (pair["low"], pair["high"]) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert pair["p_bootstrap"] == pytest.approx(reference.p_value, abs=1e-12)
    assert pair["p_bootstrap_holm"] == pytest.approx(reference.p_value, abs=1e-12)  # one pair: Holm = raw
    assert "DeLong's test is for one binary outcome" in (multilabel_run / "leaderboard.md").read_text()
