"""Readers of public datasets in their published layouts: `read_public(name, path, ...)` -> Manifest.

Each reader takes the dataset's folder as published (images and metadata files under their original names,
nothing renamed) and returns a validated `Manifest`; where the dataset has no official split, rows get a
patient- or lesion-safe split (`panderm.data.readers.public.splits`), saved beside the run's data so a
rerun reuses it. Nothing is downloaded. `PUBLIC_READERS` names each dataset's reader, imported on first use.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from panderm.data.manifest import Manifest
from panderm.errors import ConfigError

# dataset (= data config name and data.source) -> "module:function" under this package; each function is
# read(path, *, out_dir, seed=0, **options) -> Manifest, `out_dir` being where a made split is saved
PUBLIC_READERS: dict[str, str] = {
    "ham10000": "ham10000:read_ham10000",
    "isic2019": "isic2019:read_isic2019",
    "isic2020": "isic2020:read_isic2020",
    "bcn20000": "bcn20000:read_bcn20000",
    "pad_ufes20": "pad_ufes20:read_pad_ufes20",
    "derm7pt": "derm7pt:read_derm7pt",
    "ddi": "ddi:read_ddi",
    "fitzpatrick17k": "fitzpatrick17k:read_fitzpatrick17k",
    "chestxray14": "chestxray14:read_chestxray14",
    "chexpert": "chexpert:read_chexpert",
    "rsna_pneumonia": "rsna_pneumonia:read_rsna_pneumonia",
}


def read_public(
    name: str, path: str | os.PathLike[str], *, out_dir: str | os.PathLike[str], seed: int = 0, **options: Any
) -> Manifest:
    """The manifest of public dataset `name` (one of PUBLIC_READERS) from its folder `path`."""
    if name not in PUBLIC_READERS:
        raise ConfigError(f"dataset {name!r} has no reader; known: {', '.join(PUBLIC_READERS)}")
    module, function = PUBLIC_READERS[name].split(":")
    read = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return read(Path(path), out_dir=Path(out_dir), seed=seed, **options)
