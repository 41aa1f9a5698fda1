"""probes.predictions (PanDerm's CSV layout) and probes.plots (PNG files)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from panderm.errors import ProbeError
from probes.metrics import classification_metrics
from probes.plots import plot_confusion, plot_reliability, plot_roc, plot_umap
from probes.predictions import summary_row, write_predictions, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_data(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_predictions_header_and_round_trip(tmp_path):
    y, p = make_data(12, 3)
    ids = [f"ISIC_{i:07d}.jpg" for i in range(12)]
    path = write_predictions(tmp_path / "out" / "preds.csv", ids, y, p, ["nev", "mel", "bcc"])
    header = path.read_text().splitlines()[0]
    assert header == (
        "filename,true_label,predicted_label,probability_class_0,probability_class_1,probability_class_2"
    )
    table = pd.read_csv(path)
    assert table["filename"].tolist() == ids
    assert table["true_label"].tolist() == y.tolist()
    assert table["predicted_label"].tolist() == p.argmax(axis=1).tolist()
    np.testing.assert_array_equal(table[[f"probability_class_{i}" for i in range(3)]].to_numpy(), p)
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))


def test_predictions_split_and_extra_columns(tmp_path):
    y, p = make_data(4, 2)
    path = write_predictions(
        tmp_path / "p.csv",
        list("abcd"),
        y,
        p,
        ["benign", "malignant"],
        split="test",
        extra={"site": [1, 2, 3, 4]},
    )
    table = pd.read_csv(path)
    assert list(table.columns)[-2:] == ["split", "site"]
    assert set(table["split"]) == {"test"}
    with pytest.raises(ProbeError, match="clashes"):
        write_predictions(
            tmp_path / "q.csv", list("abcd"), y, p, ["b", "m"], extra={"filename": list("wxyz")}
        )
    with pytest.raises(ProbeError, match="ids has 3"):
        write_predictions(tmp_path / "q.csv", list("abc"), y, p, ["b", "m"])
    with pytest.raises(ProbeError, match="classes has 3 names"):
        write_predictions(tmp_path / "q.csv", list("abcd"), y, p, ["b", "m", "x"])
    assert not (tmp_path / "q.csv").exists()


def test_summary_rows_use_ovr_auroc_and_leave_missing_empty(tmp_path):
    y, p = make_data(60, 4)
    multi = classification_metrics(y, p)
    row = summary_row(multi, "HAM10000")
    assert list(row) == ["Dataset", "W_F1", "AUROC", "BACC", "ACC", "AUPR"]
    assert row["AUROC"] == multi.values["auroc_macro_ovr"]
    assert row["W_F1"] == multi.values["f1_weighted"]

    yb, pb = make_data(30, 2, seed=1)
    binary = summary_row(classification_metrics(yb, pb), "PH2")
    assert binary["AUROC"] == classification_metrics(yb, pb).values["auroc"]

    single = summary_row(classification_metrics(np.zeros(5, dtype=int), pb[:5]), "one-class")
    assert math.isnan(single["AUROC"])

    path = write_summary(tmp_path / "summary.csv", [row, binary, single])
    lines = path.read_text().splitlines()
    assert lines[0] == "Dataset,W_F1,AUROC,BACC,ACC,AUPR"
    assert lines[3].split(",")[2] == ""  # missing AUROC: an empty cell, never 0
    table = pd.read_csv(path)
    assert table["Dataset"].tolist() == ["HAM10000", "PH2", "one-class"]
    with pytest.raises(ProbeError, match="lacks"):
        write_summary(tmp_path / "bad.csv", [{"Dataset": "x"}])


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


@pytest.mark.parametrize("c", [2, 4])
def test_plots_write_pngs(tmp_path, c):
    y, p = make_data(40, c)
    classes = [f"class {k}" for k in range(c)]
    for path in (
        plot_confusion(y, p.argmax(axis=1), classes, tmp_path / "cm.png"),
        plot_confusion(y, p.argmax(axis=1), classes, tmp_path / "cm_counts.png", normalize=False),
        plot_roc(y, p, classes, tmp_path / "roc.png"),
        plot_reliability(y, p, tmp_path / "rel.png", n_bins=10),
    ):
        _assert_png(path)


def test_roc_skips_absent_class_with_warning(tmp_path, caplog):
    y, p = make_data(30, 3)
    y[y == 2] = 0
    with caplog.at_level(logging.WARNING, logger="probes.plots"):
        _assert_png(plot_roc(y, p, ["a", "b", "c"], tmp_path / "roc.png"))
    assert "'c'" in caplog.text


def test_plot_errors(tmp_path):
    with pytest.raises(ProbeError, match="outside"):
        plot_confusion(np.array([0, 3]), np.array([0, 1]), ["a", "b"], tmp_path / "cm.png")
    with pytest.raises(ProbeError, match="labels"):
        plot_umap(np.zeros((4, 3)), np.array([0, 1, 2, 5]), ["a", "b", "c"], tmp_path / "u.png")


def test_umap_small_falls_back_to_pca(tmp_path, caplog):
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="probes.plots"):
        _assert_png(plot_umap(rng.normal(size=(6, 5)), np.arange(6) % 2, ["a", "b"], tmp_path / "pca.png"))
    assert "PCA" in caplog.text


def test_umap_plot(tmp_path, caplog):
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    features = rng.normal(size=(30, 8)) + 3.0 * labels[:, None]
    with caplog.at_level(logging.WARNING, logger="probes.plots"):
        _assert_png(plot_umap(features, labels, ["a", "b", "c"], tmp_path / "umap.png", seed=0))
    assert "PCA" not in caplog.text
