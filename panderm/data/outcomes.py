"""Manifest columns for follow-up and outcome tasks: `lesion_id` (one lesion across images, time points and
modalities), `timepoint` (an ordinal number or a date), `event` (1 = the outcome happened, 0 = censored) and
`time` (time to the event or to censoring, >= 0, in the user's unit). Checked once, with the manifest: every
problem names its row and field (`case_column_problems`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

LESION, TIMEPOINT, EVENT, TIME = "lesion_id", "timepoint", "event", "time"
CASE_COLUMNS = (LESION, TIMEPOINT, EVENT, TIME)
EVENT_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "1.0": 1, "0.0": 0}


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value)) or str(value).strip() == ""


def parse_timepoints(values: Iterable[object]) -> np.ndarray:
    """Time points as sortable floats: numbers as given (visit 0, 1, 2 or months), dates (ISO ``2021-03-04``
    and what `pandas.to_datetime` reads) as days since 1970-01-01; NaN where missing. Raises `ValueError`
    naming the 0-based positions of values that are neither, or when numbers and dates are mixed."""
    items = list(values)
    out = np.full(len(items), np.nan)
    kinds: dict[str, list[int]] = {"number": [], "date": [], "bad": []}
    for i, value in enumerate(items):
        if _missing(value):
            continue
        try:
            out[i] = float(value)  # type: ignore[arg-type]
            kinds["number" if np.isfinite(out[i]) else "bad"].append(i)
            continue
        except (TypeError, ValueError):
            pass
        try:
            stamp = pd.Timestamp(str(value).strip())
        except (TypeError, ValueError):
            stamp = pd.NaT
        if pd.isna(stamp):
            kinds["bad"].append(i)
        else:
            out[i] = (stamp - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
            kinds["date"].append(i)
    if kinds["bad"]:
        raise ValueError(f"not a number or a date at positions {kinds['bad'][:10]}")
    if kinds["number"] and kinds["date"]:
        raise ValueError(
            f"numbers (positions {kinds['number'][:5]}) and dates (positions {kinds['date'][:5]}) are mixed"
        )
    return out


def parse_events(values: Iterable[object]) -> np.ndarray:
    """`event` cells as 1/0 floats (1, 0, true/false, yes/no), NaN where missing. Raises `ValueError` naming
    the 0-based positions of other values."""
    items = list(values)
    out = np.full(len(items), np.nan)
    bad = []
    for i, value in enumerate(items):
        if _missing(value):
            continue
        code = EVENT_VALUES.get(str(value).strip().lower())
        if code is None:
            bad.append(i)
        else:
            out[i] = code
    if bad:
        raise ValueError(f"not 0/1 at positions {bad[:10]}")
    return out


def case_column_problems(table: pd.DataFrame) -> list[str]:
    """Problems with the follow-up and outcome columns of a normalised manifest table (with its 1-based
    `row` and `split`): a lesion in several splits or patients, a time point that is neither a number nor a
    date (or numbers and dates mixed), an `event`
    that is not 0/1, a `time` that is negative or not a number, `event` without `time` (or the reverse), and
    a lesion whose rows disagree on its outcome."""
    problems: list[str] = []
    rows = table["row"].to_numpy()

    def parsed(column: str, parse) -> np.ndarray:
        """The column parsed value by value (NaN where a value is bad, each bad value a problem)."""
        values = np.full(len(table), np.nan)
        for i, value in enumerate(table[column]):
            try:
                values[i] = parse([value])[0]
            except ValueError:
                problems.append(f"row {rows[i]}: field {column!r}: {value!r} is not {_WHAT[column]}")
        return values

    if TIMEPOINT in table:
        try:
            parse_timepoints(table[TIMEPOINT])
        except ValueError as error:
            if "mixed" in str(error):
                problems.append(
                    f"field {TIMEPOINT!r}: numbers and dates are mixed; use one form for every row"
                )
            else:
                parsed(TIMEPOINT, parse_timepoints)
    events = parsed(EVENT, parse_events) if EVENT in table else None
    times = None
    if TIME in table:
        times = pd.to_numeric(table[TIME], errors="coerce").to_numpy(dtype=float, copy=True)
        for i, (raw, value) in enumerate(zip(table[TIME], times, strict=True)):
            if not _missing(raw) and not (np.isfinite(value) and value >= 0):
                problems.append(f"row {rows[i]}: field {TIME!r}: {raw!r} is not a number >= 0")
                times[i] = np.nan
    if (EVENT in table) != (TIME in table):
        have, lack = (EVENT, TIME) if EVENT in table else (TIME, EVENT)
        problems.append(f"column {have!r} needs a {lack!r} column (outcomes are an event and its time)")
    elif events is not None and times is not None:
        has_event, has_time = ~np.isnan(events), ~table[TIME].map(_missing).to_numpy(bool)
        for i in np.flatnonzero(has_event != has_time):
            given, absent = (EVENT, TIME) if has_event[i] else (TIME, EVENT)
            problems.append(f"row {rows[i]}: field {absent!r}: empty while {given!r} is given")
    if LESION in table:
        problems += _lesion_problems(table, events, times)
    return problems


_WHAT = {TIMEPOINT: "a number or a date", EVENT: "0/1 (or true/false, yes/no)"}


def _lesion_problems(table: pd.DataFrame, events: np.ndarray | None, times: np.ndarray | None) -> list[str]:
    """A lesion in several splits or patients, or with different outcomes on its rows (vectorised: a
    manifest may hold tens of thousands of lesions; only the offending ones are looked at row by row)."""
    frame = table.assign(**{EVENT: events if events is not None else np.nan})
    frame = frame.assign(**{TIME: times if times is not None else np.nan})
    known = frame[~frame[LESION].map(_missing)]
    lesions = known.groupby(LESION, sort=True)
    checks = [(c, lesions[c].nunique()) for c in ("split", "patient_id") if c in known]
    outcome = known.dropna(subset=[EVENT, TIME]).drop_duplicates([LESION, EVENT, TIME])[LESION].value_counts()
    where = lesions.indices  # lesion -> positions in `known`
    problems = []
    for column, counts in checks:
        for lesion in counts.index[counts > 1]:
            group = known.iloc[where[lesion]]
            problems.append(
                f"field {LESION!r}: lesion {lesion!r} has more than one {column} "
                f"({sorted(map(str, group[column].dropna().unique()))}; rows {_rows(group)})"
            )
    for lesion in sorted(outcome.index[outcome > 1]):
        problems.append(
            f"fields {EVENT!r}/{TIME!r}: lesion {lesion!r} has different outcomes on its rows "
            f"({_rows(known.iloc[where[lesion]])})"
        )
    return problems


def _rows(group: pd.DataFrame) -> str:
    return ", ".join(str(r) for r in group["row"])
