"""Atomic writes (a file is either its old self or its complete new self, never half written) and the CSV and
JSONL tables runs write, which read back cell for cell whatever text a model replied."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panderm.errors import DataError

if TYPE_CHECKING:  # pandas is imported where a table is read or written: this module is imported everywhere
    import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and atomically move the result to `path`; returns `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON atomically (non-JSON values are written with `str`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def stamp_matches(path: str | os.PathLike[str], params: dict[str, Any]) -> bool:
    """Whether the JSON stamp at `path` records every key of `params` with the same value.

    Generated or exported folders write their stamp last, so a matching stamp vouches for the whole folder;
    a missing or unreadable stamp never matches.
    """
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {key: saved.get(key) for key in params} == params


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write `frame` (without its index) atomically as UTF-8 CSV that `read_csv` reads back cell for cell.

    Lines end in ``\\r\\n`` (RFC 4180, the csv module's default), so every cell holding ``\\r`` or ``\\n`` is
    quoted: with pandas' default ``\\n`` a reply holding a lone ``\\r`` was written bare and split its row in
    two when read. Floats are written in their shortest exact form, missing values as empty cells.
    """
    return atomic_write(
        path, lambda tmp: frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\r\n")
    )


def read_csv(path: str | os.PathLike[str], text: Collection[str] | bool = ()) -> pd.DataFrame:
    """Read a CSV (from `write_csv` or any other writer) with the `text` columns (all of them for True) as
    strings exactly as written, an empty cell being ``""``; other columns get pandas' type inference.

    Only empty cells are missing: pandas' default would also read cells such as ``NA``, ``None``, ``null``
    or ``nan`` as missing, and ``01`` in a numeric-looking column as 1. Raises `DataError` naming the file
    when it is missing, not UTF-8 or not a CSV table.
    """
    import pandas as pd

    path = Path(path)
    dtype: Any = str if text is True else {column: str for column in (text or ())}
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""], encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({exc})") from exc
    columns = list(frame.columns) if text is True else [c for c in (text or ()) if c in frame.columns]
    if columns:
        frame[columns] = frame[columns].fillna("")
    return frame


# JSON escapes every control character but not these, which str.splitlines() (and so many JSONL readers)
# takes for line breaks; they can only occur inside JSON strings, where their escape means the same.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def jsonl_line(record: Mapping[str, Any]) -> str:
    """One JSONL line (with its newline) for `record`: UTF-8 text, any string safe to split on line breaks."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Write `records` atomically as JSONL (one JSON object a line, see `jsonl_line`); returns `path`."""
    return atomic_write_text(path, "".join(jsonl_line(record) for record in records))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSONL file, in order (blank lines skipped).

    Lines are split at ``\\n`` only, so text holding other line separators reads back whole. Raises
    `DataError` naming the file and line when the file is missing, not UTF-8, or a line is not a JSON object.
    """
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    records = []
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records
