"""The case-level probes (`probe=longitudinal|survival|fusion`) end to end through `panderm bench` on a
SynthDerm archive generated here (every lesion followed up): each cell is an ordinary probe run whose files
let anyone recompute its numbers, and the leaderboard reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

from panderm.cli import main

SUITE = """
name: cases
tasks:
  - name: change
    type: longitudinal
    data: {source: synthderm, name: synth, n_patients: 40, image_size: 32, options: {followup_fraction: 1.0}}
    probe_options: {longitudinal: {folds: 3, combine: both}}
  - name: prognosis
    type: survival
    data: {source: synthderm, name: synth, n_patients: 40, image_size: 32, options: {followup_fraction: 1.0}}
    probe_options: {survival: {folds: 3, inner_folds: 2, n_components: 8}}
  - name: fusion
    type: fusion
    data: {source: synthderm, name: synth, n_patients: 40, image_size: 32, options: {followup_fraction: 1.0}}
    probe_options: {fusion: {metadata: [age, sex, site], modalities: [dermoscopy, clinical]}}
    subgroups: [sex]
"""
ENCODER = "random:vit_tiny/8@32,depth=1"


def _bench(configs: Path, run: Path) -> tuple[int, dict]:
    code = main(
        [
            "bench",
            f"hydra.searchpath=[file://{configs}]",
            "suite=cases",
            f"encoders=['{ENCODER}']",
            f"hydra.run.dir={run}",
            "progress=false",
            "plots=false",
            "bootstrap=50",
            "n_boot=20",
        ]
    )
    return code, json.loads((run / "metrics.json").read_text())


def _cell(run: Path, task: str) -> Path:
    (path,) = (run / "cells" / task).rglob("metrics.json")
    return path.parent


@pytest.mark.slow
def test_case_probes_run_as_bench_cells_and_their_files_recompute_their_numbers(tmp_path):
    configs = tmp_path / "configs"
    (configs / "suite").mkdir(parents=True)
    (configs / "suite" / "cases.yaml").write_text(SUITE)
    run = tmp_path / "run"
    code, metrics = _bench(configs, run)
    assert code == 0, metrics
    assert (metrics["cells"], metrics["ran"], metrics["failed"]) == (3, 3, 0)
    board = pd.read_csv(run / "leaderboard.csv").set_index("task")

    # longitudinal: pairs are two time points of one lesion in one split; AUROC from predictions.csv
    cell = _cell(run, "change")
    result = json.loads((cell / "metrics.json").read_text())["test"]
    pairs = pd.read_csv(cell / "predictions.csv")
    (path,) = (run / "feature_cache" / "data").glob("*/manifest.csv")  # one, shared by the three tasks
    manifest = pd.read_csv(path).set_index("image")
    before, after = manifest.loc[pairs["before_image"]], manifest.loc[pairs["after_image"]]
    assert (before["lesion_id"].to_numpy() == after["lesion_id"].to_numpy()).all()
    assert (before["split"].to_numpy() == after["split"].to_numpy()).all()
    assert (before["timepoint"].to_numpy() < after["timepoint"].to_numpy()).all()
    assert len(pairs) == manifest.query("modality == 'dermoscopy'")["lesion_id"].nunique()  # all followed up
    auroc = roc_auc_score(pairs["target"], pairs["score"])
    assert result["values"]["auroc"] == pytest.approx(auroc, abs=1e-9)
    assert board.loc["change", "value"] == pytest.approx(auroc, abs=1e-9)

    # survival: Harrell's C from the saved per-case risks, time and event
    cell = _cell(run, "prognosis")
    result = json.loads((cell / "metrics.json").read_text())["test"]
    cases = pd.read_csv(cell / "predictions.csv")
    harrell = concordance_index_censored(cases["event"].astype(bool), cases["time"], cases["risk"])[0]
    assert result["values"]["harrell_c"] == pytest.approx(harrell, abs=1e-12)
    assert board.loc["prognosis", "value"] == pytest.approx(harrell, abs=1e-12)
    assert cases.groupby("patient_id")["fold"].nunique().max() == 1
    low, high = result["ci95"]["intervals"]["harrell_c"]
    assert low <= harrell <= high

    # fusion: one row per test case, the fused balanced accuracy on the leaderboard, fairness by sex
    cell = _cell(run, "fusion")
    result = json.loads((cell / "metrics.json").read_text())["test"]
    fused = pd.read_csv(cell / "predictions.csv")
    columns = sorted(c for c in fused if c.startswith("probability_class_"))
    predicted = fused[columns].to_numpy().argmax(1)
    recall = [np.mean(predicted[fused["true_label"] == c] == c) for c in np.unique(fused["true_label"])]
    assert board.loc["fusion", "value"] == pytest.approx(np.mean(recall), abs=1e-9)
    assert set(result["subgroups"]["sex"]["gaps"]) and (cell / "subgroups_sex.csv").is_file()
    assert {"dermoscopy", "clinical", "metadata"} <= set(result["test_cases_with_input"])

    # a second run computes nothing
    code, metrics = _bench(configs, run)
    assert code == 0 and (metrics["ran"], metrics["skipped"]) == (0, 3)
