"""Multi-label support end to end: manifest (`label_set`, `uncertain_set`, `targets()`), metrics against
scikit-learn and brute force, the one-vs-rest linear and kNN probes against scikit-learn, and `panderm probe`
on a tiny generated manifest where one label is learnable from brightness."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from panderm.config import register_configs
from panderm.data.manifest import build_manifest, read_manifest
from panderm.errors import ManifestError, ProbeError
from panderm.paths import config_dir
from probes.metrics import multilabel_bootstrap_ci, multilabel_bootstrap_indices, multilabel_metrics
from probes.multilabel import fit_multilabel_panderm, fit_multilabel_sweep, multilabel_knn_proba
from probes.run import run_probe

CLASSES = ["A", "B", "C"]


# ---------------------------------------------------------------------------------------------- manifest


def table(**columns):
    base = {"image": ["a.png", "b.png", "c.png"], "split": ["train", "val", "test"]}
    return pd.DataFrame({**base, **columns})


def test_targets_are_ones_zeros_and_nan_where_uncertain_and_save_round_trips(tmp_path):
    m = build_manifest(
        table(label_set=["B|A", "", None], uncertain_set=["", "C", None]),
        tmp_path,
        classes=CLASSES,
        check_files=False,
    )
    assert m.is_multilabel and m.has_labels and m.unlabeled_rows() == []
    expected = np.array([[1, 1, 0], [0, 0, np.nan], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(m.targets(), expected)
    assert m.targets().dtype == np.float32
    m.save(tmp_path / "m.csv")
    again = read_manifest(tmp_path / "m.csv", classes=CLASSES, check_files=False)
    np.testing.assert_array_equal(again.targets(), expected)
    assert again.table["label_set"].tolist() == ["A|B", "", ""]  # normalised to class order


def test_single_label_manifests_are_not_multilabel(tmp_path):
    m = build_manifest(table(label=["A", "B", "A"]), tmp_path, check_files=False)
    assert not m.is_multilabel
    with pytest.raises(ManifestError, match="multi-label"):
        m.targets()


def test_unknown_names_and_both_label_columns_are_refused_naming_row_and_columns(tmp_path):
    with pytest.raises(ManifestError) as info:
        build_manifest(
            table(label=["A", "A", "A"], label_set=["A", "Nodule", ""], uncertain_set=["A", "", "Zz"]),
            tmp_path,
            classes=CLASSES,
            check_files=False,
        )
    text = str(info.value)
    assert "row 2: field 'label_set': 'Nodule' is not a class" in text
    assert "row 3: field 'uncertain_set': 'Zz' is not a class" in text
    assert "'label' and 'label_set' are both present" in text
    assert "row 1: ['A'] in both" in text


# ----------------------------------------------------------------------------------------------- metrics


def fixture(n=80, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.35).astype(float)
    y[0], y[1] = 1, 0  # every label has both classes
    p = np.clip(0.4 * y + 0.6 * rng.random((n, c)), 0, 1)
    return y, p


def test_multilabel_metrics_equal_scikit_learn():
    y, p = fixture()
    result = multilabel_metrics(y, p, classes=list("abcd"))
    per_label = roc_auc_score(y, p, average=None)
    assert [result.per_label[k]["auroc"] for k in "abcd"] == pytest.approx(per_label)
    assert result["auroc_macro"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert result["auroc_micro"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    aps = average_precision_score(y, p, average=None)
    assert [result.per_label[k]["ap"] for k in "abcd"] == pytest.approx(aps)
    assert result["ap_macro"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert result["ap_micro"] == pytest.approx(average_precision_score(y, p, average="micro"))


def test_unknown_cells_are_left_out_per_label_and_one_class_labels_reported_missing():
    y, p = fixture()
    rng = np.random.default_rng(1)
    y[rng.random(y.shape) < 0.2] = np.nan
    y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 0.0)  # label d: negatives (and unknowns) only
    result = multilabel_metrics(y, p, classes=list("abcd"))
    brute = []
    for k in range(3):  # brute force: drop the unknown rows of each label, score it alone
        keep = ~np.isnan(y[:, k])
        brute.append(roc_auc_score(y[keep, k], p[keep, k]))
        assert result.per_label["abc"[k]]["auroc"] == pytest.approx(brute[-1])
        assert result.per_label["abc"[k]]["n_unknown"] == int((~keep).sum())
    assert result["auroc_macro"] == pytest.approx(np.mean(brute))
    cells = ~np.isnan(y)
    assert result["auroc_micro"] == pytest.approx(roc_auc_score(y[cells], p[cells]))
    assert "only negatives" in result.missing["auroc:d"] and "unknown left out" in result.missing["auroc:d"]
    assert result.per_label["d"]["auroc"] is None and "ap:d" in result.missing


def test_bootstrap_interval_is_the_percentile_of_scikit_learn_macro_auroc_on_the_same_resamples():
    y, p = fixture(n=40)
    y[3, 1] = np.nan
    ci = multilabel_bootstrap_ci(y, p, n_resamples=60, seed=3)
    macro = []
    for rows in multilabel_bootstrap_indices(len(y), 60, seed=3):
        scores = []
        for k in range(y.shape[1]):
            yk, pk = y[rows, k], p[rows, k]
            keep = ~np.isnan(yk)
            if len(np.unique(yk[keep])) < 2:
                scores = None
                break
            scores.append(roc_auc_score(yk[keep], pk[keep]))
        if scores is not None:
            macro.append(np.mean(scores))
    assert ci.n_used["auroc_macro"] == len(macro)
    assert ci["auroc_macro"] == pytest.approx(tuple(np.percentile(macro, [2.5, 97.5])))


def test_invalid_targets_are_a_probe_error():
    with pytest.raises(ProbeError, match="1, 0 or NaN"):
        multilabel_metrics(np.array([[2.0, 0.0], [1.0, 0.0]]), np.full((2, 2), 0.5))


# ------------------------------------------------------------------------------------------------ probes


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    n, d, c = 240, 6, 3
    w = rng.normal(size=(d, c)) * 1.5
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ w + rng.normal(size=(n, c)) > 0).astype(np.float32)
    return x[:160], y[:160], x[160:], y[160:]


def test_linear_probe_matches_scikit_learn_logistic_regression_per_label(linear_data):
    x, y, xt, yt = linear_data
    probe = fit_multilabel_sweep(x, y, c_grid=[0.05])  # one C: a plain fit on train, as sklearn's
    scaler = StandardScaler().fit(x)
    reference = np.stack(
        [
            LogisticRegression(C=0.05, tol=1e-8, max_iter=1000)
            .fit(scaler.transform(x), y[:, k])
            .predict_proba(scaler.transform(xt))[:, 1]
            for k in range(y.shape[1])
        ],
        axis=1,
    )
    ours = probe.predict_proba(xt)
    assert np.abs(ours - reference).max() < 2e-3
    macro = roc_auc_score(yt, ours, average="macro")
    assert macro == pytest.approx(roc_auc_score(yt, reference, average="macro"), abs=2e-3)
    assert macro > 0.8


def test_linear_sweep_selects_on_val_by_macro_auroc_and_unknown_cells_do_not_count(linear_data):
    x, y, xt, _ = linear_data
    grid = [1e-3, 1e-1, 10.0]
    probe = fit_multilabel_sweep(x[:120], y[:120], x[120:], y[120:], c_grid=grid, refit=False)
    # the scores it records are the val macro AUROCs of scikit-learn fits at each C (within tolerance)
    scaler = StandardScaler().fit(x[:120])
    for c, score in zip(grid, probe.recipe["scores"], strict=True):
        val = np.stack(
            [
                LogisticRegression(C=c, tol=1e-8, max_iter=1000)
                .fit(scaler.transform(x[:120]), y[:120, k])
                .predict_proba(scaler.transform(x[120:]))[:, 1]
                for k in range(3)
            ],
            axis=1,
        )
        assert score == pytest.approx(roc_auc_score(y[120:], val, average="macro"), abs=5e-3)
    assert probe.recipe["C"] == grid[int(np.argmax(probe.recipe["scores"]))]
    # NaN cells: same fit as dropping those rows for that label alone
    masked = y.copy()
    masked[:40, 0] = np.nan
    with_nan = fit_multilabel_sweep(x, masked, c_grid=[0.5]).predict_proba(xt)[:, 0]
    scaler = StandardScaler().fit(x)  # standardisation uses every row (features are all known)
    alone = (
        LogisticRegression(C=0.5, tol=1e-8, max_iter=1000)
        .fit(scaler.transform(x)[40:], y[40:, 0])
        .predict_proba(scaler.transform(xt))[:, 1]
    )
    assert np.abs(with_nan - alone).max() < 2e-3


def test_panderm_variant_and_knn(linear_data):
    x, y, xt, yt = linear_data
    proba = fit_multilabel_panderm(x * 10, y).predict_proba(xt * 10)
    assert proba.shape == yt.shape and roc_auc_score(yt, proba, average="macro") > 0.8
    y = y.copy()
    y[5, 1] = np.nan
    knn = multilabel_knn_proba(x, y, xt, k=7, temperature=0.1)
    # brute force: cosine similarity, 7 nearest, exp(sim / T)-weighted share positive among the known ones
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    sims = qn @ xn.T
    expected = np.zeros_like(knn)
    for i in range(len(xt)):
        nearest = np.argsort(-sims[i], kind="stable")[:7]
        for c in range(y.shape[1]):
            known = nearest[~np.isnan(y[nearest, c])]
            w = np.exp(sims[i, known] / 0.1)
            expected[i, c] = (w * y[known, c]).sum() / w.sum()
    np.testing.assert_allclose(knn, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def bright_manifest(tmp_path_factory):
    """48 random 32x32 images: label "bright" = brighter half, "noise" random, "rare" uncertain for some."""
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        bright = i % 2 == 0
        level = 170 if bright else 70
        pixels = np.clip(rng.normal(level, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.png")
        labels = ["bright"] if bright else []
        if rng.random() < 0.5:
            labels.append("noise")
        split = ("train", "train", "val", "test", "test")[i % 5]
        rows.append(
            {
                "image": f"{i:03d}.png",
                "split": split,
                "label_set": "|".join(labels),
                "uncertain_set": "noise" if i % 7 == 0 and "noise" not in labels else "",
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def probe_config(tmp_path, manifest, *overrides):
    register_configs()
    with initialize_config_dir(str(config_dir("probe")), version_base="1.3"):
        return compose(
            "probe",
            overrides=[
                "data=manifest",
                f"data.path={manifest}",
                "data.classes=[bright,noise]",
                "encoder='random:vit_tiny/8@32,depth=2'",
                f"cache_dir={tmp_path / 'cache'}",
                "num_workers=0",
                "bootstrap=50",
                "plots=false",
                *overrides,
            ],
        )


@pytest.mark.parametrize("probe", ["linear_sweep", "knn"])
def test_panderm_probe_on_a_multilabel_manifest(tmp_path, bright_manifest, probe):
    run = tmp_path / "run"
    metrics = run_probe(probe_config(tmp_path, bright_manifest, f"probe={probe}"), run)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["classes"] == ["bright", "noise"] and metrics["test"]["values"] == saved["test"]["values"]
    predictions = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert list(predictions.columns[:5]) == [
        "filename",
        "label_set",
        "uncertain_set",
        "probability_bright",
        "probability_noise",
    ]
    truth = np.zeros((len(predictions), 2))
    for i, (pos, unk) in enumerate(zip(predictions["label_set"], predictions["uncertain_set"], strict=True)):
        for k, name in enumerate(["bright", "noise"]):
            truth[i, k] = np.nan if name in unk.split("|") else float(name in pos.split("|"))
    manifest = pd.read_csv(bright_manifest, keep_default_na=False).set_index("image")
    assert predictions["label_set"].tolist() == manifest.loc[predictions["filename"], "label_set"].tolist()
    proba = predictions[["probability_bright", "probability_noise"]].to_numpy()
    per_label = []
    for k in range(2):  # scikit-learn on the saved predictions, unknown rows dropped
        keep = ~np.isnan(truth[:, k])
        per_label.append(roc_auc_score(truth[keep, k], proba[keep, k]))
    values = saved["test"]["values"]
    assert saved["test"]["per_label"]["bright"]["auroc"] == pytest.approx(per_label[0])
    assert values["auroc_macro"] == pytest.approx(np.mean(per_label))
    assert per_label[0] > 0.9  # brightness is learnable from a random encoder's features
    lo, hi = saved["test"]["ci95"]["intervals"]["auroc_macro"]
    assert lo <= values["auroc_macro"] <= hi
    assert "per label" in (run / "report.md").read_text()


def test_single_label_probes_refuse_multilabel_data(tmp_path, bright_manifest):
    with pytest.raises(ProbeError, match="'fewshot' is not for multi-label data yet"):
        run_probe(probe_config(tmp_path, bright_manifest, "probe=fewshot"), tmp_path / "run")


def test_feature_cache_keeps_multilabel_targets_with_nan(tmp_path, bright_manifest):
    from probes.encoders import load_probe_encoder
    from probes.features import cached_features

    manifest = read_manifest(bright_manifest, classes=["bright", "noise"])
    encoder = load_probe_encoder("random:vit_tiny/8@32,depth=2", seed=0)
    first = cached_features(encoder, manifest, "train", cache_dir=tmp_path, progress=False)["train"]
    again = cached_features(encoder, manifest, "train", cache_dir=tmp_path, progress=False)["train"]  # a hit
    expected = manifest.subset("train").targets()
    assert first.is_multilabel and np.isnan(expected).any()
    for fs in (first, again):
        np.testing.assert_array_equal(fs.labels, expected)
        assert fs.tensors()[1].dtype.is_floating_point
    np.testing.assert_array_equal(first.features, again.features)
    assert len(list(tmp_path.glob("train-*.npz"))) == 1
