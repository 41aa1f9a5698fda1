"""Prediction of segmentation masks: a whole-image pass at the training size with logits resampled to each
image's original size, or MONAI sliding windows over images larger than the training size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from torch.utils.data import DataLoader

from panderm.errors import ConfigError
from panderm.models.seg_outputs import logits_to_masks
from probes.features import inference_autocast

PREDICT_MODES = ("resize", "sliding_window")


def window_logits(
    model: nn.Module,
    image: torch.Tensor,
    window: int,
    *,
    overlap: float = 0.25,
    window_batch_size: int = 8,
) -> torch.Tensor:
    """Logits (1, C, H, W) of one (1, 3, H, W) image of any size from `window`×`window` windows (MONAI
    `sliding_window_inference`, Gaussian-weighted overlap; images smaller than a window are padded)."""
    return sliding_window_inference(
        image,
        roi_size=(window, window),
        sw_batch_size=window_batch_size,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
    )


@torch.no_grad()
def predict_masks(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    mode: str = "resize",
    window: int | None = None,
    overlap: float = 0.25,
    window_batch_size: int = 8,
) -> Iterator[dict[str, Any]]:
    """Yield, per image of `loader` (batches of `PredictionDataset` samples), `{"id", "index", "pred",
    "mask"}` with `pred` the (H, W) uint8 class map at the original size and `mask` the truth (or None).

    `mode="resize"`: the loader gives images resized to the training size (one forward per batch);
    `mode="sliding_window"`: the loader gives images at their own (scaled) size, and `window` (the training
    size) sets the windows. Runs in eval mode with bf16 autocast on CUDA.
    """
    if mode not in PREDICT_MODES:
        raise ConfigError(f"predict.mode={mode!r} is not one of {PREDICT_MODES}")
    if mode == "sliding_window" and not window:
        raise ConfigError("sliding-window prediction needs the window size (the training image size)")
    model.eval()
    for batch in loader:
        if "image" not in batch:  # every image of the batch was unreadable and skipped
            continue
        sizes = [tuple(s) for s in batch["size"]]
        with inference_autocast(device, amp=True):
            if mode == "resize":
                images = batch["image"]
                if isinstance(images, list):
                    raise ConfigError("predict.mode=resize needs images of one size per batch")
                logits = model(images.to(device, non_blocking=True))
                preds = logits_to_masks(logits, sizes)
            else:
                images = batch["image"] if isinstance(batch["image"], list) else list(batch["image"])
                preds = []
                for image, size in zip(images, sizes, strict=True):
                    logits = window_logits(
                        model,
                        image[None].to(device),
                        window,
                        overlap=overlap,
                        window_batch_size=window_batch_size,
                    )
                    preds += logits_to_masks(logits, [size])
        masks = batch.get("mask")
        for j, pred in enumerate(preds):
            truth = None
            if masks is not None:
                truth = masks[j]
                truth = None if truth is None else np.asarray(truth, dtype=np.uint8)
            yield {"id": batch["id"][j], "index": int(batch["index"][j]), "pred": pred, "mask": truth}
