"""`panderm pretrain` end to end on tiny settings: outputs, export, resume from the run folder, NaN stop."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from panderm.cli import main
from panderm.config import register_configs
from panderm.errors import CheckpointError
from panderm.models.checkpoints import load_encoder
from panderm.paths import config_dir
from panderm.pretrain import methods
from panderm.pretrain.export import export_checkpoint
from panderm.pretrain.objectives import NonFiniteLossError
from panderm.pretrain.run import run_pretrain
from tests.killing import write_trapped_checkpoint


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
    assert recipe["objective"]["name"] == "simclr" and recipe["image_size"] == 32
    # `panderm export` of the run's checkpoint gives the same weights as the run's own export.
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    exported = load_encoder(tmp_path / "exported")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key
    # A second call in the same folder resumes from last.ckpt and continues the step count and the log.
    second = run_pretrain(pretrain_config(tmp_path, "trainer.max_epochs=2"), run)
    assert second["global_step"] == 2 * steps
    log = pd.read_csv(run / "logs" / "metrics.csv")
    assert log.dropna(subset=["train/loss_epoch"])["epoch"].tolist() == [0, 1]
    assert log["step"].min() == 0 and log["step"].max() == 2 * steps


def test_resume_never_unpickles_code_from_the_run_folder(tmp_path, monkeypatch):
    """A last.ckpt that would run code when unpickled is refused, naming it, even when torch is told to
    unpickle anything (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1); no code runs."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    last = write_trapped_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "marker")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        run_pretrain(pretrain_config(tmp_path), tmp_path / "run")
    assert str(last) in str(info.value) and "delete it to start the run over" in str(info.value)
    assert not (tmp_path / "marker").exists()


def test_export_never_unpickles_code(tmp_path, monkeypatch):
    """`panderm export` of a run whose last.ckpt would run code: CheckpointError naming it, no code runs."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run = tmp_path / "run"
    last = write_trapped_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "marker")
    (run / "config.yaml").write_text("encoder: {}\n")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        export_checkpoint(run, tmp_path / "out")
    assert str(last) in str(info.value) and not (tmp_path / "marker").exists()


def test_nonfinite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    def nan_loss(self, encoder, images, mask, *, step=0, total_steps=None):
        return {"loss": (encoder.vit.cls_token.sum() * float("nan"))}

    monkeypatch.setattr(methods.SimClr, "forward", nan_loss)
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


@pytest.mark.parametrize(
    "objective, options",
    [
        ("ibot", "{num_prototypes:64,hidden_dim:32,bottleneck_dim:16,local_crops:2}"),
        ("simclr", "{proj_dim:16,hidden_dim:32}"),
    ],
)
def test_multiview_objectives_train_log_monitors_and_export(tmp_path, objective, options):
    run = tmp_path / "run"
    cfg = pretrain_config(
        tmp_path, f"objective={objective}", f"++objective.options={options}", "monitor.every_n_steps=1"
    )
    metrics = run_pretrain(cfg, run)
    assert metrics["global_step"] >= 2 and torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    log = pd.read_csv(run / "logs" / "metrics.csv")
    monitors = log.dropna(subset=["monitor/rankme"])
    # one row per step from the encoder at initialisation (step 0) on
    assert monitors["step"].tolist() == list(range(metrics["global_step"] + 1))
    assert ((monitors["monitor/knn_bacc"] >= 0) & (monitors["monitor/knn_bacc"] <= 1)).all()
    assert (monitors["monitor/rankme"] >= 1).all() and (monitors["monitor/feature_std"] > 0).all()
    if objective == "ibot":
        assert {"train/teacher_entropy_epoch", "train/patch_epoch"} <= set(log.columns)
    assert (run / "figures" / "pretrain_loss.png").is_file()
    encoder = load_encoder(run / "encoder")  # strict: the heads and teacher are not part of the export
    assert encoder.features(torch.zeros(1, 3, 32, 32)).shape == (1, 192)


def test_lr_scales_with_the_global_batch_and_warmup_is_a_fraction(tmp_path):
    from panderm.pretrain.optim import scaled_lr, warmup_length

    assert scaled_lr(1e-3, 512) == pytest.approx(2e-3) and scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)
    assert scaled_lr(1e-3, 64, lr=0.1) == 0.1
    assert warmup_length(200, None, 0.1) == 20 and warmup_length(200, 7, 0.1) == 7
    assert warmup_length(3, None, 0.1) == 1  # never 0 steps
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_length(10, None, 1.5)


def test_experiment_preset_for_vit_b16_on_gpus_composes():
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("pretrain", overrides=["experiment=vit_b16_gpu", "trainer.devices=8"])
    assert cfg.encoder.arch == "vit_base" and cfg.encoder.patch_size == 16 and cfg.image_size == 224
    assert cfg.encoder.image_size == 224 and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.compile
    assert cfg.trainer.devices == 8 and cfg.objective.name == compose_default_objective()


def compose_default_objective() -> str:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("pretrain").objective.name
