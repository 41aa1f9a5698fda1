"""Encoders users compare against: open_clip vision towers, Hugging Face backbones and raw pixels, each
from a tiny random model in a temporary folder: features against the libraries' own forward passes,
identity (the feature-cache key) and its changes, pooling, errors naming the path, and one probe run each."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from open_clip.model import CLIP
from transformers import (
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from panderm.errors import CheckpointError, ProbeError
from panderm.models.checkpoints import canonical_json
from panderm.models.classifier import load_classifier
from panderm.models.timm_encoder import encoder_from_spec
from probes.encoders import encoder_hash, load_probe_encoder
from probes.run import run_probe
from tests.probes.test_run import probe_config

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_NAME = "panderm-test-tiny-vit"


def write_open_clip(folder, seed, *, safetensors_file=False, mean=(0.5, 0.4, 0.3)):
    """A tiny random CLIP in the hub layout; returns the full model (the reference)."""
    torch.manual_seed(seed)
    model = CLIP(**OPEN_CLIP_CFG).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {"mean": list(mean), "std": [0.2, 0.25, 0.3]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if safetensors_file:
        safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model


def write_dinov2(folder, seed):
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    model = Dinov2Model(config).eval()
    model.save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.4, 0.4, 0.4],
        image_std=[0.2, 0.2, 0.2],
    ).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder_sources")
    refs = {
        "oc": write_open_clip(root / "oc", 0),
        "oc_other": write_open_clip(root / "oc_other", 1),
        "oc_st": write_open_clip(root / "oc_st", 0, safetensors_file=True),
        "dino": write_dinov2(root / "dino", 0),
        "dino_other": write_dinov2(root / "dino_other", 1),
    }
    (root / "named").mkdir()
    (root / "named" / f"{TINY_NAME}.json").write_text(json.dumps(OPEN_CLIP_CFG))
    import open_clip

    open_clip.add_model_config(root / "named" / f"{TINY_NAME}.json")
    return root, refs


def images(size=32, n=3, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ open_clip


def test_open_clip_folder_features_match_open_clip(models):
    root, refs = models
    encoder = load_probe_encoder(f"open_clip:{root / 'oc'}")
    x = images()
    clip = refs["oc"]
    with torch.no_grad():
        expected = clip.encode_image(x)
        clip.visual.output_tokens = True  # open_clip's own forward: (pooled, final-norm patch tokens)
        _, tokens = clip.visual(x)
        clip.visual.output_tokens = False
        cls, mean, both = (encoder.features(x, p) for p in ("cls", "mean", "cls+mean"))
    assert encoder.embed_dim == 16 and cls.shape == (3, 16) and both.shape == (3, 32)
    torch.testing.assert_close(cls, expected)
    torch.testing.assert_close(mean, tokens.mean(1) @ clip.visual.proj)
    torch.testing.assert_close(both, torch.cat([expected, mean], 1))
    spec = encoder.spec
    assert spec.image_size == 32 and spec.mean == (0.5, 0.4, 0.3) and spec.std == (0.2, 0.25, 0.3)
    with pytest.raises(ProbeError, match="pooling"):
        encoder.features(x, "max")


def test_open_clip_named_model_with_a_weights_file(models):
    root, refs = models
    encoder = load_probe_encoder(f"open_clip:{TINY_NAME}:{root / 'oc' / 'open_clip_pytorch_model.bin'}")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(x), refs["oc"].encode_image(x))
    # no preprocess config: open_clip's defaults (OpenAI CLIP mean/std)
    from open_clip.constants import OPENAI_DATASET_MEAN

    assert encoder.spec.mean == pytest.approx(OPENAI_DATASET_MEAN)


def test_open_clip_identity_follows_the_weights(models, tmp_path):
    root, _ = models
    first = encoder_hash(load_probe_encoder(f"open_clip:{root / 'oc'}"))
    assert encoder_hash(load_probe_encoder(f"open_clip:{root / 'oc'}")) == first
    assert encoder_hash(load_probe_encoder(f"open_clip:{root / 'oc_other'}")) != first  # other weights
    # a copy of the folder elsewhere keeps the identity; another normalisation changes it
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in (root / "oc").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert encoder_hash(load_probe_encoder(f"open_clip:{copy}")) == first
    data = json.loads((copy / "open_clip_config.json").read_text())
    data["preprocess_cfg"]["mean"] = [0.1, 0.1, 0.1]
    (copy / "open_clip_config.json").write_text(json.dumps(data))
    assert encoder_hash(load_probe_encoder(f"open_clip:{copy}")) != first


def test_open_clip_safetensors_folder_gives_the_same_features(models):
    root, _ = models
    x = images()
    a, b = (load_probe_encoder(f"open_clip:{root / n}") for n in ("oc", "oc_st"))
    with torch.no_grad():
        torch.testing.assert_close(a.features(x, "mean"), b.features(x, "mean"))


def test_open_clip_errors_name_the_path(models, tmp_path):
    root, _ = models
    with pytest.raises(ProbeError, match="not-there"):
        load_probe_encoder(f"open_clip:{tmp_path / 'not-there'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match=r"open_clip_config.json"):
        load_probe_encoder(f"open_clip:{tmp_path / 'empty'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG}))
    with pytest.raises(ProbeError, match="no open_clip weights"):
        load_probe_encoder(f"open_clip:{tmp_path / 'noweights'}")
    (tmp_path / "noweights" / "open_clip_pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"open_clip_pytorch_model.bin"):
        load_probe_encoder(f"open_clip:{tmp_path / 'noweights'}")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "open_clip_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="badjson"):
        load_probe_encoder(f"open_clip:{tmp_path / 'badjson'}")
    weights = root / "oc" / "open_clip_pytorch_model.bin"
    with pytest.raises(ProbeError, match=r"ViT-Nope-99.*unknown open_clip model"):
        load_probe_encoder(f"open_clip:ViT-Nope-99:{weights}")
    with pytest.raises(ProbeError, match=r"missing.bin"):
        load_probe_encoder(f"open_clip:{TINY_NAME}:{tmp_path / 'missing.bin'}")
    # weights of another tower: the keys that do not fit are named
    wide = {**OPEN_CLIP_CFG, "vision_cfg": {**OPEN_CLIP_CFG["vision_cfg"], "layers": 1}}
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "open_clip_config.json").write_text(json.dumps({"model_cfg": wide}))
    (tmp_path / "wide" / "open_clip_pytorch_model.bin").write_bytes(weights.read_bytes())
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_probe_encoder(f"open_clip:{tmp_path / 'wide'}")


# ------------------------------------------------------------------------------------------------------- hf


def test_hf_dinov2_features_match_transformers(models):
    root, refs = models
    encoder = load_probe_encoder(f"hf:{root / 'dino'}")
    x = images()
    with torch.no_grad():
        out = refs["dino"](pixel_values=x)
        cls, mean, both = (encoder.features(x, p) for p in ("cls", "mean", "cls+mean"))
    assert encoder.embed_dim == 32 and both.shape == (3, 64)
    torch.testing.assert_close(cls, out.pooler_output)
    torch.testing.assert_close(cls, out.last_hidden_state[:, 0])  # DINOv2's pooler: the normed class token
    torch.testing.assert_close(mean, out.last_hidden_state[:, 1:].mean(1))
    assert encoder.spec.image_size == 32 and encoder.spec.mean == (0.4, 0.4, 0.4)


def test_hf_identity_follows_the_weights(models, tmp_path):
    root, _ = models
    first = encoder_hash(load_probe_encoder(f"hf:{root / 'dino'}"))
    assert encoder_hash(load_probe_encoder(f"hf:{root / 'dino'}")) == first
    assert encoder_hash(load_probe_encoder(f"hf:{root / 'dino_other'}")) != first
    # the same weights with another normalisation: another identity (features differ)
    copy = tmp_path / "dino"
    copy.mkdir()
    for path in (root / "dino").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert encoder_hash(load_probe_encoder(f"hf:{copy}")) == first
    data = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**data, "image_mean": [0.5, 0.5, 0.5]}))
    assert encoder_hash(load_probe_encoder(f"hf:{copy}")) != first


def test_hf_untrained_pooler_is_not_used(tmp_path):
    """A classification checkpoint loaded as ViTModel has no pooler weights: "cls" is the first token."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    encoder = load_probe_encoder(f"hf:{tmp_path / 'vit'}")
    x = images()
    with torch.no_grad():
        hidden = model.vit(pixel_values=x).last_hidden_state
        torch.testing.assert_close(encoder.features(x, "cls"), hidden[:, 0])
        torch.testing.assert_close(encoder.features(x, "mean"), hidden[:, 1:].mean(1))


def test_hf_errors_name_the_path(models, tmp_path):
    root, _ = models
    with pytest.raises(ProbeError, match="nowhere"):
        load_probe_encoder(f"hf:{tmp_path / 'nowhere'}")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in (root / "dino").iterdir():
        if path.name != "preprocessor_config.json":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ProbeError, match=r"preprocessor_config.json"):
        load_probe_encoder(f"hf:{broken}")
    (broken / "preprocessor_config.json").write_bytes(
        (root / "dino" / "preprocessor_config.json").read_bytes()
    )
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="broken"):
        load_probe_encoder(f"hf:{broken}")
    with pytest.raises(ProbeError, match="image_size=64"):
        load_probe_encoder(f"hf:{root / 'dino'}", image_size=64)


# --------------------------------------------------------------------------------------------------- pixels


def test_pixels_are_the_image():
    encoder = load_probe_encoder("pixels@8")
    x = images(8)
    assert encoder.embed_dim == 3 * 8 * 8 and encoder.spec.mean == (0.0, 0.0, 0.0)
    torch.testing.assert_close(encoder.features(x), x.reshape(3, -1))
    assert encoder.features(x, "cls+mean").shape == (3, 2 * 192)
    with pytest.raises(ProbeError, match="8, 8"):
        encoder.features(images(16))
    assert encoder_hash(load_probe_encoder("pixels")) == encoder_hash(load_probe_encoder("pixels@32"))
    assert encoder_hash(encoder) != encoder_hash(load_probe_encoder("pixels"))
    assert load_probe_encoder("pixels", image_size=16).spec.image_size == 16


def test_specs_rebuild_each_encoder(models):
    """Saved classifiers rebuild their encoder from the spec (`encoder_from_spec`), then load its weights."""
    root, _ = models
    x = images()
    for text in (f"open_clip:{root / 'oc'}", f"hf:{root / 'dino'}", "pixels"):
        encoder = load_probe_encoder(text)
        rebuilt = encoder_from_spec(encoder.spec)
        rebuilt.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval().features(x, "mean"), encoder.features(x, "mean"))


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("source", ["oc", "dino", "pixels"])
def test_probe_runs_with_each_source(models, tmp_path, source):
    root, _ = models
    spec = {"oc": f"open_clip:{root / 'oc'}", "dino": f"hf:{root / 'dino'}", "pixels": "pixels@16"}[source]
    cfg = probe_config(tmp_path, f"encoder='{spec}'", "pooling=mean")
    metrics = run_probe(cfg, tmp_path / "run")
    assert 0.0 <= metrics["test"]["values"]["balanced_accuracy"] <= 1.0
    encoder = load_probe_encoder(spec)
    # the saved classifier rebuilds this encoder and gives the probe's predictions on the cached features
    classifier = load_classifier(metrics["classifier"])
    assert canonical_json(classifier.encoder.spec.to_dict()) == canonical_json(encoder.spec.to_dict())
    for key, value in encoder.state_dict().items():
        assert torch.equal(classifier.encoder.state_dict()[key], value), key
    assert f"{encoder.embed_dim}-d features (mean pooling)" in (tmp_path / "run" / "report.md").read_text()
