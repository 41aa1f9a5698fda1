"""Turn a data config into a validated `Manifest`: run a generator, read a manifest, or call a reader."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from panderm.config import DataConfig, DataSource
from panderm.data.dataset import ManifestDataset
from panderm.data.manifest import Manifest, read_manifest
from panderm.errors import ConfigError

SKIPPED_IMAGES = "skipped_images.csv"


def load_data(cfg: DataConfig | DictConfig, workdir: str | os.PathLike[str]) -> Manifest:
    """Build the manifest that `cfg` describes; generated/exported images go to `cfg.out_dir` or
    `<workdir>/data/<cfg.name>`; its masks are binarised by `cfg.mask_threshold`. Raises `ConfigError` for a
    missing `path`, `ManifestError` for bad rows."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)
    return replace(_read(cfg, workdir), mask_threshold=cfg.mask_threshold)


def _read(cfg: DataConfig, workdir: str | os.PathLike[str]) -> Manifest:
    source = DataSource(cfg.source)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(workdir) / "data" / cfg.name
    classes = list(cfg.classes) if cfg.classes else None
    if source is DataSource.synthderm:
        from panderm.data.synthetic.synthderm import CLASSES
        from panderm.data.synthetic.synthderm import generate_synthderm as generate
    elif source is DataSource.synthcxr:
        from panderm.data.synthetic.synthcxr import CLASSES
        from panderm.data.synthetic.synthcxr import generate_synthcxr as generate
    if source in (DataSource.synthderm, DataSource.synthcxr):
        options = dict(cfg.options)  # the generator's other parameters, e.g. synthderm's followup_fraction
        accepted = set(inspect.signature(generate).parameters) - {
            "out_dir",
            "n_patients",
            "image_size",
            "seed",
        }
        if unknown := sorted(set(options) - accepted):
            raise ConfigError(
                f"data.options {unknown}: not parameters of {source.value} (these are: {sorted(accepted)})"
            )
        path = generate(
            out_dir, n_patients=cfg.n_patients, image_size=cfg.image_size, seed=cfg.seed, **options
        )
        return read_manifest(path, classes=list(CLASSES), deep=cfg.deep_check)
    if not cfg.path:
        raise ConfigError(f"data.path is required for data.source={source.value} (data config {cfg.name!r})")
    if source is DataSource.shards:
        raise ConfigError(
            f"data.source=shards ({cfg.path}) is streamed by `panderm pretrain` only; other commands read "
            "the manifest the shards were written from (data=manifest data.path=...)"
        )
    if source is DataSource.manifest:
        return read_manifest(
            cfg.path,
            cfg.root,
            classes=classes,
            check_files=cfg.check_files,
            deep=cfg.deep_check,
            allow_outside_root=cfg.allow_outside_root,
            encoding=cfg.encoding,
            mask_threshold=cfg.mask_threshold,
        )
    from panderm.data import readers
    from panderm.data.readers.public import PUBLIC_READERS, read_public

    if source.value in PUBLIC_READERS:
        return read_public(source.value, cfg.path, out_dir=out_dir, seed=cfg.seed, **cfg.options)
    if source is DataSource.ph2 and set(cfg.options) <= {"fractions"}:  # PH2 has no official split
        return readers.read_ph2(cfg.path, seed=cfg.seed, **cfg.options)
    if cfg.options:
        raise ConfigError(
            f"data.options {sorted(cfg.options)} are for the public-dataset readers, generators and PH2's "
            f"fractions, not data.source={source.value}"
        )
    if source is DataSource.medmnist:
        return readers.read_medmnist(cfg.path, out_dir, classes=classes)
    if source is DataSource.isic:
        return readers.read_isic(cfg.path)
    if source is DataSource.image_folder:
        return readers.read_image_folder(cfg.path, classes=classes)
    if source is DataSource.dicom:
        return readers.read_dicom_folder(cfg.path)
    return readers.read_nifti_folder(cfg.path, modality=cfg.modality or "ct")


def make_dataset(
    manifest: Manifest,
    cfg: DataConfig | DictConfig,
    run_dir: str | os.PathLike[str],
    transform: Callable[..., dict[str, Any]] | None = None,
) -> ManifestDataset:
    """A dataset with the config's bad-image policy; skipped files go to `<run_dir>/skipped_images.csv`."""
    return ManifestDataset(
        manifest,
        transform,
        on_bad_image=cfg.on_bad_image,
        bad_image_log=Path(run_dir) / SKIPPED_IMAGES,
    )
