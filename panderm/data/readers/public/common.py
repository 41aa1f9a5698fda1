"""Helpers the public-dataset readers share: finding the folder, the metadata file and the images.

- `dataset_folder(path, dataset)`: the dataset's folder, or `DataError` naming it.
- `metadata_file(folder, names, dataset)`: the first of `names` present (case-insensitive, searched in the
  folder and its subfolders), or `DataError` naming what was looked for.
- `read_metadata(path)`: a metadata CSV as text exactly as written (CRLF or LF, with or without a trailing
  newline, a UTF-8 BOM); empty cells are missing (NA), any other cell (``unknown``, ``NA``) is kept as text.
- `find_images(folder, ids)`: image files by id under a folder, searched recursively, case-insensitively.
- `attach_images(table, ids, folder, ...)`: the `image` column for metadata rows; rows whose image is absent
  raise `ManifestError` listing each (row, id), or with ``missing="skip"`` are dropped with a logged count.
- `check_options(options, allowed, dataset)`: unknown reader options are a `ConfigError`; `choice`: one
  option's value checked against its allowed values.
- `split_attach_build(table, ...)`: the end of a reader without an official split: a saved grouped split over
  every metadata row, the images attached, the manifest built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest, build_manifest
from panderm.data.readers.public.splits import SPLITS_FILE, saved_splits
from panderm.errors import ConfigError, DataError, ManifestError
from panderm.io import read_csv

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MISSING_POLICIES = ("error", "skip")


def check_options(options: Mapping[str, Any], allowed: Collection[str], dataset: str) -> None:
    """Raise `ConfigError` naming every option of `options` that the `dataset` reader does not know."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"data.options: unknown option(s) {unknown} for {dataset}; known: {sorted(allowed) or 'none'}"
        )


def choice(value: str, allowed: Collection[str], key: str, dataset: str | None = None) -> str:
    """`value` of reader option `key` when it is one of `allowed`; else `ConfigError` naming both."""
    if value not in allowed:
        where = f" for {dataset}" if dataset else ""
        raise ConfigError(f"data.options.{key}={value!r}{where}: expected one of {list(allowed)}")
    return value


def missing_policy(value: object) -> str:
    """The `missing` option checked: ``error`` (default) or ``skip``; else `ConfigError`."""
    return choice(str(value).strip().lower(), MISSING_POLICIES, "missing")


def row_numbers(table: pd.DataFrame) -> pd.Series:
    """1-based metadata row numbers aligned with `table`'s index, for messages."""
    return pd.Series(range(1, len(table) + 1), index=table.index)


def flag(value: object, name: str) -> bool:
    """A boolean option given as a bool or as text (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"data.options.{name}={value!r}: expected true or false")


def dataset_folder(path: str | os.PathLike[str], dataset: str) -> Path:
    """`path` as a folder; `DataError` naming it when it does not exist or is a file."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "not found"
        raise DataError(f"{folder}: {dataset} folder {what}; set data.path to the dataset's folder")
    return folder


def metadata_file(folder: Path, names: Sequence[str], dataset: str, *, required: bool = True) -> Path | None:
    """The first of `names` found in `folder` or below (case-insensitive; the shallowest copy wins).

    Raises `DataError` naming the folder and the expected file(s) when none is there and `required`.
    """
    wanted = {name.lower(): rank for rank, name in enumerate(names)}
    found: list[tuple[int, int, str, Path]] = []
    for directory, _, files in os.walk(folder):
        depth = len(Path(directory).relative_to(folder).parts)
        for name in files:
            if name.lower() in wanted:
                found.append(
                    (wanted[name.lower()], depth, os.path.join(directory, name), Path(directory, name))
                )
    if found:
        return min(found)[3]
    if required:
        raise DataError(f"{folder}: no {dataset} metadata file {' or '.join(names)} in this folder or below")
    return None


def read_metadata(path: Path) -> pd.DataFrame:
    """A metadata CSV with every cell as text as written; empty cells are NA; header names stripped.

    Raises `DataError` naming the file when it is not a readable UTF-8 CSV.
    """
    frame = read_csv(path, text=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.replace("", pd.NA)


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    """Raise `DataError` naming the file and every column of `columns` it lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {missing} (columns: {list(frame.columns)})")


def first_column(frame: pd.DataFrame, candidates: Sequence[str], path: Path, what: str) -> str:
    """The first of `candidates` that `frame` has (for layouts published with differing column names)."""
    for name in candidates:
        if name in frame.columns:
            return name
    raise DataError(
        f"{path}: no {what} column (looked for {list(candidates)}; columns: {list(frame.columns)})"
    )


def _image_key(name: str, extensions: Sequence[str]) -> str:
    """The lookup key of an id or file name: lower case, a known image extension removed."""
    key = name.strip().lower()
    for ext in extensions:
        if key.endswith(ext):
            return key[: -len(ext)]
    return key


def find_images(
    folder: Path, ids: Iterable[str], *, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> dict[str, Path]:
    """Image files for `ids` (ids may carry an extension) anywhere under `folder`, matched by file stem
    ignoring case; ids without a file are absent from the result.

    Where several files share a stem (the same release unpacked twice, a JPEG beside a PNG), the one with the
    earlier extension in `extensions`, then the shallower, then the first by path wins; how many ids had
    several candidates is logged.
    """
    wanted = {_image_key(str(i), extensions): str(i) for i in ids}
    candidates: dict[str, list[tuple[int, int, str]]] = {}
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        depth = len(Path(directory).relative_to(folder).parts)
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith(".") or suffix not in extensions:
                continue
            key = _image_key(name, extensions)
            if key in wanted:
                rank = extensions.index(suffix)
                candidates.setdefault(key, []).append((rank, depth, os.path.join(directory, name)))
    several = sum(len(c) > 1 for c in candidates.values())
    if several:
        logger.info(
            "%s: %d image id(s) have several files; the shallowest .jpg copy is used", folder, several
        )
    return {wanted[key]: Path(min(found)[2]) for key, found in candidates.items()}


def attach_images(
    table: pd.DataFrame,
    ids: pd.Series,
    folder: Path,
    *,
    source: str | os.PathLike[str],
    missing: str = "error",
    rows: pd.Series | None = None,
    id_field: str = "image_id",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> pd.DataFrame:
    """`table` with an `image` column (path relative to `folder`, POSIX) found by `ids` (aligned with it).

    `rows` are the 1-based metadata row numbers for messages (default: position + 1). Rows whose image is
    not under `folder` raise `ManifestError` (source = the metadata file) listing every one, or with
    ``missing="skip"`` are dropped and counted in the log. Raises `DataError` when no image is found at all.
    """
    policy = missing_policy(missing)
    found = find_images(folder, ids.astype(str), extensions=extensions)
    paths = ids.astype(str).map(lambda i: found.get(i))
    absent = paths.isna().to_numpy()
    if absent.all() and len(table):
        raise DataError(
            f"{folder}: none of the {len(table)} images that {source} names is in this folder or below "
            f"(looked for {', '.join(repr(str(i) + extensions[0]) for i in ids.iloc[:3])}, ...); "
            "is data.path the dataset's folder?"
        )
    if absent.any():
        numbers = rows if rows is not None else row_numbers(table)
        if policy == "error":
            problems = [
                f"row {n}: field {id_field!r}: no image file for {i!r} under {folder} "
                f"(extensions {list(extensions)}); set data.options.missing=skip to drop such rows"
                for n, i in zip(numbers[absent], ids[absent], strict=True)
            ]
            raise ManifestError(str(source), problems)
        logger.warning(
            "%s: %d of %d images named in %s are not under the folder; skipped (data.options.missing=skip)",
            folder,
            int(absent.sum()),
            len(table),
            source,
        )
    kept = table.loc[~absent].copy()
    kept.insert(0, "image", [p.relative_to(folder).as_posix() for p in paths[~absent]])
    return kept


def split_attach_build(
    table: pd.DataFrame,
    *,
    folder: Path,
    source: str | os.PathLike[str],
    out_dir: Path,
    key: str,
    strata: str | pd.Series,
    group: str,
    classes: Sequence[str],
    seed: int = 0,
    missing: str = "error",
    rows: pd.Series | None = None,
) -> Manifest:
    """The manifest of a dataset without an official split: `saved_splits` over every metadata row (images
    present or not, so images downloaded later keep the saved split; `strata` a column name or a Series
    aligned with `table`, `group` the grouping column, `key` the image id column), then `attach_images` by
    `key` (`missing`, `rows` as there) and `build_manifest` with `classes`."""
    stratum = strata if isinstance(strata, str) else "_stratum"
    split_table = table if isinstance(strata, str) else table.assign(_stratum=strata)
    table = table.assign(
        split=saved_splits(
            split_table, out_dir / SPLITS_FILE, labels=stratum, group=group, key=key, seed=seed
        ).to_numpy()
    )
    table = attach_images(table, table[key], folder, source=source, missing=missing, rows=rows, id_field=key)
    return build_manifest(table, folder, classes=classes, source=str(source))
