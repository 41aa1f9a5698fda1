"""Score ICL result files the SMMILE way: exact match after SMMILE's normalisation, or MCQA's `is_correct`.

Reads SMMILE's published result CSVs and panderm's own (CSV or JSONL, same columns). A file with an
`is_correct` column is scored by it (MCQA) unless its `mode` column says `open`; otherwise `generated_answer`
is compared with `true_answer`. In SMMILE's files empty cells read as NaN and compare as the string "nan", as
upstream; panderm's own files read back exactly as the run wrote them (see `read_results`). Rows
whose model call failed (`status` = `failed`) are left out of every score and counted as `failed`.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.errors import DataError
from panderm.io import read_csv, read_jsonl
from panderm.mllm.regions import strip_regions

STATUSES = ("ok", "failed")
# The text columns of panderm's results.csv (`panderm.mllm.icl.run.result_row` and the judge's columns).
TEXT_COLUMNS = (
    "problem_id", "final_question", "true_answer", "generated_answer", "full_response", "base_problem_id",
    "strategy", "variant", "status", "error", "mode", "speciality", "modality", "answer_format",
    "relevant_by", "noise_kind", "noise_source", "correct_option", "selected_option",
    "extraction", "options", "judge_reply", "judge_status",
)  # fmt: skip
MODES = ("open", "mcqa")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_TRUTH = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def smmile_normalise(text: object) -> str:
    """SMMILE's rule: `str(text)` lower-cased, ASCII punctuation deleted, whitespace collapsed, stripped."""
    return " ".join(str(text).lower().translate(_DELETE_PUNCTUATION).split())


def exact_match(generated: object, true: object, *, strict: bool = False) -> bool:
    """SMMILE exact match of the normalised strings, read without region markup (`strip_regions`: a text
    without any, as in every SMMILE file, compares exactly as upstream); `strict`: the raw strings equal
    after stripping only."""
    if strict:
        return str(generated).strip() == str(true).strip()
    return smmile_normalise(strip_regions(str(generated))) == smmile_normalise(strip_regions(str(true)))


def source(df: pd.DataFrame) -> str:
    """The file a results frame was read from (`df.attrs["source"]`), for error messages."""
    return str(df.attrs.get("source", "<results frame>"))


def _require(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{source(df)}: missing column(s) {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(str, df.columns)) or 'none'})"
        )


def _first_bad(df: pd.DataFrame, bad: pd.Series, column: str, expected: str) -> DataError:
    position = int(np.flatnonzero(bad.to_numpy())[0])
    value = df[column].iloc[position]
    return DataError(f"{source(df)}: row {position + 1}, column {column!r}: {value!r} is not {expected}")


def read_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A result file (.csv or .jsonl) as a DataFrame, its path in `df.attrs["source"]`.

    A CSV with panderm's `status` column (written by `panderm icl`) reads back exactly as written
    (`panderm.io.read_csv`: its `TEXT_COLUMNS` as strings, an empty cell as ""), so it scores as the run did;
    any other CSV (SMMILE's published results) is read as SMMILE's scorer reads it (pandas' defaults: empty
    cells and strings such as "None" or "NA" become NaN). Requires `problem_id` and, unless the file has
    `is_correct`, `true_answer` and `generated_answer`. Raises `DataError` naming the file (and the missing
    columns, or the broken line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: result file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            header = pd.read_csv(path, nrows=0, encoding="utf-8").columns
            df = read_csv(path, text=TEXT_COLUMNS) if "status" in header else pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
    elif suffix == ".jsonl":
        df = pd.DataFrame.from_records(read_jsonl(path))
    else:
        raise DataError(f"{path}: unsupported result file type {path.suffix!r} (expected .csv or .jsonl)")
    df.attrs["source"] = str(path)
    _require(df, ["problem_id"] + ([] if "is_correct" in df else ["true_answer", "generated_answer"]))
    return df


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """True for the rows to score: all of them, unless `status` says the model call `failed`."""
    if "status" not in df:
        return pd.Series(True, index=df.index)
    status = df["status"].astype(str).str.strip()
    bad = ~status.isin(STATUSES)
    if bad.any():
        raise _first_bad(df, bad, "status", f"one of {', '.join(STATUSES)}")
    return status == "ok"


def metric(df: pd.DataFrame) -> str:
    """`is_correct` (MCQA) when the frame has that column and no `mode` column saying `open`, else
    `exact_match`. A `mode` column mixing `open` and `mcqa` is an error: score those results apart."""
    if "is_correct" not in df:
        return "exact_match"
    if "mode" not in df:
        return "is_correct"
    mode = df["mode"].astype(str).str.strip()
    bad = ~mode.isin(MODES)
    if bad.any():
        raise _first_bad(df, bad, "mode", f"one of {', '.join(MODES)}")
    if mode.nunique() > 1:
        raise DataError(f"{source(df)}: column 'mode' mixes open and mcqa rows; score them separately")
    return "is_correct" if (mode == "mcqa").any() else "exact_match"


def correctness(df: pd.DataFrame, *, strict: bool = False) -> pd.Series:
    """Whether each scored row is correct (bool, indexed like `df`, failed calls left out), by `metric`."""
    ok = ok_mask(df)
    if metric(df) == "is_correct":
        values = df["is_correct"].astype(str).str.strip().str.lower().map(_TRUTH)
        bad = ok & values.isna()
        if bad.any():
            raise _first_bad(df, bad, "is_correct", "True or False")
        return values[ok].astype(bool)
    _require(df, ["true_answer", "generated_answer"])
    rows = df.loc[ok]
    pairs = zip(rows["generated_answer"], rows["true_answer"], strict=True)
    matches = [exact_match(generated, true, strict=strict) for generated, true in pairs]
    return pd.Series(matches, index=rows.index, dtype=bool)


def score_frame(df: pd.DataFrame, *, strict: bool = False) -> dict[str, Any]:
    """`{file, n, correct, accuracy (%, 2 decimals; None when n = 0), metric}`, plus `failed` when the frame
    has a `status` column and `extraction_failed` (scored rows whose MCQA letter was not found) for MCQA
    frames with an `extraction` column."""
    correct = correctness(df, strict=strict)
    n, hits = len(correct), int(correct.sum())
    result: dict[str, Any] = {
        "file": source(df),
        "n": n,
        "correct": hits,
        "accuracy": round(100 * hits / n, 2) if n else None,
        "metric": metric(df),
    }
    if "status" in df:
        result["failed"] = int((~ok_mask(df)).sum())
    if result["metric"] == "is_correct" and "extraction" in df:
        result["extraction_failed"] = int((df.loc[correct.index, "extraction"] == "failed").sum())
    return result


def score_file(path: str | os.PathLike[str], *, strict: bool = False) -> dict[str, Any]:
    """`score_frame` of `read_results(path)`."""
    return score_frame(read_results(path), strict=strict)


def score_command(paths: Sequence[str], *, strict: bool = False) -> list[dict[str, Any]]:
    """`panderm icl score FILE... [--strict]`: one `score_file` result per file, in order."""
    return [score_file(path, strict=strict) for path in paths]
