"""Frozen encoders for probing, named by one string, each with a stable identity for the feature cache.

`load_probe_encoder(spec)` accepts:

- a panderm checkpoint written by ``panderm export`` (its stem, ``.safetensors`` or ``.json`` path), or a
  folder holding exactly one such checkpoint;
- a PanDerm release checkpoint: ``panderm_vit_base:<path>``, ``panderm_vit_large:<path>`` or
  ``panderm:<path>`` (architecture inferred from the weights); a bare ``.pth/.pt/.bin/.ckpt`` path is
  treated as ``panderm:<path>``;
- ``random:<arch>/<patch>@<size>[,depth=N][,pos_embed=sincos][,init_values=X]`` (e.g.
  ``random:vit_tiny/8@64,depth=2``): a randomly initialised panderm `Encoder` built from that spec;
  ``random:<timm name>`` builds any timm model at random instead;
- ``timm:<name>`` (random init, ``pretrained=False``) or ``timm:<name>:<weights path>`` (local
  safetensors/torch weights). Nothing is ever downloaded;
- ``open_clip:<model name>:<weights file>`` (e.g. ``open_clip:ViT-B-16:monet.pt``) or ``open_clip:<folder>``
  (a Hugging Face hub copy of an open_clip model: ``open_clip_config.json`` + ``open_clip_model.safetensors``
  or ``open_clip_pytorch_model.bin``): the vision tower only (`panderm.models.open_clip_encoder`);
- ``hf:<folder>``: a transformers `AutoModel` vision backbone saved with ``save_pretrained`` together with
  its image processor (`panderm.models.hf_encoder`), local files only;
- ``pixels`` or ``pixels@<size>`` (default 32): the resized image itself as the feature vector
  (`panderm.models.pixel_encoder`).

Identity (`encoder_hash`): files are identified by the sha256 of their weights plus the settings that change
the features (architecture, image size); random-init encoders by their spec, the seed and the torch/timm
versions, because initialisation is seeded (`seed=`, default 0) and reproducible for a given library
version, but timm may change its init schemes between versions. open_clip and hf encoders are
identified by the sha256 of their weight file(s) plus their spec (which records the model config and the
preprocessing); the pixel baseline by its spec alone. An encoder built in memory without going
through `load_probe_encoder` is identified by hashing its state dict (exact, costs one pass over the
weights). The identity is recorded at load time: if you change a loaded encoder's weights in place (e.g.
fine-tune it), call `forget_identity(encoder)` so the next hash is computed from the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from panderm.errors import ProbeError
from panderm.models.checkpoints import (
    TORCH_SUFFIXES,
    WEIGHTS_SUFFIX,
    CheckpointError,
    canonical_json,
    checkpoint_hash,
    load_encoder,
    load_state_dict_file,
    load_weights,
    read_metadata,
)
from panderm.models.encoder import ARCHITECTURES, Encoder, EncoderSpec
from panderm.models.panderm_import import _fit_pos_embed, import_panderm
from panderm.models.pixel_encoder import DEFAULT_SIZE, PixelEncoder
from panderm.models.timm_encoder import TimmEncoder, create_timm

log = logging.getLogger(__name__)

IDENTITY_ATTR = "probe_identity"
PANDERM_SCHEMES = {"panderm": None, "panderm_vit_base": "vit_base", "panderm_vit_large": "vit_large"}
_RANDOM = re.compile(r"(?P<arch>[a-z_]+?)(?:/(?P<patch>\d+))?(?:@(?P<size>\d+))?(?:,(?P<options>.*))?")
_RANDOM_OPTIONS = {"depth": int, "pos_embed": str, "init_values": float, "drop_path_rate": float}
SPEC_FORMS = (
    "an exported checkpoint (stem, .safetensors or .json) or a folder holding one; "
    "panderm_vit_base:<path> / panderm_vit_large:<path> / panderm:<path> / a .pth file (PanDerm release); "
    "random:<arch>/<patch>@<size>[,depth=N] (e.g. random:vit_tiny/8@64) or random:<timm name>; "
    "timm:<name> or timm:<name>:<weights path>; "
    "open_clip:<model name>:<weights file> or open_clip:<folder>; hf:<folder>; pixels or pixels@<size>"
)
_PIXELS = re.compile(r"pixels(?:@(?P<size>\d+))?")


# ------------------------------------------------------------------------------------------------ identity


def set_identity(encoder: nn.Module, identity: Mapping[str, Any]) -> nn.Module:
    """Attach the identity record `encoder_hash` reads (JSON-able mapping); returns `encoder`."""
    object.__setattr__(encoder, IDENTITY_ATTR, dict(identity))
    return encoder


def forget_identity(encoder: nn.Module) -> None:
    """Drop a recorded identity (after changing weights in place): the next hash reads the weights."""
    if IDENTITY_ATTR in encoder.__dict__:
        object.__delattr__(encoder, IDENTITY_ATTR)


def state_hash(encoder: nn.Module) -> str:
    """sha256 (16 hex digits) over the encoder's state dict: names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in encoder.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        # Bytes through a uint8 view: numpy has no bfloat16, raw bytes work for every dtype.
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _spec_dict(encoder: nn.Module) -> dict[str, Any] | None:
    spec = getattr(encoder, "spec", None)
    return spec.to_dict() if isinstance(spec, EncoderSpec) else None


def encoder_hash(encoder: nn.Module) -> str:
    """Stable identity of an encoder's weights and settings (16 hex digits), for feature-cache keys.

    Uses the identity recorded by `load_probe_encoder` (see the module docstring); otherwise hashes the
    state dict together with the spec (`state_hash`), which is exact but reads every weight once.
    """
    identity = encoder.__dict__.get(IDENTITY_ATTR)
    if identity is None:
        identity = {"kind": "state", "state": state_hash(encoder), "spec": _spec_dict(encoder)}
    return hashlib.sha256(canonical_json(identity).encode("utf-8")).hexdigest()[:16]


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__}


# ------------------------------------------------------------------------------------------------- loading


def load_probe_encoder(
    spec: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    seed: int = 0,
    strict: bool = True,
) -> nn.Module:
    """Build a frozen encoder (eval mode, on the CPU, `requires_grad=False`) from a spec string.

    The forms of `spec` are listed in the module docstring. `image_size` overrides the encoder's input size
    (position embeddings of a file checkpoint are regenerated (sin-cos) or resampled (learnt) to the new
    grid); `seed` seeds random initialisation without touching the global RNG; `strict` is passed to weight
    loading. Returns an `Encoder` (or a `TimmEncoder` for timm models) whose `encoder_hash` is stable.
    open_clip and hf encoders run at the size of their preprocessing config (`image_size` must agree);
    ``pixels`` takes `image_size` as its size. Raises `ProbeError` for a spec that names no existing file
    or known form, and `CheckpointError` for a file that cannot be loaded.
    """
    text = os.fspath(spec)
    scheme, _, rest = text.partition(":")
    pixels = _PIXELS.fullmatch(text.strip())
    if pixels is not None:
        encoder = _pixels(int(pixels["size"] or DEFAULT_SIZE), image_size=image_size)
    elif scheme == "open_clip" and rest:
        encoder = _open_clip(rest, image_size=image_size, strict=strict)
    elif scheme == "hf" and rest:
        encoder = _hf(Path(rest), image_size=image_size, strict=strict, seed=seed)
    elif scheme == "random" and rest:
        encoder = _random_encoder(rest, image_size=image_size, seed=seed)
    elif scheme == "timm" and rest:
        name, _, weights = rest.partition(":")
        encoder = _timm_encoder(name, weights or None, image_size=image_size, seed=seed, strict=strict)
    elif scheme in PANDERM_SCHEMES and rest:
        encoder = _panderm_release(Path(rest), PANDERM_SCHEMES[scheme], image_size=image_size, strict=strict)
    else:
        encoder = _from_path(Path(text), image_size=image_size, strict=strict)
    encoder.eval().requires_grad_(False)
    log.info("probe encoder %s: hash %s", text, encoder_hash(encoder))
    return encoder


def _check_size(text: str, encoder: nn.Module, image_size: int | None) -> None:
    if image_size is not None and image_size != encoder.spec.image_size:
        raise ProbeError(
            f"{text}: image_size={image_size} differs from its preprocessing config's "
            f"{encoder.spec.image_size} px; open_clip and hf encoders run at their own size"
        )


def is_pixels_spec(spec: str) -> bool:
    """Whether `spec` names the raw-pixel encoder (``pixels``, ``pixels@<size>``): it has no feature maps."""
    return _PIXELS.fullmatch(str(spec).strip()) is not None


def _pixels(size: int, *, image_size: int | None) -> PixelEncoder:
    encoder = PixelEncoder(image_size or size)
    return set_identity(encoder, {"kind": "pixels", "spec": encoder.spec.to_dict()})


def _open_clip(rest: str, *, image_size: int | None, strict: bool) -> nn.Module:
    from panderm.models.open_clip_encoder import load_open_clip_encoder  # open_clip is slow to import

    encoder, weights = load_open_clip_encoder(rest, strict=strict)
    _check_size(f"open_clip:{rest}", encoder, image_size)
    identity = {"kind": "open_clip", "weights": checkpoint_hash(weights), "spec": encoder.spec.to_dict()}
    return set_identity(encoder, identity)


def _hf(folder: Path, *, image_size: int | None, strict: bool, seed: int) -> nn.Module:
    from panderm.models.hf_encoder import load_hf_encoder, weight_files  # transformers is slow to import

    encoder = load_hf_encoder(folder, strict=strict, seed=seed)
    _check_size(f"hf:{folder}", encoder, image_size)
    weights = {path.name: checkpoint_hash(path) for path in weight_files(folder)}
    identity = {"kind": "hf", "weights": weights, "spec": encoder.spec.to_dict()}
    if not strict:  # weights missing from the folder were initialised from the seed
        identity["seed"] = int(seed)
    return set_identity(encoder, identity)


def _missing(path: Path, what: str) -> ProbeError:
    return ProbeError(f"{path}: {what} not found; an encoder spec is one of: {SPEC_FORMS}")


def _from_path(path: Path, *, image_size: int | None, strict: bool) -> nn.Module:
    if path.is_dir():
        return _exported(_folder_checkpoint(path), image_size=image_size, strict=strict)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return _panderm_release(path, None, image_size=image_size, strict=strict)
    weights = path.with_name(path.name.removesuffix(".json").removesuffix(WEIGHTS_SUFFIX) + WEIGHTS_SUFFIX)
    if not (path.is_file() or weights.is_file()):
        raise _missing(path, "encoder checkpoint or folder")
    return _exported(path, image_size=image_size, strict=strict)


def _folder_checkpoint(folder: Path) -> Path:
    """The single exported checkpoint (a JSON with panderm encoder metadata) inside `folder`."""
    found = []
    for meta in sorted(folder.glob("*.json")):
        try:
            read_metadata(meta)
        except CheckpointError:
            continue
        found.append(meta)
    if len(found) == 1:
        return found[0]
    if not found:
        hint = ""
        if (folder / "checkpoints").is_dir():
            hint = " (this looks like a pretraining run: run `panderm export RUN OUT` first)"
        raise ProbeError(f"{folder}: no exported encoder (<name>.safetensors + <name>.json) in it{hint}")
    raise ProbeError(
        f"{folder}: holds {len(found)} exported encoders ({', '.join(p.name for p in found)}); name one"
    )


def _exported(path: Path, *, image_size: int | None, strict: bool) -> Encoder:
    encoder = load_encoder(path, strict=strict)
    meta = read_metadata(path)
    weights_id = (meta.get("weights_sha256") or "")[:16] or checkpoint_hash(path)
    if image_size is not None and image_size != encoder.spec.image_size:
        encoder = _resized(encoder, image_size, strict=strict, source=str(path))
    return set_identity(encoder, {"kind": "panderm", "weights": weights_id, "spec": encoder.spec.to_dict()})


def _resized(encoder: Encoder, image_size: int, *, strict: bool, source: str) -> Encoder:
    """A copy of `encoder` for another input size (position table regenerated or resampled)."""
    try:
        resized = Encoder(replace(encoder.spec, image_size=image_size))
    except Exception as error:  # ConfigError: e.g. the size is not a multiple of the patch size
        raise ProbeError(f"{source}: cannot use image_size={image_size} ({error})") from error
    state = encoder.state_dict()
    state["vit.pos_embed"] = _fit_pos_embed(state["vit.pos_embed"], resized)
    load_weights(resized, state, strict=strict, source=source)
    return resized.eval()


def _panderm_release(path: Path, arch: str | None, *, image_size: int | None, strict: bool) -> Encoder:
    if not path.is_file():
        raise _missing(path, "PanDerm checkpoint file")
    size = image_size or 224
    try:
        encoder = import_panderm(
            path, arch=arch, patch_size=16 if arch else None, image_size=size, strict=strict
        )
    except CheckpointError as error:
        if path.suffix.lower() == ".ckpt":
            raise CheckpointError(
                f"{error}\n  (a Lightning checkpoint of a panderm pretraining run is exported with "
                "`panderm export RUN OUT`; load OUT instead)",
                error.report,
            ) from error
        raise
    return set_identity(
        encoder, {"kind": "panderm_release", "weights": checkpoint_hash(path), "spec": encoder.spec.to_dict()}
    )


def parse_random_spec(text: str, *, image_size: int | None = None) -> EncoderSpec | None:
    """The `EncoderSpec` of ``<arch>/<patch>@<size>[,key=value...]``, or None if `arch` is not a panderm one.

    Defaults are patch 16 and size 224; `image_size` overrides the size. Options: depth, pos_embed,
    init_values, drop_path_rate. Raises `ProbeError` for an unknown option or a malformed value.
    """
    match = _RANDOM.fullmatch(text.strip())
    if match is None or match["arch"] not in ARCHITECTURES:
        return None
    values: dict[str, Any] = {"arch": match["arch"]}
    values["patch_size"] = int(match["patch"]) if match["patch"] else 16
    values["image_size"] = image_size or (int(match["size"]) if match["size"] else 224)
    for item in filter(None, (match["options"] or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _RANDOM_OPTIONS:
            raise ProbeError(
                f"random:{text}: option {item!r} is not key=value with key one of {sorted(_RANDOM_OPTIONS)}"
            )
        try:
            values[key] = _RANDOM_OPTIONS[key](value.strip())
        except ValueError as error:
            raise ProbeError(f"random:{text}: option {key}={value!r} is malformed ({error})") from None
    return EncoderSpec(**values)


def _random_encoder(text: str, *, image_size: int | None, seed: int) -> nn.Module:
    spec = parse_random_spec(text, image_size=image_size)
    if spec is None:  # not one of ours: a timm model name
        return _timm_encoder(text, None, image_size=image_size, seed=seed, strict=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            encoder = Encoder(spec)
        except Exception as error:  # ConfigError from the spec checks
            raise ProbeError(f"random:{text}: {error}") from error
    identity = {"kind": "random", "spec": spec.to_dict(), "seed": int(seed), "versions": _versions()}
    return set_identity(encoder, identity)


def _timm_encoder(
    name: str, weights: str | None, *, image_size: int | None, seed: int, strict: bool
) -> TimmEncoder:
    if weights is not None and not Path(weights).is_file():
        raise _missing(Path(weights), f"weights file for timm model {name!r}")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ProbeError(f"timm:{name}: unknown timm model name" + (f" (similar: {close})" if close else ""))
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, dynamic = create_timm(name, kwargs, image_size)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = image_size or int(cfg["input_size"][-1])
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1,))
    spec = EncoderSpec(
        arch=f"timm:{name}",
        patch_size=int(patch[0] if isinstance(patch, Sequence) else patch),
        image_size=size,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        extra={"timm_model": name},
    )
    identity: dict[str, Any] = {"kind": "timm", "name": name, "spec": spec.to_dict()}
    if weights is None:
        identity.update(seed=int(seed), versions=_versions())
    else:
        _load_timm_weights(model, Path(weights), strict=strict)
        identity["weights"] = checkpoint_hash(weights)
    encoder = TimmEncoder(model, name, spec, dynamic_image_size=dynamic)
    return set_identity(encoder, identity)


def _load_timm_weights(model: nn.Module, path: Path, *, strict: bool) -> None:
    state = load_state_dict_file(path)
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or "head"
    prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    dropped = [k for k in state if k not in own and k.startswith(prefixes)]
    if dropped:
        log.info("%s: ignoring %d classifier key(s) (num_classes=0)", path, len(dropped))
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if (missing or unexpected) and strict:
        raise CheckpointError(
            f"{path}: weights do not fit timm model: {len(missing)} missing key(s) {missing[:10]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:10]} (encoder_strict=false on the "
            "command line, strict=False in Python, loads the matching tensors anyway)"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the timm model ({error})") from error
