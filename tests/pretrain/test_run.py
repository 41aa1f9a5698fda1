"""`panderm pretrain` end to end on tiny settings: outputs, export, resume from the run folder, NaN stop."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from panderm.cli import main
from panderm.config import register_configs
from panderm.models.checkpoints import load_encoder
from panderm.paths import config_dir
from panderm.pretrain import methods
from panderm.pretrain.objectives import NonFiniteLossError
from panderm.pretrain.run import run_pretrain


def pretrain_config(tmp_path, *overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(
            "pretrain",
            overrides=[
                "data.n_patients=16",
                f"data.out_dir={tmp_path / 'synthderm'}",
                "image_size=32",
                "encoder.depth=2",
                "batch_size=16",
                "num_workers=0",
                "trainer.max_epochs=1",
                "trainer.progress_bar=false",
                "optim.warmup_steps=2",
                *overrides,
            ],
        )


def test_pretrain_writes_outputs_exports_and_resumes(tmp_path):
    run = tmp_path / "run"
    first = run_pretrain(pretrain_config(tmp_path), run)
    steps = first["global_step"]
    assert steps >= 2 and torch.isfinite(torch.tensor(first["train/loss_epoch"]))
    for name in ("config.yaml", "metrics.json", "report.md", "report.html", "figures/pretrain_loss.png"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()
    encoder = load_encoder(run / "encoder")  # strict: every key present
    assert encoder.spec.image_size == 32 and encoder.depth == 2
    assert encoder.features(torch.zeros(1, 3, 32, 32)).shape == (1, 192)
    recipe = json.loads((run / "encoder.json").read_text())["recipe"]
    assert recipe["objective"]["name"] == "mlm_ema" and recipe["image_size"] == 32
    # `panderm export` of the run's checkpoint gives the same weights as the run's own export.
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    exported = load_encoder(tmp_path / "exported")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key
    # A second call in the same folder resumes from last.ckpt and continues the step count.
    second = run_pretrain(pretrain_config(tmp_path, "trainer.max_epochs=2"), run)
    assert second["global_step"] == 2 * steps


def test_nonfinite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    def nan_loss(self, encoder, images, mask, *, step=0):
        return {"loss": (encoder.mask_token.sum() * float("nan"))}

    monkeypatch.setattr(methods.MlmEma, "forward", nan_loss)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        run_pretrain(pretrain_config(tmp_path), tmp_path / "run")


def test_slurm_launcher_preset_composes(tmp_path):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "pretrain",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 8
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed"
