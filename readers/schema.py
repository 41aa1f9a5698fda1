"""Reader-study tables: loading (long CSV/Parquet or Iowa `.lrc`), validation and adding AI-alone reads.

Long format: one row per reader x case x condition with columns `reader, case, condition` (`treatment` is
accepted as an alias), `truth`, and any of `rating` (ordinal or probability, larger = more likely positive),
`response` (the class answered), `top_k` (a list or an "a|b|c" string), `confidence` (Likert); further columns
(e.g. `experience`, `specialty`) are kept as reader attributes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from panderm.errors import DataError, ManifestError
from panderm.io import atomic_write, write_csv

KEYS = ("reader", "case", "condition")
REQUIRED = (*KEYS, "truth")
OUTCOMES = ("rating", "response", "top_k", "confidence")
_MAX_ROWS_SHOWN = 20
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True)
class ReaderStudy:
    """A validated long-format reader study; `source` names where it came from."""

    data: pd.DataFrame
    source: str = "<DataFrame>"

    @property
    def readers(self) -> list:
        return _plain_values(self.data["reader"])

    @property
    def conditions(self) -> list:
        return _plain_values(self.data["condition"])

    @property
    def cases(self) -> list:
        return _plain_values(self.data["case"])

    @property
    def truth(self) -> pd.Series:
        """Truth per case (index: case)."""
        return self.data.drop_duplicates("case").set_index("case")["truth"]

    @property
    def attribute_columns(self) -> list[str]:
        return [c for c in self.data.columns if c not in (*REQUIRED, *OUTCOMES)]

    @property
    def reader_attributes(self) -> pd.DataFrame:
        """One row per reader with its attribute columns (first value seen)."""
        cols = self.attribute_columns
        return (
            self.data.groupby("reader", sort=False)[cols].first()
            if cols
            else pd.DataFrame(index=pd.Index(self.readers, name="reader"))
        )

    def has(self, column: str) -> bool:
        """Whether the study has a non-empty `column`."""
        return column in self.data.columns and bool(self.data[column].notna().any())

    def wide(self, value: str = "rating", condition: object | None = None) -> pd.DataFrame:
        """`value` as a case x reader table (one condition) or case x (condition, reader) table."""
        frame = self.data if condition is None else self.data[self.data["condition"] == condition]
        columns = "reader" if condition is not None else ["condition", "reader"]
        return frame.pivot(index="case", columns=columns, values=value)


def _plain_values(column: pd.Series) -> list:
    """Unique values in order of appearance, numpy scalars as Python ones (clean reprs, JSON-ready)."""
    return [v.item() if isinstance(v, np.generic) else v for v in pd.unique(column)]


def _rows(mask: pd.Series | np.ndarray) -> str:
    """1-based data-row numbers where `mask` holds, truncated for long lists."""
    rows = (np.flatnonzero(np.asarray(mask)) + 1).tolist()
    shown = ", ".join(map(str, rows[:_MAX_ROWS_SHOWN]))
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > _MAX_ROWS_SHOWN else "")


def _parse_top_k(value: object) -> tuple | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split("|") if v.strip())
    if np.ndim(value) == 0:  # a lone label, such as a column of top-1 answers
        return (_label(value),)
    return tuple(_label(v) for v in value)


def _label(value: object) -> object:
    """Integral floats become ints so that 1.0 and 1 are the same class label."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def _label_series(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(int)
    if pd.api.types.is_float_dtype(series):
        valid = series.dropna()
        if len(valid) and np.all(np.mod(valid, 1) == 0):
            return series.astype("Int64")
    return series


def validate(frame: pd.DataFrame, source: str = "<DataFrame>") -> list[str]:
    """Every problem with a long-format reader-study table (row numbers are 1-based data rows)."""
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    if not any(c in frame.columns for c in OUTCOMES):
        problems.append(f"missing outcome column: need at least one of {', '.join(OUTCOMES)}")
    if missing:
        return problems
    for col in REQUIRED:
        if frame[col].isna().any():
            problems.append(f"missing {col} in rows {_rows(frame[col].isna())}")
    dup = frame.duplicated(list(KEYS), keep=False)
    if dup.any():
        problems.append(f"duplicate reader x case x condition rows: {_rows(dup)}")
    n_truth = frame.dropna(subset=["truth"]).groupby("case")["truth"].nunique()
    bad_cases = n_truth[n_truth > 1].index.tolist()
    if bad_cases:
        mask = frame["case"].isin(bad_cases)
        problems.append(f"truth inconsistent for case(s) {bad_cases} in rows {_rows(mask)}")
    truth = frame["truth"].dropna()
    if pd.api.types.is_float_dtype(truth) and not np.all(np.mod(truth, 1) == 0):
        bad = frame["truth"].notna() & (np.mod(frame["truth"].fillna(0), 1) != 0)
        problems.append(f"truth must be a class label (not a fraction) in rows {_rows(bad)}")
    for col in ("rating", "confidence"):
        if col in frame.columns:
            numeric = pd.to_numeric(frame[col], errors="coerce")
            bad = frame[col].notna() & numeric.isna()
            if bad.any():
                problems.append(f"non-numeric {col} in rows {_rows(bad)}")
    present = [c for c in OUTCOMES if c in frame.columns]
    if present:
        empty = frame[present].isna().all(axis=1)
        if empty.any():
            problems.append(f"no {'/'.join(present)} value in rows {_rows(empty)}")
    conditions = set(frame["condition"].dropna())
    have = frame.dropna(subset=["condition"]).groupby("reader")["condition"].agg(set)
    for reader, conds in have.items():
        lacking = sorted(map(str, conditions - conds))
        if lacking:
            problems.append(f"reader {reader!r} missing condition(s): {', '.join(lacking)}")
    return problems


def _normalise(frame: pd.DataFrame, condition_column: str | None, source: str) -> pd.DataFrame:
    frame = frame.copy()
    if condition_column is not None:
        if condition_column not in frame.columns:
            raise DataError(f"{source}: condition column {condition_column!r} not found")
        frame = frame.drop(columns=["condition"], errors="ignore").rename(
            columns={condition_column: "condition"}
        )
    elif "condition" not in frame.columns and "treatment" in frame.columns:
        frame = frame.rename(columns={"treatment": "condition"})
    problems = validate(frame, source)
    if problems:
        raise ManifestError(source, problems)
    for col in ("rating", "confidence"):
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col])
    frame["truth"] = _label_series(frame["truth"])
    if "response" in frame.columns:
        frame["response"] = _label_series(frame["response"])
    if "top_k" in frame.columns:
        frame["top_k"] = frame["top_k"].map(_parse_top_k).astype(object)
    cols = [*REQUIRED, *(c for c in OUTCOMES if c in frame.columns)]
    return frame[cols + [c for c in frame.columns if c not in cols]].reset_index(drop=True)


def read_lrc(path: str | Path) -> pd.DataFrame:
    """Iowa/LABMRMC `.lrc` file as a long table `reader, condition, case, truth, rating`.

    Cases are numbered 1.. with negatives first; ratings of an "S" (smaller = more abnormal) treatment are
    negated so that larger always means more likely positive. Raises `DataError` naming the file and line
    for a file that is not in this form.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the .lrc file ({exc})") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines[1:] if ln]  # first line is the title
    rows: list[tuple] = []
    treatments: list[str] | None = None
    signs: list[float] | None = None
    i = 0

    def line(what: str) -> str:
        if i >= len(lines):
            raise DataError(
                f"{path}: the file ends where {what} should follow (a complete file ends with '#')"
            )
        return lines[i]

    while i < len(lines) and lines[i] != "#":
        reader = lines[i].strip('"')
        i += 1
        if line(f"the ratings of reader {reader!r}").startswith('"'):
            treatments = [t.strip('"') for t in lines[i].split()]
            i += 1
        if line(f"the ratings of reader {reader!r}").split() and all(
            t.upper() in ("L", "S") for t in lines[i].split()
        ):
            signs = [1.0 if t.upper() == "L" else -1.0 for t in lines[i].split()]
            i += 1
        if treatments is None:
            raise DataError(f"{path}: no treatment-name line before the ratings of reader {reader!r}")
        if signs is not None and len(signs) != len(treatments):
            raise DataError(f"{path}: {len(signs)} L/S signs for {len(treatments)} treatments ({treatments})")
        signs = signs or [1.0] * len(treatments)
        case = 0
        for truth in (0, 1):
            while line(f"'*' after the ratings of reader {reader!r}") != "*":
                values = lines[i].split()[: len(treatments)]
                try:
                    ratings = [float(v) * s for v, s in zip(values, signs, strict=True)]
                except ValueError as exc:
                    raise DataError(f"{path}: bad rating line {lines[i]!r} for reader {reader!r}") from exc
                case += 1
                rows.extend((reader, t, case, truth, r) for t, r in zip(treatments, ratings, strict=True))
                i += 1
            i += 1  # the "*"
    columns = ["reader", "condition", "case", "truth", "rating"]
    return pd.DataFrame(rows, columns=columns).sort_values(["reader", "condition", "case"], ignore_index=True)


def _ids(column: pd.Series) -> pd.Series:
    """IDs read from a file as text: integers when every one is written as a plain integer (1, 2, -3), else
    the text as written, so "007", "NA" or "1.0" keep their spelling."""
    values = column.dropna()
    if len(values) and all(isinstance(v, str) and _INTEGER.fullmatch(v) for v in values):
        return column.map(lambda v: int(v) if isinstance(v, str) else v)
    return column


def _read_table(path: Path, sep: str, id_columns: Sequence[str]) -> pd.DataFrame:
    """A CSV/TSV study table: `id_columns` as written (see `_ids`; only an empty cell is missing), `top_k` as
    text, other columns with pandas' inference, where cells such as NA or None are missing (as R writes
    them)."""
    try:
        frame = pd.read_csv(path, sep=sep, dtype={"top_k": str}, encoding="utf-8")
        present = [c for c in dict.fromkeys(id_columns) if c in frame.columns]
        if present:
            exact = pd.read_csv(
                path,
                sep=sep,
                usecols=present,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
            )
            for column in present:
                frame[column] = _ids(exact[column])
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        kind = "TSV" if sep == "\t" else "CSV"
        raise DataError(f"{path}: not a readable {kind} table ({exc})") from exc
    return frame


def load_study(
    path_or_frame: str | Path | pd.DataFrame, *, condition_column: str | None = None
) -> ReaderStudy:
    """Load and validate a reader study from a DataFrame, CSV, Parquet or `.lrc` file.

    In a CSV/TSV or `.lrc` file, `reader`, `case` and `condition` IDs keep their text as written ("007",
    "NA") unless every ID of the column is a plain integer (then they are integers); `top_k` is text; other
    columns get pandas' type inference, cells such as NA or None being missing. Raises `ManifestError` (a
    `DataError`) listing every problem, with the file and 1-based data rows.
    """
    if isinstance(path_or_frame, pd.DataFrame):
        return ReaderStudy(_normalise(path_or_frame, condition_column, "<DataFrame>"), "<DataFrame>")
    path = Path(path_or_frame)
    if not path.exists():
        raise DataError(f"{path}: reader-study file not found")
    suffix = path.suffix.lower()
    if suffix == ".lrc":
        frame = read_lrc(path)
        frame[["reader", "condition"]] = frame[["reader", "condition"]].apply(_ids)
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        ids = [*KEYS, "treatment", *([condition_column] if condition_column else [])]
        frame = _read_table(path, "\t" if suffix == ".tsv" else ",", ids)
    else:
        raise DataError(f"{path}: unknown reader-study format {suffix!r} (use .csv, .tsv, .parquet or .lrc)")
    return ReaderStudy(_normalise(frame, condition_column, str(path)), str(path))


def save_study(study: ReaderStudy, path: str | os.PathLike[str]) -> Path:
    """Write `study.data` atomically as CSV (`panderm.io.write_csv`) or Parquet (by suffix), `top_k` lists as
    "a|b|c" text, so that `load_study(path)` gives the same table back (top-k labels come back as text).

    Raises `DataError` for another suffix, or for a top-k label that "a|b|c" text cannot carry (holding
    "|", empty, or with spaces around it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"{path}: a reader study is saved as .csv or .parquet, not {suffix!r}")
    frame = study.data.copy()
    if "top_k" in frame:
        bad = {str(v) for labels in frame["top_k"].dropna() for v in labels}
        bad = sorted(v for v in bad if "|" in v or not v or v.strip() != v)
        if bad:
            raise DataError(f"{path}: top_k label {bad[0]!r} cannot be written as 'a|b|c' text; rename it")
        frame["top_k"] = frame["top_k"].map(lambda labels: "|".join(map(str, labels)), na_action="ignore")
    if suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return write_csv(path, frame)


def add_ai(
    study: ReaderStudy,
    predictions: pd.DataFrame,
    *,
    as_: Literal["reader", "condition"] = "reader",
    name: str = "AI",
) -> ReaderStudy:
    """Add AI-alone predictions (`case` and any of `rating/response/top_k/confidence`).

    `as_="reader"`: a reader `name` reading every condition with the same predictions;
    `as_="condition"`: a condition `name` in which every reader gives the AI's predictions.
    """
    source = f"{study.source} + {name}"
    outcome = [c for c in OUTCOMES if c in predictions.columns]
    problems = []
    if "case" not in predictions.columns:
        problems.append("predictions missing column: case")
    if not outcome:
        problems.append(f"predictions need at least one of {', '.join(OUTCOMES)}")
    if problems:
        raise ManifestError(source, problems)
    known = set(study.cases)
    unknown = sorted(set(predictions["case"]) - known, key=str)
    lacking = sorted(known - set(predictions["case"]), key=str)
    if unknown:
        problems.append(f"predictions for case(s) not in the study: {unknown}")
    if lacking:
        problems.append(f"no prediction for case(s): {lacking}")
    if as_ not in ("reader", "condition"):
        problems.append(f"as_ must be 'reader' or 'condition', not {as_!r}")
    clash = study.readers if as_ == "reader" else study.conditions
    if name in clash:
        problems.append(f"{as_} {name!r} already in the study")
    if problems:
        raise ManifestError(source, problems)
    preds = predictions[["case", *outcome]].merge(study.truth.reset_index(), on="case")
    others = study.conditions if as_ == "reader" else study.readers
    other_key = "condition" if as_ == "reader" else "reader"
    added = pd.concat([preds.assign(**{as_: name, other_key: o}) for o in others], ignore_index=True)
    merged = pd.concat([study.data, added], ignore_index=True)
    return ReaderStudy(_normalise(merged, None, source), study.source)


def conditions_pair(study: ReaderStudy, a: object, b: object) -> None:
    """Raise `DataError` unless `a` and `b` are conditions of `study`."""
    missing = [c for c in (a, b) if c not in study.conditions]
    if missing:
        raise DataError(f"{study.source}: condition(s) {missing} not in {study.conditions}")


__all__: Sequence[str] = ("ReaderStudy", "add_ai", "load_study", "read_lrc", "save_study", "validate")
