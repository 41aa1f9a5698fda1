"""`panderm bench`: prepare each task's data once, run every (encoder, task, probe, seed) cell that is not
already done (one progress bar over the cells to run, with an ETA), record failures without stopping, then
write the leaderboard. Outputs in the run folder: `cells/` (one probe/segment run folder per cell),
`cells.csv` (one record per cell), `metrics.json` (counts: cells ran, skipped, failed), the leaderboard
files and `config.yaml`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from panderm.errors import ConfigError, ProbeError
from panderm.io import write_csv
from panderm.runs import start_run, write_metrics
from probes.bench.cells import (
    Cell,
    baseline_config,
    build_grid,
    cell_config,
    cell_digest,
    cell_state,
    run_cell,
)
from probes.bench.leaderboard import write_leaderboard
from probes.bench.suite import Task, prepare_data, resolve_tasks
from probes.encoders import is_pixels_spec
from probes.features import check_devices

log = logging.getLogger(__name__)

CELLS = "cells.csv"


def run_bench(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the suite `cfg.suite` for `cfg.encoders` into `run_dir` (see the module docstring); returns what
    metrics.json holds. Raises `ConfigError` for a bad suite or no encoders, and `ProbeError` after the
    leaderboard is written when any cell failed (so the exit code says it)."""
    if not cfg.encoders:
        raise ConfigError("encoders=[...] is empty: give at least one `panderm probe encoder=` spec")
    check_devices(cfg.devices)  # up front, not once per cell
    run_dir = start_run(cfg, run_dir)
    if cfg.cache_dir is None:
        cfg.cache_dir = str(run_dir / "feature_cache")
    cfg.cache_dir = str(Path(cfg.cache_dir).resolve())
    tasks, notes = resolve_tasks(cfg)
    encoders = list(dict.fromkeys(str(e) for e in cfg.encoders))
    grid = build_grid(tasks, encoders, run_dir)

    # the pixel baseline has a feature vector but no feature maps: no segmentation cells for it
    def mapless(cell: Cell) -> bool:
        return cell.task.type == "segmentation" and is_pixels_spec(cell.encoder)

    flat = sorted({c.encoder for c in grid if mapless(c)})
    if flat:
        grid = [c for c in grid if not mapless(c)]
        notes.append(f"{', '.join(flat)}: no segmentation cells (raw pixels have no feature maps for a head)")
    by_key = {(c.task.name, c.probe, c.encoder, c.seed): c for c in grid}

    prepared: dict[str, dict[str, Any] | str] = {}
    for task in tasks:
        try:
            prepared[task.name] = prepare_data(task, cfg.cache_dir, seed=int(cfg.seed))
        except Exception as error:  # recorded against the task's cells; the other tasks go on
            prepared[task.name] = f"data: {type(error).__name__}: {error}".splitlines()[0][:300]
            log.warning("task %s: %s", task.name, prepared[task.name])

    records: dict[Path, dict[str, Any]] = {}
    todo: list[tuple[Cell, DictConfig, str]] = []
    digests: dict[Path, str] = {}
    for cell in grid:
        config, problem = _config(cell, cfg, prepared, by_key, digests)
        if problem:
            records[cell.folder] = cell.record("failed", problem)
            continue
        source = by_key.get(_source_key(cell)) if _source_key(cell) else None
        digest = cell_digest(config, digests.get(source.folder) if source is not None else None)
        digests[cell.folder] = digest
        if cell_state(cell.folder, digest) == "done":
            records[cell.folder] = cell.record("done")
        else:
            todo.append((cell, config, digest))
    skipped = sum(r["status"] == "done" for r in records.values())
    bar = tqdm(
        todo,
        desc=f"bench {cfg.suite.name} ({skipped} cell(s) done before)",
        unit="cell",
        disable=not cfg.progress,
    )
    ran = 0
    for cell, config, digest in bar:
        bar.set_postfix_str(f"{cell.column} | {cell.encoder} | seed {cell.seed}", refresh=False)
        source = by_key.get(_source_key(cell)) if _source_key(cell) else None
        if source is not None and records.get(source.folder, {}).get("status") != "done":
            records[cell.folder] = cell.record("failed", f"the segmenter of task {source.task.name!r} failed")
            continue
        if cell_state(cell.folder, digest) == "done":  # a baseline shared by several heads, run for the first
            records[cell.folder] = cell.record("done")
            continue
        records[cell.folder] = run_cell(cell, config, digest)
        ran += 1
    bar.close()

    table = pd.DataFrame([_row(records[c.folder], c) for c in grid])
    write_csv(run_dir / CELLS, table)
    failed = int((table["status"] == "failed").sum()) if len(table) else 0
    summary = write_leaderboard(
        table,
        run_dir,
        title=f"Leaderboard: suite `{cfg.suite.name}`",
        notes=notes,
        n_boot=int(cfg.n_boot),
        seed=int(cfg.seed),
        plots=bool(cfg.plots),
        describe=lambda report: report.text(
            f"{len(encoders)} encoder(s) x {len(tasks)} task(s): {len(grid)} cells; {ran} ran now, {skipped} "
            f"were already done, {failed} failed. Cell folders: `cells/`; records: `{CELLS}`."
        ),
    )
    metrics = {
        "suite": str(cfg.suite.name),
        "encoders": encoders,
        "tasks": [t.name for t in tasks],
        "notes": notes,
        "cells": len(grid),
        "ran": ran,
        "skipped": skipped,
        "failed": failed,
        **summary,
    }
    write_metrics(run_dir, metrics)
    log.info(
        "bench %s: %d cells (%d ran, %d skipped, %d failed) in %s",
        cfg.suite.name,
        len(grid),
        ran,
        skipped,
        failed,
        run_dir,
    )
    if failed:
        raise ProbeError(
            f"{failed} of {len(grid)} cell(s) failed (errors in {run_dir / 'leaderboard.md'} and "
            f"each cell's error.txt); the other cells' results are in the leaderboard"
        )
    return metrics


def _source_key(cell: Cell) -> tuple | None:
    """The key of the cell whose segmenter `cell` evaluates (its task's `train_from`), if any."""
    task = cell.task
    if task.train_from is None or cell.is_baseline:
        return None
    return (task.train_from, cell.probe, cell.encoder, cell.seed)


def _config(
    cell: Cell, cfg: DictConfig, prepared: dict[str, Any], by_key: dict[tuple, Cell], digests: dict
) -> tuple[DictConfig | None, str]:
    """The cell's config, or None and why the cell cannot run (its data, or its source task's, failed)."""
    data = prepared[cell.task.name]
    if isinstance(data, str):
        return None, data
    try:
        if cell.is_baseline:
            fit_on = prepared.get(cell.task.train_from or cell.task.name)
            if isinstance(fit_on, str):
                return None, fit_on
            return baseline_config(cell, data, fit_on), ""
        return cell_config(cell, cfg, data, by_key), ""
    except (ValueError, ConfigError) as error:
        return None, f"config: {error}".splitlines()[0][:300]


def _row(record: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """A baseline cell appears once per probe column of its task (its folder is shared)."""
    return {**record, "probe": cell.probe, "column": cell.column}


__all__ = ["CELLS", "Task", "run_bench"]
