"""The leaderboard on fake cell folders (metrics.json + predictions): values, ranks and mean ranks against a
hand computation, pairwise tests against a brute-force bootstrap with scikit-learn and against DeLong, Holm,
failed cells and the written files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from panderm.io import write_csv
from panderm.stats import bootstrap_indices, delong_test, holm
from probes.bench.leaderboard import (
    CellPredictions,
    leaderboard_tables,
    pairwise_tests,
    resampled_metric,
    write_leaderboard,
)
from probes.predictions import write_predictions

ENCODERS = ("enc_a", "enc_b", "enc_c")
N_BOOT = 100


def _cell(root, task, kind, encoder, seed, metric, *, status="done", higher=True, eval_split=""):
    folder = root / task / encoder / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "task": task,
        "column": task,
        "type": kind,
        "probe": "linear_sweep" if kind != "segmentation" else "linear",
        "encoder": encoder,
        "seed": seed,
        "folder": str(folder),
        "status": status,
        "error": "" if status == "done" else "RuntimeError: boom",
        "metric": metric,
        "higher_is_better": higher,
        "eval_split": eval_split,
    }


def _dump(cell, metrics):
    (Path(cell["folder"]) / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """binary (auroc; enc_a has two seeds), 3-class (balanced accuracy; enc_c failed), segmentation (dice)."""
    root = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(0)
    y2 = np.r_[np.zeros(25, int), np.ones(15, int)]
    y3 = np.repeat([0, 1, 2], [12, 10, 8])
    ids2 = [f"img{i:03d}.png" for i in range(len(y2))]
    ids3 = [f"x{i:03d}.png" for i in range(len(y3))]
    # hand-set primary metrics: binary 0.9 (mean of 0.88, 0.92) / 0.8 / 0.8; 3-class 0.6 / 0.7 / failed;
    # dice 0.5 / 0.7 / 0.6
    binary = {"enc_a": {0: 0.88, 1: 0.92}, "enc_b": {0: 0.8}, "enc_c": {0: 0.8}}
    three = {"enc_a": 0.6, "enc_b": 0.7}
    dice = {"enc_a": 0.5, "enc_b": 0.7, "enc_c": 0.6}
    cells, truth = [], {}
    for encoder, seeds in binary.items():
        for seed, value in seeds.items():
            cell = _cell(root, "binary", "classification", encoder, seed, "auroc")
            p1 = np.clip(0.5 * y2 + rng.normal(0.25, 0.25 + 0.1 * len(cells), len(y2)), 0, 1)
            proba = np.c_[1 - p1, p1]
            write_predictions(
                f"{cell['folder']}/predictions.csv", ids2, y2, proba, ["neg", "pos"], split="test"
            )
            metrics = {
                "test": {
                    "values": {"auroc": value},
                    "ci95": {"intervals": {"auroc": [value - 0.1, value + 0.05]}},
                }
            }
            if encoder == "enc_b":
                metrics["test"]["subgroups"] = {
                    "sex": {"gaps": {"auroc": {"best": "f", "worst": "m", "gap": 0.2}}}
                }
            _dump(cell, metrics)
            truth[("binary", encoder, seed)] = (y2, proba)
            cells.append(cell)
    for encoder in ENCODERS:
        status = "done" if encoder in three else "failed"
        cell = _cell(root, "three", "classification", encoder, 0, "balanced_accuracy", status=status)
        if status == "done":
            logits = np.eye(3)[y3] * 1.5 + rng.normal(0, 1, (len(y3), 3))
            proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            write_predictions(
                f"{cell['folder']}/predictions.csv", ids3, y3, proba, ["a", "b", "c"], split="test"
            )
            _dump(cell, {"test": {"values": {"balanced_accuracy": three[encoder]}}})
            truth[("three", encoder, 0)] = (y3, proba)
        cells.append(cell)
    for encoder in ENCODERS:
        cell = _cell(root, "seg", "segmentation", encoder, 0, "dice", eval_split="val")
        per_image = pd.DataFrame({"split": "val", "id": [f"m{i}" for i in range(20)], "dice": rng.random(20)})
        write_csv(f"{cell['folder']}/per_image.csv", per_image)
        _dump(cell, {"eval": {"val": {"raw": {"dice": dice[encoder]}}}})
        truth[("seg", encoder, 0)] = per_image.sort_values("id")["dice"].to_numpy()  # paired by image id
        cells.append(cell)
    return pd.DataFrame(cells), truth


def test_values_ranks_and_mean_ranks_equal_a_hand_computation(fixture):
    cells, _ = fixture
    table, values, ranks, gaps = leaderboard_tables(cells)
    assert values.loc["enc_a", "binary"] == pytest.approx(0.9)
    assert table.set_index(["column", "encoder"]).loc[("binary", "enc_a"), "std"] == pytest.approx(
        np.std([0.88, 0.92], ddof=1)
    )
    assert table.set_index(["column", "encoder"]).loc[("binary", "enc_a"), "ci_low"] == pytest.approx(0.8)
    # by hand: binary 0.9 / 0.8 / 0.8 -> 1, 2.5, 2.5; three 0.6 / 0.7 / failed -> 2, 1, -; dice -> 3, 1, 2
    expected = {"enc_a": [1, 2, 3], "enc_b": [2.5, 1, 1], "enc_c": [2.5, np.nan, 2]}
    for encoder, want in expected.items():
        assert ranks.loc[encoder, ["binary", "three", "seg"]].to_numpy(float) == pytest.approx(
            want, nan_ok=True
        )
    mean = ranks.mean(axis=1)
    assert mean.to_dict() == pytest.approx({"enc_a": 2.0, "enc_b": 4.5 / 3, "enc_c": 2.25})
    failed = table.set_index(["column", "encoder"]).loc[("three", "enc_c")]
    assert np.isnan(failed["value"]) and "boom" in failed["error"]
    assert gaps.to_dict("records") == [
        {
            "column": "binary",
            "encoder": "enc_b",
            "seed": 0,
            "subgroup": "sex",
            "best": "f",
            "worst": "m",
            "gap": 0.2,
        }
    ]


def test_pairwise_tests_match_brute_force_bootstrap_and_delong(fixture):
    cells, truth = fixture
    _, values, _, _ = leaderboard_tables(cells)
    pairs = pairwise_tests(cells, values, n_boot=N_BOOT, seed=5)
    binary = pairs[pairs["column"] == "binary"].set_index(["encoder_a", "encoder_b"])
    assert len(binary) == 3
    y, pa = truth[("binary", "enc_a", 0)]  # first common seed
    _, pb = truth[("binary", "enc_b", 0)]
    diffs = [
        roc_auc_score(y[r], pa[r, 1]) - roc_auc_score(y[r], pb[r, 1]) for r in bootstrap_indices(y, N_BOOT, 5)
    ]
    row = binary.loc[("enc_a", "enc_b")]
    assert row["difference"] == pytest.approx(roc_auc_score(y, pa[:, 1]) - roc_auc_score(y, pb[:, 1]))
    assert (row["low"], row["high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    d = np.array(diffs)
    p = min(1, 2 * min((1 + (d <= 0).sum()) / (N_BOOT + 1), (1 + (d >= 0).sum()) / (N_BOOT + 1)))
    assert row["p_bootstrap"] == pytest.approx(p)
    assert row["p_delong"] == pytest.approx(delong_test(y, pa[:, 1], pb[:, 1]).p_value)
    assert binary["p_bootstrap_holm"].to_numpy() == pytest.approx(holm(binary["p_bootstrap"].to_numpy()))
    three = pairs[pairs["column"] == "three"]
    assert len(three) == 1 and "p_delong" not in three.dropna(axis=1).columns  # no DeLong for 3 classes
    y3, p3a = truth[("three", "enc_a", 0)]
    _, p3b = truth[("three", "enc_b", 0)]
    ba = [
        balanced_accuracy_score(y3[r], p3a[r].argmax(1)) - balanced_accuracy_score(y3[r], p3b[r].argmax(1))
        for r in bootstrap_indices(y3, N_BOOT, 5)
    ]
    assert (three["low"].iloc[0], three["high"].iloc[0]) == pytest.approx(
        tuple(np.percentile(ba, [2.5, 97.5]))
    )
    seg = pairs[
        (pairs["column"] == "seg") & (pairs["encoder_a"] == "enc_a") & (pairs["encoder_b"] == "enc_c")
    ]
    da, dc = truth[("seg", "enc_a", 0)], truth[("seg", "enc_c", 0)]
    sd = [(da[r] - dc[r]).mean() for r in bootstrap_indices(np.zeros(20), N_BOOT, 5)]
    assert seg["difference"].iloc[0] == pytest.approx((da - dc).mean())
    assert (seg["low"].iloc[0], seg["high"].iloc[0]) == pytest.approx(tuple(np.percentile(sd, [2.5, 97.5])))


def test_vectorised_resampled_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 50)
    proba = rng.dirichlet(np.ones(3), 50)
    pred = CellPredictions(np.arange(50), y, proba, None)
    idx = bootstrap_indices(y, 20, 1)
    macro = resampled_metric("auroc_macro_ovr", pred, idx)
    want = [np.mean([roc_auc_score(y[r] == k, proba[r, k]) for k in range(3)]) for r in idx]
    assert macro == pytest.approx(want)
    bacc = resampled_metric("balanced_accuracy", pred, idx)
    assert bacc == pytest.approx([balanced_accuracy_score(y[r], proba[r].argmax(1)) for r in idx])
    f1 = resampled_metric("f1_macro", pred, idx[:3])  # the per-resample fallback
    assert np.isfinite(f1).all()


def test_write_leaderboard_files(fixture, tmp_path):
    cells, _ = fixture
    summary = write_leaderboard(cells, tmp_path, notes=["task x skipped: no path"], n_boot=50)
    for name in ("leaderboard.csv", "pairwise.csv", "subgroups.csv", "leaderboard.md", "leaderboard.html"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "figures" / "heatmap.png").stat().st_size > 0
    assert (tmp_path / "figures" / "ranks.png").stat().st_size > 0
    text = (tmp_path / "leaderboard.md").read_text()
    assert "task x skipped" in text and "figures/heatmap.png" in text and "boom" in text
    assert summary["failed_cells"] == 1 and list(summary["mean_rank"]) == ["enc_b", "enc_a", "enc_c"]
