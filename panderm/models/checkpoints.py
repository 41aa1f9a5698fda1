"""Encoder checkpoints: safetensors weights plus a small JSON that says how to rebuild the encoder.

A checkpoint is a pair of files sharing one stem: ``<stem>.safetensors`` (the encoder's state dict) and
``<stem>.json`` (format version, the `EncoderSpec`, normalisation, image size, the training recipe and its
hash, the sha256 of the weights, library versions). `load_weights` is the one place that compares keys:
missing, unexpected and wrongly shaped keys fail loudly unless the caller asks otherwise, and a load that
matches nothing always fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch

from panderm.errors import CheckpointError, ConfigError
from panderm.io import atomic_write, atomic_write_json
from panderm.models.encoder import Encoder, EncoderSpec

log = logging.getLogger(__name__)

FORMAT = "panderm.encoder"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Top-level keys under which training scripts commonly nest the state dict, in order of preference.
WRAPPER_KEYS = ("model", "state_dict", "module", "encoder")
WEIGHTS_ONLY_ADVICE = (
    "the file is corrupt or holds Python objects other than tensors (re-save its state_dict only)"
)
_SHOWN = 20  # keys listed per category in an error message; the full lists are on `error.report`

PathLike = str | os.PathLike[str]


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into an encoder.

    `mismatched` maps a key to (checkpoint shape, encoder shape); `ignored` lists keys that a converter
    dropped on purpose (e.g. PanDerm's pretraining heads); `loaded` counts the tensors copied.
    """

    source: str = "<memory>"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def clean(self) -> bool:
        """True when every encoder key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        """One line per problem category, each naming (up to 20 of) its keys."""
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing key(s): {format_keys(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected key(s): {format_keys(self.unexpected)}")
        if self.mismatched:
            shapes = _shape_lines(self.mismatched)
            lines.append(f"{len(shapes)} shape mismatch(es): {format_keys(shapes)}")
        return lines


def _shape_lines(mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> list[str]:
    return [f"{k} (checkpoint {list(a)} vs encoder {list(b)})" for k, (a, b) in mismatched.items()]


def format_keys(items: Sequence[str]) -> str:
    """Comma-separated keys, at most 20 of them, then how many more."""
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


# ----------------------------------------------------------------------------------------------- hashing


def sha256_file(path: PathLike) -> str:
    """Full sha256 hex digest of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_hash(path: PathLike) -> str:
    """Short identity of a weights file (first 16 hex digits of its sha256), e.g. for feature-cache keys.

    `path` may be a weights file of any supported kind or a checkpoint stem (``<stem>.safetensors`` is used).
    Raises `CheckpointError` when the file does not exist.
    """
    target = Path(path)
    if not target.is_file():
        target = checkpoint_paths(path)[0]
    if not target.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return sha256_file(target)[:16]


def _plain(value: Any) -> Any:
    """JSON-ready copy: mappings (incl. OmegaConf configs) to dicts, sequences to lists, others to str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    return str(value)


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON of `value` (after `_plain`): equal recipes give equal strings."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of a recipe (e.g. a resolved training config)."""
    return hashlib.sha256(canonical_json(recipe).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------- state dicts


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def unwrap_state_dict(obj: Any, source: str = "<memory>") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint object.

    Descends through the common wrapper keys (`model`, `state_dict`, `module`, `encoder`) until it reaches
    a dict whose values are all tensors, then strips a ``module.`` prefix shared by every key (DDP saves).
    Raises `CheckpointError` naming `source` when no such dict is found.
    """
    current = obj
    for _ in range(4):  # wrappers nest at most a couple of levels in practice
        if _is_tensor_dict(current):
            break
        if not isinstance(current, Mapping):
            raise CheckpointError(f"{source}: expected a dict of tensors, found {type(current).__name__}")
        if not current:
            raise CheckpointError(f"{source}: the checkpoint holds no tensors")
        inner = next((current[k] for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            others = sorted(str(k) for k, v in current.items() if not torch.is_tensor(v))
            raise CheckpointError(
                f"{source}: not a state dict: non-tensor entries {format_keys(others)} and none of the "
                f"wrapper keys {list(WRAPPER_KEYS)} holds the weights"
            )
        current = inner
    if not _is_tensor_dict(current):
        raise CheckpointError(f"{source}: no dict of tensors found inside the checkpoint")
    state = {str(k): v for k, v in current.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_torch_file(
    path: PathLike,
    *,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
    advice: str = WEIGHTS_ONLY_ADVICE,
) -> Any:
    """The object in a torch file (``torch.save``, e.g. a Lightning ``.ckpt``), unpickled safely.

    Every torch file panderm reads goes through here: ``torch.load(weights_only=True)`` is passed
    explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off, and only tensors, containers,
    primitives and `argparse.Namespace` are built; nothing a file names is ever called. `mmap=True` maps
    the tensors instead of reading them (cheap for a check of a large file). Raises `CheckpointError`
    naming the file, the refused global (if any) and `advice` (what the user can do) when the file is
    missing, corrupt or holds other objects.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file not found")
    try:
        # Training scripts often store their argparse.Namespace next to the weights; it is a plain
        # attribute bag, so allowing it runs no foreign code.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # pickle/zip errors, or an object weights_only refuses to build
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        lines = str(error).splitlines() or [type(error).__name__]
        detail = f"it would build or call {refused.group(1)}" if refused else lines[0].strip()
        raise CheckpointError(
            f"{file}: cannot be read with torch.load(weights_only=True) ({detail}); {advice}"
        ) from error


def load_state_dict_file(
    path: PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth/.pt/.bin/.ckpt``).

    Torch files are read with ``torch.load(weights_only=True)``: arbitrary pickled objects are refused.
    Wrappers are removed with `unwrap_state_dict`. Raises `CheckpointError` for a missing, corrupt or
    unsupported file, naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file not found")
    suffix = file.suffix.lower()
    if suffix == WEIGHTS_SUFFIX:
        try:
            state = safetensors.torch.load_file(file, device=str(map_location))
        except Exception as error:  # safetensors raises several types for truncated or garbled headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error
        return unwrap_state_dict(state, str(file))
    if suffix in TORCH_SUFFIXES:
        return unwrap_state_dict(load_torch_file(file, map_location=map_location), str(file))
    raise CheckpointError(
        f"{file}: unsupported checkpoint suffix {suffix!r}; "
        f"use {WEIGHTS_SUFFIX} or one of {list(TORCH_SUFFIXES)}"
    )


def load_weights(
    encoder: Encoder,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "<memory>",
    allow_missing: Collection[str] = (),
) -> LoadReport:
    """Compare keys and shapes, then copy `state_dict` into `encoder`; sets and returns `encoder.load_report`.

    Keys in `allow_missing` may be absent without counting as missing (e.g. a `mask_token` a foreign
    checkpoint never had). With `strict=True` any missing, unexpected or wrongly shaped key raises
    `CheckpointError` listing them all; with `strict=False` they are logged as a warning and the matching
    tensors are loaded. A state dict that matches no key raises in both modes.
    """
    bad = sorted(k for k, v in state_dict.items() if not torch.is_tensor(v))
    if bad:
        raise CheckpointError(f"{source}: non-tensor values at key(s) {format_keys(bad)}")
    own = encoder.state_dict()
    report = LoadReport(
        source=source,
        missing=[k for k in own if k not in state_dict and k not in allow_missing],
        unexpected=[k for k in state_dict if k not in own],
    )
    for key, tensor in state_dict.items():
        if key in own and tuple(tensor.shape) != tuple(own[key].shape):
            report.mismatched[key] = (tuple(tensor.shape), tuple(own[key].shape))
    matched = {k: v for k, v in state_dict.items() if k in own and k not in report.mismatched}
    if not matched:
        if report.mismatched:  # the names agree but no shape does: most likely another architecture
            shapes = format_keys(_shape_lines(report.mismatched))
            hint = f"every shared key has another shape (another architecture?): shape mismatch: {shapes}"
        else:
            hint = f"checkpoint keys start {list(state_dict)[:3]}, the encoder expects {list(own)[:3]}"
        raise CheckpointError(f"{source}: no key of the checkpoint matches the encoder; {hint}", report)
    if strict and not report.clean:
        raise CheckpointError(
            "\n  ".join([f"{source}: checkpoint does not fit the encoder", *report.problems()])
            + "\n  (encoder_strict=false on the command line, strict=False in Python, loads the matching "
            "tensors anyway)",
            report,
        )
    # Only the matched tensors go to torch; the comparison above already accounted for the rest.
    encoder.load_state_dict(matched, strict=False)
    report.loaded = len(matched)
    if not report.clean:
        log.warning(
            "%s: loaded %d tensor(s) non-strictly; %s", source, report.loaded, "; ".join(report.problems())
        )
    encoder.load_report = report
    return report


# ------------------------------------------------------------------------------------------ save / load


def checkpoint_paths(path: PathLike) -> tuple[Path, Path]:
    """(weights, metadata) paths of a checkpoint given its stem, weights file or metadata file."""
    target = Path(path)
    stem = target.name
    for suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return target.with_name(stem + WEIGHTS_SUFFIX), target.with_name(stem + META_SUFFIX)


def write_checkpoint(
    module: torch.nn.Module,
    path: PathLike,
    *,
    fmt: str,
    version: int,
    fields: Mapping[str, Any],
    recipe: Mapping[str, Any] | None = None,
) -> Path:
    """Write `module`'s state dict as ``<path>.safetensors``, then ``<path>.json`` (both atomically).

    The JSON holds `fmt` and `version`, the format's own `fields`, the recipe as plain JSON with its sha256
    (`recipe_hash`), the weights file name and sha256, the parameter count and library versions. It is
    written last, so a complete JSON vouches for its weights file. Returns the weights path.
    """
    weights, meta = checkpoint_paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write(
        weights,
        lambda tmp: safetensors.torch.save_file(
            tensors, str(tmp), metadata={"format": "pt", "panderm_format": fmt}
        ),
    )
    plain_recipe = _plain(recipe) if recipe is not None else None
    atomic_write_json(
        meta,
        {
            "format": fmt,
            "format_version": version,
            **fields,
            "recipe": plain_recipe,
            "recipe_hash": recipe_hash(plain_recipe) if plain_recipe is not None else None,
            "weights": weights.name,
            "weights_sha256": sha256_file(weights),
            "num_parameters": sum(v.numel() for v in tensors.values()),
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
            "safetensors_version": safetensors.__version__,
        },
    )
    return weights


def read_checkpoint_metadata(
    path: PathLike, *, fmt: str, version: int, kind: str, hint: str, required: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON of a checkpoint of format `fmt` (stem, weights or JSON path), read by this panderm (format
    version <= `version`) and holding the `required` keys. `kind` names the format and `hint` says what a
    missing JSON means in the errors; raises `CheckpointError` naming the file."""
    meta_path = checkpoint_paths(path)[1]
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: {kind} metadata not found ({hint})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{meta_path}: unreadable {kind} metadata ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{meta_path}: not {kind} metadata (format must be {fmt!r})")
    found = meta.get("format_version")
    if not isinstance(found, int) or found > version:
        raise CheckpointError(
            f"{meta_path}: format_version={found!r} is not supported (this panderm reads <= {version})"
        )
    missing = [key for key in required if key not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: {kind} metadata lacks {missing}")
    return meta


def verified_weights(path: PathLike, meta: Mapping[str, Any], *, verify_hash: bool = True) -> Path:
    """The weights file of a checkpoint whose JSON is `meta`: it must exist and, with `verify_hash`, match
    the recorded sha256. Raises `CheckpointError` naming the file."""
    weights, meta_path = checkpoint_paths(path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found (its metadata {meta_path.name} exists)")
    if verify_hash and meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights}: sha256 differs from the one recorded in {meta_path.name}; the weights were replaced "
            "or damaged after saving: export or copy them again (verify_hash=False in Python loads them "
            "anyway)"
        )
    return weights


def save_encoder(encoder: Encoder, path: PathLike, *, recipe: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically (`write_checkpoint`); returns the weights
    path. `path` may carry the ``.safetensors`` suffix or not; `recipe` is e.g. the resolved training
    config. The JSON records the `EncoderSpec`, image size and normalisation."""
    spec = encoder.spec
    fields = {
        "spec": spec.to_dict(),
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    return write_checkpoint(encoder, path, fmt=FORMAT, version=FORMAT_VERSION, fields=fields, recipe=recipe)


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of an encoder checkpoint (stem, weights or JSON path); `CheckpointError` if
    unusable."""
    hint = (
        "a panderm checkpoint is a .safetensors file with a .json beside it; for other weight files use "
        "load_state_dict_file + load_weights, or import_panderm"
    )
    meta = read_checkpoint_metadata(
        path, fmt=FORMAT, version=FORMAT_VERSION, kind="panderm encoder", hint=hint, required=("spec",)
    )
    if not isinstance(meta["spec"], dict):
        raise CheckpointError(f"{checkpoint_paths(path)[1]}: the encoder spec is not a JSON object")
    return meta


def spec_from_dict(data: Mapping[str, Any], source: Path) -> EncoderSpec:
    """An `EncoderSpec` from its JSON form; `CheckpointError` naming `source` for unknown fields."""
    known = set(EncoderSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown spec field(s) {unknown}; known fields are {sorted(known)}")
    fields = dict(data)
    for key in ("mean", "std"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return EncoderSpec(**fields)


def load_encoder(
    path: PathLike,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    verify_hash: bool = True,
) -> Encoder:
    """Rebuild an encoder from a checkpoint written by `save_encoder` (stem or either file's path).

    The encoder is built from the JSON spec, its weights are compared and loaded by `load_weights`
    (`strict` as there; the report is `encoder.load_report`), and it is returned in eval mode on
    `map_location`. With `verify_hash` the weights' sha256 must equal the one recorded in the JSON.
    Raises `CheckpointError` naming the file for anything missing, corrupt or inconsistent.
    """
    meta_path = checkpoint_paths(path)[1]
    meta = read_metadata(meta_path)
    weights = verified_weights(path, meta, verify_hash=verify_hash)
    spec = spec_from_dict(meta["spec"], meta_path)
    try:
        encoder = Encoder(spec)
    except ConfigError as error:
        raise CheckpointError(f"{meta_path}: the recorded spec cannot be built ({error})") from error
    # The encoder is built on the CPU, so the tensors are read there and moved once, with the module.
    load_weights(encoder, load_state_dict_file(weights), strict=strict, source=str(weights))
    return encoder.to(map_location).eval()
