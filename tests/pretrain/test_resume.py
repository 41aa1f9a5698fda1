"""Stop a pretraining run mid-epoch (SIGTERM, or SIGKILL right after a checkpoint), resume it, and get the
uninterrupted run's bit-identical weights and its training log, row for row; two-process DDP equals one
process on the same global batch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

import panderm.pretrain.run as pretrain_run
from panderm.cli import main
from panderm.pretrain.run import run_pretrain
from tests.killing import (
    SigtermAt,
    Snapshots,
    add_callbacks,
    assert_same_log,
    assert_same_weights,
    last_state,
    one_thread,
    stopped_like_sigkill,
)
from tests.pretrain.test_run import pretrain_config

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


# Tiny heads for the multi-view methods, so the runs stay a few seconds each.
TINY_HEADS = {
    "ibot": ["++objective.options={num_prototypes:64,hidden_dim:32,bottleneck_dim:16,local_crops:2}"],
    "simclr": ["++objective.options={proj_dim:16,hidden_dim:32}"],
}


def objective_overrides(objective: str | None) -> list[str]:
    return [] if objective is None else [f"objective={objective}", *TINY_HEADS.get(objective, [])]


@pytest.mark.slow
@pytest.mark.parametrize("objective", [None, "ibot"])  # the default, and teacher + centres + per-view masks
def test_stopped_runs_resume_to_the_uninterrupted_weights_and_log(tmp_path, monkeypatch, caplog, objective):
    """SIGTERM at step 2 and (default objective) SIGKILL after the checkpoint of an epoch's last batch:
    the resumed runs end with the uninterrupted run's weights and the same log rows and values (steps,
    per-step losses, epoch means, validation, monitors), none missing and none twice."""
    cfg = pretrain_config(
        tmp_path, *OVERRIDES[3:], *objective_overrides(objective), "monitor.every_n_steps=3"
    )
    caplog.set_level(logging.INFO, logger=pretrain_run.__name__)
    with one_thread(), monkeypatch.context() as patch:
        add_callbacks(patch, pretrain_run, Snapshots(tmp_path / "snapshots"))
        total = run_pretrain(cfg, tmp_path / "full")["global_step"]

    killed = tmp_path / "killed"
    with one_thread(), monkeypatch.context() as patch:
        add_callbacks(patch, pretrain_run, SigtermAt(2))
        with pytest.raises(SystemExit) as stop:
            run_pretrain(cfg, killed)
    assert stop.value.code == pretrain_run.SIGTERM_EXIT
    state = last_state(killed)
    assert 2 <= state["global_step"] < total
    assert state["PretrainDataModule"]["batches"] > 0  # stopped inside an epoch, not at its end
    assert not (killed / "encoder.safetensors").exists()
    with one_thread():
        run_pretrain(cfg, killed)
    assert "resuming from" in caplog.text
    assert_same_weights(tmp_path / "full" / "encoder.safetensors", killed / "encoder.safetensors")
    log = assert_same_log(tmp_path / "full", killed)
    assert log["train/loss_epoch"].notna().sum() == 2  # both epochs' means, the resumed one included
    assert (killed / "figures" / "pretrain_loss.png").is_file()
    if objective is not None:
        return
    # SIGKILL in epoch 1's first batch: last.ckpt is from epoch 0's last batch, taken before that batch's
    # row, validation and epoch mean were logged (a resumed run does not log them again); the log goes on.
    epoch_end = total // 2
    stopped_like_sigkill(tmp_path / "full", tmp_path / "snapshots" / f"{epoch_end}.ckpt", tmp_path / "kill9")
    with one_thread():
        run_pretrain(cfg, tmp_path / "kill9")
    assert_same_weights(tmp_path / "full" / "encoder.safetensors", tmp_path / "kill9" / "encoder.safetensors")
    assert_same_log(tmp_path / "full", tmp_path / "kill9")


@pytest.mark.slow
# the default (simclr: negatives gathered across ranks), and ibot (teacher, centres, per-view masks)
@pytest.mark.parametrize("objective", [None, "ibot"])
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, objective):
    """gloo DDP on CPU: 2 ranks x 4 images give the same per-step loss as 1 process x 8 images."""
    common = [*OVERRIDES[:3], "num_workers=0", "trainer.max_epochs=1", "trainer.progress_bar=false"]
    common += [*objective_overrides(objective), "monitor.every_n_steps=0"]
    common += ["trainer.log_every_n_steps=1", "optim.warmup_steps=2", f"data.out_dir={tmp_path / 'data'}"]

    def losses(run_dir) -> list[float]:
        frame = pd.read_csv(run_dir / "logs" / "metrics.csv").dropna(subset=["train/loss_step"])
        return frame.sort_values("step")["train/loss_step"].tolist()

    with one_thread():  # the one-process reference in-process; the DDP ranks need their own processes
        assert main(["pretrain", f"hydra.run.dir={tmp_path / 'one'}", *common, "batch_size=8"]) == 0
    ddp_run = ["batch_size=4", "trainer.devices=2", "trainer.strategy=ddp"]
    cmd = [
        sys.executable,
        "-m",
        "panderm.cli",
        "pretrain",
        f"hydra.run.dir={tmp_path / 'two'}",
        *common,
        *ddp_run,
    ]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(single) == len(ddp) >= 4
    # Same samples, masks and augmentations per step; only the reduction order differs: 1e-5 relative.
    assert ddp == pytest.approx(single, rel=1e-5)
