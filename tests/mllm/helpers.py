"""Small saved models with known answers for the expert backend and `panderm vqa` tests; a killed run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from panderm.data.synthetic.synthderm import CLASSES
from panderm.models.classifier import LinearClassifier, save_classifier
from panderm.models.encoder import Encoder, EncoderSpec
from panderm.models.seg_heads import build_segmentation_model, save_segmenter
from panderm.paths import REPO_ROOT

SPEC = EncoderSpec(arch="vit_tiny", patch_size=8, image_size=32, depth=2)


def constant_classifier(path: Path, label: str = "melanoma") -> Path:
    """A classifier that always predicts `label` (head weights 0, its bias 5)."""
    model = LinearClassifier(Encoder(SPEC), list(CLASSES))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[CLASSES.index(label)] = 5.0
    return save_classifier(model, path)


def everywhere_segmenter(path: Path) -> Path:
    """A linear segmenter whose mask covers the whole image (all head weights 0, foreground bias 5)."""
    model = build_segmentation_model(Encoder(SPEC), "linear", num_classes=2)
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
        model.head.classifier.bias[1] = 5.0
    return save_segmenter(model, path)


def kill_when_held(args: Sequence[str], run_dir: Path, chat_server: Any, cwd: Path) -> None:
    """Run `panderm <args> hydra.run.dir=<run_dir>` in a subprocess and SIGKILL it while `chat_server` holds
    a request (set `chat_server.hold_after(k)` first): a run killed with a model call in flight."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "panderm.cli", *args, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert chat_server.held.wait(120), "the run never reached the held request"
    finally:
        proc.kill()
        proc.wait()
