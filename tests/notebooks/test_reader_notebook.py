"""notebooks/reader_study_analysis.ipynb, executed with nbclient on the simulated study and on Franken et al.
(../shared/data/reader_franken), checked through the files it writes into READER_OUT; and stored stripped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from tests.conftest import REPO, shared_path

NOTEBOOK = REPO / "notebooks" / "reader_study_analysis.ipynb"
KERNEL = "python3"
CELL_TIMEOUT_S = 120
ENV = ("READER_STUDY", "READER_THRESHOLD", "READER_OUT")
ALL_FIGURES = {
    "fom_slopes.png",
    "accuracy_slopes.png",
    "forest.png",
    "answer_changes.png",
    "gain_by_experience.png",
    "roc_readers.png",
}


def execute(notebook: nbformat.NotebookNode, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Run `notebook` in place in a fresh python3 kernel started in the repository root with `env` set (the
    kernel inherits the environment) and the notebook's other parameters unset."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()


def run_notebook(monkeypatch: pytest.MonkeyPatch, out: Path, **env: str) -> Path:
    execute(nbformat.read(NOTEBOOK, as_version=4), monkeypatch, READER_OUT=str(out), **env)
    return out


def figures(out: Path) -> set[str]:
    pngs = {p.name for p in (out / "figures").glob("*.png")}
    for name in pngs:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    return pngs


def condition_means(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame[frame["metric"] == metric].groupby("condition")["value"].mean()


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:80]
        assert cell.execution_count is None, cell.source[:80]
    assert nb.metadata["kernelspec"]["name"] == KERNEL


def test_kernel_runs_this_interpreter(monkeypatch):
    # ipykernel's own spec says `python`, which jupyter_client replaces by sys.executable: the venv's python
    # when the tests run under it, with no kernelspec installed anywhere.
    argv = KernelSpecManager().get_kernel_spec(KERNEL).argv
    assert argv[0] in ("python", "python3", sys.executable)
    assert KernelManager(kernel_name=KERNEL).format_kernel_cmd()[0] == sys.executable
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    execute(nb, monkeypatch)
    assert nb.cells[0].outputs[0]["text"].strip() == sys.prefix


@pytest.mark.slow
def test_simulated_study(monkeypatch, tmp_path):
    out = run_notebook(monkeypatch, tmp_path / "simulated")
    result = json.loads((out / "mrmc.json").read_text())
    assert result["fom_name"] == "auc" and result["n_readers"] == 9 and result["n_cases"] == 200
    means = result["condition_means"]
    assert means["ai_aided"] > means["unaided"] + 0.03  # a synthetic AI with AUC ~0.96 helps
    assert result["rrrc"]["p"] < 0.05
    dbm = result["dbm"]["rrrc"]
    assert dbm["value"] == pytest.approx(result["rrrc"]["value"], rel=1e-8)
    assert dbm["df2"] == pytest.approx(result["rrrc"]["df2"], rel=1e-8)

    metrics = pd.read_csv(out / "reader_metrics.csv")
    accuracy = condition_means(metrics, "accuracy")
    assert accuracy["ai_aided"] > accuracy["unaided"]
    paired = pd.read_csv(out / "paired_tests.csv").set_index("metric")
    assert paired.loc["accuracy", "mean_diff"] == pytest.approx(accuracy["ai_aided"] - accuracy["unaided"])
    assert paired.loc["auc", "mean_diff"] == pytest.approx(means["ai_aided"] - means["unaided"])
    changes = pd.read_csv(out / "answer_changes.csv").set_index("reader")
    assert changes.loc["total", "wrong_to_right"] > changes.loc["total", "right_to_wrong"]
    assert len(pd.read_csv(out / "mcnemar.csv")) == 9
    assert set(pd.read_csv(out / "classwise.csv")["truth"]) == {0, 1}
    mixed = json.loads((out / "mixed_model.json").read_text())
    assert mixed["ci_low"] > 1 and "C(experience)" in mixed["formula"]
    power = pd.read_csv(out / "power.csv").set_index("readers")
    assert power.shape == (3, 3) and power.loc[12, "200"] > max(0.8, power.loc[4, "50"])
    assert json.loads((out / "skipped.json").read_text()) == {}
    assert figures(out) == ALL_FIGURES


@pytest.mark.slow
@pytest.mark.shared_data
def test_franken_with_threshold(monkeypatch, tmp_path):
    folder = shared_path("reader_franken")
    ref = json.loads((folder / "reference_values.json").read_text())["franken"]
    out = run_notebook(
        monkeypatch, tmp_path / "franken", READER_STUDY=str(folder / "franken_long.csv"), READER_THRESHOLD="3"
    )
    result = json.loads((out / "mrmc.json").read_text())
    rrrc = result["rrrc"]
    # The published OR-DBM MRMC 2.51 values, to their printed precision (F 4.69, ddf 3, p 0.1188).
    assert round(rrrc["value"], 2) == ref["RRRC"]["F"] == 4.69
    assert round(rrrc["p"], 4) == ref["RRRC"]["p"] == 0.1188
    assert rrrc["df2"] == pytest.approx(ref["RRRC"]["ddf_hillis"])
    assert [result["condition_means"][c] for c in ("0", "1")] == pytest.approx(ref["auc_mean"], abs=5e-9)

    # Binary calls rating >= 3, checked against a direct count on the CSV.
    data = pd.read_csv(folder / "franken_long.csv")
    right = ((data["rating"] >= 3).astype(int) == data["truth"]).groupby(data["treatment"]).mean()
    accuracy = condition_means(pd.read_csv(out / "reader_metrics.csv"), "accuracy")
    assert accuracy.to_numpy() == pytest.approx(right.to_numpy())
    assert len(pd.read_csv(out / "mcnemar.csv")) == 4
    mixed = json.loads((out / "mixed_model.json").read_text())
    assert "experience" not in mixed["formula"]
    assert set(json.loads((out / "skipped.json").read_text())) == {
        "gain by experience",
        "AI ROC with reader operating points",
    }
    assert figures(out) == ALL_FIGURES - {"gain_by_experience.png", "roc_readers.png"}


@pytest.mark.slow
@pytest.mark.shared_data
def test_franken_lrc_without_threshold_skips_correctness(monkeypatch, tmp_path):
    folder = shared_path("reader_franken")
    ref = json.loads((folder / "reference_values.json").read_text())["franken"]
    out = run_notebook(monkeypatch, tmp_path / "lrc", READER_STUDY=str(folder / "franken.lrc"))
    assert round(json.loads((out / "mrmc.json").read_text())["rrrc"]["value"], 2) == ref["RRRC"]["F"]
    skipped = json.loads((out / "skipped.json").read_text())
    assert {"per-reader metrics", "answer changes and McNemar", "mixed model"} <= set(skipped)
    assert "response" in skipped["answer changes and McNemar"]
    assert not (out / "reader_metrics.csv").exists()
    assert figures(out) == {"fom_slopes.png"}
