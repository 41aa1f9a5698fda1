"""Small saved models with known answers for the expert backend and `panderm vqa` tests."""

from __future__ import annotations

from pathlib import Path

import torch

from panderm.data.synthetic.synthderm import CLASSES
from panderm.models.classifier import LinearClassifier, save_classifier
from panderm.models.encoder import Encoder, EncoderSpec
from panderm.models.seg_heads import build_segmentation_model, save_segmenter

SPEC = EncoderSpec(arch="vit_tiny", patch_size=8, image_size=32, depth=2)


def constant_classifier(path: Path, label: str = "melanoma") -> Path:
    """A classifier that always predicts `label` (head weights 0, its bias 5)."""
    model = LinearClassifier(Encoder(SPEC), list(CLASSES))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[CLASSES.index(label)] = 5.0
    return save_classifier(model, path)


def everywhere_segmenter(path: Path) -> Path:
    """A linear segmenter whose mask covers the whole image (all head weights 0, foreground bias 5)."""
    model = build_segmentation_model(Encoder(SPEC), "linear", num_classes=2)
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
        model.head.classifier.bias[1] = 5.0
    return save_segmenter(model, path)
