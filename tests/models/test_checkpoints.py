"""Checkpoints: round trip, metadata, key comparison (strict and not), foreign files, hashes."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from panderm.errors import PandermError
from panderm.models.checkpoints import (
    CheckpointError,
    LoadReport,
    checkpoint_hash,
    load_encoder,
    load_state_dict_file,
    load_torch_file,
    load_weights,
    recipe_hash,
    save_encoder,
)
from panderm.models.encoder import Encoder, create_encoder
from tests.killing import write_trapped_checkpoint

RECIPE = {"seed": 3, "optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "data": "synthderm", "out": Path("/tmp/x")}


def tiny(seed: int = 0, **kwargs) -> Encoder:
    torch.manual_seed(seed)
    kwargs = {"arch": "vit_tiny", "patch_size": 16, "image_size": 32, "depth": 1, **kwargs}
    return create_encoder(**kwargs).eval()


def state(encoder: Encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def assert_same_weights(a: Encoder, b: Encoder) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip(tmp_path: Path) -> None:
    encoder = tiny(init_values=0.1, pos_embed="sincos", mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4))
    weights = save_encoder(encoder, tmp_path / "run" / "enc", recipe=RECIPE)
    assert weights == tmp_path / "run" / "enc.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == [
        "enc.json",
        "enc.safetensors",
    ]  # no temp files

    loaded = load_encoder(tmp_path / "run" / "enc")
    assert loaded.spec == encoder.spec and not loaded.training
    assert_same_weights(loaded, encoder)
    assert not loaded.vit.pos_embed.requires_grad  # the rebuilt spec keeps sin-cos fixed
    assert loaded.load_report.clean and loaded.load_report.loaded == len(encoder.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x, "cls+mean"), encoder.features(x, "cls+mean"))


def test_metadata(tmp_path: Path) -> None:
    encoder = tiny(init_values=0.1)
    weights = save_encoder(encoder, tmp_path / "enc.safetensors", recipe=RECIPE)
    meta = json.loads((tmp_path / "enc.json").read_text())
    assert meta["format_version"] == 1
    assert meta["spec"] == json.loads(json.dumps(encoder.spec.to_dict()))
    assert meta["image_size"] == 32
    assert meta["mean"] == list(encoder.spec.mean) and meta["std"] == list(encoder.spec.std)
    assert meta["timm_version"] == timm.__version__
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["num_parameters"] == sum(v.numel() for v in encoder.state_dict().values())
    # The recipe is stored as plain JSON and hashed canonically (sorted keys, no spaces).
    plain = {"seed": 3, "optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "data": "synthderm", "out": "/tmp/x"}
    assert meta["recipe"] == plain
    canonical = '{"data":"synthderm","optim":{"betas":[0.9,0.95],"lr":0.001},"out":"/tmp/x","seed":3}'
    assert meta["recipe_hash"] == hashlib.sha256(canonical.encode()).hexdigest() == recipe_hash(RECIPE)
    assert recipe_hash({"seed": 3}) != recipe_hash({"seed": 4})
    # The weights file is plain safetensors: readable without panderm.
    raw = safetensors.torch.load_file(weights)
    assert torch.equal(raw["vit.blocks.0.ls1.gamma"], encoder.vit.blocks[0].ls1.gamma.detach())


def test_no_recipe(tmp_path: Path) -> None:
    save_encoder(tiny(), tmp_path / "enc")
    meta = json.loads((tmp_path / "enc.json").read_text())
    assert meta["recipe"] is None and meta["recipe_hash"] is None


@pytest.mark.parametrize("name", ["enc", "enc.safetensors", "enc.json"])
def test_load_accepts_stem_or_either_file(tmp_path: Path, name: str) -> None:
    encoder = tiny()
    save_encoder(encoder, tmp_path / "enc")
    assert_same_weights(load_encoder(tmp_path / name), encoder)


def test_overwrite_is_atomic_and_complete(tmp_path: Path) -> None:
    save_encoder(tiny(seed=0), tmp_path / "enc")
    second = tiny(seed=1)
    save_encoder(second, tmp_path / "enc")
    assert_same_weights(load_encoder(tmp_path / "enc"), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.safetensors"]


def rewrite_weights(tmp_path: Path, edit) -> Path:
    """Save a tiny encoder, then replace its weights file by `edit(state)` (the JSON hash goes stale)."""
    weights = save_encoder(tiny(), tmp_path / "enc")
    tensors = safetensors.torch.load_file(weights)
    edit(tensors)
    safetensors.torch.save_file(tensors, weights)
    return weights


def test_replaced_weights_fail_the_hash_check(tmp_path: Path) -> None:
    weights = rewrite_weights(tmp_path, lambda t: t["vit.norm.bias"].add_(1.0))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_encoder(weights)
    assert str(weights) in str(info.value)
    loaded = load_encoder(weights, verify_hash=False)
    torch.testing.assert_close(
        loaded.vit.norm.bias.detach(), torch.ones(192)
    )  # timm inits LayerNorm bias at 0


def test_strict_load_lists_every_problem(tmp_path: Path) -> None:
    def edit(tensors: dict) -> None:
        del tensors["vit.blocks.0.mlp.fc2.bias"]
        del tensors["mask_token"]
        tensors["vit.head.weight"] = torch.zeros(3)
        tensors["vit.norm.weight"] = torch.ones(7)

    weights = rewrite_weights(tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        load_encoder(weights, verify_hash=False)
    message = str(info.value)
    assert str(weights) in message
    for key in ("vit.blocks.0.mlp.fc2.bias", "mask_token", "vit.head.weight", "vit.norm.weight"):
        assert key in message
    assert "checkpoint [7] vs encoder [192]" in message
    report = info.value.report
    assert sorted(report.missing) == ["mask_token", "vit.blocks.0.mlp.fc2.bias"]
    assert report.unexpected == ["vit.head.weight"]
    assert report.mismatched == {"vit.norm.weight": ((7,), (192,))}


def test_non_strict_load_warns_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tiny(seed=5)
    weights = save_encoder(source, tmp_path / "enc")
    tensors = safetensors.torch.load_file(weights)
    del tensors["vit.norm.bias"]
    tensors["extra.thing"] = torch.zeros(2)
    safetensors.torch.save_file(tensors, weights)
    with caplog.at_level(logging.WARNING, logger="panderm.models.checkpoints"):
        loaded = load_encoder(weights, strict=False, verify_hash=False)
    assert "vit.norm.bias" in caplog.text and "extra.thing" in caplog.text and str(weights) in caplog.text
    report = loaded.load_report
    assert (
        report.missing == ["vit.norm.bias"] and report.unexpected == ["extra.thing"] and not report.mismatched
    )
    assert report.loaded == len(source.state_dict()) - 1
    # Everything that matched was really loaded.
    torch.testing.assert_close(loaded.vit.blocks[0].attn.qkv.weight, source.vit.blocks[0].attn.qkv.weight)


def test_nothing_matched_raises_even_non_strict() -> None:
    encoder = tiny()
    foreign = {f"model.{k}": v for k, v in state(tiny(seed=1)).items()}
    before = state(encoder)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="no key of the checkpoint matches") as info:
            load_weights(encoder, foreign, strict=strict, source="foreign.pth")
        assert "foreign.pth" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # untouched
    # shape mismatches everywhere also count as nothing matched
    wrong = {k: torch.zeros(1) for k in before}
    with pytest.raises(CheckpointError, match="no key"):
        load_weights(encoder, wrong, strict=False)


def test_load_weights_allow_missing_and_report() -> None:
    encoder, source = tiny(), state(tiny(seed=2))
    mask_token = encoder.mask_token.detach().clone()
    del source["mask_token"]
    report = load_weights(encoder, source, allow_missing=["mask_token"])
    assert isinstance(report, LoadReport) and report.clean and encoder.load_report is report
    assert report.source == "<memory>" and report.loaded == len(source)
    assert torch.equal(encoder.mask_token.detach(), mask_token)
    with pytest.raises(CheckpointError, match="non-tensor"):
        load_weights(encoder, {**source, "epoch": 3})


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict", "module", "encoder", "nested"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_load_state_dict_file_unwraps(tmp_path: Path, wrapper: str | None, suffix: str) -> None:
    tensors = state(tiny())
    obj: dict = tensors
    if wrapper == "nested":
        obj = {"state_dict": {"model": tensors}, "epoch": 4}
    elif wrapper is not None:
        obj = {wrapper: tensors, "epoch": 4, "args": {"lr": 0.1}}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(obj, path)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_load_state_dict_file_safetensors_and_ddp_prefix(tmp_path: Path) -> None:
    tensors = state(tiny())
    safetensors.torch.save_file(tensors, tmp_path / "w.safetensors")
    assert load_state_dict_file(tmp_path / "w.safetensors").keys() == tensors.keys()
    torch.save({f"module.{k}": v for k, v in tensors.items()}, tmp_path / "ddp.pth")
    assert load_state_dict_file(tmp_path / "ddp.pth").keys() == tensors.keys()


def test_load_state_dict_file_accepts_training_args(tmp_path: Path) -> None:
    # BEiT/CAE-style training checkpoints keep their argparse.Namespace next to the weights.
    tensors = state(tiny())
    torch.save({"model": tensors, "args": argparse.Namespace(lr=0.1, epochs=3)}, tmp_path / "train.pth")
    assert load_state_dict_file(tmp_path / "train.pth").keys() == tensors.keys()


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.pth", None, "not found"),
        ("garbage.safetensors", b"\x00\x01 definitely not safetensors", "safetensors"),
        ("garbage.pth", b"PK\x03\x04 truncated zip", "weights_only"),
        ("weights.npz", b"", "unsupported checkpoint suffix"),
    ],
)
def test_load_state_dict_file_errors(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, PandermError)


def test_load_state_dict_file_refuses_pickled_objects_and_non_state_dicts(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "obj": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_state_dict_file(tmp_path / "evil.pth")
    assert "NotATensor" in str(info.value)  # the offending global is named
    torch.save({"epoch": 3, "weights": [torch.zeros(1)]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"not a state dict.*epoch"):
        load_state_dict_file(tmp_path / "odd.pth")


@pytest.mark.parametrize("reader", [load_torch_file, load_state_dict_file])
def test_torch_files_never_run_pickled_code_even_when_torch_is_told_to(tmp_path, monkeypatch, reader) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # turns off weights_only where not explicit
    path = write_trapped_checkpoint(tmp_path / "trap.ckpt", tmp_path / "marker")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        reader(path)
    assert str(path) in str(info.value) and "io.open" in str(info.value)  # the file and the culprit
    assert not (tmp_path / "marker").exists()
    torch.save({"step": 3, "w": torch.ones(2)}, tmp_path / "plain.ckpt")  # tensors and plain values load
    assert torch.equal(load_torch_file(tmp_path / "plain.ckpt", mmap=True)["w"], torch.ones(2))


def test_load_encoder_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="metadata not found"):
        load_encoder(tmp_path / "nothing")
    weights = save_encoder(tiny(), tmp_path / "enc")
    weights.unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_encoder(tmp_path / "enc")
    save_encoder(tiny(), tmp_path / "enc")
    meta_path = tmp_path / "enc.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version=99"):
        load_encoder(meta_path)
    meta_path.write_text(json.dumps({**meta, "spec": {**meta["spec"], "arch": "vit_giant"}}))
    with pytest.raises(CheckpointError, match="vit_giant"):
        load_encoder(meta_path)
    meta_path.write_text(json.dumps({**meta, "spec": {**meta["spec"], "colour": 1}}))
    with pytest.raises(CheckpointError, match=r"unknown spec field.*colour"):
        load_encoder(meta_path)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_encoder(meta_path)


def test_checkpoint_hash(tmp_path: Path) -> None:
    weights = save_encoder(tiny(seed=0), tmp_path / "a")
    digest = checkpoint_hash(weights)
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert checkpoint_hash(tmp_path / "a") == digest  # the stem works too
    other = save_encoder(tiny(seed=1), tmp_path / "b")
    assert checkpoint_hash(other) != digest
    torch.save({"w": torch.ones(2)}, tmp_path / "c.pth")
    assert (
        checkpoint_hash(tmp_path / "c.pth")
        == hashlib.sha256((tmp_path / "c.pth").read_bytes()).hexdigest()[:16]
    )
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint_hash(tmp_path / "missing")
