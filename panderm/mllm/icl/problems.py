"""ICL problems: SMMILE's row format (CSV, Parquet, JSON or JSONL), one row per example.

Columns: `problem_id`, `order`, `question`, `answer`, `image` (a path relative to `image_root`, default the
file's folder; or, as in the Hugging Face Parquet export, a dict with the image's `bytes`) and/or `image_url`
(a local path, ``file://`` URL or ``data:`` URL; nothing is downloaded), `speciality`, and any `flag_*`
columns. Local paths must lie under `image_root` (`panderm.paths.resolve_under`) unless the caller allows
files outside it. Rows are grouped by `problem_id` and sorted by `order`; the last row is the query, the
others are the demonstrations in prompt order. A problem with a missing image is excluded and reported by id.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from panderm.errors import DataError, ManifestError
from panderm.io import read_csv, read_jsonl, write_csv, write_jsonl
from panderm.mllm.conversation import ImagePart
from panderm.paths import resolve_under

REQUIRED = ("problem_id", "order", "question", "answer")
MODALITY_COLUMNS = ("modality", "flag_image_type", "image_type")
ANSWER_FORMAT_COLUMNS = ("answer_format", "flag_answer_format")


@dataclass(frozen=True)
class Example:
    """One image-question-answer row; `row` is its 1-based position in the source file (for messages)."""

    question: str
    answer: str
    image: ImagePart
    row: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ICLProblem:
    """Demonstrations in prompt order and the query, with the problem's metadata (from the query row)."""

    problem_id: str
    demos: tuple[Example, ...]
    query: Example
    speciality: str = ""
    modality: str = ""
    answer_format: str = ""
    flags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProblemSet:
    """The loaded problems, and the ids excluded for a missing or unreadable image (with the reason)."""

    problems: tuple[ICLProblem, ...]
    excluded: Mapping[str, str]
    source: Path


# Read as written: a question, answer or id such as "None", "NA" or "007" stays that text.
TEXT_COLUMNS = (
    "problem_id",
    "question",
    "answer",
    "image",
    "image_url",
    "speciality",
    "modality",
    "answer_format",
)


def _read_table(path: Path) -> pd.DataFrame:
    readers = {
        ".csv": lambda p: read_csv(p, text=TEXT_COLUMNS),
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.DataFrame(read_jsonl(p)),
        ".json": pd.read_json,
    }
    if not path.is_file():
        raise DataError(f"{path}: ICL problems file not found")
    if path.suffix.lower() not in readers:
        raise DataError(
            f"{path}: unknown problems format {path.suffix!r} (use .csv, .parquet, .json, .jsonl)"
        )
    try:
        return readers[path.suffix.lower()](path)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read ICL problems ({exc})") from exc


def _text(value: Any) -> str:
    """A cell as text; empty and missing cells give ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _image(row: Mapping[str, Any], root: Path, allow_outside: bool, source: str) -> ImagePart | str:
    """The row's image, or why there is none; DataError for a local path outside `root` (unless
    `allow_outside`). `source` names the row in later messages about the image."""
    image, url = row.get("image"), _text(row.get("image_url"))
    if isinstance(image, Mapping):  # the Hugging Face datasets export of an Image feature
        if image.get("bytes"):
            return ImagePart(data=bytes(image["bytes"]), source=source)
        image = image.get("path")
    candidates = [_text(image)] if _text(image) else []
    if url.startswith("file://"):
        candidates.append(unquote(urlparse(url).path))
    elif url and "://" not in url and not url.startswith("data:"):
        candidates.append(url)
    paths = [
        resolve_under(
            root, Path(c).expanduser(), allow_outside=allow_outside, option="allow_outside_root=true"
        )
        for c in candidates
    ]
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            data = base64.b64decode(payload)
        except ValueError:
            return "image_url holds an undecodable data: URL"
        return ImagePart(data=data, mime=header[5:].split(";")[0] or "image/png", source=source)
    for path in paths:
        if path.is_file():
            return ImagePart(path=path, source=source)
    if candidates:
        return f"image not found: {candidates[0]}"
    return "no local image (remote image_url values are not downloaded)" if url else "no image given"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _first(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    return next((_text(row[c]) for c in columns if _text(row.get(c))), "")


def load_problems(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    allow_outside_root: bool = False,
) -> ProblemSet:
    """Read a problems file; raises one `ManifestError` listing every row problem (missing column, empty
    question or answer, duplicate `order` within a problem, an image path outside `image_root` unless
    `allow_outside_root`); problems whose image is missing are excluded. Images are not read here."""
    path = Path(path)
    table = _read_table(path)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ManifestError(str(path), [f"missing column {c!r}" for c in missing])
    if "image" not in table.columns and "image_url" not in table.columns:
        raise ManifestError(str(path), ["missing column 'image' (or 'image_url')"])
    root = Path(image_root) if image_root is not None else path.parent
    orders = pd.to_numeric(table["order"], errors="coerce")
    issues: list[str] = []
    images: list[ImagePart | str] = []
    for i, rec in enumerate(table.to_dict("records"), 1):
        for column in ("problem_id", "question", "answer"):
            if not _text(rec[column]):
                issues.append(f"row {i}: empty {column}")
        if pd.isna(orders.iloc[i - 1]):
            issues.append(f"row {i}: order {rec['order']!r} is not a number")
        try:
            images.append(_image(rec, root, allow_outside_root, f"{path} row {i}"))
        except DataError as exc:
            images.append(str(exc))
            issues.append(f"row {i}: image {exc}")
    table = table.assign(_row=range(1, len(table) + 1), _pid=table["problem_id"].map(_text), _order=orders)
    for pid, group in table.groupby("_pid", sort=False):
        repeated = group["_order"].dropna()
        repeated = repeated[repeated.duplicated()].tolist()
        if repeated:
            issues.append(
                f"problem {pid}: order value(s) {[_number(o) for o in repeated]} appear more than once"
            )
    if issues:
        raise ManifestError(str(path), issues)
    problems, excluded = [], {}
    for pid, group in table.groupby("_pid", sort=False):
        rows = group.sort_values("_order", kind="stable").to_dict("records")
        examples = []
        for rec in rows:
            image = images[rec["_row"] - 1]
            if isinstance(image, str):
                excluded[pid] = f"row {rec['_row']}: {image}"
                break
            examples.append(Example(_text(rec["question"]), _text(rec["answer"]), image, int(rec["_row"])))
        else:
            query = rows[-1]
            problems.append(
                ICLProblem(
                    problem_id=pid,
                    demos=tuple(examples[:-1]),
                    query=examples[-1],
                    speciality=_text(query.get("speciality")),
                    modality=_first(query, MODALITY_COLUMNS),
                    answer_format=_first(query, ANSWER_FORMAT_COLUMNS),
                    flags={k: _text(v) for k, v in query.items() if str(k).startswith("flag_")},
                )
            )
    return ProblemSet(tuple(problems), excluded, path)


def write_problems(problems: Sequence[ICLProblem], path: str | os.PathLike[str]) -> Path:
    """Write problems in the row format (JSONL or CSV by suffix); image paths relative to the file's folder
    when they lie under it. In-memory images cannot be written (DataError)."""
    path = Path(path)
    rows = []
    for problem in problems:
        for order, example in enumerate((*problem.demos, problem.query), 1):
            if example.image.path is None:
                raise DataError(
                    f"problem {problem.problem_id}: an in-memory image cannot be written to {path}"
                )
            image = Path(os.path.abspath(example.image.path))
            with contextlib.suppress(ValueError):
                image = image.relative_to(Path(os.path.abspath(path.parent)))
            rows.append(
                {
                    "problem_id": problem.problem_id,
                    "order": order,
                    "question": example.question,
                    "answer": example.answer,
                    "image": image.as_posix(),
                    "speciality": problem.speciality,
                    "modality": problem.modality,
                    "answer_format": problem.answer_format,
                    **problem.flags,
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if path.suffix.lower() == ".csv":
        return write_csv(path, frame)
    return write_jsonl(path, frame.to_dict("records"))
