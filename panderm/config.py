"""Structured configs (dataclasses in Hydra's ConfigStore): the schema every YAML under `configs/` must fit.

Each primary config names its schema first in its defaults list, so a misspelt key or a wrongly typed value
is an error before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hydra.core.config_store import ConfigStore

from panderm.data.dataset import BadImagePolicy


class DataSource(StrEnum):
    """Where a data config's images come from."""

    synthderm = "synthderm"
    synthcxr = "synthcxr"
    manifest = "manifest"
    medmnist = "medmnist"
    isic = "isic"
    ph2 = "ph2"
    image_folder = "image_folder"
    dicom = "dicom"
    nifti = "nifti"


@dataclass
class DataConfig:
    """One data set: a generator, a manifest file, or a reader for a real format.

    `path` is the manifest file (manifest), the .npz (medmnist) or the folder (isic, ph2, image_folder,
    dicom, nifti); `out_dir` is where generated or exported images go (default: `<run folder>/data/<name>`).
    """

    source: DataSource = DataSource.synthderm
    name: str = "synthderm"
    path: str | None = None
    root: str | None = None
    out_dir: str | None = None
    classes: list[str] | None = None
    modality: str | None = None
    n_patients: int = 120
    image_size: int = 64
    seed: int = 0
    on_bad_image: BadImagePolicy = BadImagePolicy.error
    check_files: bool = True
    deep_check: bool = False
    allow_outside_root: bool = False


@dataclass
class OverviewConfig:
    """The data-overview stage of reports."""

    n_samples: int = 16
    columns: list[str] = field(default_factory=lambda: ["label", "modality", "fitzpatrick"])


@dataclass
class DemoConfig:
    """`panderm demo`: the end-to-end tour on the embedded synthetic data."""

    seed: int = 0
    image_size: int = 64
    data: DataConfig = field(default_factory=DataConfig)
    radiology: DataConfig = field(
        default_factory=lambda: DataConfig(source=DataSource.synthcxr, name="synthcxr", n_patients=80)
    )
    overview: OverviewConfig = field(default_factory=OverviewConfig)


def register_configs() -> None:
    """Register the schemas; idempotent."""
    store = ConfigStore.instance()
    store.store(name="demo_schema", node=DemoConfig)
    store.store(group="data", name="data_schema", node=DataConfig)
