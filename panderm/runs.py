"""Run folders: every command writes its resolved config, seed and metrics into its own folder."""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from panderm.config import validate_config
from panderm.io import atomic_write_json, atomic_write_text


def load_task(name: str) -> Callable[..., Any]:
    """The function named "package.module:function", imported on demand: how `panderm` runs commands and demo
    stages of packages built on it (probes, readers) without importing them."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices).

    Hand-written rather than lightning.seed_everything so that commands need not import Lightning.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> Path:
    """Check `cfg`'s values (`validate_config`: the Python API gets the command line's checks), create the run
    folder, write the resolved `config.yaml` and seed everything from `cfg.seed`."""
    validate_config(cfg)
    run_dir = Path(run_dir)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(int(cfg.seed))
    return run_dir


def write_metrics(run_dir: str | os.PathLike[str], metrics: dict[str, Any]) -> Path:
    """Write `metrics.json` atomically."""
    return atomic_write_json(Path(run_dir) / "metrics.json", metrics)
