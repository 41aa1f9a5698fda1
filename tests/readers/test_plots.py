"""Reader-study figures: each writes a PNG from its table and names a missing column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.errors import DataError
from readers.plots import (
    plot_answer_changes,
    plot_forest,
    plot_gain_by_experience,
    plot_paired_slopes,
    plot_roc_with_readers,
)


def points() -> pd.DataFrame:
    rows = []
    for r in range(4):
        rows.append(
            {"reader": f"R{r}", "condition": "unaided", "sensitivity": 0.6 + 0.05 * r, "specificity": 0.7}
        )
        rows.append(
            {"reader": f"R{r}", "condition": "ai_aided", "sensitivity": 0.75, "specificity": 0.8 - 0.02 * r}
        )
    return pd.DataFrame(rows)


def test_each_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    score = truth + rng.normal(0, 0.8, 200)
    accuracy = points().assign(accuracy=lambda t: (t["sensitivity"] + t["specificity"]) / 2)
    diffs = pd.DataFrame(
        {
            "reader": ["R0", "R1", "pooled"],
            "difference": [0.05, -0.01, 0.02],
            "ci_low": [0.0, -0.05, 0.0],
            "ci_high": [0.1, 0.03, 0.04],
        }
    )
    gains = pd.DataFrame({"experience": ["junior", "junior", "senior"], "gain": [0.08, 0.05, 0.01]})
    changes = pd.DataFrame({"reader": ["R0", "R1"], "wrong_to_right": [5, 3], "right_to_wrong": [1, 2]})
    paths = [
        plot_roc_with_readers(truth, score, points(), tmp_path / "roc.png"),
        plot_paired_slopes(accuracy, tmp_path / "slopes.png"),
        plot_forest(diffs, tmp_path / "forest.png"),
        plot_gain_by_experience(gains, tmp_path / "gain.png"),
        plot_answer_changes(changes, tmp_path / "changes.png"),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 200 and image.size[1] > 200


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(DataError, match="specificity"):
        plot_roc_with_readers(
            np.array([0, 1]), np.array([0.1, 0.9]), points().drop(columns="specificity"), tmp_path / "x.png"
        )
    with pytest.raises(DataError, match="right_to_wrong"):
        plot_answer_changes(pd.DataFrame({"reader": [1], "wrong_to_right": [1]}), tmp_path / "y.png")
