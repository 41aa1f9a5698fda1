"""The `derm` suite end to end on two of its datasets in their published layouts: HAM10000 and DDI from the
real metadata files of ../shared/data/layouts with tiny generated images (the fixture builders of
tests/data/public), `limit`, one cheap encoder; the other six tasks are skipped with their note."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from panderm.cli import main
from tests.conftest import shared_path
from tests.data.public.test_derm_readers_a import make_ham
from tests.data.public.test_derm_readers_b import write_images

pytestmark = pytest.mark.shared_data
LIMIT = 12


@pytest.mark.slow
def test_derm_suite_on_ham10000_and_ddi_layouts(tmp_path):
    ham, _ = make_ham(tmp_path / "HAM10000")
    ddi = tmp_path / "ddi"
    ddi.mkdir()
    source = shared_path("layouts", "ddi", "ddi_metadata.csv")
    shutil.copy(source, ddi / "ddi_metadata.csv")
    write_images(ddi, pd.read_csv(source, dtype=str)["DDI_file"].tolist())
    run = tmp_path / "run"
    code = main(
        [
            "bench",
            "suite=derm",
            "encoders=[pixels@8]",
            f"paths.ham10000={ham}",
            f"paths.ddi={ddi}",
            f"limit={LIMIT}",
            "bootstrap=50",
            "n_boot=50",
            "progress=false",
            "plots=false",
            f"hydra.run.dir={run}",
        ]
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert code == 0, metrics
    assert metrics["tasks"] == ["ham10000", "ddi"] and (metrics["cells"], metrics["failed"]) == (2, 0)
    skipped = ["isic2019", "isic2020", "bcn20000", "pad_ufes20", "derm7pt", "fitzpatrick17k"]
    assert len(metrics["notes"]) == len(skipped)
    report = (run / "leaderboard.md").read_text()
    for name, note in zip(skipped, metrics["notes"], strict=True):
        assert f"task `{name}` skipped" in note and f"paths.{name}=" in note and note in report
    board = pd.read_csv(run / "leaderboard.csv").set_index("task")
    cells = pd.read_csv(run / "cells.csv").set_index("task")
    for task, metric in (("ham10000", "balanced_accuracy"), ("ddi", "auroc")):
        folder = Path(cells.loc[task, "folder"])
        test = json.loads((folder / "metrics.json").read_text())["test"]
        assert board.loc[task, "metric"] == metric and board.loc[task, "value"] == test["values"][metric]
        # the cell saw the limited data: at most LIMIT test images, plus one per label group kept
        assert len(pd.read_csv(folder / "predictions.csv")) <= LIMIT + 7
