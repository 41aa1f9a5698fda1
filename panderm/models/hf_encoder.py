"""A Hugging Face `AutoModel` vision backbone from a local folder behind the probe `Encoder` calls.

``hf:<folder>``: the folder holds ``config.json``, the weights (``model.safetensors`` or what
``save_pretrained`` writes) and ``preprocessor_config.json``, whose `AutoImageProcessor` gives the input
size (the crop size when the processor centre-crops) and the mean/std. Loading is ``local_files_only=True``
in float32; nothing downloads.

Pooling: "cls" is the model's ``pooler_output`` when it has a trained pooler (DINOv2: the class token after
the final layer norm; ViT: its dense+tanh pooler), otherwise the first token of ``last_hidden_state``;
"mean" is the mean of the patch tokens of ``last_hidden_state`` (class and register tokens left out), or the
spatial mean of a feature map (convolutional backbones); "cls+mean" concatenates both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from panderm.errors import CheckpointError, ProbeError
from panderm.models.encoder import POOLINGS, EncoderSpec
from panderm.models.timm_encoder import TimmEncoder

log = logging.getLogger(__name__)

ARCH = "hf"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
POOLER_PREFIX = "pooler."


class HfEncoder(TimmEncoder):
    """A transformers vision model (`self.model`) behind `features(x, pooling)`, `spec` and `embed_dim`.

    A `TimmEncoder` subclass so that whatever accepts a wrapped foreign model (saved classifiers) accepts
    it; `spec.extra` records the model config, the pooler choice and the number of prefix tokens, from
    which `hf_encoder_from_spec` rebuilds it. Dense `intermediates` are not offered.
    """

    def __init__(self, model: nn.Module, spec: EncoderSpec) -> None:
        super().__init__(model, ARCH, spec, dynamic_image_size=False)

    @property
    def embed_dim(self) -> int:
        return int(self.spec.extra["embed_dim"])

    @property
    def depth(self) -> int:
        raise ProbeError("hf backbones do not expose their depth here (no layer-wise fine-tuning)")

    def intermediates(self, x: torch.Tensor, layers: Sequence[int] | int) -> list[torch.Tensor]:
        raise ProbeError("hf backbones give pooled features only; dense heads need a panderm/timm ViT")

    def features(self, x: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """(B, D) pooled ("cls"), mean patch token ("mean") or both (B, 2D); see the module docstring."""
        if pooling not in POOLINGS:
            raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        cls = mean = None
        if pooling != "mean":
            if self.spec.extra["use_pooler"] and pooled is not None:
                cls = pooled.flatten(1)
            elif hidden.ndim == 3 and self.spec.extra["prefix_tokens"] > 0:
                cls = hidden[:, 0]
            else:
                raise ProbeError("this hf backbone has no class token or pooler output; use pooling='mean'")
        if pooling != "cls":
            if hidden.ndim == 4:  # (B, C, h, w) feature map of a convolutional backbone
                mean = hidden.mean((2, 3))
            else:
                mean = hidden[:, self.spec.extra["prefix_tokens"] :].mean(1)
        if pooling == "cls+mean":
            return torch.cat([cls, mean], dim=1)
        return cls if pooling == "cls" else mean


def _prefix_tokens(model: nn.Module, config: Any) -> int:
    """Class token (if the embeddings have one) plus register tokens, ahead of the patch tokens."""
    embeddings = getattr(model, "embeddings", None)
    has_cls = (
        getattr(embeddings, "cls_token", None) is not None
        or getattr(embeddings, "class_embedding", None) is not None
    )
    return int(has_cls) + int(getattr(config, "num_register_tokens", 0) or 0)


def _embed_dim(config: Any, folder: Path) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    dim = getattr(config, "hidden_size", None) or (sizes[-1] if sizes else None)
    if dim is None:
        raise ProbeError(
            f"{folder / 'config.json'}: no hidden_size / hidden_sizes: not a vision backbone config"
        )
    return int(dim)


def _processor_size(processor: Any, folder: Path) -> int:
    """The square input size the processor produces (crop size when it centre-crops)."""
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = crop or getattr(processor, "size", None)
    size = dict(size) if size is not None else {}
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or height
    if not height or height != width:
        raise ProbeError(
            f"{folder / 'preprocessor_config.json'}: input size {size} is not one square size; "
            "set size/crop_size to {'height': S, 'width': S}"
        )
    return int(height)


def _spec(model: nn.Module, config: Any, processor: Any, folder: Path, use_pooler: bool) -> EncoderSpec:
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        raise ProbeError(f"{folder / 'preprocessor_config.json'}: image_mean/image_std not set")
    patch = getattr(config, "patch_size", 1)
    return EncoderSpec(
        arch=ARCH,
        patch_size=int(patch[0] if isinstance(patch, Sequence) else patch),
        image_size=_processor_size(processor, folder),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        extra={
            # The config without its folder path: a moved copy keeps its identity.
            "hf_config": {k: v for k, v in config.to_dict().items() if k != "_name_or_path"},
            "embed_dim": _embed_dim(config, folder),
            "prefix_tokens": _prefix_tokens(model, config),
            "use_pooler": use_pooler,
        },
    )


def hf_encoder_from_spec(spec: EncoderSpec) -> HfEncoder:
    """A randomly initialised `HfEncoder` of the model a saved spec records (ready for its weights)."""
    data = dict(spec.extra["hf_config"])
    config = transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)
    return HfEncoder(transformers.AutoModel.from_config(config).float(), spec)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a `save_pretrained` folder (sorted), whose hashes identify the model."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def load_hf_encoder(folder: Path, *, strict: bool = True, seed: int = 0) -> HfEncoder:
    """Load the `AutoModel` in `folder` (local files only, float32, eval mode) with its image processor.

    Missing weights fail unless `strict=False` (then seeded random init, logged), except an untrained
    pooler, which is left unused ("cls" then takes the first token). Raises `ProbeError` naming the folder
    or file for a missing folder, config, processor or weights, and `CheckpointError` for files
    transformers cannot read.
    """
    if not folder.is_dir():
        raise ProbeError(f"{folder}: hf model folder not found (hf:<folder> with config.json and weights)")
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise ProbeError(
                f"{folder / name}: not found; an hf:<folder> holds config.json, the weights and "
                "preprocessor_config.json (save_pretrained of the model and its image processor)"
            )
    if not weight_files(folder):
        raise ProbeError(f"{folder}: no weights (*.safetensors or *.bin) in it")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = transformers.AutoModel.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
    except Exception as error:  # OSError, ValueError, safetensors errors... from corrupt or foreign files
        raise CheckpointError(f"{folder}: transformers cannot load this model folder ({error})") from error
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(item) for item in info.get("mismatched_keys") or []]
    pooler_missing = any(k.startswith(POOLER_PREFIX) for k in missing)
    problems = [k for k in missing if not k.startswith(POOLER_PREFIX)] + mismatched
    if problems:
        message = (
            f"{folder}: weights do not fit {type(model).__name__}: missing or mismatched {problems[:10]}"
        )
        if strict:
            raise CheckpointError(message + " (strict=False / encoder_strict=false loads them anyway)")
        log.warning("%s; left at seeded random init", message)
    if pooler_missing:
        log.info("%s: the pooler has no trained weights; pooling 'cls' uses the first token", folder)
    spec = _spec(model, config, processor, folder, use_pooler=not pooler_missing)
    return HfEncoder(model, spec).eval()
