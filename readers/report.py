"""`panderm readers report`: every analysis of a reader study written to a folder as tables, figures,
`metrics.json` and a Markdown/HTML report. Analyses the data cannot support (e.g. answer changes without
responses, the mixed model without an experience column) are skipped with a line in the report saying why.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.errors import DataError, PandermError
from panderm.io import atomic_write_json, write_csv
from panderm.report import Report
from readers.metrics import answer_changes, reader_metrics
from readers.mixed import mixed_model
from readers.mrmc import mrmc
from readers.paired import classwise_paired, mcnemar_by_reader, paired_test
from readers.plots import (
    plot_answer_changes,
    plot_forest,
    plot_gain_by_experience,
    plot_paired_slopes,
    plot_roc_with_readers,
)
from readers.schema import ReaderStudy

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """NaN/inf become null and numpy scalars Python ones, so that the output is strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _fom_table(result: dict) -> pd.DataFrame:
    """Reader x condition FOMs (long: reader, condition, fom) from an `mrmc` result."""
    return pd.DataFrame(
        [
            {"reader": reader, "condition": cond, "fom": value}
            for cond, per_reader in result["fom"].items()
            for reader, value in per_reader.items()
        ]
    )


def _statistic_text(analysis: dict) -> str:
    """E.g. "F(1, 10.62) = 12.70" or "X2(1) = 52.48"."""
    df = f"{analysis['df1']}" if analysis["df2"] is None else f"{analysis['df1']}, {analysis['df2']:.2f}"
    return f"{analysis['statistic']}({df}) = {analysis['value']:.2f}"


def _tests_table(result: dict) -> pd.DataFrame:
    rows = []
    for name in ("rrrc", "frrc", "rrfc"):
        analysis = result[name]
        for diff in analysis.get("differences", []):
            low, high = diff["ci95"]
            rows.append(
                {
                    "analysis": name,
                    "comparison": f"{diff['conditions'][0]} - {diff['conditions'][1]}",
                    "difference": diff["difference"],
                    "95% CI": f"[{low:.4f}, {high:.4f}]",
                    "test": _statistic_text(analysis),
                    "p": analysis["p"],
                }
            )
    return pd.DataFrame(rows)


def write_report(
    study: ReaderStudy,
    out: str | os.PathLike[str],
    *,
    before: object | None = None,
    after: object | None = None,
    ai_score: pd.Series | None = None,
    title: str | None = None,
    **mrmc_options: Any,
) -> tuple[Path, dict]:
    """Analyse `study` into `out` (tables/*.csv, figures/*.png, metrics.json, report.md/html); returns the
    report.md path and the metrics as written. `before`/`after` default to the first two conditions;
    `ai_score` (per case, larger = more likely positive) draws the AI's ROC curve with the readers'
    operating points. `mrmc_options` go to `readers.mrmc.mrmc` (fom, cov, threshold, positive, conditions,
    n_boot, seed)."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    conditions = mrmc_options.get("conditions") or study.conditions
    if len(conditions) < 2 and (before is None or after is None):
        raise DataError(f"{study.source}: a report compares two conditions; found {conditions}")
    before = conditions[0] if before is None else before
    after = conditions[1] if after is None else after
    if not mrmc_options.get("conditions"):  # MRMC differences then read `before` - `after`
        rest = [c for c in study.conditions if c not in (before, after)]
        mrmc_options = {**mrmc_options, "conditions": [before, after, *rest]}
    threshold, positive = mrmc_options.get("threshold"), mrmc_options.get("positive")
    report = Report(title or f"Reader study: {Path(study.source).name}")
    metrics: dict[str, Any] = {"source": study.source, "before": before, "after": after}

    def table(frame: pd.DataFrame, name: str, caption: str, shown: pd.DataFrame | None = None) -> None:
        write_csv(out / "tables" / f"{name}.csv", frame)
        report.table(frame if shown is None else shown, caption)

    def figure(path: Path, caption: str) -> None:
        report.figure(path, caption, relative_to=out)

    def skipped(what: str, exc: Exception) -> None:
        log.warning("%s skipped: %s", what, exc)
        report.text(f"*{what} skipped: {exc}*")
        metrics.setdefault("skipped", {})[what] = str(exc)

    report.text(
        f"{len(study.readers)} readers, {len(study.cases)} cases, conditions {study.conditions}; "
        f"comparing `{after}` with `{before}` (differences are {before} - {after} in the MRMC tables, as the "
        "Iowa program prints them, and after - before elsewhere)."
    )

    report.heading("MRMC analysis (Obuchowski-Rockette, Hillis df)")
    result = mrmc(study, **mrmc_options)
    metrics["mrmc"] = result
    foms = _fom_table(result)
    fom_name = result["fom_name"]
    table(foms.pivot(index="reader", columns="condition", values="fom").reset_index(), "fom", f"{fom_name}")
    table(
        _tests_table(result),
        "mrmc_tests",
        f"Condition differences of mean {fom_name} ({result['covariance']})",
    )
    figure(
        plot_paired_slopes(
            foms.rename(columns={"fom": fom_name}), out / "figures" / "fom_slopes.png", value=fom_name
        ),
        f"{fom_name} per reader",
    )

    experience = "experience" in study.attribute_columns
    if experience:
        wide = foms.pivot(index="reader", columns="condition", values="fom")
        gains = pd.DataFrame({"gain": wide[str(after)] - wide[str(before)]})
        attrs = study.reader_attributes.copy()
        attrs.index = attrs.index.map(str)
        gains = gains.join(attrs["experience"]).reset_index()
        figure(
            plot_gain_by_experience(gains, out / "figures" / "gain_by_experience.png", value="gain"),
            f"{fom_name} gain with `{after}` by experience",
        )

    report.heading("Per-reader metrics")
    try:
        per_reader = reader_metrics(study, ci="wilson", threshold=threshold, positive=positive)
    except PandermError as exc:
        per_reader = None
        skipped("Per-reader metrics", exc)
    if per_reader is not None:
        summary = per_reader.groupby(["condition", "metric"], sort=False)["value"].mean().unstack("metric")
        table(
            per_reader,
            "reader_metrics",
            "Mean over readers (per reader: tables/reader_metrics.csv)",
            summary.reset_index(),
        )
        metrics["reader_metrics_mean"] = summary.to_dict(orient="index")
        tested = [m for m in ("accuracy", "sensitivity", "specificity") if m in set(per_reader["metric"])]
        rows = [paired_test(per_reader, m, before, after).to_dict() for m in tested]
        if rows:
            paired = pd.DataFrame(rows)
            shown = paired[
                [
                    "metric",
                    "mean_before",
                    "mean_after",
                    "mean_diff",
                    "ci_low",
                    "ci_high",
                    "p_t",
                    "p_wilcoxon",
                    "cohens_dz",
                ]
            ]
            table(paired, "paired_tests", "Paired tests across readers (after - before)", shown)
            metrics["paired_tests"] = rows
        points = per_reader[per_reader["metric"].isin(["sensitivity", "specificity"])]
        if ai_score is not None and {"sensitivity", "specificity"} <= set(points["metric"]):
            wide_points = points.pivot_table(index=["reader", "condition"], columns="metric", values="value")
            truth = study.truth.reindex(ai_score.index)
            is_pos = (truth == (1 if positive is None else positive)).astype(int).to_numpy()
            figure(
                plot_roc_with_readers(
                    is_pos,
                    ai_score.to_numpy(),
                    wide_points.reset_index(),
                    out / "figures" / "roc_readers.png",
                    before=before,
                    after=after,
                ),
                f"AI ROC curve with each reader's operating point, {before} -> {after}",
            )

    report.heading("Answer changes with AI")
    try:
        changes = answer_changes(study, before, after, threshold=threshold, positive=positive)
        mcnemar = mcnemar_by_reader(study, before, after, threshold=threshold, positive=positive)
    except PandermError as exc:
        skipped("Answer changes", exc)
    else:
        table(changes, "answer_changes", "Answer changes per reader")
        table(
            mcnemar,
            "mcnemar",
            "McNemar per reader (accuracy after - before)",
            mcnemar[["reader", "discordant", "method", "p_value", "difference", "ci_low", "ci_high"]],
        )
        metrics["answer_changes_total"] = changes.iloc[-1].to_dict()
        figure(
            plot_answer_changes(changes.iloc[:-1], out / "figures" / "answer_changes.png"), "Answer changes"
        )
        figure(
            plot_forest(mcnemar, out / "figures" / "forest.png", label="accuracy difference"),
            "Per-reader accuracy difference (after - before), 95% Wald CI",
        )
        classwise = classwise_paired(study, before, after, threshold=threshold, positive=positive)
        table(classwise, "classwise", "Class-wise paired analysis (Benjamini-Hochberg adjusted)")

    report.heading("Mixed-effects logistic model")
    try:
        fit = mixed_model(study, before, after, threshold=threshold, positive=positive)
    except PandermError as exc:
        skipped("Mixed model", exc)
    else:
        metrics["mixed_model"] = {k: v for k, v in fit.to_dict().items() if not isinstance(v, list | dict)}
        report.text(
            f"`{fit.formula}` (statsmodels, {fit.method}): odds ratio of a correct answer with `{after}` vs "
            f"`{before}` = {fit.odds_ratio:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}] "
            f"(plain logistic regression: {fit.glm_odds_ratio:.3f}); converged: {fit.converged}."
        )
        table(fit.fixed_effects, "mixed_fixed_effects", "Fixed effects")
        table(fit.variance_components, "mixed_variance_components", "Random-intercept SDs (logit scale)")

    metrics = json_safe(metrics)
    atomic_write_json(out / "metrics.json", metrics)
    md, _ = report.write(out)
    return md, metrics
