"""Optimiser parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and warmup-cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from panderm.models.encoder import Encoder

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token")


def encoder_layer_id(name: str, depth: int) -> int:
    """Layer of an encoder parameter for layer-wise decay: embeddings 0, block i -> i + 1, rest depth+1."""
    if any(token in name for token in (*NO_DECAY_NAMES, "patch_embed")):
        return 0
    if ".blocks." in f".{name}":
        return int(name.split("blocks.")[1].split(".")[0]) + 1
    return depth + 1


def _decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim > 1 and not name.endswith(".bias") and not any(t in name for t in NO_DECAY_NAMES)


def param_groups(
    encoder: Encoder,
    heads: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay only on matrices (not norms, biases, position/cls/mask tokens); with
    `layer_decay` the encoder's layer l gets lr · layer_decay^(depth + 1 - l). Head parameters (the method's
    predictors) get the full lr. Frozen parameters are left out. Each group records its `lr_scale`."""
    depth = encoder.depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}

    def add(name: str, param: nn.Parameter, layer: int) -> None:
        if not param.requires_grad:
            return
        decay = _decays(name, param)
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault(
            (layer, decay),
            {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale},
        )
        group["params"].append(param)
        group["names"].append(name)

    for name, param in encoder.named_parameters():
        add(name, param, encoder_layer_id(name, depth))
    for name, param in heads:
        add(name, param, depth + 1)
    out = []
    for group in groups.values():
        group["lr"] = lr * group["lr_scale"]
        out.append(group)
    return out


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, final_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup to 1 over `warmup_steps`, then cosine down to `final_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


LR_REFERENCE_BATCH = 256  # the linear scaling rule's reference batch (Goyal et al.; DINO, MAE, iBOT)


def scaled_lr(base_lr: float, global_batch: int, lr: float | None = None) -> float:
    """`lr` when given, else the linear scaling rule ``base_lr * global_batch / 256``."""
    if lr is not None:
        return float(lr)
    if global_batch < 1:
        raise ValueError(f"global batch size must be positive, got {global_batch}")
    return base_lr * global_batch / LR_REFERENCE_BATCH


def warmup_length(total_steps: int, warmup_steps: int | None = None, warmup_fraction: float = 0.1) -> int:
    """`warmup_steps` when given, else `warmup_fraction` of `total_steps` (at least 1 step)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction={warmup_fraction} must be in [0, 1]")
    return max(1, round(warmup_fraction * total_steps))


def build_optimizer(
    groups: list[dict[str, Any]],
    *,
    total_steps: int,
    warmup_steps: int,
    betas: tuple[float, float] = (0.9, 0.95),
    final_ratio: float = 0.0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `groups` with a per-step warmup-cosine schedule; a group with ``"scheduled": False``
    (e.g. an online probe) keeps its lr constant."""
    optimizer = torch.optim.AdamW(groups, betas=betas)

    def cosine(step: int) -> float:
        return warmup_cosine(
            step, total_steps=total_steps, warmup_steps=warmup_steps, final_ratio=final_ratio
        )

    def constant(step: int) -> float:
        return 1.0

    multipliers = [cosine if group.get("scheduled", True) else constant for group in optimizer.param_groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multipliers)
