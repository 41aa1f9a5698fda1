"""`panderm demo` end to end, as the README runs it (default config), into a temporary run folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import roc_auc_score

from panderm.cli import main
from panderm.data.manifest import read_manifest
from panderm.demo import random_encoder_spec
from probes.run import run_probe
from tests.data.helpers import small_folder, write_truncated_jpeg
from tests.probes.test_run import probe_config


def run_demo(run_dir, *overrides: str) -> subprocess.CompletedProcess:
    # Under xdist the other worker holds the second core: one thread here, not two fighting over one.
    threads = {"OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}
    return subprocess.run(
        [sys.executable, "-m", "panderm.cli", "demo", f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, **threads},
    )


@pytest.mark.slow(minutes=8)
def test_default_demo(tmp_path):
    """`panderm demo` with its defaults, run once (minutes): the report, then the pretraining gain."""
    run_dir = tmp_path / "demo"
    result = run_demo(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    check_report(run_dir)
    check_pretraining_beats_random_init(run_dir, tmp_path)


def check_report(run_dir):
    report = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "config.yaml").is_file()
    for name in ("synthderm", "synthcxr"):
        manifest = read_manifest(run_dir / "data" / name / "manifest.csv")
        counts = manifest.table["split"].value_counts().to_dict()
        assert metrics["data"][name]["per_split"] == counts
        assert metrics["data"][name]["images"] == len(manifest)
        assert f"## Data: {name}" in report and f"figures/{name}_samples.png" in report
        assert f'src="figures/{name}_samples.png"' in html
        grid = Image.open(run_dir / "figures" / f"{name}_samples.png")
        assert grid.size[0] > 800 and grid.size[1] > 200
        # The per-class table in the report matches the manifest.
        per_class = manifest.label_names().value_counts()
        for cls, n in per_class.items():
            assert any(line.startswith(f"| {cls} ") and f" {n} |" in line for line in report.splitlines())
    derm = pd.read_csv(run_dir / "data" / "synthderm" / "manifest.csv")
    assert set(derm["modality"]) == {"dermoscopy", "clinical", "tbp"}
    assert "Images per modality and split" in report and "Images per fitzpatrick and split" in report
    # Pretraining stage: loss curve in the report, encoder exported, online probe reported.
    assert "## Pretraining" in report and "pretrain/figures/pretrain_loss.png" in report
    assert (run_dir / "pretrain" / "figures" / "pretrain_loss.png").is_file()
    assert (run_dir / "pretrain" / "encoder.safetensors").is_file()
    assert (
        metrics["pretrain"]["global_step"] >= 16
        and 0 <= metrics["pretrain"]["val/probe_balanced_accuracy"] <= 1
    )
    # Probe stage: both encoders, both probes, with their figures and subgroup tables.
    assert "## Probes" in report
    for source in ("demo-pretrained", "random_init"):
        for probe in ("linear_sweep", "knn"):
            folder = run_dir / "probe" / f"{source}-{probe}"
            saved = json.loads((folder / "metrics.json").read_text())
            assert 0 <= saved["test"]["values"]["balanced_accuracy"] <= 1
            assert (folder / "predictions.csv").is_file() and (folder / "subgroups_fitzpatrick.csv").is_file()
        assert f"probe/{source}-linear_sweep/figures/umap.png" in report
    assert set(metrics["probe"]) == {
        f"{s}/{p}" for s in ("demo-pretrained", "random init") for p in ("linear_sweep", "knn")
    }
    # Segmentation stage: every head on the pretrained encoder, linear also at random init; masks, per-image
    # metrics and an overlay grid per run, the Dice table and the best run's overlay in the report.
    assert "## Segmentation" in report and "Test metrics per encoder and head" in report
    runs = [f"demo-pretrained/{h}" for h in ("linear", "unetr")] + ["random init/linear"]
    assert sorted(metrics["segment"]) == sorted(runs)
    for run in runs:
        source, head = run.split("/")
        folder = run_dir / "segment" / f"{source.replace(' ', '_')}-{head}"
        per_image = pd.read_csv(folder / "per_image.csv")
        assert metrics["segment"][run]["raw"]["dice"] == pytest.approx(per_image["dice"].mean())
        assert (folder / "figures" / "overlay_test.png").is_file()
        assert len(list((folder / "masks" / "test").glob("*.png"))) == len(per_image)
    # trained heads beat an empty prediction (Dice 0) by far on SynthDerm's high-contrast lesions
    assert metrics["segment"]["demo-pretrained/unetr"]["raw"]["dice"] > 0.5
    assert "/figures/overlay_test.png" in report
    # Region-VQA stage: the expert backend (probe classifier, best segmenter) in English and Chinese;
    # its Text-to-Region accuracy is the share of its own predictions with IoU > 0.5.
    assert "## Region VQA (expert backend)" in report and "vqa/figures/boxes.png" in report
    vqa = json.loads((run_dir / "vqa" / "metrics.json").read_text())
    assert vqa["n_failed"] == 0 and metrics["vqa"]["n"] == vqa["n"]
    rows = pd.read_csv(run_dir / "vqa" / "predictions.csv")
    assert set(rows["language"]) == {"en", "zh"}
    t2r = rows[rows["task"] == "text_to_region"]
    assert vqa["tasks"]["text_to_region"]["single_box"]["acc@0.5"] == pytest.approx((t2r["iou"] > 0.5).mean())
    assert vqa["tasks"]["text_to_region"]["single_box"]["acc@0.5"] > 0.4  # 0.62 with the demo's UNETR
    check_longitudinal_stage(run_dir, report, metrics)
    check_icl_stage(run_dir, report, metrics)
    check_readers_stage(run_dir, report, metrics)


def check_longitudinal_stage(run_dir, report, metrics):
    """Follow-up pairs of the stage's own archive (every lesion followed up), scored out of fold."""
    assert "## Longitudinal change" in report and "longitudinal/demo-pretrained/figures/pairs.png" in report
    manifest = pd.read_csv(run_dir / "data" / "synthderm_followup" / "manifest.csv")
    lesions = manifest.query("modality == 'dermoscopy'")["lesion_id"].nunique()
    for source in ("demo-pretrained", "random_init"):
        pairs = pd.read_csv(run_dir / "longitudinal" / source / "predictions.csv")
        assert len(pairs) == lesions and (pairs["fold"] >= 0).all()
        auroc = metrics["longitudinal"][source.replace("_", " ")]["auroc"]
        assert auroc == pytest.approx(roc_auc_score(pairs["target"], pairs["score"]))
    delong = metrics["longitudinal"]["delong"]  # pretrained vs random init on the same pairs
    assert delong["auc_a"] == pytest.approx(metrics["longitudinal"]["demo-pretrained"]["auroc"])
    assert delong["auc_b"] == pytest.approx(metrics["longitudinal"]["random init"]["auroc"])


def check_readers_stage(run_dir, report, metrics):
    """Simulated readers aided by the demo-pretrained linear probe's P(malignant), analysed with MRMC."""
    assert "## Reader study" in report and "readers/figures/roc_readers.png" in report
    saved = json.loads((run_dir / "readers" / "metrics.json").read_text())
    assert metrics["readers"]["auc"] == saved["mrmc"]["condition_means"]
    test_images = len(pd.read_csv(run_dir / "probe" / "demo-pretrained-linear_sweep" / "predictions.csv"))
    assert saved["mrmc"]["n_readers"] == 9 and saved["mrmc"]["n_cases"] == min(200, test_images)
    assert 0 <= metrics["readers"]["rrrc"]["p"] <= 1
    assert "demo-pretrained-linear_sweep" in report


def check_icl_stage(run_dir, report, metrics):
    """kNN-ICL (pretrained encoder, one order per problem), majority and random under SMMILE++; kNN-ICL also
    under noise."""
    assert "## In-context learning (offline baselines)" in report
    for figure in (
        "icl/majority-smmile_pp/figures/permutation_spread.png",
        "icl/knn_icl-smmile_pp/figures/relevant_position.png",
        "icl/knn_icl-noise/figures/noise_effect.png",
    ):
        assert figure in report and (run_dir / figure).is_file(), figure
    for run in (
        "knn_icl/smmile_pp",
        "knn_icl/noise",
        "majority/smmile_pp",
        "random/smmile_pp",
    ):
        folder = run_dir / "icl" / run.replace("/", "-")
        saved = json.loads((folder / "metrics.json").read_text())
        rows = pd.read_csv(folder / "results.csv", keep_default_na=False)
        assert metrics["icl"][run]["prompts"] == saved["prompts"] == len(rows)
        assert set(rows["status"]) == {"ok"}
    knn = json.loads((run_dir / "icl" / "knn_icl-smmile_pp" / "metrics.json").read_text())
    majority = json.loads((run_dir / "icl" / "majority-smmile_pp" / "metrics.json").read_text())
    # the nearest demo does not depend on the order: each problem once, against majority's permutations
    assert knn["one_order_per_problem"] and knn["prompts"] == knn["problems"] == majority["problems"]
    assert majority["prompts"] > majority["problems"] and not majority["one_order_per_problem"]
    assert math.isclose(knn["score"]["accuracy"], knn["summary"]["problem_accuracy"], abs_tol=0.005)


def test_demo_on_user_manifest_skips_or_names_corrupt_image(tmp_path, capsys):
    table = small_folder(tmp_path / "data")
    write_truncated_jpeg(tmp_path / "data" / "images" / "broken.jpg")
    table.loc[len(table)] = {
        "image": "images/broken.jpg",
        "split": "train",
        "label": "nevus",
        "patient_id": "P9",
    }
    table.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    common = ["data=manifest", f"data.path={tmp_path / 'data' / 'manifest.csv'}", "radiology.n_patients=40"]
    common += ["pretrain.max_epochs=1", "pretrain.progress_bar=false", "probe.enabled=false"]
    common += ["segment.enabled=false", "vqa.enabled=false", "icl.enabled=false", "readers.enabled=false"]

    # in-process (test_default_demo runs the command as a subprocess)
    assert main(["demo", f"hydra.run.dir={tmp_path / 'strict'}", *common]) == 1
    assert "broken.jpg: unreadable image" in capsys.readouterr().err

    lenient = main(["demo", f"hydra.run.dir={tmp_path / 'lenient'}", *common, "data.on_bad_image=skip"])
    assert lenient == 0, capsys.readouterr().err[-3000:]
    listed = pd.read_csv(tmp_path / "lenient" / "skipped_images.csv")
    assert listed["path"].tolist() == [str(tmp_path / "data" / "images" / "broken.jpg")]
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert metrics["data"]["manifest"]["loading"] == {
        "loaded": 6,
        "skipped": 1,
        "images_per_s": metrics["data"]["manifest"]["loading"]["images_per_s"],
    }
    report = (tmp_path / "lenient" / "report.md").read_text()
    assert "1 skipped, listed in `skipped_images.csv`" in report
    assert "Skipped: the stage runs on a SynthDerm follow-up archive" in report  # no follow-ups in user data


def check_pretraining_beats_random_init(default_demo, tmp_path):
    """The default objective (simclr, 32-px views) on SynthDerm for the demo's budget beats the same ViT-tiny
    (6 blocks) at random init on a larger SynthDerm draw than the demo's (seed 1, 400 patients; its 974
    dermoscopy images only, to keep the test short), so the
    estimate is not the noise of a small test split: +0.174 balanced accuracy measured (0.619 vs 0.445;
    on every modality of that draw +0.063, 0.429 vs 0.366). The recipe was chosen on draws 2 and 3; on the
    held-out draws 1, 4 and 5 (every modality) it gained +0.063, +0.042, +0.051 (the issue's 0.10 is not
    reached; README). Every run is seeded (augmentations per sample, as the resume tests check), so the
    measured gain repeats on this machine; 0.04 leaves room for another CPU's rounding."""
    scores = {}
    depth = OmegaConf.load(default_demo / "config.yaml").pretrain.depth
    for name, encoder in (
        ("pretrained", default_demo / "pretrain" / "encoder.safetensors"),
        ("random", f"'{random_encoder_spec(64, depth)}'"),
    ):
        overrides = ["data.n_patients=400", "data.seed=1", "data.image_size=64", f"encoder={encoder}"]
        overrides.append("+data.options.modalities=[dermoscopy]")
        saved = run_probe(probe_config(tmp_path, *overrides), tmp_path / name)
        scores[name] = saved["test"]["values"]["balanced_accuracy"]
    assert scores["pretrained"] >= scores["random"] + 0.04, scores
