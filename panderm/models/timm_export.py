"""A panderm `Encoder` as a folder that plain timm loads (``timm.create_model("local-dir:<folder>")``).

panderm's `Encoder` wraps a timm `VisionTransformer` (`encoder.vit`), so its weights are timm's under the
``vit.`` prefix; the mask token (pretraining only) is left out. The folder holds ``config.json`` (the timm
architecture of that ViT size, `model_args` with the exact patch/image size, depth, heads and LayerScale,
``num_classes: 0`` and a `pretrained_cfg` with input size, mean/std and panderm's evaluation crop: shorter
side to size·256/224, bicubic, centre crop) and ``model.safetensors`` in timm's key names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch

from panderm.io import atomic_write, atomic_write_json
from panderm.models.encoder import ARCHITECTURES, Encoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VIT_PREFIX = "vit."
# The registered timm name of each panderm size; `model_args` override its patch and image size.
TIMM_NAMES = {arch: f"{arch}_patch16_224" for arch in ARCHITECTURES}
CROP_PCT = 224 / 256  # panderm's eval_transform: shorter side to round(size·256/224), centre crop


def timm_config(encoder: Encoder) -> dict[str, Any]:
    """The ``config.json`` timm's ``local-dir:`` loader reads for `encoder` (architecture, model_args,
    num_classes 0, pretrained_cfg)."""
    spec = encoder.spec
    dim, _, heads = ARCHITECTURES[spec.arch]
    size = spec.image_size
    model_args: dict[str, Any] = {
        "img_size": size,
        "patch_size": spec.patch_size,
        "embed_dim": dim,
        "depth": encoder.depth,
        "num_heads": heads,
    }
    if spec.init_values is not None:
        model_args["init_values"] = spec.init_values
    return {
        "architecture": TIMM_NAMES[spec.arch],
        "num_classes": 0,
        "num_features": dim,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": CROP_PCT,
            "crop_mode": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "num_classes": 0,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def save_timm_folder(encoder: Encoder, folder: str | os.PathLike[str]) -> Path:
    """Write ``<folder>/model.safetensors`` (timm key names) and ``<folder>/config.json``, atomically, the
    JSON last; returns the folder. The model timm builds from it gives `encoder.features(x, "cls")` as its
    pooled output (``forward_head(forward_features(x), pre_logits=True)``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k.removeprefix(VIT_PREFIX): v.detach().to("cpu").contiguous()
        for k, v in encoder.state_dict().items()
        if k.startswith(VIT_PREFIX)
    }
    atomic_write(
        out / WEIGHTS_FILE,
        lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"}),
    )
    atomic_write_json(out / CONFIG_FILE, timm_config(encoder))
    return out
