"""`panderm probe` end to end: encoder + manifest (cached features) and user feature files, every probe kind,
outputs checked against scikit-learn recomputations, and bad configurations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from hydra import compose, initialize_config_dir
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from panderm.cli import main
from panderm.config import register_configs
from panderm.data.images import load_image
from panderm.data.transforms import eval_transform
from panderm.errors import CheckpointError, ConfigError, ProbeError
from panderm.models.checkpoints import save_encoder
from panderm.models.classifier import load_classifier
from panderm.paths import config_dir
from probes.encoders import load_probe_encoder
from probes.run import run_probe
from tests.data.helpers import small_folder


def probe_config(tmp_path, *overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir("probe")), version_base="1.3"):
        return compose(
            "probe",
            overrides=[
                "data.n_patients=16",
                "data.image_size=32",
                f"data.out_dir={tmp_path / 'synthderm'}",
                "encoder='random:vit_tiny/8@32,depth=2'",
                f"cache_dir={tmp_path / 'cache'}",
                "num_workers=0",
                "bootstrap=50",
                "plots=false",
                *overrides,
            ],
        )


def feature_file(path, *, n_train=120, n_val=40, n_test=60, classes=3, dim=16, sep=3.0, seed=0):
    """Gaussian class clusters written as the npz layout `features=` reads."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * sep
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        y = np.arange(n) % classes
        arrays[f"{split}_x"] = (means[y] + rng.normal(size=(n, dim))).astype(np.float32)
        arrays[f"{split}_y"] = y
    np.savez(path, **arrays)
    return path


def test_linear_probe_of_an_encoder_writes_consistent_outputs(tmp_path):
    run = tmp_path / "run"
    metrics = run_probe(probe_config(tmp_path, "subgroups=[modality]", "plots=true"), run)
    for name in ("config.yaml", "metrics.json", "predictions.csv", "summary.csv", "report.md", "report.html"):
        assert (run / name).is_file(), name
    for name in ("confusion", "roc", "reliability", "umap"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000, name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["probe"] == "linear_sweep" and saved["recipe"]["name"] == "linear_sweep"
    classes = saved["classes"]
    predictions = pd.read_csv(run / "predictions.csv")
    probabilities = predictions[[f"probability_class_{i}" for i in range(len(classes))]].to_numpy()
    assert list(predictions.columns[:3]) == ["filename", "true_label", "predicted_label"]
    assert (predictions["predicted_label"] == probabilities.argmax(1)).all()
    values = saved["test"]["values"]
    # the saved metrics are those of the saved predictions, recomputed independently
    truth = predictions["true_label"].to_numpy()
    assert values["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(truth, probabilities.argmax(1))
    )
    if "auroc_macro_ovr" in values:
        expected = roc_auc_score(truth, probabilities, multi_class="ovr", labels=range(len(classes)))
        assert values["auroc_macro_ovr"] == pytest.approx(expected)
    for name, (low, high) in saved["test"]["ci95"]["intervals"].items():
        assert low <= values[name] + 1e-9 and values[name] <= high + 1e-9, name
    assert "modality" in saved["test"]["subgroups"]
    # The saved classifier (encoder + fitted head) gives the same probabilities from the images themselves
    # (up to the fp16 feature cache the probe was fitted on).
    classifier = load_classifier(saved["classifier"])
    assert classifier.class_names == classes
    spec = classifier.encoder.spec
    transform = eval_transform(spec.image_size, mean=spec.mean, std=spec.std)
    root = tmp_path / "synthderm"
    images = torch.stack([transform(image=load_image(root / f))["image"] for f in predictions["filename"]])
    with torch.no_grad():
        again_proba = torch.softmax(classifier(images), 1).numpy()
    assert np.abs(again_proba - probabilities).max() < 0.02
    assert (again_proba.argmax(1) == probabilities.argmax(1)).mean() >= 0.95
    assert (run / "subgroups_modality.csv").is_file()
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.columns) == ["Dataset", "W_F1", "AUROC", "BACC", "ACC", "AUPR"]
    assert summary["BACC"][0] == pytest.approx(values["balanced_accuracy"])
    # A second run reads the cached features and reproduces the predictions exactly.
    again = run_probe(probe_config(tmp_path), tmp_path / "again")
    assert again["test"]["values"] == metrics["test"]["values"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


@pytest.mark.parametrize(
    ("probe", "options"),
    [
        ("linear_panderm", []),
        ("linear_sweep", []),
        ("knn", []),
        ("knn", ["probe.options.variant=uni"]),
        ("knn", ["probe.options.balanced=true"]),
        (
            "knn",
            [
                "probe.options.variant=prototype",
                "~probe.options.k",
                "~probe.options.temperature",
                "~probe.options.balanced",
            ],
        ),
    ],
)
def test_classifier_probes_on_a_feature_file(tmp_path, probe, options):
    path = feature_file(tmp_path / "features.npz")
    saved = run_probe(
        probe_config(tmp_path, f"features={path}", f"probe={probe}", *options), tmp_path / "run"
    )
    values = saved["test"]["values"]
    assert saved["dataset"] == "features" and saved["classes"] == ["0", "1", "2"]
    assert values["balanced_accuracy"] > 0.9  # well-separated clusters
    assert values["auroc_macro_ovr"] > 0.9  # macro one-vs-rest AUROC beside it, for kNN too
    assert not saved["test"]["missing"]
    if "probe.options.balanced=true" in options:
        assert saved["recipe"]["balanced"] is True


def test_fewshot_and_label_efficiency_curves(tmp_path):
    path = feature_file(tmp_path / "features.npz", sep=0.8)
    shots = run_probe(
        probe_config(
            tmp_path,
            f"features={path}",
            "probe=fewshot",
            "probe.options.shots=[1,4,16]",
            "probe.options.n_episodes=20",
        ),
        tmp_path / "fewshot",
    )
    curve = pd.read_csv(tmp_path / "fewshot" / "curve.csv")
    assert list(curve["shot"]) == [1, 4, 16] and (curve["n_runs"] == 20).all()
    assert curve["balanced_accuracy_mean"].iloc[-1] > curve["balanced_accuracy_mean"].iloc[0]
    assert len(shots["curve"]) == 3
    run_probe(
        probe_config(
            tmp_path,
            f"features={path}",
            "probe=label_efficiency",
            "probe.options.fractions=[0.05,1.0]",
            "probe.options.seeds=[0,1]",
        ),
        tmp_path / "efficiency",
    )
    curve = pd.read_csv(tmp_path / "efficiency" / "curve.csv")
    assert list(curve["fraction"]) == [0.05, 1.0]
    assert (curve["n_train"].iloc[0] >= 3) and curve["n_train"].iloc[1] == 120


def test_single_class_test_split_reports_missing_metrics_with_reasons(tmp_path):
    path = feature_file(tmp_path / "features.npz")
    data = dict(np.load(path))
    keep = data["test_y"] == 0
    data["test_x"], data["test_y"] = data["test_x"][keep], data["test_y"][keep]
    np.savez(path, **data)
    saved = run_probe(probe_config(tmp_path, f"features={path}", "probe=knn"), tmp_path / "run")
    missing = saved["test"]["missing"]
    assert "auroc_macro_ovr" in missing and "class" in missing["auroc_macro_ovr"]
    assert "auroc_macro_ovr" not in saved["test"]["values"] and saved["test"]["values"]["accuracy"] > 0.9


def test_bad_probe_configurations_are_clear_errors(tmp_path, capsys):
    path = feature_file(tmp_path / "features.npz")
    with pytest.raises(ConfigError, match=r"probe\.options"):
        run_probe(probe_config(tmp_path, f"features={path}", "+probe.options.kk=3"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"probe\.name"):
        run_probe(probe_config(tmp_path, f"features={path}", "probe.name=svm"), tmp_path / "b")
    with pytest.raises(ConfigError, match="subgroups"):
        run_probe(probe_config(tmp_path, "subgroups=[hospital]"), tmp_path / "c")
    code = main(["probe", f"features={tmp_path / 'missing.npz'}", f"hydra.run.dir={tmp_path / 'd'}"])
    assert code == 1 and "missing.npz" in capsys.readouterr().err


def test_python_api_checks_config_ranges_before_running(tmp_path):
    """`run_probe` called from Python gets the command line's range checks (via `start_run`)."""
    with pytest.raises(ConfigError, match=r"batch_size=0: must be a positive integer"):
        run_probe(probe_config(tmp_path, "batch_size=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "synthderm").exists()


def test_encoder_strict_false_loads_a_checkpoint_with_extra_keys(tmp_path, caplog):
    """A checkpoint holding a key the encoder lacks fails naming the command-line switch; with
    `encoder_strict=false` the matching tensors load and the probe runs."""
    weights = save_encoder(load_probe_encoder("random:vit_tiny/8@32,depth=2"), tmp_path / "enc")
    tensors = safetensors.torch.load_file(weights)
    tensors["projection.weight"] = torch.zeros(2)
    safetensors.torch.save_file(tensors, weights)
    meta = weights.with_suffix(".json")
    recorded = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in recorded.items() if k != "weights_sha256"}))
    with pytest.raises(CheckpointError, match="encoder_strict=false on the command line"):
        run_probe(probe_config(tmp_path, f"encoder={weights}"), tmp_path / "strict")
    loose = probe_config(tmp_path, f"encoder={weights}", "encoder_strict=false")
    saved = run_probe(loose, tmp_path / "loose")
    assert 0 <= saved["test"]["values"]["balanced_accuracy"] <= 1
    assert "projection.weight" in caplog.text


def test_rows_without_a_label_are_named_before_any_encoding(tmp_path):
    """A lost label (NaN among integer codes) stops the probe up front, naming the manifest row."""
    table = small_folder(tmp_path / "data")
    table["label"] = table["label"].map({"nevus": 0, "melanoma": 1}).astype(float)
    table.loc[3, "label"] = np.nan
    table.to_csv(tmp_path / "data" / "m.csv", index=False)
    overrides = ["data=manifest", f"data.path={tmp_path / 'data' / 'm.csv'}"]
    with pytest.raises(ProbeError, match=r"1 row\(s\) without a label \(rows 4\)"):
        run_probe(probe_config(tmp_path, *overrides), tmp_path / "run")
    assert not (tmp_path / "cache").exists()
