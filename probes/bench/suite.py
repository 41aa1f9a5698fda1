"""Suites: the tasks of a `panderm bench` config, checked and resolved (selection, overrides, data paths), and
each task's data prepared once (read, limited per split, saved as a manifest every cell of the task reads).

Prepared data lives under ``<cache_dir>/data/<key>/`` (key: the task's data config and limit), so the same
images, with the same file times, serve every encoder, task, run and suite pointed at that cache: the
feature cache, keyed by the manifest's files, then hits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from panderm.config import DataConfig, DataSource
from panderm.data.readers import read_medmnist
from panderm.data.sources import load_data
from panderm.errors import ConfigError
from panderm.io import atomic_write_json
from panderm.models.checkpoints import canonical_json
from panderm.paths import config_dir

log = logging.getLogger(__name__)

__all__ = [
    "CASE_TYPES",
    "CURVE_TYPES",
    "DEFAULT_METRIC",
    "TASK_TYPES",
    "Task",
    "curve_points",
    "limit_rows",
    "prepare_data",
    "probe_preset",
    "resolve_tasks",
]

CURVE_TYPES = ("fewshot", "label_efficiency")
CASE_TYPES = ("longitudinal", "survival", "fusion")  # the probe of the same name (probes.run.TASKS)
TASK_TYPES = ("classification", "multilabel", "segmentation", *CURVE_TYPES, *CASE_TYPES)
DEFAULT_METRIC = {
    "classification": "balanced_accuracy",
    "multilabel": "auroc_macro",
    "segmentation": "dice",
    "fewshot": "balanced_accuracy",
    "label_efficiency": "balanced_accuracy",
    "longitudinal": "auroc",
    "survival": "harrell_c",
    "fusion": "balanced_accuracy",
}
LOWER_IS_BETTER = frozenset({"ece", "hd95"})
BASELINES = ("centre_ellipse", "otsu")
GENERATED = (DataSource.synthderm, DataSource.synthcxr)
PREPARED = "prepared.json"


@dataclass
class Task:
    """One resolved task: its fields from the suite (see `panderm.config.BenchTaskConfig`) with the
    bench's overrides applied; `data` is a plain dict, `limit` {split: n} or None."""

    name: str
    type: str
    data: dict[str, Any]
    probes: list[str]
    probe_options: dict[str, Any]
    metric: str
    seeds: list[int]
    limit: dict[str, int] | None
    subgroups: list[str] = field(default_factory=list)
    eval_split: str = "test"
    train_from: str | None = None
    baselines: list[str] = field(default_factory=list)
    curve_point: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


def _limit(value: Any, where: str) -> dict[str, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = dict.fromkeys(("train", "val", "test"), value)
    if not isinstance(value, dict) or not all(isinstance(n, int) and n > 0 for n in value.values()):
        raise ConfigError(
            f"{where}: expected a positive integer or {{split: positive integer}}, got {value!r}"
        )
    return {str(k): int(v) for k, v in value.items()}


def resolve_tasks(cfg: DictConfig) -> tuple[list[Task], list[str]]:
    """The tasks of `cfg.suite` to run, in dependency order, and notes on the ones skipped. Applies
    `cfg.tasks` (selection), `cfg.skip_types`, `cfg.limit`, `cfg.seeds` and `cfg.probes`; a task whose data
    path is unset (e.g. `paths.ham10000` not given) is skipped with a note. Raises `ConfigError` naming the
    task and key for an unknown type, task name, baseline or a duplicate name."""
    suite = cfg.suite
    names = [str(t.name) for t in suite.tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"suite {suite.name!r}: duplicate task name(s) {duplicates}")
    if cfg.tasks is not None:
        unknown = sorted(set(cfg.tasks) - set(names))
        if unknown:
            raise ConfigError(
                f"tasks={list(cfg.tasks)}: {unknown} not in suite {suite.name!r} (tasks: {names})"
            )
    tasks, notes = [], []
    for i, raw in enumerate(suite.tasks):
        where = f"suite {suite.name!r} task {raw.name!r} (suite.tasks.{i})"
        if raw.type not in TASK_TYPES:
            raise ConfigError(f"{where}: type={raw.type!r} is not one of {TASK_TYPES}")
        unknown = sorted(set(raw.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"{where}: baselines {unknown} unknown; choose from {BASELINES}")
        if cfg.tasks is not None and raw.name not in cfg.tasks:
            continue
        if raw.type in cfg.skip_types:
            notes.append(f"task `{raw.name}` ({raw.type}) left out: skip_types={list(cfg.skip_types)}")
            continue
        data = OmegaConf.to_container(raw.data, resolve=True)
        if data.get("path") is None and DataSource(data["source"]) not in GENERATED:
            notes.append(
                f"task `{raw.name}` skipped: no data path (set paths.{data['source']}=<folder> or the task's "
                "data.path to run it)"
            )
            continue
        one_probe = raw.type in (*CURVE_TYPES, *CASE_TYPES)  # the task type is its probe
        probes = [raw.type] if one_probe else list(cfg.probes if cfg.probes is not None else raw.probes)
        tasks.append(
            Task(
                name=str(raw.name),
                type=str(raw.type),
                data=data,
                probes=probes,
                probe_options=OmegaConf.to_container(raw.probe_options, resolve=True),
                metric=str(raw.metric or DEFAULT_METRIC[raw.type]),
                seeds=[int(s) for s in (cfg.seeds if cfg.seeds is not None else raw.seeds)],
                limit=_limit(cfg.limit if cfg.limit is not None else raw.limit_per_split, where),
                subgroups=list(raw.subgroups),
                eval_split=str(raw.eval_split),
                train_from=raw.train_from,
                baselines=list(raw.baselines),
                curve_point=raw.curve_point,
                options=OmegaConf.to_container(raw.options, resolve=True),
            )
        )
    for task in tasks:
        _check_curve_point(task)
    present = {t.name for t in tasks}
    for task in tasks:
        if task.train_from is not None:
            if task.type != "segmentation":
                raise ConfigError(f"task {task.name!r}: train_from is for segmentation tasks")
            if task.train_from not in names:
                raise ConfigError(
                    f"task {task.name!r}: train_from={task.train_from!r} is not a task of the suite"
                )
            if task.train_from not in present:
                notes.append(
                    f"task `{task.name}` skipped: it evaluates `{task.train_from}`'s segmenter, not run"
                )
    tasks = [t for t in tasks if t.train_from is None or t.train_from in present]
    tasks.sort(key=lambda t: t.train_from is not None)  # segmenters are trained before they are evaluated
    return tasks, notes


CURVE_AXIS = {"fewshot": "shots", "label_efficiency": "fractions"}


def curve_points(task: Task) -> list[float]:
    """The x values of a curve task's cells: the shot counts (fewshot) or training fractions
    (label_efficiency) of its probe options, else of the probe preset."""
    options = probe_preset(task.type, task.probe_options.get(task.type))["options"]
    return [float(x) for x in options.get(CURVE_AXIS[task.type]) or []]


def _check_curve_point(task: Task) -> None:
    """Raises `ConfigError` when `curve_point` is set on a task that has no curve, or is not one of the
    curve's points (so no cell runs for a leaderboard that could not be computed)."""
    if task.curve_point is None:
        return
    if task.type not in CURVE_TYPES:
        raise ConfigError(
            f"task {task.name!r}: curve_point={task.curve_point} is for {CURVE_TYPES} tasks, not {task.type}"
        )
    points = curve_points(task)
    if not np.isclose(points, float(task.curve_point)).any():
        raise ConfigError(
            f"task {task.name!r}: curve_point={task.curve_point} is not one of its {CURVE_AXIS[task.type]} "
            f"{points} (probe_options.{task.type}.{CURVE_AXIS[task.type]}); choose one of those"
        )


def probe_preset(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The probe preset configs/probe_command/probe/<name>.yaml ({name, options}) with `options` merged in.
    Raises `ConfigError` listing the presets for an unknown name."""
    folder = config_dir("probe") / "probe"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"probe {name!r}: no preset {path}; known: {known}")
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    preset["options"] = {**(preset.get("options") or {}), **(options or {})}
    return preset


# ------------------------------------------------------------------------------------------------- data


def limit_rows(labels: Any, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of about `limit` rows, stratified by label (missing labels form a group; every group
    keeps at least one row). Hand-written: scikit-learn's stratified split refuses one-member classes."""
    keys = np.asarray([str(v) for v in labels], dtype=object)
    if limit >= len(keys):
        return np.arange(len(keys))
    rng = np.random.default_rng(seed)
    keep = []
    for key in sorted(set(keys)):
        rows = np.flatnonzero(keys == key)
        n = max(1, round(limit * len(rows) / len(keys)))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def _limited_npz(source: Path, folder: Path, limit: dict[str, int], seed: int) -> Path:
    """A MedMNIST .npz with at most `limit[split]` images per split (stratified; multi-label sets: random),
    named after the source so the reader still knows the set's class names."""
    path = folder / f"{source.stem}_limited.npz"
    arrays = {}
    with np.load(source, allow_pickle=False) as data:
        for i, split in enumerate(("train", "val", "test")):
            if f"{split}_images" not in data.files:
                continue
            labels = data[f"{split}_labels"]
            strata = labels.reshape(len(labels), -1)
            strata = strata[:, 0] if strata.shape[1] == 1 else np.zeros(len(labels))
            rows = limit_rows(strata, limit.get(split, len(labels)), seed + i)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = data[f"{split}_images"][rows], labels[rows]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{source.stem}_limited.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def prepare_data(task: Task, cache_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Read `task`'s data once, keep at most `task.limit` images per split (stratified by label, seeded) and
    save it as a manifest; returns the data config (fields of `DataConfig`) every cell of the task uses.
    Reuses an earlier preparation of the same data and limit, by this task or another (which then shares its
    images and feature cache). Raises what the data's reader raises."""
    record = {"data": task.data, "limit": task.limit, "seed": seed}
    key = hashlib.sha256(canonical_json(record).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "data" / key  # tasks on the same data share it, and so its feature cache
    stamp = folder / PREPARED
    if stamp.is_file():
        return {**json.loads(stamp.read_text())["data"], "name": task.name}
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), task.data)
    data.out_dir = str(folder / "export")
    if data.source == DataSource.medmnist and task.limit:
        limited = _limited_npz(Path(data.path), folder, task.limit, seed)
        manifest = read_medmnist(
            limited, folder / "export", classes=list(data.classes) if data.classes else None
        )
    else:
        manifest = load_data(data, folder)
        if task.limit:
            parts = []
            for i, split in enumerate(("train", "val", "test")):
                rows = np.flatnonzero((manifest.table["split"] == split).to_numpy())
                if split in task.limit and len(rows):
                    labels = (
                        manifest.table["label"].iloc[rows]
                        if "label" in manifest.table
                        else np.zeros(len(rows))
                    )
                    rows = rows[limit_rows(labels, task.limit[split], seed + i)]
                parts.append(rows)
            manifest = manifest.subset(rows=np.sort(np.concatenate(parts)))
    path = manifest.save(folder / "manifest.csv")
    prepared = {
        "source": "manifest",
        "name": task.name,
        "path": str(path.resolve()),
        "root": str(Path(manifest.root).resolve()),
        "classes": list(manifest.classes) if manifest.classes else None,
        "modality": data.modality,
        "on_bad_image": str(
            data.on_bad_image.value if hasattr(data.on_bad_image, "value") else data.on_bad_image
        ),
        "allow_outside_root": bool(manifest.allow_outside_root or data.allow_outside_root),
        "mask_threshold": manifest.mask_threshold,
    }
    atomic_write_json(stamp, {"data": prepared, "task": record, "images": len(manifest)})
    log.info("task %s: %d images prepared in %s", task.name, len(manifest), folder)
    return prepared
