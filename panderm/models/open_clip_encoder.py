"""The vision tower of an open_clip model behind the probe `Encoder` calls (`features`, `spec`, `embed_dim`).

Two sources, both local (nothing downloads): a model name open_clip knows plus a weights file
(``open_clip:<model name>:<weights file>``, e.g. a MONET or BiomedCLIP checkpoint), or a folder laid out
as Hugging Face hub copies of open_clip models are (``open_clip:<folder>``: ``open_clip_config.json`` with
``model_cfg`` and ``preprocess_cfg``, plus ``open_clip_model.safetensors``, ``open_clip_pytorch_model
.safetensors`` or ``open_clip_pytorch_model.bin``). Only the vision tower is built and loaded; torch files
are read with ``torch.load(weights_only=True)`` through `panderm.models.checkpoints`.

Pooling: "cls" is the tower's projected image embedding, what ``CLIP.encode_image`` returns before
normalisation, whatever pool the tower uses inside (class token, average, attention pool); "mean" is the
mean of the patch tokens after the tower's final norm, projected by the same matrix (open_clip's own
`VisionTransformer` towers without attention pooling only); "cls+mean" concatenates both.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from open_clip.transformer import VisionTransformer
from torch import nn

from panderm.errors import CheckpointError, ProbeError
from panderm.models.checkpoints import load_state_dict_file, load_weights
from panderm.models.encoder import POOLINGS, EncoderSpec
from panderm.models.timm_encoder import TimmEncoder

log = logging.getLogger(__name__)

ARCH = "open_clip"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
VISION_PREFIX = "visual."
_TOWER_KEYS = ("embed_dim", "vision_cfg", "quick_gelu")


class OpenClipEncoder(TimmEncoder):
    """An open_clip vision tower (`self.model`) behind `features(x, pooling)`, `spec` and `embed_dim`.

    A `TimmEncoder` subclass so that whatever accepts a wrapped foreign model (saved classifiers) accepts
    it; `spec.extra["open_clip"]` holds the tower's config, from which `open_clip_encoder_from_spec`
    rebuilds it. Pooling as in the module docstring; dense `intermediates` are not offered.
    """

    def __init__(self, visual: nn.Module, spec: EncoderSpec) -> None:
        super().__init__(visual, ARCH, spec, dynamic_image_size=False)

    @property
    def embed_dim(self) -> int:
        return int(self.spec.extra["open_clip"]["embed_dim"])

    @property
    def depth(self) -> int:
        raise ProbeError("open_clip towers do not expose their depth here (no layer-wise fine-tuning)")

    def intermediates(self, x: torch.Tensor, layers: Sequence[int] | int) -> list[torch.Tensor]:
        raise ProbeError("open_clip towers give pooled features only; dense heads need a panderm/timm ViT")

    def features(self, x: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """(B, D) projected embedding ("cls"), projected mean patch token ("mean") or both (B, 2D)."""
        if pooling not in POOLINGS:
            raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
        visual = self.model
        if pooling == "cls":
            out = visual(x)
            return out[0] if isinstance(out, tuple) else out
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ProbeError(
                f"open_clip tower {type(visual).__name__} has no patch tokens to average; use pooling='cls'"
            )
        # One pass gives both: the last block's tokens after the final norm, and the pooled embedding.
        out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC")
        patches = out["image_intermediates"][-1].mean(1)
        if visual.proj is not None:
            patches = patches @ visual.proj
        return patches if pooling == "mean" else torch.cat([out["image_features"], patches], dim=1)


def build_tower(tower_cfg: Mapping[str, Any], source: str) -> nn.Module:
    """A randomly initialised vision tower from ``{"embed_dim", "vision_cfg", "quick_gelu"}``.

    `open_clip.model._build_vision_tower` is private, but it is the one function that builds the image
    tower alone; building the whole CLIP would also build the text tower, which for HF-text models
    (BiomedCLIP) fetches a tokenizer model from the hub. timm-backed towers never load pretrained weights.
    Raises `CheckpointError` naming `source` for a config open_clip cannot build.
    """
    vision_cfg = dict(tower_cfg["vision_cfg"])
    vision_cfg["timm_model_pretrained"] = False
    try:
        return open_clip.model._build_vision_tower(
            int(tower_cfg["embed_dim"]), vision_cfg, quick_gelu=bool(tower_cfg.get("quick_gelu", False))
        )
    except Exception as error:  # TypeError for unknown fields, timm RuntimeError for unknown models...
        raise CheckpointError(f"{source}: open_clip cannot build this vision tower ({error})") from error


def _image_size(vision_cfg: Mapping[str, Any], source: str) -> int:
    size = vision_cfg.get("image_size", 224)
    if isinstance(size, Sequence):
        if len(set(size)) != 1:
            raise ProbeError(f"{source}: non-square image_size {list(size)} is not supported")
        size = size[0]
    return int(size)


def _spec(model_cfg: Mapping[str, Any], preprocess: Mapping[str, Any], name: str, source: str) -> EncoderSpec:
    missing = [key for key in ("embed_dim", "vision_cfg") if key not in model_cfg]
    if missing:
        raise CheckpointError(f"{source}: the open_clip model config lacks {missing}")
    tower = {key: copy.deepcopy(model_cfg[key]) for key in _TOWER_KEYS if key in model_cfg}
    vision_cfg = tower["vision_cfg"]
    patch = vision_cfg.get("patch_size", 1)
    pre = {**asdict(PreprocessCfg()), **dict(preprocess)}
    return EncoderSpec(
        arch=ARCH,
        patch_size=int(patch[0] if isinstance(patch, Sequence) else patch),
        image_size=_image_size(vision_cfg, source),
        mean=tuple(float(v) for v in pre["mean"]),
        std=tuple(float(v) for v in pre["std"]),
        extra={
            "open_clip": tower,
            "model_name": name,
            "interpolation": pre["interpolation"],
            "resize_mode": pre["resize_mode"],
        },
    )


def open_clip_encoder_from_spec(spec: EncoderSpec) -> OpenClipEncoder:
    """A randomly initialised `OpenClipEncoder` of the tower a saved spec records (ready for its weights)."""
    return OpenClipEncoder(build_tower(spec.extra["open_clip"], f"spec {spec.arch}"), spec)


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(model_cfg, preprocess_cfg, weights file) of an open_clip hub-layout folder."""
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ProbeError(
            f"{config}: not found; an open_clip folder holds {CONFIG_FILE} and one of {WEIGHT_FILES}"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config}: unreadable open_clip config ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg", data), dict):
        raise CheckpointError(f"{config}: not an open_clip config (expected a JSON object with model_cfg)")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ProbeError(f"{folder}: no open_clip weights file in it (expected one of {WEIGHT_FILES})")
    return data.get("model_cfg", data), data.get("preprocess_cfg") or {}, weights


def _named(name: str) -> dict[str, Any]:
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ProbeError(f"open_clip:{name}: use open_clip:<folder> for a local copy (nothing is downloaded)")
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        stem = name.split("-")[0].lower()
        close = [m for m in open_clip.list_models() if stem and stem in m.lower()][:8]
        hint = f" (similar: {close})" if close else ""
        raise ProbeError(f"open_clip:{name}: unknown open_clip model name{hint}")
    return model_cfg


def _vision_state(path: Path) -> dict[str, torch.Tensor]:
    """The vision tower's tensors in a full CLIP state dict (``visual.*``), or the whole dict if it holds
    a tower alone."""
    state = load_state_dict_file(path)
    visual = {k.removeprefix(VISION_PREFIX): v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    return visual or state


def load_open_clip_encoder(text: str, *, strict: bool = True) -> tuple[OpenClipEncoder, Path]:
    """Load ``<folder>`` or ``<model name>:<weights file>`` (the part after ``open_clip:``).

    Returns the encoder (eval mode) and its weights file (for the caller's identity). Raises `ProbeError`
    naming the path or name for a missing folder/file or an unknown model name, and `CheckpointError`
    for an unreadable config or weights that do not fit the tower (unless `strict=False`).
    """
    folder = Path(text)
    if folder.is_dir():
        model_cfg, preprocess, weights = _read_folder(folder)
        name, source = "", str(folder / CONFIG_FILE)
    else:
        name, sep, weights_text = text.partition(":")
        if not sep or not name or not weights_text:
            raise ProbeError(
                f"open_clip:{text}: not a folder and not <model name>:<weights file> "
                f"(a folder holds {CONFIG_FILE} and the weights)"
            )
        weights = Path(weights_text)
        if not weights.is_file():
            raise ProbeError(f"{weights}: weights file for open_clip model {name!r} not found")
        model_cfg, source = _named(name), f"open_clip model {name!r}"
        preprocess = model_cfg.get("preprocess_cfg") or {}
    spec = _spec(model_cfg, preprocess, name, source)
    encoder = OpenClipEncoder(build_tower(spec.extra["open_clip"], source), spec)
    load_weights(encoder.model, _vision_state(weights), strict=strict, source=str(weights))
    return encoder.eval(), weights
