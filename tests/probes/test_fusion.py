"""Fusion probe: case assembly, train-only metadata encoding, late/early fusion and the paired comparison,
checked against scikit-learn, `fit_linear_sweep` and `paired_bootstrap_difference` called directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from panderm.errors import ConfigError, ProbeError
from panderm.report import Report
from probes.cases import TaskContext
from probes.fusion import assemble_cases, metadata_matrix, run_fusion
from probes.linear import fit_linear_sweep
from probes.metrics import bootstrap_ci, paired_bootstrap_difference

BOOT = 60


def _splits(n: int) -> np.ndarray:
    return np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10))


def _fixture(n: int = 60, dim: int = 4, seed: int = 0, test_has_b: bool = True):
    """Lesions with modality A at time points 1 and 0 (listed in that order) and B at 0 for every other
    lesion (never for test lesions unless `test_has_b`); features carry the label in column 0."""
    rng = np.random.default_rng(seed)
    labels, splits = rng.integers(0, 2, n), _splits(n)
    rows, feats = [], []
    for i in range(n):
        common = {"lesion_id": f"L{i}", "patient_id": f"P{i // 2}", "split": splits[i], "label": labels[i]}
        common |= {"age": 40 + 10 * labels[i] + rng.normal(0, 10), "sex": rng.choice(["f", "m"])}
        images = [("A", 1), ("A", 0)]
        if i % 2 == 0 and (test_has_b or splits[i] != "test"):
            images.append(("B", 0))
        for modality, t in images:
            rows.append({"image": f"L{i}_{modality}_{t}.png", "modality": modality, "timepoint": t, **common})
            feats.append(rng.normal(0, 1, dim) + np.eye(dim)[0] * (2 * labels[i] - 1))
    return np.asarray(feats, np.float32), pd.DataFrame(rows)


def _context(tmp_path, **kw) -> TaskContext:
    return TaskContext(
        run_dir=tmp_path, report=Report("t"), classes=["a", "b"], bootstrap=BOOT, plots=False, **kw
    )


def test_cases_take_each_modality_at_its_earliest_time_point():
    features, table = _fixture()
    cases = assemble_cases(features, table)
    for modality in ("A", "B"):
        earliest = table[(table["modality"] == modality) & (table["timepoint"] == 0)]
        at = pd.Index(cases.ids).get_indexer(earliest["lesion_id"])
        np.testing.assert_array_equal(cases.blocks[modality][at], features[earliest.index])
        np.testing.assert_array_equal(np.flatnonzero(cases.available[modality]), np.sort(at))
    assert list(cases.ids) == list(pd.unique(table["lesion_id"]))


def test_late_fusion_with_one_input_left_equals_the_unimodal_probe(tmp_path):
    features, table = _fixture(test_has_b=False)
    run_fusion(features, table, context=_context(tmp_path))
    fused = pd.read_csv(tmp_path / "predictions.csv")
    assert set(fused["inputs"]) == {"A"}
    a = table[(table["modality"] == "A") & (table["timepoint"] == 0)]
    train, val, test = (a["split"] == s for s in ("train", "val", "test"))
    x, y = features[a.index], a["label"].to_numpy()
    probe = fit_linear_sweep(x[train], y[train], x[val], y[val], num_classes=2, seed=0)
    expected = probe.predict_proba(x[test])
    assert fused["lesion_id"].tolist() == a.loc[test, "lesion_id"].tolist()
    got = fused[["probability_class_0", "probability_class_1"]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _reference_encoder(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    numbers = Pipeline(
        [("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]
    )
    categories = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    return ColumnTransformer([("n", numbers, numeric), ("c", categories, categorical)])


def test_metadata_encoder_is_fitted_on_train_rows_only():
    rows = pd.DataFrame(
        {
            "age": [30, np.nan, 50, 70, 20, 1000],
            "site": ["trunk", "arm", None, "arm", "leg", "arm"],
            "split": ["train", "train", "train", "train", "test", "test"],
        }
    )
    fit = (rows["split"] == "train").to_numpy()
    got = metadata_matrix(rows, ["age", "site"], fit)
    frame = rows[["age", "site"]].astype({"site": object})
    expected = _reference_encoder(["age"], ["site"]).fit(frame[fit]).transform(frame)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    changed = rows.assign(site=["trunk", "arm", None, "arm", "unseen", "arm"])
    again = metadata_matrix(changed, ["age", "site"], fit)
    np.testing.assert_allclose(again[fit], got[fit], atol=1e-6)
    assert again[4, 2:].sum() == 0  # the test-only category: every one-hot column 0


def _half_signal(n: int = 400, seed: int = 1):
    """The label is the sign of s1 + s2: s1 in modality A's features, s2 in the metadata column `score`."""
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=n), rng.normal(size=n)
    labels = (s1 + s2 > 0).astype(int)
    splits = _splits(n)
    table = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(n)],
            "lesion_id": [f"L{i}" for i in range(n)],
            "split": splits,
            "label": labels,
            "modality": "A",
            "score": s2,
        }
    )
    features = np.column_stack([s1, rng.normal(size=(n, 3))]).astype(np.float32)
    return features, table


def test_fusion_beats_each_input_and_paired_cis_match_the_library(tmp_path):
    features, table = _half_signal()
    metrics = run_fusion(features, table, context=_context(tmp_path), metadata=["score"])
    pred = pd.read_csv(tmp_path / "predictions.csv")
    y = pred["true_label"].to_numpy()
    columns = ["probability_class_0", "probability_class_1"]
    fused = pred[columns].to_numpy()
    auc = {name: roc_auc_score(y, pred[f"{name}_probability_class_1"]) for name in ("A", "metadata")}
    assert roc_auc_score(y, fused[:, 1]) > max(auc.values()) + 0.05
    differences = pd.read_csv(tmp_path / "differences.csv")
    for name in ("A", "metadata"):
        other = pred[[f"{name}_{c}" for c in columns]].to_numpy()
        direct = paired_bootstrap_difference(y, fused, other, n_resamples=BOOT, seed=0)
        ours = differences[differences["input"] == name].set_index("metric")
        for metric, values in direct.items():
            for key in ("difference", "low", "high"):
                assert ours.loc[metric, key] == pytest.approx(values[key], abs=1e-9)
    assert metrics["test_complete_cases"] == len(pred)
    scores = pd.read_csv(tmp_path / "comparison.csv").query("cases == 'complete'")
    for model, proba in {"fusion": fused, "A": pred[[f"A_{c}" for c in columns]].to_numpy()}.items():
        direct = bootstrap_ci(y, proba, n_resamples=BOOT, seed=0)
        row = scores[(scores["model"] == model) & (scores["metric"] == "balanced_accuracy")].iloc[0]
        assert row["value"] == pytest.approx(balanced_accuracy_score(y, proba.argmax(1)))
        assert (row["low"], row["high"]) == pytest.approx(direct["balanced_accuracy"])


def test_early_fusion_runs_with_missing_modalities_and_scores_subgroups(tmp_path):
    features, table = _fixture()
    seen = {}

    def fairness(y, proba, rows):
        seen.update(n=len(y), rows=len(rows), width=proba.shape[1])
        return {"sex": {}}

    metrics = run_fusion(
        features,
        table,
        context=_context(tmp_path, fairness=fairness),
        method="early",
        metadata=["age", "sex"],
    )
    pred = pd.read_csv(tmp_path / "predictions.csv")
    proba = pred[["probability_class_0", "probability_class_1"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert set(pred["inputs"]) == {"A+metadata", "A+B+metadata"}
    assert seen == {"n": len(pred), "rows": len(pred), "width": 2}
    assert metrics["subgroups"] == {"sex": {}}
    assert metrics["test_cases_with_input"]["B"] == (pred["inputs"] == "A+B+metadata").sum()


def test_errors_name_columns_rows_and_inputs(tmp_path):
    features, table = _fixture()
    with pytest.raises(ConfigError, match=r"'ageing'.*'age'"):
        run_fusion(features, table, context=_context(tmp_path), metadata=["ageing"])
    bad = table.copy()
    bad.loc[1, "label"] = 1 - bad.loc[1, "label"]
    with pytest.raises(ProbeError, match=r"'L0'.*L0_A_1\.png.*L0_A_0\.png"):
        run_fusion(features, bad, context=_context(tmp_path))
    test_only = table[(table["modality"] != "B") | (table["split"] == "test")]  # B only on test lesions
    with pytest.raises(ProbeError, match="'B'"):
        run_fusion(features[test_only.index], test_only.reset_index(drop=True), context=_context(tmp_path))
    with pytest.raises(ConfigError, match="at least one modality or metadata"):
        run_fusion(features, table, context=_context(tmp_path), modalities=[])
    with pytest.raises(ConfigError, match=r"\['C'\]"):
        run_fusion(features, table, context=_context(tmp_path), modalities=["C"])
