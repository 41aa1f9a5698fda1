"""The reader-study stage of `panderm demo`: a simulated study in which readers of three experience levels
read the demo's test cases unaided and then aided by the probe stage's predictions (malignant vs benign),
analysed with `readers.report.write_report` (MRMC, paired tests, answer changes, mixed model, figures)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from readers.report import write_report
from readers.schema import save_study
from readers.simulate import roe_metz_study, simulate_ai_assisted

MALIGNANT = ("melanoma", "bcc")  # SynthDerm's malignant classes; the rest are benign


def probe_ai(ctx: Any) -> tuple[pd.Series, pd.Series, str] | None:
    """Truth (1 = malignant) and the AI's P(malignant) per test image from the probe stage's first probe run
    (demo-pretrained encoder, else random init), and that run's name; None when no run or class is there."""
    classes = list(ctx.data[ctx.cfg.data.name].classes or [])
    malignant = [classes.index(c) for c in MALIGNANT if c in classes]
    if not malignant or len(malignant) == len(classes):
        return None
    for source in ("demo-pretrained", "random_init"):
        name = f"{source}-{ctx.cfg.probe.probes[0]}"
        path = ctx.run_dir / "probe" / name / "predictions.csv"
        if path.is_file():
            table = pd.read_csv(path).set_index("filename")
            truth = table["true_label"].isin(malignant).astype(int)
            score = table[[f"probability_class_{i}" for i in malignant]].sum(axis=1)
            return truth, score, name
    return None


def readers_stage(ctx: Any) -> None:
    """Simulate and analyse the reader study into `<demo run>/readers/`; add its figures to the report."""
    stage = ctx.cfg.readers
    if not stage.enabled:
        return
    ctx.report.heading("Reader study (simulated readers, with vs without AI)")
    ai = probe_ai(ctx) if ctx.cfg.probe.enabled else None
    if ai is not None:
        truth, score, run = ai
        pick = np.random.default_rng(ctx.cfg.seed).permutation(len(truth))[: stage.n_cases]
        truth, score = truth.iloc[np.sort(pick)], score.iloc[np.sort(pick)]
        study = simulate_ai_assisted(
            truth.to_numpy(),
            score.to_numpy(),
            n_readers=stage.n_readers,
            seed=ctx.cfg.seed,
            cases=list(truth.index),
        )
        ai_score = pd.Series(score.to_numpy(), index=truth.index)
        ai_auc = float(roc_auc_score(truth.to_numpy(), score.to_numpy()))
        ctx.report.text(
            f"{stage.n_readers} simulated readers (junior, senior, expert) read {len(truth)} test images of "
            f"`{ctx.cfg.data.name}` (malignant = {', '.join(MALIGNANT)}), unaided and then aided by the "
            f"probe `{run}` (its P(malignant); AUC {ai_auc:.3f} alone); less experienced readers rely more "
            "on the AI (`readers.simulate.simulate_ai_assisted`), so an AI weaker than the readers can lower "
            "their accuracy. Full analysis: `readers/report.md`."
        )
    else:
        n_neg = stage.n_cases // 2
        study = roe_metz_study(
            stage.n_readers, n_neg, stage.n_cases - n_neg, delta=[1.2, 1.6], seed=ctx.cfg.seed
        )
        ai_score, ai_auc = None, None
        ctx.report.text(
            "No probe predictions with malignant and benign classes: a Roe-Metz study (separation 1.2 "
            "unaided, 1.6 aided) stands in for the AI-aided one. Full analysis: `readers/report.md`."
        )
    out = ctx.run_dir / "readers"
    save_study(study, out.with_suffix(".csv"))
    _, result = write_report(
        study, out, before="unaided", after="ai_aided", ai_score=ai_score, seed=ctx.cfg.seed
    )
    rrrc = result["mrmc"]["rrrc"]
    diff = rrrc["differences"][0]
    means = result["mrmc"]["condition_means"]
    ctx.metrics["readers"] = {
        "auc": means,
        "ai_auc": ai_auc,
        "rrrc": {k: rrrc[k] for k in ("value", "df1", "df2", "p")},
        "auc_gain": -diff["difference"],
        "auc_gain_ci95": sorted(-v for v in diff["ci95"]),
        "accuracy": {c: v.get("accuracy") for c, v in result.get("reader_metrics_mean", {}).items()},
        "mixed_model_odds_ratio": result.get("mixed_model", {}).get("odds_ratio"),
    }
    accuracy = ctx.metrics["readers"]["accuracy"]
    row = {
        "AI alone AUC": ai_auc,
        "mean AUC unaided": means["unaided"],
        "mean AUC aided": means["ai_aided"],
        "gain [95% CI]": f"{-diff['difference']:.3f} [{-diff['ci95'][1]:.3f}, {-diff['ci95'][0]:.3f}]",
        "OR F (Hillis df)": f"F(1, {rrrc['df2']:.1f}) = {rrrc['value']:.2f}",
        "p": rrrc["p"],
        "accuracy unaided": accuracy.get("unaided"),
        "accuracy aided": accuracy.get("ai_aided"),
    }
    ctx.report.table(pd.DataFrame([row]), "MRMC (random readers and cases) and accuracy")
    for name, caption in (
        ("roc_readers", "AI ROC curve with each reader's operating point, unaided -> aided"),
        ("fom_slopes", "AUC per reader, unaided vs aided"),
        ("gain_by_experience", "AUC gain by experience"),
        ("answer_changes", "Answers changed with AI"),
    ):
        path = out / "figures" / f"{name}.png"
        if path.is_file():
            ctx.report.figure(path, caption, relative_to=ctx.run_dir)
