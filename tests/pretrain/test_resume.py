"""Kill a pretraining run with SIGTERM mid-epoch, resume it, and get bit-identical final weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.killing import assert_same_weights, sigterm_after_checkpoint

OVERRIDES = [
    "data.n_patients=16",
    "image_size=32",
    "encoder.depth=2",
    "batch_size=4",
    "num_workers=0",
    "trainer.max_epochs=2",
    "trainer.progress_bar=false",
    "trainer.checkpoint_every_n_steps=1",
    "optim.warmup_steps=2",
]
# One thread: results must not depend on intra-op parallelism, only on the data and the seeds.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# Tiny heads for the multi-view methods, so the subprocess runs stay a few seconds each.
TINY_HEADS = {
    "ibot": ["++objective.options={num_prototypes:64,hidden_dim:32,bottleneck_dim:16,local_crops:2}"],
    "simclr": ["++objective.options={proj_dim:16,hidden_dim:32}"],
}


def objective_overrides(objective: str | None) -> list[str]:
    return [] if objective is None else [f"objective={objective}", *TINY_HEADS.get(objective, [])]


def command(run_dir, data_dir, objective: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "panderm.cli",
        "pretrain",
        f"hydra.run.dir={run_dir}",
        f"data.out_dir={data_dir}",
        *OVERRIDES,
        *objective_overrides(objective),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("objective", [None, "ibot"])  # the default, and teacher + centres + per-view masks
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path, objective):
    data_dir = tmp_path / "data"
    full = subprocess.run(
        command(tmp_path / "full", data_dir, objective), env=ENV, capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    state = sigterm_after_checkpoint(command(run_dir, data_dir, objective), run_dir, ENV)
    total = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 2 <= state["global_step"] < total
    assert state["PretrainDataModule"]["batches"] > 0  # stopped inside an epoch, not at its end
    assert not (run_dir / "encoder.safetensors").exists()

    resumed = subprocess.run(command(run_dir, data_dir, objective), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert_same_weights(tmp_path / "full" / "encoder.safetensors", run_dir / "encoder.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("objective", [None, "ibot", "simclr"])  # SimCLR: negatives gathered across ranks
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, objective):
    """gloo DDP on CPU: 2 ranks x 4 images give the same per-step loss as 1 process x 8 images."""
    common = [*OVERRIDES[:3], "num_workers=0", "trainer.max_epochs=1", "trainer.progress_bar=false"]
    common += [*objective_overrides(objective), "monitor.every_n_steps=0"]
    common += ["trainer.log_every_n_steps=1", "optim.warmup_steps=2", f"data.out_dir={tmp_path / 'data'}"]

    def losses(run_dir, *extra: str) -> list[float]:
        cmd = [sys.executable, "-m", "panderm.cli", "pretrain", f"hydra.run.dir={run_dir}", *common, *extra]
        result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        frame = pd.read_csv(run_dir / "logs" / "metrics.csv").dropna(subset=["train/loss_step"])
        return frame.sort_values("step")["train/loss_step"].tolist()

    single = losses(tmp_path / "one", "batch_size=8")
    ddp = losses(tmp_path / "two", "batch_size=4", "trainer.devices=2", "trainer.strategy=ddp")
    assert len(single) == len(ddp) >= 4
    # Same samples, masks and augmentations per step; only the reduction order differs: 1e-5 relative.
    assert ddp == pytest.approx(single, rel=1e-5)
