"""The manifest: one row per image, validated once, up front, with every problem reported together.

Columns (DESIGN.md): `image` (path relative to the root), `split` (train/val/test), `label` (int or class
name; optional) or, for multi-label data, `label_set` (see below), and optionally `patient_id`, `modality`,
`mask` (path), `bbox` (``x1,y1,x2,y2`` in pixels; several boxes joined by ``;``), `slice` (index into a
volume) and, for follow-up and outcome tasks, `lesion_id`, `timepoint`, `event` and `time`
(`panderm.data.outcomes`). PanDerm's CSV (`image`, `split`, `label` or `binary_label`) loads unchanged.
Any other column is kept as metadata. Row numbers in messages are 1-based data rows (the CSV header is not
counted, so row N is on line N + 1).

Multi-label manifests (ChestX-ray14, CheXpert, ChestMNIST) have `label_set` instead of `label`: the row's
positive class names joined by ``|`` (empty = no positive finding, ChestX-ray14's "No Finding"), and
optionally `uncertain_set`, the names whose label is unknown for that row (left out of the loss and the
metrics for that label: CheXpert's "ignore" policy). `classes` is the label vocabulary; `Manifest.targets()`
gives the (N, C) float32 matrix of 1/0 with NaN where uncertain. Both sets are stored normalised (names in
class order, joined by ``|``), so `Manifest.save` and `read_manifest(..., classes=...)` round-trip them.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.data.images import image_kind, image_size, load_image, load_mask, probe_image
from panderm.data.outcomes import CASE_COLUMNS, LESION, case_column_problems
from panderm.errors import DataError, ImageLoadError, ManifestError
from panderm.io import atomic_write, write_csv
from panderm.paths import resolve_under

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}
REQUIRED_COLUMNS = ("image", "split")
KNOWN_COLUMNS = ("image", "split", "label", "patient_id", "modality", "mask", "bbox", "slice", *CASE_COLUMNS)
# multi-label columns, kept out of KNOWN_COLUMNS: the misspelt-column check of other files stays as it was
LABEL_SET, UNCERTAIN_SET = "label_set", "uncertain_set"
SET_COLUMNS = (LABEL_SET, UNCERTAIN_SET)
SET_SEPARATOR = "|"

PROBE_THREADS = 8
# difflib similarity above which an unknown column is taken for a misspelt known one: `lable`, `Label`,
# `labels`, `masks`, `box`, `patientid` are; `patient_age`, `image_id`, `label_name` are not
MISSPELT_CUTOFF = 0.8
Box = tuple[float, float, float, float]


def parse_boxes(text: object) -> list[Box]:
    """Parse a `bbox` cell: text ``x1,y1,x2,y2`` (several joined by ``;``) or JSON ``[[x1,y1,x2,y2], ...]``,
    or a list of 4 numbers or of such lists (a Parquet list column; numpy arrays included).

    Empty cells give ``[]``. Raises `ValueError` (with the reason) on malformed text or x2<=x1 / y2<=y1.
    """
    if isinstance(text, list | tuple | np.ndarray):
        values = list(text)
    elif text is None or pd.isna(text) or str(text).strip() == "":  # type: ignore[arg-type]
        return []
    elif (s := str(text).strip()).startswith("["):
        values = json.loads(s)
    else:
        values = [re.split(r"[,\s]+", part.strip()) for part in s.split(";") if part.strip()]
    if not values:
        return []
    groups = values if isinstance(values[0], list | tuple | np.ndarray) else [values]
    boxes = []
    for group in groups:
        if len(group) != 4:
            raise ValueError(f"a box needs 4 numbers x1,y1,x2,y2, got {len(group)}")
        x1, y1, x2, y2 = (float(v) for v in group)
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"box {[x1, y1, x2, y2]} has x2<=x1 or y2<=y1")
        boxes.append((x1, y1, x2, y2))
    return boxes


def format_boxes(boxes: Iterable[Sequence[float]]) -> str:
    """Inverse of `parse_boxes` for the ``;``-joined form (integers written without a decimal point)."""

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{float(v):.2f}"

    return ";".join(",".join(num(v) for v in box) for box in boxes)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: a normalised table plus the root its paths are relative to.

    `table` has `label` as nullable integer codes into `classes` (NA = unlabeled) and keeps the user's other
    columns; `row` holds the 1-based row number in the source file, so subsets still report original rows.
    """

    table: pd.DataFrame
    root: Path
    classes: tuple[str, ...] | None
    source: str = "<memory>"
    allow_outside_root: bool = False
    mask_threshold: int | None = None  # `load_mask`'s threshold: None = masks must be binary

    def __len__(self) -> int:
        return len(self.table)

    @property
    def is_multilabel(self) -> bool:
        """Whether the rows carry label sets (`label_set`, `targets()`) rather than one `label` each."""
        return LABEL_SET in self.table

    @property
    def has_labels(self) -> bool:
        if self.is_multilabel:  # every row has a label set (an empty one is "no positive finding")
            return len(self.table) > 0
        return "label" in self.table and bool(self.table["label"].notna().any())

    def targets(self) -> np.ndarray:
        """Multi-label targets (N, C) float32: 1 where the class is in the row's `label_set`, NaN where it is
        in `uncertain_set`, else 0 (columns in `classes` order). Raises `ManifestError` for a single-label
        manifest."""
        if not self.is_multilabel:
            raise ManifestError(
                self.source, ["targets() needs a multi-label manifest (a 'label_set' column)"]
            )
        index = {name: i for i, name in enumerate(self.classes or ())}
        out = np.zeros((len(self.table), len(index)), np.float32)
        for column, value in ((LABEL_SET, 1.0), (UNCERTAIN_SET, np.nan)):
            if column in self.table:
                for i, cell in enumerate(self.table[column]):
                    out[i, [index[name] for name in split_set(cell)]] = value
        return out

    @property
    def num_classes(self) -> int:
        return len(self.classes or ())

    def unlabeled_rows(self) -> list[int]:
        """Source-file row numbers (1-based) of the rows without a label (none in a multi-label manifest)."""
        if self.is_multilabel:
            return []
        if "label" not in self.table:
            return self.table["row"].tolist()
        return self.table.loc[self.table["label"].isna(), "row"].tolist()

    def subset(self, split: str | None = None, rows: np.ndarray | None = None) -> Manifest:
        """Rows of one split (or the given boolean/positional selection), keeping root and classes."""
        table = self.table
        if split is not None:
            table = table[table["split"] == split]
        if rows is not None:
            table = table.iloc[rows] if np.asarray(rows).dtype != bool else table[np.asarray(rows)]
        return replace(self, table=table.reset_index(drop=True))

    def path(self, relative: str) -> Path:
        """Absolute path of a manifest path, refusing paths that escape the root."""
        return resolve_under(self.root, relative, allow_outside=self.allow_outside_root)

    def image_path(self, i: int) -> Path:
        return self.path(self.table["image"].iat[i])

    def mask_path(self, i: int) -> Path | None:
        if "mask" not in self.table:
            return None
        value = self.table["mask"].iat[i]
        return None if pd.isna(value) or str(value) == "" else self.path(str(value))

    def boxes(self, i: int) -> list[Box]:
        return parse_boxes(self.table["bbox"].iat[i]) if "bbox" in self.table else []

    def label(self, i: int) -> int | None:
        if "label" not in self.table:
            return None
        value = self.table["label"].iat[i]
        return None if pd.isna(value) else int(value)

    def counts(self, by: Sequence[str]) -> pd.DataFrame:
        """Image counts per combination of columns (label codes shown as class names)."""
        table = self.table.assign(label=self.label_names()) if "label" in self.table else self.table
        present = [c for c in by if c in table]
        return table.groupby(present, dropna=False).size().rename("images").reset_index()

    def label_names(self) -> pd.Series:
        """Class name per row (NA where unlabeled)."""
        names = pd.Series(self.classes or (), dtype=object)
        codes = self.table["label"]
        return codes.map(lambda c: names.iat[int(c)] if pd.notna(c) else pd.NA)

    def fingerprint(self) -> str:
        """Stable hash of the normalised table, classes and root (used as a cache key)."""
        h = hashlib.sha256()
        h.update(self.table.to_csv(index=False).encode())
        h.update(json.dumps([list(self.classes or ()), str(self.root)]).encode())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table atomically (CSV or Parquet by suffix) with labels as class names."""
        table = self.table.drop(columns=["row"])
        if self.classes is not None and "label" in table:
            table = table.assign(label=self.label_names())
        return write_table(table, path)


def split_set(cell: object) -> list[str]:
    """The names of a `label_set`/`uncertain_set` cell: text joined by ``|`` (blank names dropped), or a list
    (a Parquet list column); an empty or missing cell gives ``[]``."""
    if isinstance(cell, list | tuple | np.ndarray):
        return [str(v).strip() for v in cell if str(v).strip()]
    if cell is None or pd.isna(cell):  # type: ignore[arg-type]
        return []
    return [name.strip() for name in str(cell).split(SET_SEPARATOR) if name.strip()]


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame atomically as CSV or Parquet (chosen by the file suffix)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return write_csv(path, table)


def read_table(path: str | os.PathLike[str], *, encoding: str | None = None) -> pd.DataFrame:
    """Read a CSV (text in `encoding`, default UTF-8) or Parquet table.

    Raises `DataError` naming the file when it is missing, unparsable or not text in that encoding.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(
                f"{path}: unknown encoding {encoding!r}; name one Python knows, e.g. utf-8, latin-1, cp1252"
            ) from None
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        frame = pd.read_csv(
            path,
            dtype={
                "image": str,
                "mask": str,
                "patient_id": str,
                LESION: str,
                "bbox": str,
                LABEL_SET: str,
                UNCERTAIN_SET: str,
            },
            encoding=encoding or "utf-8",
        )
        return _names_as_written(path, frame, encoding or "utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{path}: not {encoding or 'UTF-8'} text (byte 0x{byte} cannot be decoded as {exc.encoding}); "
            "give the file's encoding: data.encoding=latin-1 (or cp1252, ...) on the command line, "
            "--encoding latin-1 for `panderm data validate`, or re-save the file as UTF-8"
        ) from exc
    except Exception as exc:  # pandas raises many types; the user needs the file name and the cause
        raise DataError(f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})") from exc


def _names_as_written(path: Path, frame: pd.DataFrame, encoding: str) -> pd.DataFrame:
    """`frame` with its patient IDs, and its labels unless they are numeric class codes, as the CSV spells
    them: pandas reads cells such as "NA", "None" or "null" as missing, which would drop a class or a patient
    of that name without a word; only an empty cell is missing. (In a column of codes such cells stay
    missing, and a gap among codes is reported.)"""
    columns = [c for c in ("label", "binary_label", "patient_id", *SET_COLUMNS) if c in frame.columns]
    if not columns:
        return frame
    exact = pd.read_csv(
        path, usecols=columns, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding
    )
    for column in columns:
        codes = pd.api.types.is_numeric_dtype(frame[column]) and bool(frame[column].notna().any())
        if column in ("patient_id", *SET_COLUMNS) or not codes:
            frame[column] = exact[column]
    return frame


def read_manifest(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | int | None = None,
    check_files: bool = True,
    deep: bool = False,
    allow_outside_root: bool = False,
    encoding: str | None = None,
    mask_threshold: int | None = None,
) -> Manifest:
    """Load and validate a manifest file; `root` defaults to the manifest's folder, `encoding` is a CSV's
    text encoding (default UTF-8), `mask_threshold` how its masks are binarised (`load_mask`).

    Raises `ManifestError` listing every problem (see `build_manifest`), or `DataError` if the file is
    unreadable.
    """
    path = Path(path)
    table = read_table(path, encoding=encoding)
    return build_manifest(
        table,
        root if root is not None else path.parent,
        classes=classes,
        source=str(path),
        check_files=check_files,
        deep=deep,
        allow_outside_root=allow_outside_root,
        mask_threshold=mask_threshold,
    )


def build_manifest(
    table: pd.DataFrame,
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | int | None = None,
    source: str = "<memory>",
    check_files: bool = True,
    deep: bool = False,
    allow_outside_root: bool = False,
    mask_threshold: int | None = None,
) -> Manifest:
    """Normalise and validate a manifest table; raises `ManifestError` with every problem at once.

    `classes` is the class list (names, or a count for integer labels); when omitted it is inferred from the
    labels (sorted names, or 0..max for integers). A multi-label table (`label_set`, optional `uncertain_set`)
    is checked against `classes` (names; when omitted, the sorted names found): an unknown name, or a name
    both positive and uncertain in one row, is a problem naming the row; `label` and `label_set` together
    are refused. `check_files` checks that every image/mask exists and
    opens (`deep` decodes it fully, which also catches truncated files).
    """
    problems: list[str] = []
    table = table.rename(columns=lambda c: str(c).strip())
    table = _normalise_columns(table, problems)
    if problems:  # without the required columns nothing else can be checked
        raise ManifestError(source, problems)
    problems += _misspelt_columns(table)
    table = table.reset_index(drop=True)
    table.insert(0, "row", np.arange(1, len(table) + 1))
    table["image"] = table["image"].astype(str).str.strip()
    table["split"] = _normalise_splits(table, problems)
    if LABEL_SET in table:
        class_tuple = _normalise_label_sets(table, classes, problems)
    else:
        if UNCERTAIN_SET in table:
            problems.append(f"column {UNCERTAIN_SET!r} needs a {LABEL_SET!r} column (multi-label manifests)")
        label_codes, class_tuple = _normalise_labels(table, classes, problems)
        if label_codes is not None:
            table["label"] = label_codes
    if "bbox" in table:
        table["bbox"] = table["bbox"].map(_box_text)
    manifest = Manifest(
        table, Path(os.path.abspath(root)), class_tuple, source, allow_outside_root, mask_threshold
    )
    problems += _check_rows(manifest, check_files=check_files, deep=deep)
    if problems:
        raise ManifestError(source, sorted(problems, key=_row_of))
    return manifest


def _box_text(cell: object) -> object:
    """A `bbox` cell given as a list (a Parquet list column) as lossless JSON text, so that the table stays
    writable as CSV and every reader sees one form; text cells, and lists that do not parse, stay as they are
    (the row check reports the latter)."""
    if not isinstance(cell, list | tuple | np.ndarray):
        return cell
    try:
        return json.dumps([list(box) for box in parse_boxes(cell)])
    except (ValueError, TypeError):
        return cell


def _row_of(problem: str) -> int:
    """Sort key: the row a problem names (problems about several rows go last)."""
    match = re.match(r"row (\d+):", problem)
    return int(match.group(1)) if match else 1 << 62


def _normalise_columns(table: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    if "label" not in table and "binary_label" in table:  # PanDerm's binary CSV
        table = table.rename(columns={"binary_label": "label"})
    for column in REQUIRED_COLUMNS:
        if column not in table:
            close = difflib.get_close_matches(column, [str(c) for c in table.columns], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"missing required column {column!r} (columns present: {list(table.columns)}){hint}"
            )
    return table


def _misspelt_columns(table: pd.DataFrame) -> list[str]:
    """Columns that look like a misspelt optional column (`lable` for `label`): kept as metadata, they would
    silently leave the manifest unlabeled, without masks or without the leakage check."""
    absent = [c for c in KNOWN_COLUMNS if c not in table and c not in REQUIRED_COLUMNS]
    problems = []
    for column in map(str, table.columns):
        close = difflib.get_close_matches(column, absent, n=1, cutoff=MISSPELT_CUTOFF)
        if column not in KNOWN_COLUMNS and close:
            problems.append(
                f"column {column!r} is not a manifest column; did you mean {close[0]!r}? Rename it to "
                f"{close[0]!r} (manifest columns: {', '.join(KNOWN_COLUMNS)}; any other column is metadata)"
            )
    return problems


def _normalise_splits(table: pd.DataFrame, problems: list[str]) -> pd.Series:
    splits = table["split"].astype(str).str.strip().str.lower().replace(SPLIT_ALIASES)
    for row, raw, value in zip(table["row"], table["split"], splits, strict=True):
        if value not in SPLITS:
            problems.append(f"row {row}: field 'split': unknown split {raw!r} (expected one of {SPLITS})")
    return splits


def _normalise_labels(
    table: pd.DataFrame, classes: Sequence[str] | int | None, problems: list[str]
) -> tuple[pd.Series | None, tuple[str, ...] | None]:
    """Map labels to integer codes: class names look up `classes`; integers must lie in 0..n_classes-1.

    An empty label (NaN in a numeric column) leaves its row unlabeled: pretraining uses such rows, and a
    command that needs labels names the unlabeled rows it was given (`unlabeled_rows`).
    """
    if "label" not in table:
        return None, _class_tuple(classes)
    text = table["label"].astype("string").str.strip()
    present = text.notna() & (text != "")
    values = text[present]
    numeric = pd.to_numeric(values, errors="coerce")
    class_tuple = _class_tuple(classes)
    named = class_tuple is not None and not isinstance(classes, int)
    if class_tuple is None:
        if bool(numeric.notna().all()):
            class_tuple = tuple(str(i) for i in range(int(numeric.max()) + 1 if len(numeric) else 0))
        else:
            class_tuple, named = tuple(sorted(values.unique())), True
    index = {name: i for i, name in enumerate(class_tuple)} if named else {}
    codes = pd.Series(pd.NA, index=table.index, dtype="Int64")
    for idx, value in values.items():
        number = numeric[idx]
        if value in index:
            codes[idx] = index[value]
        elif pd.notna(number) and float(number).is_integer() and 0 <= number < len(class_tuple):
            codes[idx] = int(number)
        else:
            expected = list(class_tuple) if named else f"0..{len(class_tuple) - 1}"
            problems.append(
                f"row {table.at[idx, 'row']}: field 'label': {value!r} is outside the classes {expected}"
            )
    return codes, class_tuple


def _normalise_label_sets(
    table: pd.DataFrame, classes: Sequence[str] | int | None, problems: list[str]
) -> tuple[str, ...] | None:
    """Check `label_set`/`uncertain_set` against the class names and rewrite them in place normalised (names
    in class order, joined by ``|``); returns the class tuple (inferred: sorted names found)."""
    if "label" in table:
        problems.append(
            f"columns 'label' and {LABEL_SET!r} are both present: a manifest is single-label ('label') or "
            f"multi-label ({LABEL_SET!r}); drop one of them"
        )
    sets = {c: [split_set(cell) for cell in table[c]] for c in SET_COLUMNS if c in table}
    if isinstance(classes, int):
        problems.append(f"multi-label manifests need class names, not a count ({classes})")
        classes = None
    class_tuple = _class_tuple(classes)
    if class_tuple is None:
        class_tuple = tuple(sorted({name for rows in sets.values() for names in rows for name in names}))
    index = {name: i for i, name in enumerate(class_tuple)}
    rows = table["row"].tolist()
    for column, cells in sets.items():
        normalised = []
        for row, names in zip(rows, cells, strict=True):
            for name in dict.fromkeys(names):
                if name not in index:
                    problems.append(
                        f"row {row}: field {column!r}: {name!r} is not a class (classes: {list(class_tuple)})"
                    )
            known = sorted({n for n in names if n in index}, key=index.__getitem__)
            normalised.append(SET_SEPARATOR.join(known))
        table[column] = normalised
    if UNCERTAIN_SET in sets:
        for row, positive, uncertain in zip(rows, sets[LABEL_SET], sets[UNCERTAIN_SET], strict=True):
            both = sorted(set(positive) & set(uncertain))
            if both:
                problems.append(
                    f"row {row}: {both} in both {LABEL_SET!r} and {UNCERTAIN_SET!r}; a label is positive or "
                    "uncertain, not both"
                )
    return class_tuple


def _class_tuple(classes: Sequence[str] | int | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, int):
        return tuple(str(i) for i in range(classes))
    return tuple(str(c) for c in classes)


def _check_rows(manifest: Manifest, *, check_files: bool, deep: bool) -> list[str]:
    """Per-row checks: paths inside the root, files present and readable, boxes, duplicates, leakage."""
    problems: list[str] = []
    table = manifest.table
    seen: dict[tuple[str, str], int] = {}
    slices = table["slice"].astype(str) if "slice" in table else pd.Series("", index=table.index)
    to_probe: list[tuple[int, int, dict[str, Path]]] = []  # (row, position, {field: path})
    for i in range(len(table)):
        row = int(table["row"].iat[i])
        image = table["image"].iat[i]
        key = (os.path.normpath(image), slices.iat[i])
        if key in seen:
            problems.append(f"row {row}: field 'image': duplicate of row {seen[key]} ({image!r})")
        else:
            seen[key] = row
        paths: dict[str, Path] = {}
        for field in ("image", "mask"):
            value = table[field].iat[i] if field in table else None
            if value is None or pd.isna(value) or str(value).strip() in ("", "nan"):
                if field == "image":
                    problems.append(f"row {row}: field 'image': empty path")
                continue
            try:
                paths[field] = manifest.path(str(value))
            except DataError as exc:
                problems.append(f"row {row}: field {field!r}: {exc}")
        if paths:
            to_probe.append((row, i, paths))
        if "bbox" in table:
            try:
                parse_boxes(table["bbox"].iat[i])
            except (ValueError, TypeError) as exc:
                problems.append(f"row {row}: field 'bbox': {table['bbox'].iat[i]!r}: {exc}")
    if check_files:
        records = table.to_dict("records") if deep else None

        def issues_of(item: tuple[int, int, dict[str, Path]]) -> list[tuple[str, Path, str]]:
            record = records[item[1]] if records else {}
            return _file_issues(item[2], record, deep=deep, mask_threshold=manifest.mask_threshold)

        # File checks are I/O bound (and slow on network storage), so they run in a thread pool.
        with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
            for (row, _, _), issues in zip(to_probe, pool.map(issues_of, to_probe), strict=True):
                problems += [
                    f"row {row}: field {field!r}: {path}: {reason}" for field, path, reason in issues
                ]
    problems += _leakage(table)
    problems += case_column_problems(table)
    return problems


def _file_issues(
    paths: dict[str, Path], record: dict[str, Any], *, deep: bool, mask_threshold: int | None = None
) -> list[tuple[str, Path, str]]:
    """(field, path, reason) for each file of a row (`paths`: image and mask) that cannot be used. With `deep`
    every file is decoded, and the mask is loaded as `ManifestDataset` loads it for `panderm segment`
    (`load_mask` against the image's size: binary and the same size), with the row's loader options
    (`record`: slice, axis, window of a volume)."""
    issues = [
        (field, path, reason) for field, path in paths.items() if (reason := probe_image(path, deep=deep))
    ]
    if not deep or issues or "mask" not in paths:
        return issues
    # deferred: panderm.data.dataset imports this module
    from panderm.data.dataset import load_options

    image = paths["image"]
    try:
        if image_kind(image) == "pil":
            width, height = image_size(image)  # header only: the deep probe above decoded it already
            shape: tuple[int, ...] = (height, width)
        else:
            shape = load_image(image, mode="L", **load_options(record)).shape[:2]
        load_mask(paths["mask"], shape=(shape[0], shape[1]), threshold=mask_threshold)
    except ImageLoadError as exc:
        field = "mask" if exc.path == str(paths["mask"]) else "image"
        issues.append((field, paths[field], exc.reason))
    return issues


def _leakage(table: pd.DataFrame) -> list[str]:
    if "patient_id" not in table:
        return []
    problems = []
    known = table[table["patient_id"].notna()]
    for patient, group in known.groupby("patient_id", sort=True):
        if group["split"].nunique() > 1:
            where = ", ".join(
                f"{split} (rows {', '.join(str(r) for r in rows['row'])})"
                for split, rows in group.groupby("split", sort=True)
            )
            problems.append(
                f"field 'patient_id': patient {patient!r} appears in more than one split: {where}"
            )
    return problems
