"""From segmentation logits to class maps at each image's original size (shared by prediction everywhere)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 1 of (B, C, H, W) (ties go to the lower class, as `torch.argmax`), as uint8.

    One elementwise pass per class, because torch's CPU argmax over the channel dimension of NCHW tensors
    is about 50x slower (it took most of the prediction time); two classes are one comparison.
    """
    if logits.shape[1] == 2:
        return (logits[:, 1] > logits[:, 0]).to(torch.uint8)
    best, labels = (
        logits[:, 0].clone(),
        torch.zeros(logits[:, 0].shape, dtype=torch.uint8, device=logits.device),
    )
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        labels[better] = c
        best = torch.maximum(best, logits[:, c])
    return labels


def logits_to_masks(logits: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Class maps (H, W) uint8 at each image's original size from (B, C, h, w) logits (bilinear resampling
    of the logits, then argmax); images of one size are resampled in one call. With two classes only the
    logit difference is resampled (bilinear resampling is linear, so its sign is the resampled argmax)."""
    out: list[np.ndarray | None] = [None] * len(sizes)
    if logits.shape[1] == 2:
        logits = logits[:, 1:] - logits[:, :1]
    for size in dict.fromkeys(sizes):
        index = [i for i, s in enumerate(sizes) if s == size]
        chunk = logits[index].float()
        if tuple(chunk.shape[-2:]) != tuple(size):
            chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
        labels = (chunk[:, 0] > 0).to(torch.uint8) if chunk.shape[1] == 1 else channel_argmax(chunk)
        for i, mask in zip(index, labels.cpu().numpy(), strict=True):
            out[i] = mask
    return out  # type: ignore[return-value]
