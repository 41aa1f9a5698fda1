"""`panderm bench` end to end through the CLI on ../shared/data (small limits): the acceptance run with three
encoders writes the leaderboard and its figures, a second identical run computes nothing, an added encoder
computes only its cells; failures are recorded and set the exit code; suites resolve their paths."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from panderm.cli import main
from panderm.config import register_configs
from panderm.models.checkpoints import save_encoder
from panderm.paths import config_dir
from probes.bench.suite import resolve_tasks
from probes.encoders import load_probe_encoder
from tests.conftest import shared_path

FAST = ["limit=24", "bootstrap=50", "n_boot=100", "progress=false", "skip_types=[segmentation]"]


def _bench(run: Path, encoders: list[str], *extra: str) -> tuple[int, dict]:
    listed = ",".join(f"'{e}'" for e in encoders)
    code = main(
        ["bench", "suite=medmnist_local", f"encoders=[{listed}]", f"hydra.run.dir={run}", *FAST, *extra]
    )
    return code, json.loads((run / "metrics.json").read_text())


def _results(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (run / "cells").rglob("metrics.json")}


@pytest.mark.slow(minutes=2)
@pytest.mark.shared_data
def test_medmnist_local_acceptance_resumes_and_adds_an_encoder(tmp_path):
    shared_path("dermamnist_jpeg")
    exported = save_encoder(
        load_probe_encoder("random:vit_tiny/8@64,depth=2", seed=1), tmp_path / "tiny_export"
    )
    encoders = ["random:vit_tiny/8@64", str(exported), "pixels"]
    run = tmp_path / "run"
    code, metrics = _bench(run, encoders)
    assert code == 0, metrics
    assert (metrics["cells"], metrics["ran"], metrics["skipped"], metrics["failed"]) == (9, 9, 0, 0)
    for name in ("leaderboard.csv", "pairwise.csv", "leaderboard.md", "leaderboard.html", "cells.csv"):
        assert (run / name).is_file(), name
    assert (run / "figures" / "heatmap.png").stat().st_size and (run / "figures" / "ranks.png").stat().st_size
    board = pd.read_csv(run / "leaderboard.csv")
    assert len(board) == 9 and board["value"].between(0, 1).all()
    assert set(board["column"]) == {"dermamnist", "pneumoniamnist", "breastmnist"}
    pairs = pd.read_csv(run / "pairwise.csv")
    assert len(pairs) == 9 and pairs["p_bootstrap_holm"].between(0, 1).all()
    assert pairs.loc[pairs["column"] != "dermamnist", "p_delong"].notna().all()  # binary tasks
    assert "segmentation" in (run / "leaderboard.md").read_text()  # the left-out tasks are noted
    for cell in (run / "cells").glob("*/*/*/seed0"):
        assert (cell / "config.yaml").is_file() and (cell / "predictions.csv").is_file()
    features = sorted((run / "feature_cache").glob("*.npz"))

    before = _results(run)
    code, metrics = _bench(run, encoders)  # the same run again: nothing new is computed
    assert code == 0 and (metrics["ran"], metrics["skipped"]) == (0, 9)
    assert _results(run) == before and sorted((run / "feature_cache").glob("*.npz")) == features

    code, metrics = _bench(run, [*encoders, "random:vit_tiny/8@32,depth=1"])  # only the new encoder's cells
    assert code == 0 and (metrics["cells"], metrics["ran"], metrics["skipped"]) == (12, 3, 9)
    after = _results(run)
    assert {p: after[p] for p in before} == before and len(after) == 12
    assert len(pd.read_csv(run / "leaderboard.csv")) == 12


@pytest.mark.slow
@pytest.mark.shared_data
def test_failed_cell_is_recorded_and_sets_the_exit_code(tmp_path, capsys):
    shared_path("breastmnist")
    run = tmp_path / "run"
    code, metrics = _bench(
        run, ["random:vit_tiny/8@32,depth=1", str(tmp_path / "missing.safetensors")], "tasks=[breastmnist]"
    )
    assert code == 1 and "1 of 2 cell(s) failed" in capsys.readouterr().err
    assert (metrics["ran"], metrics["failed"]) == (2, 1)
    board = pd.read_csv(run / "leaderboard.csv").set_index("encoder")
    assert "missing.safetensors" in board.loc[str(tmp_path / "missing.safetensors"), "error"]
    assert 0 <= board.loc["random:vit_tiny/8@32,depth=1", "value"] <= 1


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir("bench")), version_base="1.3"):
        return compose("bench", overrides=list(overrides))


def test_suites_resolve_paths_and_skip_tasks_without_data(tmp_path):
    cfg = _compose("suite=derm", "encoders=[pixels]", f"paths.ddi={tmp_path}")
    tasks, notes = resolve_tasks(cfg)
    assert [t.name for t in tasks] == ["ddi"] and tasks[0].data["path"] == str(tmp_path)
    assert tasks[0].metric == "auroc" and len(notes) == 7 and "paths.ham10000" in notes[0]
    cfg = _compose("suite=radiology", "encoders=[pixels]", f"paths.chestxray14={tmp_path}")
    tasks, _ = resolve_tasks(cfg)
    assert [(t.name, t.type, t.metric) for t in tasks] == [("chestxray14", "multilabel", "auroc_macro")]
    cfg = _compose("suite=medmnist_local", "data_root=/data", "limit=5", "seeds=[1,2]")
    tasks, _ = resolve_tasks(cfg)
    assert tasks[0].data["path"] == "/data/dermamnist_jpeg/dermamnist_28_jpeg.npz"
    assert tasks[-1].name == "ph2" and tasks[-1].train_from == "isic2017_seg"  # after the task it evaluates
    assert all(t.limit == {"train": 5, "val": 5, "test": 5} and t.seeds == [1, 2] for t in tasks)
    for suite in ("probe_table", "segmentation_table"):
        assert resolve_tasks(_compose(f"suite={suite}"))[0]


def test_a_bad_devices_value_is_refused_before_any_cell(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["bench", "suite=medmnist_local", "encoders=[pixels]", "devices=0", f"hydra.run.dir={run}"]
    assert main(args) == 1
    assert "devices=0: must be a positive integer" in capsys.readouterr().err
    assert not (run / "cells").exists()
