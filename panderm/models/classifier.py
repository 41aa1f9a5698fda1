"""A frozen encoder with a linear head over standardised pooled features: a probe as a saved model.

`probes` fits the head (logistic regression on cached features) and saves it with `save_classifier`; the MLLM
`expert` backend loads it with `load_classifier` to answer classification questions, without importing
`probes`. Files: ``<stem>.safetensors`` + ``<stem>.json`` (encoder spec, class names, pooling, recipe).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from panderm.errors import ConfigError
from panderm.models.checkpoints import (
    CheckpointError,
    checkpoint_paths,
    load_state_dict_file,
    load_weights,
    read_checkpoint_metadata,
    spec_from_dict,
    verified_weights,
    write_checkpoint,
)
from panderm.models.encoder import POOLINGS, Encoder
from panderm.models.timm_encoder import TimmEncoder, encoder_from_spec

CLASSIFIER_FORMAT = "panderm-classifier"
CLASSIFIER_FORMAT_VERSION = 1
PathLike = str | os.PathLike[str]


class LinearClassifier(nn.Module):
    """logits = W · (features(x) - mean) / std + b over `class_names`; the encoder stays frozen (eval)."""

    def __init__(self, encoder: nn.Module, class_names: Sequence[str], *, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is not one of {POOLINGS}")
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ConfigError(f"a classifier needs >= 2 distinct class names, got {list(class_names)}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.class_names = [str(c) for c in class_names]
        self.pooling = pooling
        dim = encoder.embed_dim * (2 if pooling == "cls+mean" else 1)
        self.head = nn.Linear(dim, len(class_names))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def train(self, mode: bool = True) -> LinearClassifier:
        super().train(mode)
        self.encoder.eval()  # frozen: never leaves eval mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) for normalised images (B, 3, S, S) at the encoder's size."""
        features = self.encoder.features(images, self.pooling)
        return self.head((features - self.mean) / self.std)

    @torch.no_grad()
    def set_head(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> LinearClassifier:
        """Copy fitted head weights (K, D) and (K,), and the standardisation (D,) if any."""
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)
        self.mean.copy_(mean if mean is not None else torch.zeros_like(self.mean))
        self.std.copy_(std if std is not None else torch.ones_like(self.std))
        return self


def save_classifier(
    model: LinearClassifier, path: PathLike, *, recipe: Mapping[str, Any] | None = None
) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (atomically, JSON last); returns the weights path."""
    if not isinstance(model.encoder, Encoder | TimmEncoder):
        raise ConfigError(f"save_classifier: cannot save a {type(model.encoder).__name__} encoder")
    fields = {
        "encoder_spec": model.encoder.spec.to_dict(),
        "class_names": model.class_names,
        "pooling": model.pooling,
    }
    return write_checkpoint(
        model, path, fmt=CLASSIFIER_FORMAT, version=CLASSIFIER_FORMAT_VERSION, fields=fields, recipe=recipe
    )


def load_classifier(path: PathLike, *, map_location: str | torch.device = "cpu") -> LinearClassifier:
    """Rebuild a classifier written by `save_classifier` (stem or either file), in eval mode; weights are
    verified against the recorded sha256 and loaded strictly. `CheckpointError` names the file."""
    meta_path = checkpoint_paths(path)[1]
    meta = read_checkpoint_metadata(
        meta_path,
        fmt=CLASSIFIER_FORMAT,
        version=CLASSIFIER_FORMAT_VERSION,
        kind="classifier",
        hint="saved by save_classifier (e.g. `panderm probe probe=linear_sweep`)?",
        required=("encoder_spec", "class_names", "pooling", "weights_sha256"),
    )
    weights = verified_weights(path, meta)
    spec = spec_from_dict(meta["encoder_spec"], meta_path)
    try:
        model = LinearClassifier(encoder_from_spec(spec), meta["class_names"], pooling=meta["pooling"])
    except ConfigError as error:
        raise CheckpointError(f"{meta_path}: the recorded classifier cannot be built ({error})") from error
    load_weights(model, load_state_dict_file(weights), strict=True, source=str(weights))
    return model.to(map_location).eval()
