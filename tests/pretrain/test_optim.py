"""Optimiser groups (decay rules, layer-wise lr decay) and the warmup-cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from panderm.models.encoder import create_encoder
from panderm.pretrain.optim import build_optimizer, param_groups, warmup_cosine


@pytest.fixture
def encoder():
    return create_encoder("vit_tiny", 8, 32, depth=3)


def group_of(groups, name):
    matches = [g for g in groups if name in g["names"]]
    assert len(matches) == 1, name
    return matches[0]


def test_every_trainable_parameter_once_and_decay_rules(encoder):
    head = nn.Linear(192, 10)
    encoder.vit.blocks[0].norm1.weight.requires_grad_(False)
    groups = param_groups(
        encoder, [(f"head.{n}", p) for n, p in head.named_parameters()], lr=1.0, weight_decay=0.1
    )
    names = [n for g in groups for n in g["names"]]
    expected = [n for n, p in encoder.named_parameters() if p.requires_grad] + ["head.weight", "head.bias"]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    assert "vit.blocks.0.norm1.weight" not in names
    for name in (
        "vit.pos_embed",
        "vit.cls_token",
        "mask_token",
        "vit.blocks.1.attn.qkv.bias",
        "vit.norm.weight",
    ):
        assert group_of(groups, name)["weight_decay"] == 0.0
    for name in ("vit.blocks.1.attn.qkv.weight", "vit.patch_embed.proj.weight", "head.weight"):
        assert group_of(groups, name)["weight_decay"] == 0.1


def test_layer_wise_lr_decay(encoder):
    groups = param_groups(
        encoder, [("head.w", nn.Parameter(torch.ones(2, 2)))], lr=2.0, weight_decay=0.0, layer_decay=0.5
    )
    depth = 3
    assert group_of(groups, "vit.patch_embed.proj.weight")["lr"] == pytest.approx(2.0 * 0.5 ** (depth + 1))
    assert group_of(groups, "vit.cls_token")["lr"] == pytest.approx(2.0 * 0.5 ** (depth + 1))
    for i in range(depth):
        assert group_of(groups, f"vit.blocks.{i}.mlp.fc1.weight")["lr"] == pytest.approx(
            2.0 * 0.5 ** (depth - i)
        )
    assert group_of(groups, "vit.norm.weight")["lr"] == pytest.approx(2.0)
    assert group_of(groups, "head.w")["lr"] == pytest.approx(2.0)


def test_warmup_cosine_values():
    values = [warmup_cosine(s, total_steps=110, warmup_steps=10) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert (
        values[10] == pytest.approx(1.0)
        and values[60] == pytest.approx(0.5)
        and values[110] == pytest.approx(0.0)
    )
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert warmup_cosine(60, total_steps=110, warmup_steps=10, final_ratio=0.2) == pytest.approx(0.6)


def test_scheduler_scales_every_group(encoder):
    groups = param_groups(encoder, [], lr=1.0, weight_decay=0.0, layer_decay=0.5)
    optimizer, schedule = build_optimizer(groups, total_steps=20, warmup_steps=4)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    for step in range(8):
        factor = warmup_cosine(step, total_steps=20, warmup_steps=4)
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            assert group["lr"] == pytest.approx(scale * factor)
        optimizer.step()
        schedule.step()
    assert not math.isnan(optimizer.param_groups[0]["lr"])


def test_unscheduled_group_keeps_its_lr(encoder):
    groups = param_groups(encoder, [], lr=1.0, weight_decay=0.0)
    probe = torch.nn.Linear(4, 2)
    groups.append({"params": list(probe.parameters()), "lr": 0.01, "scheduled": False})
    optimizer, schedule = build_optimizer(groups, total_steps=20, warmup_steps=4)
    for step in range(6):
        assert optimizer.param_groups[-1]["lr"] == pytest.approx(0.01)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            warmup_cosine(step, total_steps=20, warmup_steps=4)
        )
        optimizer.step()
        schedule.step()
