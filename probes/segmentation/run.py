"""`panderm segment`: a segmentation head on an encoder (frozen or fine-tuned), trained with Lightning
(resumable), then every evaluation split predicted at its images' original size and scored with MONAI metrics,
raw and post-processed. Outputs: `segmenter.safetensors` (+ .json), `masks/<split>/*.png`, `per_image.csv`,
`metrics.json`, figures (training curve, overlay grids of the best, median and worst cases) and a report."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from panderm.data.dataset import ManifestDataset, collate
from panderm.data.manifest import Manifest
from panderm.data.sources import SKIPPED_IMAGES, load_data
from panderm.data.transforms import model_input_transform
from panderm.errors import ConfigError, ProbeError
from panderm.io import atomic_write, write_csv
from panderm.models.seg_heads import (
    SegmentationModel,
    build_segmentation_model,
    load_segmenter,
    save_segmenter,
)
from panderm.pretrain.run import build_trainer, fit_resumable, plot_loss
from panderm.report import Report
from panderm.runs import start_run, write_metrics
from probes.encoders import load_probe_encoder, state_hash
from probes.features import resolve_device
from probes.plots import plot_overlay_grid
from probes.segmentation.data import PredictionDataset, SegmentationDataModule, masked_counts
from probes.segmentation.metrics import postprocess, segmentation_metrics, summarise
from probes.segmentation.predict import PREDICT_MODES, predict_masks
from probes.segmentation.train import SegmentationTask

log = logging.getLogger(__name__)

MODES = ("frozen", "finetune")
SEGMENTER = "segmenter"
PER_IMAGE = "per_image.csv"
OVERLAY_PER_ROW = 4


def build_model(cfg: DictConfig) -> SegmentationModel:
    """The model to train: `cfg.encoder` (any `load_probe_encoder` spec) + `cfg.head`, frozen or trainable."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {MODES}")
    encoder = load_probe_encoder(
        cfg.encoder, image_size=cfg.image_size, seed=cfg.seed, strict=cfg.encoder_strict
    )
    frozen = cfg.mode == "frozen"
    if not frozen:
        encoder.requires_grad_(True).train()
    options = OmegaConf.to_container(cfg.head_options, resolve=True)
    layers = list(cfg.layers) if cfg.layers is not None else None
    return build_segmentation_model(encoder, cfg.head, frozen=frozen, layers=layers, **options)


def train(cfg: DictConfig, model: SegmentationModel, manifest: Manifest, run_dir: Path) -> dict[str, Any]:
    """Fit the head (and, fine-tuning, the encoder) on the masked train rows; resumes from the run folder's
    last checkpoint. Returns the final logged metrics and the step count."""
    spec = model.encoder.spec
    data = SegmentationDataModule(
        manifest,
        run_dir,
        image_size=spec.image_size,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        mean=spec.mean,
        std=spec.std,
        on_bad_image=cfg.data.on_bad_image,
        seed=cfg.seed,
        encode=model.encode if cfg.precompute else None,
    )
    task = SegmentationTask(
        model,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        layer_decay=cfg.optim.layer_decay,
        warmup_steps=cfg.optim.warmup_steps,
        betas=tuple(cfg.optim.betas),
        on_nonfinite=cfg.on_nonfinite,
    )
    trainer = build_trainer(cfg, run_dir)
    fit_resumable(trainer, task, data, run_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    metrics["train_images"] = len(data.train_manifest)
    return metrics


def prediction_loader(
    model: SegmentationModel, manifest: Manifest, cfg: DictConfig, run_dir: Path, device: torch.device
) -> tuple[DataLoader, ManifestDataset]:
    """Loader of `PredictionDataset` samples for the predict mode in `cfg.predict` (and the raw dataset)."""
    spec = model.encoder.spec
    sliding = cfg.predict.mode == "sliding_window"
    transform = model_input_transform(
        None if sliding else spec.image_size, scale=cfg.predict.scale, mean=spec.mean, std=spec.std
    )
    base = ManifestDataset(
        manifest, on_bad_image=cfg.data.on_bad_image, bad_image_log=Path(run_dir) / SKIPPED_IMAGES
    )
    # On the CPU, loader workers compete with the forward pass for the same cores (measured slower).
    workers = cfg.num_workers if device.type != "cpu" else 0
    loader = DataLoader(
        PredictionDataset(base, transform),
        batch_size=1 if sliding else cfg.batch_size,
        num_workers=workers,
        collate_fn=collate,
    )
    return loader, base


def predict_rows(
    model: SegmentationModel, manifest: Manifest, cfg: DictConfig, run_dir: Path, device: torch.device
) -> tuple[Iterator[dict[str, Any]], ManifestDataset]:
    """`predict_masks` over every row of `manifest` as `cfg.predict` says (and the raw dataset)."""
    loader, base = prediction_loader(model, manifest, cfg, run_dir, device)
    items = predict_masks(
        model,
        loader,
        device=device,
        mode=cfg.predict.mode,
        window=model.encoder.spec.image_size,
        overlap=cfg.predict.overlap,
        window_batch_size=cfg.predict.window_batch_size,
    )
    return items, base


def _mask_names(ids: list[str]) -> dict[str, str]:
    """PNG file name per image id: the image's stem, or its whole relative path when stems collide."""
    stems = [Path(i).stem for i in ids]
    unique = len(set(stems)) == len(stems)
    return {
        i: (s if unique else Path(i).with_suffix("").as_posix().replace("/", "__"))
        for i, s in zip(ids, stems, strict=True)
    }


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A class map as an 8-bit PNG: foreground 255 for binary masks, else the class index."""
    values = (mask * 255 if mask.max(initial=0) <= 1 else mask).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(values).save(tmp, format="PNG"))


def evaluate_split(
    model: SegmentationModel,
    manifest: Manifest,
    split: str,
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict every image of `split`, save the masks, score those with a true mask (raw and, with
    `cfg.predict.postprocess`, post-processed) and (with `cfg.plots`) plot the best, median and worst cases.

    Returns the per-image table and {"raw": summary, "postprocessed": summary, "images", "scored"}.
    """
    rows = manifest.subset(split)
    names = _mask_names(rows.table["image"].astype(str).tolist())
    records = []
    items, _ = predict_rows(model, rows, cfg, run_dir, device)
    for item in items:
        pred, truth = item["pred"], item["mask"]
        post = postprocess(pred[None])[0] if cfg.predict.postprocess else None
        if cfg.predict.save_masks:
            write_mask(run_dir / "masks" / split / f"{names[item['id']]}.png", pred)
            if post is not None:
                write_mask(run_dir / "masks_postprocessed" / split / f"{names[item['id']]}.png", post)
        record: dict[str, Any] = {"split": split, "id": item["id"], "pred_area": int((pred > 0).sum())}
        record["row"] = item["index"]
        if truth is not None:
            raw = segmentation_metrics(pred[None] > 0, truth[None] > 0).iloc[0]
            record.update({k: raw[k] for k in ("dice", "iou", "hd95", "true_area")})
            if post is not None:
                processed = segmentation_metrics(post[None] > 0, truth[None] > 0).iloc[0]
                record.update({f"{k}_pp": processed[k] for k in ("dice", "iou", "hd95")})
        records.append(record)
    frame = pd.DataFrame(records)
    result: dict[str, Any] = {
        "images": len(frame),
        "scored": int(frame["dice"].notna().sum()) if "dice" in frame else 0,
    }
    if result["scored"]:
        scored = frame.dropna(subset=["dice"])
        result["raw"] = summarise(scored[["dice", "iou", "hd95"]])
        if cfg.predict.postprocess:
            renamed = scored[["dice_pp", "iou_pp", "hd95_pp"]].rename(columns=lambda c: c[:-3])
            result["postprocessed"] = summarise(renamed)
        if cfg.plots:
            figure = run_dir / "figures" / f"overlay_{split}.png"
            result["overlay"] = str(_overlay(scored, rows, model, cfg, run_dir, device, figure))
    return frame.drop(columns="row"), result


def _overlay(
    scored: pd.DataFrame,
    rows: Manifest,
    model: SegmentationModel,
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
    path: Path,
) -> Path:
    """The overlay grid: the best, the median and the worst `OVERLAY_PER_ROW` images by raw Dice. Those
    few images are predicted again rather than every prediction kept in memory."""
    order = scored.sort_values("dice", ascending=False, kind="stable")
    n = min(OVERLAY_PER_ROW, len(order))
    middle = max(0, len(order) // 2 - n // 2)
    groups = [("best", order[:n]), ("median", order[middle : middle + n]), ("worst", order[-n:][::-1])]
    shown = sorted({int(r) for _, group in groups for r in group["row"]})
    items, base = predict_rows(model, rows.subset(rows=np.array(shown)), cfg, run_dir, device)
    samples = {shown[item["index"]]: (base.load(item["index"]), item["pred"]) for item in items}
    grid = []
    for label, group in groups:
        cells = []
        for row, image_id, dice in zip(group["row"], group["id"], group["dice"], strict=True):
            sample, pred = samples[int(row)]
            title = f"{Path(image_id).stem[-12:]} Dice {dice:.2f}"
            cells.append(
                {"image": sample["image"], "mask": sample.get("mask"), "pred": pred > 0, "title": title}
            )
        grid.append((label, cells))
    return plot_overlay_grid(grid, path)


def run_segment(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Train (unless `cfg.checkpoint` names a saved segmenter) and evaluate into `run_dir`; returns what
    metrics.json holds."""
    run_dir = start_run(cfg, run_dir)
    # predict where the trainer ran: the CPU preset stays on the CPU even when a GPU is present
    device = resolve_device("cpu" if cfg.trainer.accelerator == "cpu" else None)
    if cfg.predict.mode not in PREDICT_MODES:
        raise ConfigError(f"predict.mode={cfg.predict.mode!r} is not one of {PREDICT_MODES}")
    if cfg.precompute and cfg.mode != "frozen" and not cfg.checkpoint:
        raise ConfigError("precompute=true needs mode=frozen: a fine-tuned encoder's maps change every step")
    # the model first: a bad head, mode or encoder fails before any data is read or generated
    model = load_segmenter(cfg.checkpoint) if cfg.checkpoint else build_model(cfg)
    manifest = load_data(cfg.data, run_dir)
    counts = masked_counts(manifest)
    metrics: dict[str, Any] = {"head": cfg.head, "mode": cfg.mode, "encoder": cfg.encoder, "splits": counts}
    report = Report(f"Segmentation: `{cfg.head}` head on `{cfg.encoder}` ({cfg.mode}) on `{cfg.data.name}`")
    if cfg.checkpoint:
        metrics.update(
            head=model.head_name, mode="frozen" if model.frozen else "finetune", checkpoint=cfg.checkpoint
        )
    else:
        before = state_hash(model.encoder) if model.frozen else None
        metrics["train"] = train(cfg, model, manifest, run_dir)
        if before is not None:
            if state_hash(model.encoder) != before:  # a frozen encoder must come out bit-identical
                raise ProbeError("the frozen encoder's weights changed during training")
            metrics["train"]["encoder_unchanged"] = True
        save_segmenter(model, run_dir / SEGMENTER, recipe=OmegaConf.to_container(cfg, resolve=True))
        curve = plot_loss(
            run_dir, run_dir / "figures" / "segment_loss.png", ("val/dice", "val Dice (orange)")
        )
        if curve:
            report.figure(curve, "training loss and validation Dice", relative_to=run_dir)
    model.to(device)
    tables, summary_rows = [], []
    metrics["eval"] = {}
    for split in cfg.predict.splits:
        if split not in counts:
            continue
        frame, result = evaluate_split(model, manifest, split, cfg, run_dir, device)
        tables.append(frame)
        metrics["eval"][split] = result
        for kind in ("raw", "postprocessed"):
            if kind in result:
                summary_rows.append({"split": split, "masks": kind, **result[kind]})
    if not tables:
        raise ProbeError(
            f"none of predict.splits={list(cfg.predict.splits)} is in the data (splits: {sorted(counts)})"
        )
    write_csv(run_dir / PER_IMAGE, pd.concat(tables, ignore_index=True))
    write_metrics(run_dir, metrics)
    sizes = ", ".join(f"{s} {c['with_mask']}/{c['images']}" for s, c in counts.items())
    report.text(
        f"Images with masks per split: {sizes} (rows without a mask are predicted but not scored). "
        f"Prediction: `{cfg.predict.mode}`; Dice and IoU are per image, then averaged; HD95 in pixels at the "
        "original size. Post-processing keeps the largest connected component and fills holes."
    )
    if summary_rows:
        report.table(pd.DataFrame(summary_rows), "Segmentation metrics")
    for split, result in metrics["eval"].items():
        if "overlay" in result:
            report.figure(
                result["overlay"], f"{split}: best, median and worst cases by Dice", relative_to=run_dir
            )
    report.write(run_dir)
    log.info("segment: results in %s", run_dir)
    return metrics
