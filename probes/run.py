"""`panderm probe`: features of a frozen encoder (cached) or from a user's .npz, one probe, and its outputs:
metrics.json (values, missing metrics with reasons, bootstrap CIs, the fairness report per `subgroups=`
column), per-image predictions in PanDerm's columns, a PanDerm summary row, figures and report.md/html in the
run folder. The case-level probes (`TASKS`: longitudinal, survival, fusion) get every split's features and
manifest rows (`probes.cases`) and write their own predictions per pair or case.

A multi-label manifest (`label_set`) runs the one-vs-rest versions of linear_sweep, linear_panderm and knn
(`probes.multilabel`); metrics.json then holds per-label and macro/micro AUROC with bootstrap CIs, and
predictions.csv one probability column per label (`evaluate_multilabel`). No classifier file is saved and no
figures are drawn for multi-label runs yet."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from panderm.data.manifest import Manifest
from panderm.data.sources import SKIPPED_IMAGES, load_data
from panderm.errors import ConfigError, ProbeError
from panderm.io import write_csv
from panderm.models.classifier import save_classifier
from panderm.report import Report
from panderm.runs import start_run, write_metrics
from probes.cases import TaskContext, image_table
from probes.encoders import load_probe_encoder
from probes.fairness import subgroup_report
from probes.features import FeatureSet, cached_features, load_feature_file, resolve_device
from probes.fewshot import label_efficiency, run_fewshot
from probes.knn import knn_proba, prototype_proba
from probes.linear import METRICS as SINGLE_LABEL_METRICS
from probes.linear import LinearProbe, fit_linear_panderm, fit_linear_sweep
from probes.metrics import (
    bootstrap_ci,
    classification_metrics,
    multilabel_bootstrap_ci,
    multilabel_metrics,
)
from probes.multilabel import fit_multilabel_panderm, fit_multilabel_sweep, multilabel_knn_proba
from probes.plots import plot_confusion, plot_curve, plot_reliability, plot_roc, plot_umap
from probes.predictions import summary_row, write_multilabel_predictions, write_predictions, write_summary

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
SUMMARY = "summary.csv"
CURVE_TABLE = "curve.csv"
CLASSIFIER = "classifier"  # classifier.safetensors + .json: encoder + fitted linear head


# ------------------------------------------------------------------------------------------ classifiers


def _check_options(function: Callable[..., Any], name: str, options: Mapping[str, Any]) -> None:
    """A misspelt or unknown probe option is a `ConfigError` naming the valid ones."""
    accepted = {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "context"
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"probe {name!r}: unknown probe.options {unknown}; valid: {sorted(accepted)}")


def _fit_linear(
    sets: Mapping[str, FeatureSet], num_classes: int, device: torch.device, seed: int, name: str, **options
) -> tuple[np.ndarray, dict[str, Any]]:
    x, y = sets["train"].tensors(device)
    if name == "linear_panderm":  # the PanDerm protocol: train split only
        _check_options(fit_linear_panderm, name, options)
        probe = fit_linear_panderm(x, y, num_classes, **options)
    else:
        _check_options(fit_linear_sweep, name, options)
        val = sets["val"].tensors(device) if "val" in sets else (None, None)
        probe = fit_linear_sweep(x, y, *val, num_classes=num_classes, seed=seed, **options)
    return probe.predict_proba(sets["test"].tensors(device)[0]), probe.recipe, probe


def _fit_knn(
    sets: Mapping[str, FeatureSet], num_classes: int, device: torch.device, seed: int, name: str, **options
) -> tuple[np.ndarray, dict[str, Any]]:
    x, y = sets["train"].tensors(device)
    query = sets["test"].tensors(device)[0]
    variant = options.pop("variant", "dino")
    if variant == "prototype":
        _check_options(prototype_proba, name, options)
        proba = prototype_proba(x, y, query, num_classes=num_classes, **options)
    else:
        _check_options(knn_proba, name, options)
        proba = knn_proba(x, y, query, num_classes=num_classes, variant=variant, **options)
    return np.asarray(proba), {"name": "knn", "variant": variant, **options}, None


# each returns (test probabilities, recipe, the fitted LinearProbe or None)
CLASSIFIERS: dict[str, Callable[..., tuple[np.ndarray, dict[str, Any], LinearProbe | None]]] = {
    "linear_panderm": _fit_linear,
    "linear_sweep": _fit_linear,
    "knn": _fit_knn,
}


def _fit_multilabel(
    sets: Mapping[str, FeatureSet], device: torch.device, seed: int, name: str, **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """The multi-label version of probe `name`: (test probabilities (M, C), recipe)."""
    x, y = sets["train"].tensors(device)
    query = sets["test"].tensors(device)[0]
    if name == "knn":
        _check_options(multilabel_knn_proba, name, options)
        proba = multilabel_knn_proba(x, y, query, **options)
        return proba, {"name": "multilabel_knn", **options}
    if name == "linear_panderm":
        _check_options(fit_multilabel_panderm, name, options)
        probe = fit_multilabel_panderm(x, y, **options)
    else:
        if options.get("metric") in SINGLE_LABEL_METRICS:  # the linear_sweep config's single-label default
            log.info("multi-label linear_sweep selects C by macro AUROC, not %s", options.pop("metric"))
        _check_options(fit_multilabel_sweep, name, options)
        val = sets["val"].tensors(device) if "val" in sets else (None, None)
        probe = fit_multilabel_sweep(x, y, *val, seed=seed, **options)
    return probe.predict_proba(query), probe.recipe


MULTILABEL_PROBES = ("linear_sweep", "linear_panderm", "knn")
CURVES: dict[str, Callable[..., pd.DataFrame]] = {
    "fewshot": run_fewshot,
    "label_efficiency": label_efficiency,
}
# case-level probes (`probes.cases.TaskContext`): module:function, imported when chosen
TASKS = {
    "longitudinal": "probes.longitudinal:run_longitudinal",
    "survival": "probes.survival:run_survival",
    "fusion": "probes.fusion:run_fusion",
}
PROBE_NAMES = (*CLASSIFIERS, *CURVES, *TASKS)
UNLABELED_TASKS = ("longitudinal", "survival")  # they predict another column (changed, event/time)


# -------------------------------------------------------------------------------------------- features


def load_feature_sets(
    cfg: DictConfig, run_dir: Path, device: torch.device, manifest: Manifest | None, *, labels: bool = True
) -> dict[str, FeatureSet]:
    """{split: FeatureSet} from `cfg.features` (a .npz) or from `cfg.encoder` on `manifest` (`cfg.data` as
    read; features cached). `labels`: refuse a manifest with unlabeled rows (probes that predict another
    column, e.g. survival, pass False)."""
    if cfg.features:
        return load_feature_file(cfg.features)
    if not cfg.encoder:
        raise ConfigError("set encoder=<checkpoint | random:... | timm:...> or features=<file.npz>")
    if labels and not manifest.has_labels:
        raise ProbeError(f"{manifest.source}: the manifest has no labels to probe")
    if labels and (unlabeled := manifest.unlabeled_rows()):
        shown = ", ".join(map(str, unlabeled[:10])) + (", ..." if len(unlabeled) > 10 else "")
        raise ProbeError(
            f"{manifest.source}: {len(unlabeled)} row(s) without a label (rows {shown}): a probe trains and "
            "scores on labeled rows only; give them their class or drop them from the manifest"
        )
    encoder = load_probe_encoder(cfg.encoder, seed=cfg.seed, strict=cfg.encoder_strict)
    splits = [s for s in ("train", "val", "test") if (manifest.table["split"] == s).any()]
    return cached_features(
        encoder,
        manifest,
        splits,
        pooling=cfg.pooling,
        cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=device,
        on_bad_image=cfg.data.on_bad_image,
        bad_image_log=run_dir / SKIPPED_IMAGES,
        devices=cfg.devices,
    )


def _check_subgroups(columns: list[str], test: FeatureSet) -> None:
    available = [] if test.meta is None else list(test.meta.columns)
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise ConfigError(f"subgroups: {unknown} not among the test split's columns {available}")


def run_task(
    name: str,
    sets: Mapping[str, FeatureSet],
    context: TaskContext,
    options: dict[str, Any],
    subgroups: list[str],
) -> dict[str, Any]:
    """Run the case-level probe `name` (`TASKS`) on every split's features and rows."""
    module, function = TASKS[name].split(":")
    task = getattr(importlib.import_module(module), function)
    _check_options(task, name, options)
    features, table = image_table(sets)
    if unknown := [c for c in subgroups if c not in table]:
        raise ConfigError(f"subgroups: {unknown} not among the manifest's columns {list(table.columns)}")
    return task(features, table, context=context, **options)


def _fairness(
    y: np.ndarray,
    proba: np.ndarray,
    rows: pd.DataFrame,
    *,
    columns: list[str],
    bootstrap: int,
    seed: int,
    plots: bool,
    run_dir: Path,
    report: Report,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """The fairness report (`probes.fairness.subgroup_report`) of test predictions per column of `columns`
    (`subgroups=`)."""
    proba = np.asarray(proba, dtype=np.float64)
    names = classes if classes and len(classes) == proba.shape[1] else [str(c) for c in range(proba.shape[1])]
    return {
        column: subgroup_report(
            y,
            proba,
            rows[column].to_numpy(),
            column=column,
            classes=names,
            run_dir=run_dir,
            report=report,
            n_resamples=bootstrap,
            seed=seed,
            plots=plots,
        )
        for column in columns
    }


def _class_names(sets: Mapping[str, FeatureSet]) -> list[str]:
    for fs in sets.values():
        if fs.classes:
            return list(fs.classes)
    labels = np.concatenate([fs.labels for fs in sets.values()])
    return [str(c) for c in range(int(labels.max()) + 1)]


# --------------------------------------------------------------------------------------------- outputs


def evaluate_multilabel(
    test: FeatureSet,
    proba: np.ndarray,
    classes: list[str],
    run_dir: Path,
    *,
    bootstrap: int,
    seed: int,
    dataset: str,
    report: Report,
) -> dict[str, Any]:
    """Per-label and macro/micro AUROC (+ bootstrap CIs), predictions.csv (one probability column per label
    and the true label_set) and a PanDerm summary row (AUROC = macro AUROC, AUPR = macro AP)."""
    y = test.labels
    metrics = multilabel_metrics(y, proba, classes=classes)
    result: dict[str, Any] = metrics.to_dict()
    intervals: dict[str, Any] = {}
    if bootstrap:
        result["ci95"] = multilabel_bootstrap_ci(y, proba, classes=classes, n_resamples=bootstrap, seed=seed)
        result["ci95"] = result["ci95"].to_dict()
        intervals = result["ci95"]["intervals"]
    write_multilabel_predictions(run_dir / PREDICTIONS, test.ids, y, proba, classes, split="test")
    row = {"Dataset": dataset, "W_F1": np.nan, "AUROC": np.nan, "BACC": np.nan, "ACC": np.nan, "AUPR": np.nan}
    row.update(AUROC=metrics.values.get("auroc_macro", np.nan), AUPR=metrics.values.get("ap_macro", np.nan))
    write_summary(run_dir / SUMMARY, [row])

    def ci(name: str) -> str:
        return "[{:.3f}, {:.3f}]".format(*intervals[name]) if name in intervals else ""

    table = pd.DataFrame([{"metric": k, "value": v, "95% CI": ci(k)} for k, v in metrics.values.items()])
    report.table(table, f"Test metrics ({len(y)} images, {len(classes)} labels)")
    per_label = pd.DataFrame(
        [
            {"label": name, **{k: v for k, v in entry.items()}, "AUROC 95% CI": ci(f"auroc:{name}")}
            for name, entry in metrics.per_label.items()
        ]
    )
    report.table(per_label, "AUROC and average precision per label (test)")
    for name, reason in metrics.missing.items():
        report.text(f"- `{name}` not computed: {reason}")
    return result


def evaluate_predictions(
    test: FeatureSet,
    proba: np.ndarray,
    classes: list[str],
    run_dir: Path,
    *,
    subgroups: list[str],
    bootstrap: int,
    seed: int,
    plots: bool,
    dataset: str,
    report: Report,
) -> dict[str, Any]:
    """Metrics with CIs and subgroup gaps, predictions + summary CSVs and figures for test probabilities."""
    y = test.labels
    metrics = classification_metrics(y, proba, classes=classes)
    result: dict[str, Any] = metrics.to_dict()
    if bootstrap:
        result["ci95"] = bootstrap_ci(y, proba, n_resamples=bootstrap, seed=seed).to_dict()
    write_predictions(run_dir / PREDICTIONS, test.ids, y, proba, classes, split="test")
    write_summary(run_dir / SUMMARY, [summary_row(metrics, dataset)])
    table = pd.DataFrame([{"metric": k, "value": v} for k, v in metrics.values.items()])
    if "ci95" in result:
        intervals = result["ci95"]["intervals"]
        table["95% CI"] = [
            "[{:.3f}, {:.3f}]".format(*intervals[k]) if k in intervals else "" for k in table["metric"]
        ]
    report.table(table, f"Test metrics ({len(y)} images)")
    for name, reason in metrics.missing.items():
        report.text(f"- `{name}` not computed: {reason}")
    result["subgroups"] = _fairness(
        y,
        proba,
        test.meta,
        columns=subgroups,
        bootstrap=bootstrap,
        seed=seed,
        plots=plots,
        run_dir=run_dir,
        report=report,
        classes=classes,
    )
    if plots:
        figures = run_dir / "figures"
        shown = [
            (
                plot_confusion(y, proba.argmax(1), classes, figures / "confusion.png"),
                "confusion matrix (test)",
            ),
            (plot_roc(y, proba, classes, figures / "roc.png"), "ROC curves (test)"),
            (plot_reliability(y, proba, figures / "reliability.png"), "reliability diagram (test)"),
            (plot_umap(test.features, y, classes, figures / "umap.png", seed=seed), "UMAP of test features"),
        ]
        for path, caption in shown:
            report.figure(path, caption, relative_to=run_dir)
    return result


def run_probe(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the configured probe into `run_dir`; returns what metrics.json holds."""
    run_dir = start_run(cfg, run_dir)  # also seeds everything from cfg.seed
    name = cfg.probe.name
    if name not in PROBE_NAMES:
        raise ConfigError(f"probe.name={name!r} is not one of {PROBE_NAMES}")
    options = OmegaConf.to_container(cfg.probe.options, resolve=True)
    device = resolve_device(None if cfg.device == "auto" else cfg.device)
    manifest = None if cfg.features else load_data(cfg.data, run_dir)
    sets = load_feature_sets(cfg, run_dir, device, manifest, labels=name not in UNLABELED_TASKS)
    if name not in TASKS and ("train" not in sets or "test" not in sets):
        raise ProbeError(f"probing needs a train and a test split; found {sorted(sets)}")
    classes = _class_names(sets)
    if name not in TASKS:
        _check_subgroups(list(cfg.subgroups), sets["test"])
    source = cfg.features or cfg.encoder
    dataset = Path(cfg.features).stem if cfg.features else cfg.data.name
    report = Report(f"Probe `{name}` of `{source}` on `{dataset}`")
    sizes = ", ".join(f"{split} {len(fs)}" for split, fs in sets.items())
    dim = next(iter(sets.values())).dim
    report.text(f"{dim}-d features ({cfg.pooling} pooling); {sizes} images; classes {classes}.")
    metrics: dict[str, Any] = {"probe": name, "source": str(source), "dataset": dataset, "classes": classes}
    skipped = sum(len(fs.skipped) for fs in sets.values())
    if skipped:
        metrics["skipped_images"] = skipped
        listed = f"listed in `{SKIPPED_IMAGES}`"
        report.text(f"{skipped} unreadable image(s) skipped (data.on_bad_image=skip), {listed}.")
    if name in TASKS:
        subgroups = list(cfg.subgroups)
        context = TaskContext(
            run_dir,
            report,
            classes,
            seed=cfg.seed,
            bootstrap=cfg.bootstrap,
            plots=cfg.plots,
            device=str(device),
            image_path=None if manifest is None else manifest.path,
            fairness=partial(
                _fairness,
                columns=subgroups,
                bootstrap=cfg.bootstrap,
                seed=cfg.seed,
                plots=cfg.plots,
                run_dir=run_dir,
                report=report,
                classes=classes,
            ),
        )
        metrics["test"] = run_task(name, sets, context, options, subgroups)
    elif sets["train"].is_multilabel:
        if name not in MULTILABEL_PROBES:
            raise ProbeError(
                f"probe {name!r} is not for multi-label data yet; use one of {MULTILABEL_PROBES} "
                "(one-vs-rest versions)"
            )
        if list(cfg.subgroups):
            raise ConfigError(
                f"subgroups={list(cfg.subgroups)}: subgroup tables are not for multi-label data yet"
            )
        proba, metrics["recipe"] = _fit_multilabel(sets, device, cfg.seed, name, **options)
        metrics["test"] = evaluate_multilabel(
            sets["test"],
            np.asarray(proba, dtype=np.float64),
            classes,
            run_dir,
            bootstrap=cfg.bootstrap,
            seed=cfg.seed,
            dataset=dataset,
            report=report,
        )
    elif name in CLASSIFIERS:
        proba, recipe, fitted = CLASSIFIERS[name](sets, len(classes), device, cfg.seed, name, **options)
        metrics["recipe"] = recipe
        if fitted is not None and not cfg.features:  # a saved model the MLLM expert backend can answer with
            encoder = load_probe_encoder(cfg.encoder, seed=cfg.seed, strict=cfg.encoder_strict)
            model = fitted.to_classifier(encoder, classes, pooling=cfg.pooling)
            metrics["classifier"] = str(save_classifier(model, run_dir / CLASSIFIER, recipe=recipe))
        metrics["test"] = evaluate_predictions(
            sets["test"],
            np.asarray(proba, dtype=np.float64),
            classes,
            run_dir,
            subgroups=list(cfg.subgroups),
            bootstrap=cfg.bootstrap,
            seed=cfg.seed,
            plots=cfg.plots,
            dataset=dataset,
            report=report,
        )
    else:
        train, test = sets["train"].tensors(device), sets["test"].tensors(device)
        if name == "label_efficiency" and "val" in sets:
            options = {**dict(zip(("val_x", "val_y"), sets["val"].tensors(device), strict=True)), **options}
        _check_options(CURVES[name], name, options)
        curve = CURVES[name](*train, *test, num_classes=len(classes), seed=cfg.seed, **options)
        write_csv(run_dir / CURVE_TABLE, curve)
        metrics["curve"] = curve.to_dict(orient="records")
        report.table(curve, f"{name} on the test split (mean ± std)")
        if cfg.plots:
            x = "shot" if name == "fewshot" else "fraction"
            path = plot_curve(curve, x, "balanced_accuracy", run_dir / "figures" / f"{name}.png", log_x=True)
            report.figure(path, f"{name}: balanced accuracy against {x}", relative_to=run_dir)
    write_metrics(run_dir, metrics)
    report.write(run_dir)
    log.info("probe %s: results in %s", name, run_dir)
    return metrics
