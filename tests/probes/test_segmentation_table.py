"""scripts/segmentation_table.py on a small slice of the real ISIC 2017 and PH2 data (smoke run)."""

from __future__ import annotations

import runpy
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, shared_path


@pytest.mark.slow
@pytest.mark.shared_data
def test_segmentation_table_script_runs_on_isic_and_ph2(tmp_path, monkeypatch):
    isic, ph2 = shared_path("isic2017_seg_256"), shared_path("ph2")
    script = str(REPO / "scripts" / "segmentation_table.py")
    command = [script, f"--isic={isic}", f"--ph2={ph2}"]
    command += [
        "--limit=12",
        "--epochs=1",
        "--pretrain-epochs=1",
        "--heads=linear",  # one head: the head loop is the script's, the heads are tested in test_segment
        "--no-plots",
        f"--out={tmp_path}",
    ]
    monkeypatch.setattr(sys, "argv", command)
    runpy.run_path(script, run_name="__main__")  # in-process: the imports are the test worker's
    table = pd.read_csv(tmp_path / "segmentation_table.csv")
    methods = {f"linear head, {s}" for s in ("pretrained", "random init")}
    methods |= {"baseline: centre ellipse", "baseline: Otsu"}
    for data in ("ISIC 2017 val", "PH2 (external)"):
        rows = table[table["data"] == data]
        assert set(rows["method"]) == methods
        assert rows["images"].eq(12).all()
        assert rows["Dice"].between(0, 1).all() and rows["IoU"].le(rows["Dice"] + 1e-9).all()
    text = (tmp_path / "segmentation_table.md").read_text()
    assert "Dice pretrained - random" in text
    assert not list(tmp_path.rglob("overlay_*.png"))  # --no-plots
