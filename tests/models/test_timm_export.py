"""`panderm export --timm-dir`: a folder plain timm loads, giving panderm's features of the same images."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import torch
from omegaconf import OmegaConf

from panderm.cli import main
from panderm.config import EncoderConfig
from panderm.models.checkpoints import load_encoder
from panderm.models.encoder import create_encoder

# Runs in a fresh interpreter with timm alone: no panderm import can help it load the folder.
TIMM_ONLY = """
import sys
import numpy as np, timm, torch
for folder, images, out in zip(*[iter(sys.argv[1:])] * 3):  # (folder, images.npy, out.npz) triples
    model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    x = torch.from_numpy(np.load(images))
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
    cfg = timm.data.resolve_data_config({}, model=model)
    np.savez(out, tokens=tokens.numpy(), pooled=pooled.numpy(), num_classes=model.num_classes,
             input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"])
assert "panderm" not in sys.modules
"""


def fake_run(root, encoder, **encoder_cfg):
    """A pretraining run folder as `panderm pretrain` leaves it: config.yaml and checkpoints/last.ckpt."""
    cfg = OmegaConf.create({"encoder": asdict(EncoderConfig(**encoder_cfg))})
    (root / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, root / "config.yaml")
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.zeros(2, 2)  # the method's own modules are not part of the export
    torch.save({"state_dict": state}, root / "checkpoints" / "last.ckpt")
    return root


CASES = [
    {"arch": "vit_tiny", "patch_size": 8, "image_size": 32, "depth": 2},
    {
        "arch": "vit_tiny",
        "patch_size": 16,
        "image_size": 48,
        "depth": 1,
        "init_values": 0.1,
        "pos_embed": "sincos",
    },
]


def test_exported_timm_folder_loads_in_plain_timm_with_the_same_features(tmp_path):
    """Two exports (patch 8 / learnt positions; patch 16, LayerScale, sin-cos), one timm-only interpreter."""
    args, expected = [], []
    for case, options in enumerate(CASES):
        torch.manual_seed(case)
        encoder = create_encoder(**options).eval()
        with torch.no_grad():  # random LayerScale/CLS values, so that a dropped tensor would show
            for param in encoder.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        out = tmp_path / f"case{case}"
        run = fake_run(out / "run", encoder, **options)
        assert main(["export", str(run), str(out / "enc"), "--timm-dir", str(out / "timm")]) == 0
        size = options["image_size"]
        images = torch.randn(3, 3, size, size)
        np.save(out / "x.npy", images.numpy())
        args += [str(out / "timm"), str(out / "x.npy"), str(out / "o.npz")]
        expected.append((load_encoder(out / "enc"), images, options))
    subprocess.run([sys.executable, "-c", TIMM_ONLY, *args], check=True, timeout=300)
    for case, (exported, images, options) in enumerate(expected):
        got = np.load(tmp_path / f"case{case}" / "o.npz")
        with torch.no_grad():
            tokens = exported.tokens(images).numpy()
            cls = exported.features(images, "cls").numpy()
        np.testing.assert_allclose(got["tokens"], tokens, atol=1e-5)
        np.testing.assert_allclose(got["pooled"], cls, atol=1e-5)
        np.testing.assert_allclose(got["mean"], exported.spec.mean)
        np.testing.assert_allclose(got["std"], exported.spec.std)
        size = options["image_size"]
        assert tuple(got["input_size"]) == (3, size, size) and int(got["num_classes"]) == 0
        # timm's crop (resize to size / crop_pct, centre crop) is panderm's eval transform (size * 256/224)
        assert round(size / float(got["crop_pct"])) == round(size * 256 / 224)
        config = json.loads((tmp_path / f"case{case}" / "timm" / "config.json").read_text())
        assert config["model_args"]["depth"] == options["depth"] and config["num_classes"] == 0


def test_export_without_timm_dir_writes_no_folder(tmp_path):
    options = {"arch": "vit_tiny", "patch_size": 8, "image_size": 32, "depth": 1}
    run = fake_run(tmp_path / "run", create_encoder(**options), **options)
    assert main(["export", str(run), str(tmp_path / "enc")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.safetensors", "run"]
