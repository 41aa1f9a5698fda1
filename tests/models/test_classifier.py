"""LinearClassifier: a probe's head on its encoder, saved and loaded as safetensors + JSON."""

from __future__ import annotations

import json

import pytest
import torch

from panderm.errors import ConfigError
from panderm.models.checkpoints import CheckpointError
from panderm.models.classifier import LinearClassifier, load_classifier, save_classifier
from panderm.models.encoder import Encoder, EncoderSpec
from probes.linear import LinearProbe


def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderSpec(arch="vit_tiny", patch_size=8, image_size=32, depth=2))


def test_round_trip_gives_identical_logits(tmp_path):
    model = LinearClassifier(tiny_encoder(), ["nevus", "melanoma", "bcc"], pooling="cls+mean")
    torch.nn.init.normal_(model.head.weight)
    model.mean.normal_()
    x = torch.randn(4, 3, 32, 32)
    weights = save_classifier(model, tmp_path / "clf", recipe={"name": "linear_sweep", "C": 1.0})
    loaded = load_classifier(weights)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == ["nevus", "melanoma", "bcc"] and loaded.pooling == "cls+mean"
    assert not loaded.encoder.training and not any(p.requires_grad for p in loaded.encoder.parameters())
    meta = json.loads((tmp_path / "clf.json").read_text())
    assert meta["recipe"]["C"] == 1.0


def test_probe_to_classifier_matches_predict_proba_and_zeroes_unseen_classes():
    encoder = tiny_encoder()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        feats = encoder.features(x)
    gen = torch.Generator().manual_seed(1)
    probe = LinearProbe(
        weight=torch.randn(2, feats.shape[1], generator=gen),
        bias=torch.randn(2, generator=gen),
        num_classes=3,
        classes=torch.tensor([0, 2]),  # class 1 never seen in training
        penalty="l2_squared",
        reg=0.0,
        mean=feats.mean(0),
        std=feats.std(0) + 0.1,
    )
    model = probe.to_classifier(encoder, ["a", "b", "c"])
    with torch.no_grad():
        proba = torch.softmax(model(x).double(), 1).numpy()
    assert proba == pytest.approx(probe.predict_proba(feats), abs=1e-6)
    assert (proba[:, 1] == 0).all()


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="distinct class names"):
        LinearClassifier(tiny_encoder(), ["a", "a"])
    with pytest.raises(ConfigError, match="pooling"):
        LinearClassifier(tiny_encoder(), ["a", "b"], pooling="max")
    save_classifier(LinearClassifier(tiny_encoder(), ["a", "b"]), tmp_path / "clf")
    (tmp_path / "clf.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"clf\.safetensors"):
        load_classifier(tmp_path / "clf")
    with pytest.raises(CheckpointError, match=r"missing\.json"):
        load_classifier(tmp_path / "missing")
