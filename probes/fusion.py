"""Multimodal fusion probe: the dermoscopic, clinical and total-body images of one case (a lesion, or a
patient with `case="patient_id"`) plus its metadata, each image modality at the case's earliest time point.

`assemble_cases` turns the image table (`probes.cases.image_table`) into one row per case: its label and
split (all its rows must agree), one feature block per modality with an availability mask, and the table row
of its earliest image. `metadata_matrix` encodes metadata columns (numeric: median-imputed with missing
indicators and standardised; categorical: one-hot, unknown categories ignored), fitted on train cases only.

Fusion (`method`): "late" fits one linear probe (`probes.linear.fit_linear_sweep`, C chosen on the val cases)
per input on the train cases that have it, and a case's fused probabilities are the (optionally weighted)
mean of the probabilities of the inputs it has; "early" concatenates the standardised modality features
(zeros + a missing indicator where a modality is absent) and the metadata into one linear probe.

`run_fusion` compares, on the test cases that have every input ("complete cases"), each input alone with the
fusion (metrics with bootstrap CIs, paired bootstrap differences fusion - input), and scores the fusion on all
test cases.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from panderm.data.outcomes import LESION, TIMEPOINT, parse_timepoints
from panderm.errors import ConfigError, ProbeError
from panderm.io import write_csv
from probes.cases import TaskContext, require_columns
from probes.linear import fit_linear_sweep
from probes.metrics import bootstrap_ci, classification_metrics, paired_bootstrap_difference
from probes.plots import new_figure, save_figure
from probes.predictions import probability_columns

METADATA = "metadata"
FUSION = "fusion"
METHODS = ("late", "early")
PREDICTIONS = "predictions.csv"
COMPARISON = "comparison.csv"
DIFFERENCES = "differences.csv"
SHOWN_METRICS = ("balanced_accuracy", "auroc", "auroc_macro_ovr")


@dataclass
class Cases:
    """One row per case: `ids` (N,), `labels` (N,) class codes, `splits` (N,), `blocks` (modality ->
    (N, D) features, zeros where the case lacks it), `available` (modality -> (N,) bool) and `rows` (the
    table row of each case's earliest image, index 0..N-1)."""

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    blocks: dict[str, np.ndarray]
    available: dict[str, np.ndarray]
    rows: pd.DataFrame


# ------------------------------------------------------------------------------------------ case assembly


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else [str(v) for v in value]


def _chronological(table: pd.DataFrame) -> pd.DataFrame:
    """`table` sorted by time point (rows without one last), keeping the given order within a time point."""
    if TIMEPOINT not in table:
        return table
    try:
        times = parse_timepoints(table[TIMEPOINT])
    except ValueError as error:
        raise ProbeError(f"field {TIMEPOINT!r}: {error}") from error
    order = np.argsort(np.where(np.isnan(times), np.inf, times), kind="stable")
    return table.iloc[order]


def _check_agreement(table: pd.DataFrame, case: str, column: str) -> None:
    """A `ProbeError` naming the cases whose rows disagree on `column` (label, split), with their images."""
    counts = table.groupby(case, sort=False)[column].nunique()
    bad = counts.index[counts > 1]
    if len(bad):
        lines = []
        for case_id in bad[:10]:
            rows = table[table[case] == case_id]
            listed = ", ".join(
                f"{img} ({value})" for img, value in zip(rows["image"], rows[column], strict=True)
            )
            lines.append(f"{case} {case_id!r}: rows {listed}")
        raise ProbeError(
            f"the rows of {len(bad)} case(s) disagree on their {column}; one {column} per case:\n  "
            + "\n  ".join(lines)
        )


def _modalities(table: pd.DataFrame, modalities: list[str] | None) -> list[str]:
    present = [str(m) for m in pd.unique(table["modality"].dropna())]
    if modalities is None:
        return present
    unknown = [m for m in modalities if m not in present]
    if unknown:
        raise ConfigError(f"modalities {unknown} not found; the manifest's modality column has {present}")
    return modalities


def assemble_cases(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    modalities: Sequence[str] | None = None,
    metadata: Sequence[str] = (),
    case: str = LESION,
) -> Cases:
    """Cases from image features (N, D) and their table rows (`probes.cases.image_table`): each requested
    modality (default: every value of the `modality` column) at the case's earliest time point. Cases with
    none of the modalities are left out unless `metadata` is asked for. Raises `ConfigError` for missing
    columns or modalities, `ProbeError` naming the rows of a case whose label or split disagree."""
    modalities = _as_list(modalities)
    needed = [case, "label", "split", *metadata] + (["modality"] if modalities != [] else [])
    require_columns(table, needed, "the fusion probe")
    modalities = _modalities(table, modalities) if modalities != [] else []
    table = table.reset_index(drop=True)
    if table[case].isna().any():
        rows = table.loc[table[case].isna(), "image"].tolist()
        raise ProbeError(f"{len(rows)} row(s) without a {case!r}: {rows[:10]}")
    for column in ("label", "split"):
        _check_agreement(table, case, column)
    ordered = _chronological(table)
    if not metadata:
        ordered = ordered[ordered["modality"].isin(modalities)]
    if modalities:  # the case's row: its earliest image, of the first requested modality it has
        rank = ordered["modality"].map({m: i for i, m in enumerate(modalities)}).fillna(len(modalities))
        first = ordered.iloc[np.argsort(rank.to_numpy(), kind="stable")]
    else:
        first = ordered
    rows = first.drop_duplicates(case, keep="first").reset_index(drop=True)
    position = pd.Index(rows[case])
    blocks, available = {}, {}
    for modality in modalities:
        earliest = ordered[ordered["modality"] == modality].drop_duplicates(case, keep="first")
        at = position.get_indexer(earliest[case])
        blocks[modality] = np.zeros((len(rows), features.shape[1]), dtype=np.float32)
        blocks[modality][at] = features[earliest.index.to_numpy()]
        available[modality] = np.zeros(len(rows), dtype=bool)
        available[modality][at] = True
    return Cases(
        ids=rows[case].to_numpy(),
        labels=rows["label"].to_numpy(dtype=np.int64),
        splits=rows["split"].astype(str).to_numpy(),
        blocks=blocks,
        available=available,
        rows=rows,
    )


# ---------------------------------------------------------------------------------------------- metadata


def _is_numeric(values: pd.Series) -> bool:
    given = values.dropna()
    return pd.to_numeric(given, errors="coerce").notna().all() and not pd.api.types.is_bool_dtype(given)


def metadata_frame(rows: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The metadata `columns` of `rows`, numeric ones as floats and the others as strings (NaN = missing)."""
    out = {}
    for column in columns:
        values = rows[column]
        if _is_numeric(values):
            out[column] = pd.to_numeric(values, errors="coerce").astype(float)
        else:
            out[column] = values.map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    return pd.DataFrame(out, index=rows.index)


def metadata_transformer(frame: pd.DataFrame) -> ColumnTransformer:
    """An unfitted encoder of a `metadata_frame`: numeric columns median-imputed (with missing indicators)
    and standardised, categorical ones one-hot (missing = its own category, unknown categories all-zero)."""
    numeric = [c for c in frame if pd.api.types.is_float_dtype(frame[c])]
    categorical = [c for c in frame if c not in numeric]
    return ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                numeric,
            ),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="(missing)"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                categorical,
            ),
        ],
        sparse_threshold=0.0,
    )


def metadata_matrix(rows: pd.DataFrame, columns: Sequence[str], fit: np.ndarray) -> np.ndarray:
    """Encoded metadata (N, K) float32 of every row, the encoder fitted on the rows where `fit` is True."""
    frame = metadata_frame(rows, columns)
    encoder = metadata_transformer(frame).fit(frame[np.asarray(fit, dtype=bool)])
    return np.asarray(encoder.transform(frame), dtype=np.float32)


# ------------------------------------------------------------------------------------------------ fusion


def fit_input(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    has: np.ndarray,
    *,
    num_classes: int,
    seed: int = 0,
    **options: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A linear probe of input `name` on the train cases that have it (C chosen on its val cases, or a
    hold-out of train without any): (probabilities (N, C) of every case, NaN where it lacks the input,
    recipe). Raises `ProbeError` naming the input when it has no training case or cannot be fitted."""
    train, val = has & (splits == "train"), has & (splits == "val")
    if not train.any():
        raise ProbeError(f"input {name!r}: no training case has it; drop it from the fusion")
    validation = (x[val], labels[val]) if val.any() else (None, None)
    try:
        probe = fit_linear_sweep(
            x[train], labels[train], *validation, num_classes=num_classes, seed=seed, **options
        )
    except ProbeError as error:
        raise ProbeError(f"input {name!r}: {error}") from error
    proba = np.full((len(x), num_classes), np.nan)
    proba[has] = probe.predict_proba(x[has])
    return proba, probe.recipe


def late_fusion(probas: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Weighted mean (default: equal weights) of each case's input probabilities (N, C) over the inputs
    it has (NaN rows = absent); NaN where a case has none."""
    stacked = np.stack(list(probas.values()))
    w = np.array([1.0 if weights is None else float(weights.get(name, 1.0)) for name in probas])
    has = ~np.isnan(stacked[..., 0])
    total = (np.where(has[..., None], stacked, 0.0) * w[:, None, None]).sum(axis=0)
    norm = (has * w[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / np.where(norm > 0, norm, np.nan)[:, None]


def early_features(cases: Cases, meta: np.ndarray | None) -> np.ndarray:
    """One matrix per case: each modality standardised on its train cases (zeros where absent) and a missing
    indicator per modality, then the encoded metadata."""
    train = cases.splits == "train"
    parts = []
    for modality, block in cases.blocks.items():
        has = cases.available[modality]
        if not (has & train).any():
            raise ProbeError(f"input {modality!r}: no training case has it; drop it from the fusion")
        scaled = np.zeros_like(block)
        scaled[has] = StandardScaler().fit(block[has & train]).transform(block[has])
        parts += [scaled, (~has).astype(np.float32)[:, None]]
    if meta is not None:
        parts.append(meta)
    return np.concatenate(parts, axis=1)


# -------------------------------------------------------------------------------------------- comparison


def _scores(y: np.ndarray, proba: np.ndarray, bootstrap: int, seed: int) -> dict[str, dict[str, float]]:
    """metric -> {value, low, high} (NaN bounds without bootstrap)."""
    values = classification_metrics(y, proba).values
    intervals = bootstrap_ci(y, proba, n_resamples=bootstrap, seed=seed) if bootstrap else {}
    return {
        name: {
            "value": float(v),
            "low": intervals.get(name, (np.nan,) * 2)[0],
            "high": intervals.get(name, (np.nan,) * 2)[1],
        }
        for name, v in values.items()
    }


def compare_inputs(
    y: np.ndarray,
    probas: Mapping[str, np.ndarray],
    fused: np.ndarray,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test-case comparison of each input alone and the fusion. Returns (scores: model, cases, n, metric,
    value, low, high -- each model on the complete cases (every input present), each input on all cases with
    it and the fusion on all cases; differences: input, metric, difference, low, high, p_not_above_0 -- the
    paired bootstrap of fusion - input on the complete cases)."""
    complete = np.all([~np.isnan(p[:, 0]) for p in probas.values()], axis=0)
    scopes: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    if complete.any():
        scopes += [(name, "complete", complete, p) for name, p in {**probas, FUSION: fused}.items()]
    scopes += [(name, "all with the input", ~np.isnan(p[:, 0]), p) for name, p in probas.items()]
    scopes.append((FUSION, "all", ~np.isnan(fused[:, 0]), fused))
    rows = []
    for model, scope, keep, proba in (s for s in scopes if s[2].any()):
        for metric, s in _scores(y[keep], proba[keep], bootstrap, seed).items():
            rows.append({"model": model, "cases": scope, "n": int(keep.sum()), "metric": metric, **s})
    differences = []
    for name, proba in probas.items() if complete.any() else ():
        if bootstrap:
            paired = paired_bootstrap_difference(
                y[complete], fused[complete], proba[complete], n_resamples=bootstrap, seed=seed
            )
        else:
            a, b = (classification_metrics(y[complete], p[complete]).values for p in (fused, proba))
            paired = {m: {"difference": a[m] - b[m], "low": np.nan, "high": np.nan} for m in a if m in b}
        differences += [{"input": name, "metric": m, **d} for m, d in paired.items()]
    return pd.DataFrame(rows), pd.DataFrame(differences)


def headline_metric(scores: pd.DataFrame) -> str:
    """AUROC (binary, or macro one-vs-rest) when the complete-case scores have it, else balanced accuracy."""
    present = set(scores["metric"])
    return next((m for m in ("auroc", "auroc_macro_ovr") if m in present), "balanced_accuracy")


def plot_comparison(scores: pd.DataFrame, metric: str, path: str | os.PathLike[str]) -> Path:
    """`metric` with its 95% CI per input and for the fusion (complete test cases), and the fusion on all
    test cases. Returns `path`."""
    shown = scores[(scores["metric"] == metric) & scores["cases"].isin(["complete", "all"])]
    shown = shown[(shown["cases"] == "complete") | (shown["model"] == FUSION)]
    labels = [
        f"{m}\n({c}, n={n})" for m, c, n in zip(shown["model"], shown["cases"], shown["n"], strict=True)
    ]
    values = shown["value"].to_numpy()
    err = np.abs(np.vstack([values - shown["low"].to_numpy(), shown["high"].to_numpy() - values]))
    fig = new_figure(max(4.0, 1.3 * len(shown) + 1), 3.8)
    ax = fig.subplots()
    colors = ["tab:orange" if m == FUSION else "tab:blue" for m in shown["model"]]
    ax.bar(range(len(shown)), values, color=colors, alpha=0.8)
    ax.errorbar(range(len(shown)), values, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(range(len(shown)), labels, fontsize="small")
    ax.set(
        ylabel=metric.replace("_", " "), ylim=(0, 1), title=f"{metric.replace('_', ' ')} (95% CI), test cases"
    )
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- the probe


def _inputs(cases: Cases, metadata: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    inputs = {m: (cases.blocks[m], cases.available[m]) for m in cases.blocks}
    if metadata:
        meta = metadata_matrix(cases.rows, metadata, cases.splits == "train")
        inputs[METADATA] = (meta, np.ones(len(meta), dtype=bool))
    return inputs


def _predictions_table(
    cases: Cases, test: np.ndarray, case: str, probas: Mapping[str, np.ndarray], fused: np.ndarray
) -> pd.DataFrame:
    columns = probability_columns(fused.shape[1])
    has = {name: ~np.isnan(p[test, 0]) for name, p in probas.items()}
    table = pd.DataFrame(
        {
            case: cases.ids[test],
            "inputs": ["+".join(n for n in has if has[n][i]) for i in range(int(test.sum()))],
            "true_label": cases.labels[test],
            "predicted_label": fused[test].argmax(axis=1),
        }
    )
    table[columns] = fused[test]
    for name, proba in probas.items():
        table[[f"{name}_{c}" for c in columns]] = proba[test]
    return table


def _wide(scores: pd.DataFrame) -> pd.DataFrame:
    shown = scores[scores["metric"].isin(SHOWN_METRICS)]
    cells = shown.assign(
        cell=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in shown[["value", "low", "high"]].to_numpy()]
    )
    keys = ["model", "cases", "n"]
    wide = cells.pivot(index=keys, columns="metric", values="cell")
    return wide.reindex(pd.MultiIndex.from_frame(cells[keys].drop_duplicates())).reset_index()


def _report(
    context: TaskContext,
    cases: Cases,
    test: np.ndarray,
    scores: pd.DataFrame,
    differences: pd.DataFrame,
    method: str,
) -> None:
    report = context.report
    report.heading(f"Multimodal fusion ({method})")
    n_complete = (
        int(scores.loc[scores["cases"] == "complete", "n"].max())
        if (scores["cases"] == "complete").any()
        else 0
    )
    counts = ", ".join(f"{s} {int((cases.splits == s).sum())}" for s in ("train", "val", "test"))
    report.text(f"Cases: {counts}; {n_complete} of {int(test.sum())} test cases have every input (complete).")
    report.table(_wide(scores), "Test metrics [95% bootstrap CI] per input and for the fusion")
    if len(differences):
        shown = differences[differences["metric"].isin(SHOWN_METRICS)]
        report.table(shown, "Fusion - input on the complete test cases (paired bootstrap 95% CI)")
    if context.plots and (scores["cases"] == "complete").any():
        metric = headline_metric(scores[scores["cases"] == "complete"])
        path = plot_comparison(scores, metric, context.run_dir / "figures" / "fusion_comparison.png")
        report.figure(
            path, f"{metric} per input and for the fusion (test cases)", relative_to=context.run_dir
        )


def _nested(frame: pd.DataFrame, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for record in frame.to_dict(orient="records"):
        node = out
        for key in keys[:-1]:
            node = node.setdefault(str(record[key]), {})
        node[str(record[keys[-1]])] = {
            k: None if isinstance(v, float) and np.isnan(v) else v for k, v in record.items() if k not in keys
        }
    return out


def run_fusion(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    context: TaskContext,
    modalities: Sequence[str] | None = None,
    metadata: Sequence[str] | str = (),
    method: str = "late",
    case: str = LESION,
    weights: Mapping[str, float] | None = None,
    metric: str = "balanced_accuracy",
    allow_missing_classes: bool = False,
) -> dict[str, Any]:
    """The fusion probe of `panderm probe probe=fusion` on image features (N, D) and their table rows
    (`probes.cases.image_table`). `modalities` (default: all), `metadata` (columns), `method` ("late" or
    "early"), `case` (the column naming a case), `weights` (input -> weight of its probabilities in late
    fusion), `metric` (val metric choosing C) and `allow_missing_classes` go to every linear probe.
    Writes predictions.csv (test cases), comparison.csv, differences.csv, a figure and report sections;
    returns the metrics (JSON-serialisable)."""
    metadata = _as_list(metadata) or []
    if method not in METHODS:
        raise ConfigError(f"fusion method={method!r}; choose one of {METHODS}")
    if modalities is not None and not list(modalities) and not metadata:
        raise ConfigError("the fusion probe needs at least one modality or metadata column")
    cases = assemble_cases(features, table, modalities=modalities, metadata=metadata, case=case)
    inputs = _inputs(cases, metadata)
    if not inputs:
        raise ConfigError("the fusion probe needs at least one modality or metadata column")
    if weights is not None and (unknown := sorted(set(weights) - set(inputs))):
        raise ConfigError(f"weights for {unknown}: not among the fusion's inputs {list(inputs)}")
    fit = {"num_classes": len(context.classes), "seed": context.seed, "metric": metric}
    fit["allow_missing_classes"] = allow_missing_classes
    probas, recipes = {}, {}
    for name, (x, has) in inputs.items():
        probas[name], recipes[name] = fit_input(name, x, cases.labels, cases.splits, has, **fit)
    if method == "late":
        fused = late_fusion(probas, weights)
    else:
        meta = inputs[METADATA][0] if metadata else None
        x = early_features(cases, meta)
        fused, recipes[FUSION] = fit_input(
            FUSION, x, cases.labels, cases.splits, np.ones(len(x), bool), **fit
        )
    test = cases.splits == "test"
    if not test.any():
        raise ProbeError("the fusion probe needs test cases; none of the cases is in the test split")
    y = cases.labels[test]
    scores, differences = compare_inputs(
        y,
        {n: p[test] for n, p in probas.items()},
        fused[test],
        bootstrap=context.bootstrap,
        seed=context.seed,
    )
    write_csv(context.run_dir / PREDICTIONS, _predictions_table(cases, test, case, probas, fused))
    write_csv(context.run_dir / COMPARISON, scores)
    write_csv(context.run_dir / DIFFERENCES, differences)
    _report(context, cases, test, scores, differences, method)
    fused_all = classification_metrics(y, fused[test], classes=context.classes).to_dict()
    if context.bootstrap:
        fused_all["ci95"] = bootstrap_ci(
            y, fused[test], n_resamples=context.bootstrap, seed=context.seed
        ).to_dict()
    complete = scores[scores["cases"] == "complete"]
    return {
        "probe": "fusion",
        "method": method,
        "case": case,
        "inputs": list(inputs),
        "cases": {s: int((cases.splits == s).sum()) for s in ("train", "val", "test")},
        "test_cases_with_input": {n: int((~np.isnan(p[test, 0])).sum()) for n, p in probas.items()},
        "test_complete_cases": int(complete["n"].max()) if len(complete) else 0,
        **fused_all,  # the fusion on every test case: values, missing, ci95 (as a classification probe's)
        "comparison": _nested(scores, ["cases", "model", "metric"]),
        "differences": _nested(differences, ["input", "metric"]),
        "subgroups": context.fairness(y, fused[test], cases.rows[test].reset_index(drop=True)),
        "recipes": recipes,
    }
