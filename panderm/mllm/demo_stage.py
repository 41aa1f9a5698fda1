"""The region-VQA stage of `panderm demo`: the offline `expert` backend answers a region-VQA set generated
from the demo data (English and Chinese prompts), built from the models the earlier stages saved: the probe
stage's linear classifier and the segmentation stage's best segmenter (by test Dice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from panderm.config import VQAConfig
from panderm.mllm.run import run_vqa


def _saved_models(ctx: Any) -> tuple[Path | None, Path | None]:
    """(classifier, segmenter) the probe and segmentation stages wrote, preferring the pretrained encoder."""
    classifier = next(
        (
            path
            for source in ("demo-pretrained", "random_init")
            if (path := ctx.run_dir / "probe" / f"{source}-linear_sweep" / "classifier.safetensors").is_file()
        ),
        None,
    )
    segment = ctx.metrics.get("segment", {})
    segmenter = None
    if segment:
        best = max(segment, key=lambda k: segment[k]["raw"]["dice"])
        source, head = best.split("/")
        path = ctx.run_dir / "segment" / f"{source.replace(' ', '_')}-{head}" / "segmenter.safetensors"
        segmenter = path if path.is_file() else None
    return classifier, segmenter


def vqa_stage(ctx: Any) -> None:
    """Run `panderm vqa` with the expert backend into `<demo run>/vqa/` and report its headline numbers."""
    stage = ctx.cfg.vqa
    if not stage.enabled:
        return
    ctx.report.heading("Region VQA (expert backend)")
    if ctx.cfg.data.source not in ("synthderm", "synthcxr"):
        ctx.report.text(
            f"Skipped: region-VQA questions are generated from SynthDerm/SynthCXR, not `{ctx.cfg.data.name}`."
        )
        return
    classifier, segmenter = _saved_models(ctx)
    if classifier is None or segmenter is None:
        ctx.report.text("Skipped: the probe stage's linear classifier or a segmenter is missing.")
        return
    cfg = OmegaConf.structured(VQAConfig)
    cfg.seed, cfg.synth, cfg.languages, cfg.shown = (
        ctx.cfg.seed,
        ctx.generated_data(),
        stage.languages,
        stage.shown,
    )
    cfg.backend.name, cfg.backend.adapter = "expert", "as_given"
    cfg.backend.options = {"classifier": str(classifier), "segmenter": str(segmenter)}
    cfg.progress = False
    run_dir = ctx.run_dir / "vqa"
    metrics = run_vqa(cfg, run_dir)
    ctx.metrics["vqa"] = {"headline": metrics["headline"], "n": metrics["n"], "n_failed": metrics["n_failed"]}
    tasks = metrics["tasks"]
    rows = []
    for name in ("text_to_region", "grounded_report"):
        single = tasks.get(name, {}).get("single_box")
        if single:
            rows.append(
                {
                    "task": name,
                    "samples": single["n"],
                    **{k: single[k] for k in ("acc@0.25", "acc@0.5", "acc@0.75", "mean_iou")},
                    "box F1": tasks[name]["multi_box"]["f1"],
                }
            )
    languages = ", ".join(stage.languages)
    ctx.report.text(
        f"{metrics['n']} questions (tasks {', '.join(sorted(tasks))}; languages {languages}) generated from "
        f"the test split of `{ctx.cfg.data.name}`, answered with no LLM by the `expert` backend: the linear "
        f"classifier `{classifier.relative_to(ctx.run_dir)}` and the segmenter "
        f"`{segmenter.relative_to(ctx.run_dir)}` (mask components as boxes). Text-to-Region accuracy "
        "counts a box whose IoU with the true box exceeds the threshold; predictions and metrics per task "
        "are in `vqa/`."
    )
    if rows:
        ctx.report.table(pd.DataFrame(rows), "Text-to-Region on the demo's test lesions")
    other = {k: v for k, v in metrics["headline"].items() if not k.startswith(("text_to_region", "grounded"))}
    if other:
        ctx.report.table(pd.DataFrame([other]), "Classification, closed VQA and Region-to-Text")
    figure = run_dir / "figures" / "boxes.png"
    if figure.is_file():
        ctx.report.figure(figure, "True (green) and predicted (red) boxes", relative_to=ctx.run_dir)
