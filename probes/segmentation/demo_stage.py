"""The segmentation stage of `panderm demo`: each head on the demo-pretrained encoder (frozen), the linear
head also on the same architecture at random init, trained on the demo's lesion masks; a Dice table and the
overlay grid of the best run in the report."""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from panderm.config import SegmentConfig
from probes.segmentation.data import with_masks
from probes.segmentation.run import run_segment


def segment_stage(ctx: Any) -> None:
    """Run `ctx.cfg.segment.heads`; runs go to `<demo run>/segment/<source>-<head>/`."""
    stage = ctx.cfg.segment
    if not stage.enabled:
        return
    if len(with_masks(ctx.data[ctx.cfg.data.name], "train")) == 0:
        ctx.report.heading("Segmentation")
        ctx.report.text(f"Skipped: `{ctx.cfg.data.name}` has no train images with masks.")
        return
    random_spec = ctx.random_encoder
    exported = ctx.run_dir / "pretrain" / "encoder.safetensors"
    pretrained = str(exported) if ctx.cfg.pretrain.enabled and exported.is_file() else None
    runs = [
        ("demo-pretrained" if pretrained else "random init", pretrained or random_spec, h)
        for h in stage.heads
    ]
    if pretrained and stage.heads:
        runs.append(("random init", random_spec, stage.heads[0]))
    rows, best = [], None
    for source, encoder, head in runs:
        cfg = OmegaConf.structured(SegmentConfig)
        cfg.seed, cfg.encoder, cfg.head, cfg.mode = ctx.cfg.seed, encoder, head, "frozen"
        cfg.precompute, cfg.head_options = stage.precompute, stage.head_options.get(head, {})
        cfg.data = ctx.generated_data()
        cfg.batch_size = stage.batch_size
        cfg.trainer.max_epochs, cfg.trainer.progress_bar = stage.max_epochs, stage.progress_bar
        cfg.predict.splits = ["test"]
        run_dir = ctx.run_dir / "segment" / f"{source.replace(' ', '_')}-{head}"
        result = run_segment(cfg, run_dir)["eval"]["test"]
        raw, post = result["raw"], result["postprocessed"]
        rows.append(
            {
                "encoder": source,
                "head": head,
                "Dice": raw["dice"],
                "IoU": raw["iou"],
                "HD95 (px)": raw["hd95"],
                "Dice post-processed": post["dice"],
                "test images": raw["n_images"],
            }
        )
        ctx.metrics.setdefault("segment", {})[f"{source}/{head}"] = {"raw": raw, "postprocessed": post}
        if best is None or raw["dice"] > best[0]:
            best = (raw["dice"], result["overlay"], f"{source}, {head}")
    ctx.report.heading("Segmentation")
    ctx.report.text(
        f"Segmentation heads on the frozen encoder, trained on the lesion masks of `{ctx.cfg.data.name}` "
        f"({stage.max_epochs} epochs, MONAI DiceCELoss"
        + (", each image encoded once without augmentation" if stage.precompute else "")
        + ") and scored on the test split at the original image "
        "size (Dice and IoU per image, then averaged; HD95 in pixels). Each run folder under `segment/` "
        "holds the predicted masks, per-image metrics and the trained segmenter."
    )
    ctx.report.table(pd.DataFrame(rows), "Test metrics per encoder and head")
    if best is not None:
        ctx.report.figure(best[1], f"{best[2]}: best, median and worst test images", relative_to=ctx.run_dir)
