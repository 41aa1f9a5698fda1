"""Kill a training command with SIGTERM once it has checkpointed, and compare saved weights exactly."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def sigterm_after_checkpoint(
    command: list[str], run_dir: Path, env: dict[str, str], *, step: int = 2, timeout: float = 240
) -> dict[str, Any]:
    """Start `command`, send SIGTERM once `run_dir/checkpoints` holds the step-`step` checkpoint, check that
    the run stopped unfinished, and return its `last.ckpt` state."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not list((run_dir / "checkpoints").glob(f"*step={step}*.ckpt")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=timeout)
    assert process.returncode != 0  # stopped early, not finished
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")


def assert_same_weights(expected: Path, actual: Path) -> None:
    """Two safetensors files hold the same keys with bit-identical tensors."""
    a, b = load_file(expected), load_file(actual)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
