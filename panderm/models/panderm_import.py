"""Import PanDerm's released encoder checkpoints (CAE-style ViT-B/16 and ViT-L/16) into a panderm `Encoder`.

PanDerm's files are state dicts of a BEiT-style ViT, usually under an ``encoder.`` prefix next to the
pretraining heads (``regressor.``, ``decoder.``, ``teacher.``, ``projector.`` ...), which are ignored and
reported. The differences from timm's ViT are renamings plus one reshaping: attention has a bias-free
``qkv`` with separate ``q_bias`` and ``v_bias`` (the key bias is fixed at zero), which becomes timm's single
``qkv.bias = [q_bias, 0, v_bias]``; the LayerScale vectors ``gamma_1``/``gamma_2`` become ``ls1``/``ls2``.
Note that after import the key bias is an ordinary (trainable) timm parameter starting at zero.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from panderm.errors import ConfigError
from panderm.models.checkpoints import (
    CheckpointError,
    format_keys,
    load_state_dict_file,
    load_weights,
    unwrap_state_dict,
)
from panderm.models.encoder import ARCHITECTURES, Encoder, create_encoder, sincos_pos_embed

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
# Pretraining / fine-tuning heads that are not part of the encoder, when a copy has no "encoder." prefix.
HEAD_PREFIXES = (
    "regressor.",
    "decoder.",
    "teacher.",
    "teacher_model.",
    "projector.",
    "head.",
    "lm_head.",
    "fc_norm.",
)
# Our encoder keys that PanDerm's files do not have by design.
EXPECTED_ABSENT = ("mask_token",)
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_RENAMED_IN_BLOCK = {"gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}


def _split_encoder(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Encoder tensors with the prefix removed, and the keys that belong to something else."""
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        encoder = {
            k.removeprefix(ENCODER_PREFIX): v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
        }
        ignored = [k for k in state if not k.startswith(ENCODER_PREFIX)]
    else:
        encoder = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        ignored = [k for k in state if k.startswith(HEAD_PREFIXES)]
    return encoder, ignored


def panderm_to_timm(
    state_dict: Mapping[str, Any], *, source: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a PanDerm (CAE/BEiT-layout) state dict onto the keys of our `Encoder` (``vit.``-prefixed timm ViT).

    Accepts the ``{"model": ...}``/``{"state_dict": ...}`` wrappers and copies with or without the
    ``encoder.`` prefix. Returns (mapped tensors, ignored head keys). Encoder keys it does not recognise are
    passed through under ``vit.`` so that `load_weights` reports them as unexpected rather than dropping
    them. Raises `CheckpointError` (naming `source`) when a block has a ``q_bias`` without a ``v_bias`` or
    vice versa, or when no dict of tensors is found.
    """
    encoder, ignored = _split_encoder(unwrap_state_dict(state_dict, source))
    mapped: dict[str, torch.Tensor] = {}
    biases: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in encoder.items():
        if key == "mask_token":
            mapped["mask_token"] = tensor
            continue
        match = _BLOCK_KEY.fullmatch(key)
        if match is None:
            mapped[f"vit.{key}"] = tensor
            continue
        index, rest = int(match.group(1)), match.group(2)
        if rest in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(index, {})[rest[5]] = tensor
        else:
            mapped[f"vit.blocks.{index}.{_RENAMED_IN_BLOCK.get(rest, rest)}"] = tensor
    for index, parts in sorted(biases.items()):
        if set(parts) != {"q", "v"}:
            have = sorted(f"blocks.{index}.attn.{p}_bias" for p in parts)
            raise CheckpointError(
                f"{source}: block {index} has {have} but needs both attn.q_bias and attn.v_bias"
            )
        # BEiT-style attention never learns a key bias: it is zero by construction.
        mapped[f"vit.blocks.{index}.attn.qkv.bias"] = torch.cat(
            [parts["q"], torch.zeros_like(parts["q"]), parts["v"]]
        )
    return mapped, ignored


def panderm_name(key: str) -> str:
    """The checkpoint-side name of one of our encoder keys (without any ``encoder.`` prefix), for messages."""
    name = key.removeprefix("vit.")
    match = _BLOCK_KEY.fullmatch(name)
    if match is None:
        return name
    index, rest = match.groups()
    if rest == "attn.qkv.bias":
        return f"blocks.{index}.attn.q_bias/v_bias"
    reverse = {v: k for k, v in _RENAMED_IN_BLOCK.items()}
    return f"blocks.{index}.{reverse.get(rest, rest)}"


def infer_arch(mapped: Mapping[str, torch.Tensor]) -> tuple[str, int, int]:
    """(arch, depth, patch_size) of a mapped state dict, from the patch-embedding shape and block count.

    Raises `CheckpointError` when the embedding width is not one of `ARCHITECTURES`.
    """
    proj = mapped.get("vit.patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        raise CheckpointError(
            "cannot infer the architecture: no 4-D patch_embed.proj.weight in the checkpoint"
        )
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    arch = next((name for name, (width, _, _) in ARCHITECTURES.items() if width == dim), None)
    if arch is None:
        widths = {name: width for name, (width, _, _) in ARCHITECTURES.items()}
        raise CheckpointError(f"cannot infer the architecture: embed dim {dim} is not one of {widths}")
    blocks = {int(m.group(1)) for k in mapped if (m := re.match(r"vit\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    return arch, depth, patch


def _fit_pos_embed(pos: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """The checkpoint's position table for the encoder's grid (regenerated or resampled if it differs)."""
    target = encoder.vit.pos_embed
    if pos.shape == target.shape or pos.ndim != 3 or pos.shape[-1] != target.shape[-1]:
        return pos  # equal, or wrong in a way load_weights reports as a shape mismatch
    side = round((pos.shape[1] - 1) ** 0.5)
    if side * side != pos.shape[1] - 1:
        return pos
    if torch.allclose(pos.float(), sincos_pos_embed((side, side), pos.shape[-1]), atol=1e-4):
        # A fixed sin-cos table carries no learnt information: rebuild it exactly for the new grid.
        log.info(
            "pos_embed: sin-cos table for a %dx%d grid regenerated for %s", side, side, encoder.grid_size
        )
        return sincos_pos_embed(encoder.grid_size, pos.shape[-1]).to(pos.dtype)
    log.warning("pos_embed: learnt table resampled from a %dx%d grid to %s", side, side, encoder.grid_size)
    return resample_abs_pos_embed(pos, list(encoder.grid_size), old_size=[side, side], num_prefix_tokens=1)


def import_panderm(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    arch: str | None = "vit_base",
    patch_size: int | None = 16,
    image_size: int = 224,
    depth: int | None = None,
    strict: bool = True,
) -> Encoder:
    """Build an `Encoder` holding a PanDerm checkpoint (file path or loaded state dict).

    The encoder is ``create_encoder(arch, patch_size, image_size, init_values=..., pos_embed="sincos")``;
    `arch=None` infers the architecture and depth from the weights, `patch_size=None` the patch size, and
    `depth` overrides the architecture's depth (small test models). A missing ``pos_embed`` is filled with
    the sin-cos table; a table for another grid is regenerated (sin-cos) or resampled (learnt). Weights are
    loaded by `load_weights` (the encoder's `mask_token` is expected to be absent); the report, including
    the ignored head keys, is `encoder.load_report`. Raises `CheckpointError` for keys that do not fit.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state = "<state dict>", path_or_state_dict
    else:
        source, state = str(path_or_state_dict), load_state_dict_file(path_or_state_dict)
    mapped, ignored = panderm_to_timm(state, source=source)
    if arch is None or patch_size is None:
        try:
            found_arch, found_depth, found_patch = infer_arch(mapped)
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from error
        if arch is None:
            arch, depth = found_arch, depth or found_depth
        patch_size = patch_size or found_patch
    try:
        # init_values only switches LayerScale on; the gammas come from the checkpoint.
        encoder = create_encoder(
            arch, patch_size, image_size, depth=depth, init_values=1.0, pos_embed="sincos"
        )
    except ConfigError as error:
        raise CheckpointError(f"{source}: cannot build the encoder ({error})") from error
    if "vit.pos_embed" in mapped:
        mapped["vit.pos_embed"] = _fit_pos_embed(mapped["vit.pos_embed"], encoder)
    else:
        mapped["vit.pos_embed"] = sincos_pos_embed(encoder.grid_size, encoder.embed_dim)
    try:
        report = load_weights(encoder, mapped, strict=strict, source=source, allow_missing=EXPECTED_ABSENT)
    except CheckpointError as error:
        if error.report is None:
            raise
        error.report.ignored = ignored
        if not error.report.missing:
            raise
        names = format_keys([panderm_name(k) for k in error.report.missing])
        raise CheckpointError(
            f"{error}\n  missing in PanDerm's names (after any 'encoder.' prefix): {names}",
            error.report,
        ) from error
    report.ignored = ignored
    if ignored:
        log.info("%s: ignored %d non-encoder key(s) (pretraining heads)", source, len(ignored))
    return encoder
