"""The probe stage of `panderm demo`: the demo-pretrained encoder against the same architecture at random
init, each probe on the demo's dermatology data, a table, confusion matrices and UMAPs in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from panderm.config import DataSource, ProbeConfig
from panderm.paths import config_dir
from panderm.stats import delong_test
from probes.predictions import paired_difference_table
from probes.run import PREDICTIONS, run_probe

SHOWN = ("balanced_accuracy", "accuracy", "auroc_macro_ovr", "auroc", "f1_macro", "ece")


def probe_stage(ctx: Any) -> None:
    """Run `ctx.cfg.probe.probes` on the pretrained encoder (when the pretraining stage exported one) and on a
    random-init one; runs go to `<demo run>/probe/<source>-<probe>/`, features are cached in the demo run."""
    stage = ctx.cfg.probe
    if not stage.enabled:
        return
    rows, figures, runs = [], [], {}
    for source, encoder in _encoders(ctx).items():
        for probe in stage.probes:
            cfg = _probe_config(ctx, encoder, probe, stage.bootstrap)
            cfg.subgroups = list(stage.subgroups)
            cfg.data = ctx.generated_data()
            run_dir = ctx.run_dir / "probe" / f"{source.replace(' ', '_')}-{probe}"
            result = run_probe(cfg, run_dir)["test"]
            runs[source, probe] = run_dir
            values = result["values"]
            row: dict[str, Any] = {"encoder": source, "probe": probe}
            for name in SHOWN:
                if name in values:
                    low, high = result["ci95"]["intervals"].get(name, (float("nan"), float("nan")))
                    row[name] = f"{values[name]:.3f} [{low:.3f}, {high:.3f}]"
            rows.append(row)
            ctx.metrics.setdefault("probe", {})[f"{source}/{probe}"] = values
            if probe == stage.probes[0]:
                for figure, caption in (("confusion", "confusion matrix"), ("umap", "UMAP of test features")):
                    figures.append((run_dir / "figures" / f"{figure}.png", f"{source}, {probe}: {caption}"))
    ctx.report.heading("Probes")
    ctx.report.text(
        f"Frozen-encoder probes on `{ctx.cfg.data.name}` (test split, 95% stratified bootstrap CIs): the "
        "demo-pretrained encoder against the same architecture at random init. Subgroup metrics "
        f"({', '.join(stage.subgroups)}) and per-image predictions are in each run folder under `probe/`."
    )
    ctx.report.table(pd.DataFrame(rows), "Test metrics per encoder and probe")
    gains = []
    for probe in stage.probes:
        if ("demo-pretrained", probe) not in runs:
            continue
        paired = paired_difference_table(
            runs["demo-pretrained", probe] / PREDICTIONS,
            runs["random init", probe] / PREDICTIONS,
            seed=ctx.cfg.seed,
        )
        ctx.metrics.setdefault("probe_gain", {})[probe] = paired
        for name in ("balanced_accuracy", "auroc_macro_ovr", "auroc"):
            if name in paired:
                d = paired[name]
                gains.append(
                    {
                        "probe": probe,
                        "metric": name,
                        "pretrained - random": f"{d['difference']:+.3f}",
                        "95% CI (paired bootstrap)": f"[{d['low']:+.3f}, {d['high']:+.3f}]",
                    }
                )
    if gains:
        ctx.report.table(
            pd.DataFrame(gains), "What pretraining adds: paired differences on the same test images"
        )
    for path, caption in figures:
        ctx.report.figure(path, caption, relative_to=ctx.run_dir)


def longitudinal_stage(ctx: Any) -> None:
    """`probe=longitudinal` on the demo's follow-up pairs for each encoder of the probe stage (its cached
    features): AUROC of "this lesion changed" with CIs, and the image pairs with their scores."""
    stage = ctx.cfg.longitudinal
    if not stage.enabled:
        return
    if ctx.cfg.data.source != DataSource.synthderm:  # a user's data has no follow-up archive
        ctx.report.heading("Longitudinal change")
        ctx.report.text(
            f"Skipped: the stage runs on a SynthDerm follow-up archive, and this demo's data is "
            f"`{ctx.cfg.data.name}`; run `panderm probe probe=longitudinal` on a manifest with lesion_id and "
            "timepoint columns."
        )
        return
    rows, figure, scores = [], None, {}
    for source, encoder in _encoders(ctx).items():
        cfg = _probe_config(ctx, encoder, "longitudinal", stage.bootstrap)
        cfg.data = ctx.cfg.data.copy()
        cfg.data.name, cfg.data.n_patients = "synthderm_followup", stage.n_patients
        cfg.data.out_dir = str(ctx.run_dir / "data" / "synthderm_followup")
        cfg.data.options = {"followup_fraction": stage.followup_fraction, "modalities": ["dermoscopy"]}
        cfg.probe.options.combine, cfg.probe.options.folds = stage.combine, stage.folds
        run_dir = ctx.run_dir / "longitudinal" / source.replace(" ", "_")
        result = run_probe(cfg, run_dir)["test"]
        ctx.metrics.setdefault("longitudinal", {})[source] = result["values"]
        low, high = result.get("ci95", {}).get("intervals", {}).get("auroc", (float("nan"),) * 2)
        rows.append(
            {
                "encoder": source,
                "pairs": result["n"],
                "changed": sum(row["pairs changed"] for row in result["pairs"]),
                "AUROC [95% CI]": f"{result['values']['auroc']:.3f} [{low:.3f}, {high:.3f}]",
            }
        )
        figure = figure or run_dir / "figures" / "pairs.png"
        scores[source] = pd.read_csv(run_dir / PREDICTIONS)
    ctx.report.heading("Longitudinal change")
    ctx.report.text(
        f"A SynthDerm archive of {stage.n_patients} patients with a follow-up image of "
        f"{stage.followup_fraction:.0%} of the lesions (melanomas grow and change; benign lesions do not). "
        "Pairs of dermoscopy images of one lesion (baseline, follow-up); a linear probe on the pair's frozen "
        f"features ({stage.combine}) predicts whether the lesion changed "
        f"(out-of-fold scores, {stage.folds}-fold cross-validation grouped by patient; 95% bootstrap CIs). "
        "Runs under `longitudinal/`."
    )
    ctx.report.table(pd.DataFrame(rows), "Change detection from follow-up pairs")
    if len(scores) == 2:  # the same pairs, in the same order, scored by both encoders
        (a, pre), (b, rnd) = scores.items()
        test = delong_test(pre["target"], pre["score"], rnd["score"])
        ctx.metrics.setdefault("longitudinal", {})["delong"] = test.to_dict()
        ctx.report.text(
            f"{a} - {b}: AUROC {test.difference:+.3f} [{test.low:+.3f}, {test.high:+.3f}] on the same pairs "
            f"(DeLong's test, p = {test.p_value:.3g})."
        )
    if figure is not None and figure.is_file():
        ctx.report.figure(
            figure, "follow-up pairs with their change score (first encoder)", relative_to=ctx.run_dir
        )


def _encoders(ctx: Any) -> dict[str, str]:
    """{source: encoder spec}: the demo-pretrained export (when the pretraining stage wrote one) and the same
    architecture at random init."""
    sources = {"random init": ctx.random_encoder}
    exported = ctx.run_dir / "pretrain" / "encoder.safetensors"
    if ctx.cfg.pretrain.enabled and exported.is_file():
        sources = {"demo-pretrained": str(exported), **sources}
    return sources


def _probe_config(ctx: Any, encoder: str, probe: str, bootstrap: int) -> DictConfig:
    """A `panderm probe` config for `encoder` with the `probe` preset, features cached in the demo run."""
    cfg = OmegaConf.structured(ProbeConfig)
    cfg.seed, cfg.encoder, cfg.bootstrap = ctx.cfg.seed, encoder, bootstrap
    cfg.cache_dir = str(ctx.run_dir / "feature_cache")
    cfg.probe = OmegaConf.merge(cfg.probe, OmegaConf.load(_preset(probe)))
    return cfg


def _preset(name: str) -> Path:
    return config_dir("probe") / "probe" / f"{name}.yaml"
