"""Stop a training run as a scheduler would (SIGTERM), or take the checkpoint a run killed with SIGKILL would
leave behind, resume it, and compare saved weights and training logs with an uninterrupted run.

The runs happen in the test's own process: Lightning's SIGTERM handler sees a real signal either way, and a
run in process costs seconds where a subprocess costs its imports too.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

LOG = Path("logs") / "metrics.csv"
LAST = Path("checkpoints") / "last.ckpt"


class SigtermAt(L.Callback):
    """Sends this process SIGTERM once training step `step` is done: Lightning stops after the batch, writes
    last.ckpt there, and the command exits with status 143."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class Snapshots(L.Callback):
    """Copies `<run>/checkpoints/last.ckpt` as it stands when each training batch starts to
    `folder/<global_step>.ckpt`: what a run killed with SIGKILL during that batch resumes from."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        last = Path(trainer.default_root_dir) / LAST
        if last.is_file():
            shutil.copy(last, self.folder / f"{trainer.global_step}.ckpt")


def add_callbacks(monkeypatch: pytest.MonkeyPatch, module: Any, *callbacks: L.Callback) -> None:
    """Make `module.build_trainer` (the command's) add `callbacks` to the Trainer it builds."""
    build = module.build_trainer
    monkeypatch.setattr(
        module, "build_trainer", lambda cfg, run_dir, extra=(): build(cfg, run_dir, [*extra, *callbacks])
    )


def stopped_like_sigkill(full_run: Path, snapshot: Path, run_dir: Path) -> None:
    """`run_dir` as a run killed with SIGKILL leaves it: the checkpoint `snapshot` as last.ckpt and the
    uninterrupted run's whole log, i.e. rows logged after the checkpoint too (a resume must drop them)."""
    (run_dir / LAST).parent.mkdir(parents=True)
    (run_dir / LOG).parent.mkdir(parents=True)
    shutil.copy(snapshot, run_dir / LAST)
    shutil.copy(full_run / LOG, run_dir / LOG)


def last_state(run_dir: Path) -> dict[str, Any]:
    """The run's last.ckpt (read with weights_only, as panderm reads it)."""
    return torch.load(run_dir / LAST, weights_only=True, map_location="cpu")


def assert_same_weights(expected: Path, actual: Path) -> None:
    """Two safetensors files hold the same keys with bit-identical tensors."""
    a, b = load_file(expected), load_file(actual)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_log(expected_run: Path, actual_run: Path) -> pd.DataFrame:
    """The two runs' `logs/metrics.csv` hold the same rows (columns, steps, epochs) with equal values (to
    float32 rounding); returns the actual log."""
    expected, actual = pd.read_csv(expected_run / LOG), pd.read_csv(actual_run / LOG)
    pd.testing.assert_frame_equal(actual, expected, rtol=1e-6, atol=1e-7)
    return actual


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block: runs compared bit for bit must not depend on intra-op
    parallelism, only on the data and the seeds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _CreatesFile:
    """Unpickling this calls `open(path, "w")`: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def write_trapped_checkpoint(path: Path, marker: Path) -> Path:
    """A torch file at `path` that looks like a Lightning checkpoint but creates `marker` when unpickled
    without weights_only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "global_step": 3, "trap": _CreatesFile(marker)}, path)
    return path
