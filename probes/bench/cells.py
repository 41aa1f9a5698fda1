"""Cells of a bench run: the grid (encoder x task x probe x seed), each cell's `panderm probe`/`segment`
config, and running a cell into its own folder unless it already holds a finished result of the same config.

A cell folder is ``<run>/cells/<task>/<probe>/<encoder slug>/seed<k>/``: an ordinary probe or segment run
folder (config.yaml, metrics.json, predictions, report) plus ``cell.json`` with the digest of the cell's
config and its status (running, done, failed). A cell is skipped when ``cell.json`` says done for the same
digest; a folder holding another config's result is cleared first, an interrupted one of the same config is
run again in place (a segmentation head resumes from its Lightning checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from panderm.config import ProbeConfig, SegmentConfig
from panderm.data.images import load_image, load_mask
from panderm.data.manifest import read_manifest
from panderm.io import atomic_write_json, atomic_write_text, write_csv
from panderm.models.checkpoints import canonical_json
from panderm.runs import start_run, write_metrics
from probes.bench.suite import Task, probe_preset
from probes.run import run_probe
from probes.segmentation.baselines import CentreEllipse, otsu_segment
from probes.segmentation.metrics import segmentation_metrics, summarise
from probes.segmentation.run import SEGMENTER, run_segment

log = logging.getLogger(__name__)

__all__ = ["CELL_FILE", "Cell", "build_grid", "cell_config", "cell_digest", "encoder_slug", "run_cell"]

CELL_FILE = "cell.json"
BASELINE_PREFIX = "baseline:"
# settings that do not change a cell's result: a cell done under other values is not run again
NOT_IN_DIGEST = ("num_workers", "cache_dir", "device", "devices")


def encoder_slug(spec: str) -> str:
    """A folder name for an encoder spec: its readable tail (a file's name, not its folder) and 8 hex digits
    of the whole spec, so two specs never share a folder."""
    tail = spec.rstrip("/").replace("\\", "/")
    if ":" not in tail.split("/")[0] and "/" in tail and Path(spec).exists():
        tail = Path(spec).name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("_")[:48] or "encoder"
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


@dataclass
class Cell:
    """One (encoder, task, probe, seed) cell; `column` is the leaderboard column (the task, or task/probe
    when the task has several probes)."""

    task: Task
    probe: str
    encoder: str
    seed: int
    folder: Path

    @property
    def column(self) -> str:
        return self.task.name if len(self.task.probes) == 1 else f"{self.task.name}/{self.probe}"

    @property
    def is_baseline(self) -> bool:
        return self.encoder.startswith(BASELINE_PREFIX)

    def record(self, status: str, error: str = "", seconds: float = 0.0) -> dict[str, Any]:
        """The cell's row of `cells.csv` (what the leaderboard reads)."""
        return {
            "task": self.task.name,
            "column": self.column,
            "type": self.task.type,
            "probe": self.probe,
            "encoder": self.encoder,
            "seed": self.seed,
            "folder": str(self.folder),
            "status": status,
            "error": error,
            "seconds": round(seconds, 2),
            "metric": self.task.metric,
            "higher_is_better": self.task.higher_is_better,
            "eval_split": self.task.eval_split,
            "curve_point": self.task.curve_point,
        }


def build_grid(tasks: list[Task], encoders: list[str], run_dir: Path) -> list[Cell]:
    """Every cell, task by task (a task evaluated with another's segmenter after that one), then probe,
    encoder, seed; a segmentation task's baselines are extra encoders (one cell per baseline, first seed)."""
    cells = []
    for task in tasks:
        for probe in task.probes:
            names = list(encoders) + [BASELINE_PREFIX + b for b in task.baselines]
            for encoder in names:
                seeds = task.seeds[:1] if encoder.startswith(BASELINE_PREFIX) else task.seeds
                for seed in seeds:
                    if encoder.startswith(BASELINE_PREFIX):  # one folder per task, shared by its heads
                        folder = run_dir / "cells" / task.name / "baselines" / encoder.split(":", 1)[1]
                    else:
                        folder = run_dir / "cells" / task.name / probe / encoder_slug(encoder) / f"seed{seed}"
                    cells.append(Cell(task, probe, encoder, seed, folder))
    return cells


def _apply(cfg: DictConfig, options: dict[str, Any], where: str) -> None:
    for key, value in options.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except Exception as error:  # OmegaConf raises several types for a key outside the schema
            raise ValueError(
                f"{where}: option {key}={value!r} does not fit the cell config ({error})"
            ) from error


def cell_config(cell: Cell, bench: DictConfig, data: dict[str, Any], cells: dict[tuple, Cell]) -> DictConfig:
    """The `panderm probe` (or `segment`) config of `cell`: the task's data as prepared, the probe preset
    (or head) with the task's options, the bench's device/batch/cache settings, then `task.options`."""
    task = cell.task
    options = task.probe_options.get(cell.probe, {}) or {}
    cache_dir = bench.cache_dir
    if task.type == "segmentation":
        cfg = OmegaConf.structured(SegmentConfig)
        cfg.seed, cfg.encoder, cfg.head, cfg.mode = cell.seed, cell.encoder, cell.probe, "frozen"
        cfg.head_options = options
        cfg.trainer.accelerator = "gpu" if _gpu(bench.device) else "cpu"
        cfg.trainer.progress_bar = False
        cfg.predict.splits = [task.eval_split]
        cfg.predict.save_masks = False
        if task.train_from is not None:
            source = cells[(task.train_from, cell.probe, cell.encoder, cell.seed)]
            cfg.checkpoint = str(source.folder / SEGMENTER)
    else:
        cfg = OmegaConf.structured(ProbeConfig)
        cfg.seed, cfg.encoder, cfg.device, cfg.cache_dir = cell.seed, cell.encoder, bench.device, cache_dir
        cfg.devices = bench.devices
        cfg.bootstrap, cfg.subgroups = bench.bootstrap, list(task.subgroups)
        cfg.probe = OmegaConf.merge(cfg.probe, probe_preset(cell.probe, options))
    cfg.batch_size, cfg.num_workers, cfg.plots = bench.batch_size, bench.num_workers, bench.cell_plots
    cfg.data = OmegaConf.merge(cfg.data, data)
    _apply(cfg, task.options, f"task {task.name!r}")
    if task.type == "segmentation" and bench.max_epochs is not None:
        cfg.trainer.max_epochs = bench.max_epochs
    return cfg


def _gpu(device: str) -> bool:
    return device.startswith("cuda") or device == "gpu" or (device == "auto" and torch.cuda.is_available())


def cell_digest(cfg: DictConfig | dict[str, Any], extra: Any = None) -> str:
    """sha256 (16 hex digits) of a cell's resolved config without `NOT_IN_DIGEST`, plus `extra` (e.g. the
    digest of the cell whose segmenter it evaluates)."""
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values = {k: v for k, v in values.items() if k not in NOT_IN_DIGEST}
    return hashlib.sha256(canonical_json({"config": values, "extra": extra}).encode()).hexdigest()[:16]


def cell_state(folder: Path, digest: str) -> str:
    """done (a finished result of this digest), partial (an interrupted or failed run of it), stale (another
    config's files) or new."""
    path = folder / CELL_FILE
    if not path.is_file():
        return "stale" if folder.exists() and any(folder.iterdir()) else "new"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "stale"
    if record.get("digest") != digest:
        return "stale"
    finished = record.get("status") == "done" and (folder / "metrics.json").is_file()
    return "done" if finished else "partial"


def run_cell(cell: Cell, cfg: DictConfig | None, digest: str) -> dict[str, Any]:
    """Run `cell` into its folder (cleared first when it holds another config's files); returns its record.
    Any exception is caught and recorded (status failed, the message in the record, the traceback in
    `error.txt`): one failed cell does not stop the suite."""
    folder = cell.folder
    if cell_state(folder, digest) == "stale":
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / CELL_FILE, {"digest": digest, "status": "running", **_identity(cell)})
    start = time.perf_counter()
    try:
        if cell.is_baseline:
            run_baseline(cell, cfg, folder)
        elif cell.task.type == "segmentation":
            run_segment(cfg, folder)
        else:
            run_probe(cfg, folder)
    except Exception as error:  # recorded, not raised: the suite goes on (KeyboardInterrupt still stops it)
        seconds = time.perf_counter() - start
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        atomic_write_text(folder / "error.txt", traceback.format_exc())
        atomic_write_json(
            folder / CELL_FILE, {"digest": digest, "status": "failed", "error": message, **_identity(cell)}
        )
        log.warning("cell %s failed: %s", folder, message)
        return cell.record("failed", message, seconds)
    seconds = time.perf_counter() - start
    atomic_write_json(
        folder / CELL_FILE, {"digest": digest, "status": "done", "seconds": seconds, **_identity(cell)}
    )
    return cell.record("done", "", seconds)


def _identity(cell: Cell) -> dict[str, Any]:
    return {"task": cell.task.name, "probe": cell.probe, "encoder": cell.encoder, "seed": cell.seed}


# ------------------------------------------------------------------------------------------- baselines


def baseline_config(cell: Cell, data: dict[str, Any], train_data: dict[str, Any]) -> DictConfig:
    """The (recorded) config of a baseline cell: which baseline, the data it scores, the masks it fits on."""
    return OmegaConf.create(
        {
            "seed": cell.seed,
            "baseline": cell.encoder.split(":", 1)[1],
            "data": data,
            "fit_on": train_data,
            "eval_split": cell.task.eval_split,
        }
    )


def run_baseline(cell: Cell, cfg: DictConfig, folder: Path) -> None:
    """Score a segmentation baseline (`centre_ellipse`, fitted on the training masks of the task or of the
    task it is evaluated against, or `otsu`) on the task's evaluated split, written as `panderm segment`
    writes its results (per_image.csv, metrics.json ``eval.<split>.raw``)."""
    start_run(OmegaConf.create({"seed": cfg.seed}), folder)
    split = str(cfg.eval_split)
    data = cfg.data
    manifest = read_manifest(
        data.path, data.root, classes=data.classes, allow_outside_root=data.allow_outside_root
    )
    rows = manifest.subset(split)
    if "mask" in rows.table:
        rows = rows.subset(rows=rows.table["mask"].notna().to_numpy())
    if not len(rows):
        raise ValueError(f"{data.path}: no {split} rows with a mask to score")
    method = None
    if cfg.baseline == "centre_ellipse":
        fit = cfg.fit_on
        train = read_manifest(fit.path, fit.root, allow_outside_root=fit.allow_outside_root).subset("train")
        masks = [load_mask(train.mask_path(i)) for i in range(len(train)) if train.mask_path(i) is not None]
        method = CentreEllipse().fit(np.stack(masks))
    frames = []
    for i in range(len(rows)):
        image = load_image(rows.image_path(i))
        truth = load_mask(rows.mask_path(i), shape=image.shape[:2])[None] > 0
        pred = method.predict(truth.shape) if method is not None else otsu_segment(image[None])
        frame = segmentation_metrics(pred, truth)
        frame.insert(0, "id", rows.table["image"].iat[i])
        frame.insert(0, "split", split)
        frames.append(frame)
    per_image = pd.concat(frames, ignore_index=True)
    write_csv(folder / "per_image.csv", per_image)
    metrics: dict[str, Any] = {"baseline": str(cfg.baseline), "eval": {split: {"raw": summarise(per_image)}}}
    if method is not None:
        metrics["fit"] = {"a": method.a, "b": method.b, "train_dice": method.train_dice}
    write_metrics(folder, metrics)
