"""The `segmentation_table` bench suite (what scripts/segmentation_table.py computed) on a small slice of the
real ISIC 2017 and PH2 data: a head trained on ISIC, scored on ISIC val and on PH2 (external) with its
segmenter, the centre-ellipse and Otsu baselines, and Dice differences with paired intervals."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from panderm.cli import main
from tests.conftest import shared_path


@pytest.mark.slow
@pytest.mark.shared_data
def test_segmentation_table_suite_runs_on_isic_and_ph2(tmp_path):
    shared_path("isic2017_seg_256"), shared_path("ph2")
    run = tmp_path / "run"
    code = main(
        [
            "bench",
            "suite=segmentation_table",
            "encoders=['random:vit_tiny/8@32,depth=1']",
            "probes=[linear]",  # one head: the heads are tested in test_segment
            "limit=8",
            "max_epochs=1",
            "n_boot=100",
            "progress=false",
            f"hydra.run.dir={run}",
        ]
    )
    assert code == 0
    board = pd.read_csv(run / "leaderboard.csv")
    methods = {"random:vit_tiny/8@32,depth=1", "baseline:centre_ellipse", "baseline:otsu"}
    for task in ("isic2017_seg", "ph2"):
        rows = board[board["column"] == task]
        assert set(rows["encoder"]) == methods
        assert rows["value"].between(0, 1).all()
    ph2_cell = json.loads(next((run / "cells" / "ph2" / "linear").rglob("metrics.json")).read_text())
    assert ph2_cell["checkpoint"].endswith("segmenter") and ph2_cell["eval"]["test"]["raw"]["n_images"] == 8
    per_image = pd.read_csv(next((run / "cells" / "isic2017_seg" / "baselines").rglob("per_image.csv")))
    assert len(per_image) == 8 and (per_image["iou"] <= per_image["dice"] + 1e-9).all()
    pairs = pd.read_csv(run / "pairwise.csv")
    assert len(pairs) == 6 and (pairs["low"] <= pairs["difference"]).all()
