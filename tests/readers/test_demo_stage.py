"""The demo's reader-study stage on a probe run's predictions (and its Roe-Metz fallback), and
`panderm readers report` on a study file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from panderm.cli import main
from panderm.config import DemoConfig
from panderm.report import Report
from readers.demo_stage import readers_stage
from readers.report import write_report
from readers.schema import load_study
from tests.conftest import shared_path

CLASSES = ["nevus", "melanoma", "seborrheic_keratosis", "bcc"]


def context(tmp_path, *, probe: bool = True) -> SimpleNamespace:
    cfg = OmegaConf.structured(DemoConfig)
    cfg.readers.n_cases = 120
    cfg.readers.n_readers = 6
    cfg.probe.enabled = probe
    run_dir = tmp_path / "demo"
    folder = run_dir / "probe" / f"demo-pretrained-{cfg.probe.probes[0]}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2.0 * np.eye(4)[labels]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = pd.DataFrame({"filename": [f"img{i:03d}.png" for i in range(300)], "true_label": labels})
    table["predicted_label"] = proba.argmax(axis=1)
    for c in range(4):
        table[f"probability_class_{c}"] = proba[:, c]
    table.to_csv(folder / "predictions.csv", index=False)
    data = {cfg.data.name: SimpleNamespace(classes=CLASSES)}
    return SimpleNamespace(cfg=cfg, run_dir=run_dir, report=Report("demo"), metrics={}, data=data), table


def test_readers_stage_on_probe_predictions(tmp_path):
    ctx, table = context(tmp_path)
    readers_stage(ctx)
    out = ctx.run_dir / "readers"
    study = pd.read_csv(ctx.run_dir / "readers.csv")
    assert study["reader"].nunique() == 6 and study["case"].nunique() == 120
    assert set(study["condition"]) == {"unaided", "ai_aided"}
    truth = table.set_index("filename").loc[study["case"].unique(), "true_label"].isin([1, 3]).astype(int)
    assert (study.drop_duplicates("case").set_index("case")["truth"] == truth).all()  # malignant = 1
    saved = json.loads((out / "metrics.json").read_text())
    unaided = study[study["condition"] == "unaided"]
    r1 = unaided[unaided["reader"] == unaided["reader"].iloc[0]]
    first = str(r1["reader"].iloc[0])
    assert saved["mrmc"]["fom"]["unaided"][first] == pytest.approx(roc_auc_score(r1["truth"], r1["rating"]))
    readers = ctx.metrics["readers"]
    scored = table.set_index("filename").loc[study["case"].unique()]
    p_malignant = scored["probability_class_1"] + scored["probability_class_3"]
    assert readers["ai_auc"] == pytest.approx(roc_auc_score(truth, p_malignant)) and readers["ai_auc"] > 0.85
    assert readers["auc"]["ai_aided"] > readers["auc"]["unaided"]  # a good AI helps
    assert readers["auc_gain"] == pytest.approx(readers["auc"]["ai_aided"] - readers["auc"]["unaided"])
    assert readers["rrrc"]["p"] == saved["mrmc"]["rrrc"]["p"]
    report = ctx.report.markdown()
    assert "## Reader study" in report and "readers/figures/roc_readers.png" in report
    for name in ("roc_readers", "fom_slopes", "gain_by_experience", "answer_changes", "forest"):
        assert (out / "figures" / f"{name}.png").is_file(), name
    assert (out / "report.md").is_file() and (out / "tables" / "mcnemar.csv").is_file()


def test_readers_stage_without_probe_predictions(tmp_path):
    ctx, _ = context(tmp_path, probe=False)
    readers_stage(ctx)
    assert "Roe-Metz study" in ctx.report.markdown()
    assert ctx.metrics["readers"]["auc"]["ai_aided"] > ctx.metrics["readers"]["auc"]["unaided"]
    assert not (ctx.run_dir / "readers" / "figures" / "roc_readers.png").exists()  # no AI scores to draw


@pytest.mark.shared_data
def test_report_command_on_franken(tmp_path, capsys):
    path = shared_path("reader_franken", "franken_long.csv")
    out = tmp_path / "report"
    assert main(["readers", "report", str(path), "--out", str(out), "--threshold", "3"]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert round(saved["mrmc"]["rrrc"]["value"], 2) == 4.69 and round(saved["mrmc"]["rrrc"]["p"], 4) == 0.1188
    assert saved["mixed_model"]["odds_ratio"] > 0 and "skipped" not in saved
    tests = pd.read_csv(out / "tables" / "mrmc_tests.csv")
    assert list(tests["analysis"]) == ["rrrc", "frrc", "rrfc"]
    per_reader = pd.read_csv(out / "tables" / "reader_metrics.csv")
    assert set(per_reader["metric"]) >= {"accuracy", "sensitivity", "specificity"}
    report = (out / "report.md").read_text()
    assert "## MRMC analysis" in report and "figures/fom_slopes.png" in report


@pytest.mark.shared_data
def test_report_compares_before_minus_after_in_mrmc(tmp_path):
    study = load_study(shared_path("reader_franken", "franken_long.csv"))
    write_report(study, tmp_path / "r", before=1, after=0)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    diff = saved["mrmc"]["rrrc"]["differences"][0]
    assert diff["conditions"] == [1, 0] and diff["difference"] == pytest.approx(-0.01085482, abs=5e-9)
    assert (saved["before"], saved["after"]) == (1, 0)
    assert "Per-reader metrics" in saved["skipped"]  # ratings only and no threshold: no correctness
