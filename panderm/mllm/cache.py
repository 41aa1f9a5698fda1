"""The response cache every MLLM backend call goes through: an append-only JSONL file keyed by request hash.

Each line is one record::

    {"key", "backend", "model", "status": "ok" | "failed", "response", "error", "attempts", "time", ...meta}

Records are flushed and fsynced one by one, so a killed run loses nothing it wrote and a rerun only makes the
calls that are missing. Only "ok" records are final: a "failed" record is kept for the record but retried on
the next run. Credentials never reach the file: keys named like api_key/authorization/secret are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from panderm.errors import BackendError, DataError
from panderm.mllm.conversation import Conversation

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUSES = ("ok", "failed")
REQUIRED_FIELDS = ("key", "status", "response", "error", "attempts")
_SENSITIVE = re.compile(
    r"api[_-]?key|authorization|auth[_-]?token|access[_-]?token|bearer|secret|password", re.IGNORECASE
)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace (the form request keys hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(backend_id: str, model: str, settings: Mapping[str, Any], conversation: Conversation) -> str:
    """Hex sha256 of a request: backend id, model, generation settings and the canonical conversation.

    Images count by their bytes, not their paths. Settings must be JSON-able; put no credentials in them.
    """
    payload = {
        "backend": backend_id,
        "model": model,
        "settings": dict(settings),
        "conversation": conversation.canonical(),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def scrub(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `mapping` (nested mappings included) without keys that look like credentials."""
    clean: dict[str, Any] = {}
    for key, value in mapping.items():
        if _SENSITIVE.search(str(key)):
            log.warning("dropping credential-like field %r from a cache record", key)
            continue
        clean[key] = scrub(value) if isinstance(value, Mapping) else value
    return clean


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    return None


class ResponseCache:
    """Append-only JSONL cache of backend responses; `get` returns the latest record for a key.

    Opening reads the whole file. A truncated last line (a kill mid-write) is ignored with a warning and cut
    off the file; a corrupt line anywhere else raises DataError naming the file and line numbers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._latest: dict[str, dict[str, Any]] = {}
        self._fh: BinaryIO | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")  # the last element is b"" when the file ends with a newline
        problems: list[str] = []
        good_end = 0  # byte offset just past the last complete, valid line
        offset = 0
        for number, line in enumerate(lines, start=1):
            is_last = number == len(lines) or (number == len(lines) - 1 and lines[-1] == b"")
            end = offset + len(line) + (1 if number < len(lines) else 0)
            if line.strip():
                try:
                    record = json.loads(line)
                    problem = _record_problem(record)
                except ValueError as exc:
                    problem = f"invalid JSON ({exc.msg})"
                if problem is None:
                    self._latest[record["key"]] = record
                    good_end = end
                elif is_last:
                    log.warning(
                        "%s: ignoring truncated last line %d (%s); repairing the file",
                        self.path,
                        number,
                        problem,
                    )
                else:
                    problems.append(f"line {number}: {problem}")
            else:
                good_end = end if number < len(lines) else good_end
            offset = end
        if problems:
            raise DataError(
                f"{self.path}: corrupt response cache ({'; '.join(problems)}); "
                "fix or delete those lines (they are not the last line, so not a cut-off write)"
            )
        if good_end < len(raw):
            os.truncate(self.path, good_end)
        elif raw and not raw.endswith(b"\n"):
            with open(self.path, "ab") as fh:  # a complete last record that lost only its newline
                fh.write(b"\n")

    def get(self, key: str) -> dict[str, Any] | None:
        """The latest record for `key` (ok or failed), or None."""
        record = self._latest.get(key)
        return dict(record) if record is not None else None

    def final(self, key: str) -> CacheResult | None:
        """The cached reply for `key` as a CacheResult when its latest record is ok (final), else None."""
        hit = self._latest.get(key)
        if hit is None or hit["status"] != "ok":
            return None
        return CacheResult("ok", hit["response"], None, int(hit["attempts"]), cached=True)

    def put(self, record: Mapping[str, Any]) -> None:
        """Append one record (credential-like keys dropped), flush and fsync; BackendError if invalid."""
        clean = scrub(record)
        problem = _record_problem(clean)
        if problem is not None:
            raise BackendError(f"cannot cache record for {self.path}: {problem}")
        line = (canonical_json(clean) + "\n").encode("utf-8")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - held open across puts, closed by close()
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._latest[clean["key"]] = clean

    def close(self) -> None:
        """Close the append handle (reopened on the next put)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._latest)

    def __contains__(self, key: object) -> bool:
        return key in self._latest


@dataclass(frozen=True)
class CacheResult:
    """Outcome of one cached call; `cached` is True when an ok record was reused without calling."""

    status: Literal["ok", "failed"]
    response: str | None
    error: str | None
    attempts: int
    cached: bool


def call_with_cache(
    cache: ResponseCache,
    key: str,
    call: Callable[[], str],
    *,
    retries: int = 3,
    backoff: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    meta: Mapping[str, Any] | None = None,
) -> CacheResult:
    """Return the cached ok response for `key`, or call `call()` and record the outcome.

    `retries` is the total number of attempts (>= 1); after failed attempt i (0-based) it sleeps
    `backoff * 2**i`, except after the last. Exceptions in `retry_on` count as model failures: after the
    last one a "failed" record with the error text ("Type: message") is written and returned, never raised
    and never scored here (the caller decides); `retry_if` (see `attempt_call`) ends the attempts early at a
    failure that would repeat. Other exceptions (e.g. KeyboardInterrupt) propagate and record nothing. A
    cached "failed" record is retried on the next call; only "ok" records are final. `meta`
    (backend, model and any extras) is written into the record with credential-like keys dropped.
    """
    if retries < 1:
        raise BackendError(f"retries must be >= 1 (it counts attempts), got {retries}")
    hit = cache.final(key)
    if hit is not None:
        return hit
    meta = dict(meta or {})
    response, error, attempts, retryable = attempt_call(
        call,
        retries=retries,
        backoff=backoff,
        retry_on=retry_on,
        retry_if=retry_if,
        sleep=sleep,
        what=f"request {key[:12]}",
    )
    if error is not None:
        if not retryable:
            log.warning("request %s failed, not retried (it would fail the same way): %s", key[:12], error)
        cache.put(cache_record(key, meta, "failed", None, error, attempts))
        return CacheResult("failed", None, error, attempts, cached=False)
    if not isinstance(response, str):
        raise BackendError(f"backend call for {key[:12]} returned {type(response).__name__}, not str")
    cache.put(cache_record(key, meta, "ok", response, None, attempts))
    return CacheResult("ok", response, None, attempts, cached=False)


def attempt_call(
    call: Callable[[], T],
    *,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException], bool] | None = None,
    what: str = "call",
) -> tuple[T | None, str | None, int, bool]:
    """(result, None, attempts, True) of the first successful of up to `retries` calls, else (None, error text
    "Type: message" of the last, attempts, retryable). After failed attempt i (0-based) it sleeps
    `backoff * 2**i`, except after the last; a failure for which `retry_if(exc)` is False ends the attempts at
    once (retryable False: it would fail the same way again); exceptions outside `retry_on` propagate."""
    error = ""
    for attempt in range(retries):
        try:
            return call(), None, attempt + 1, True
        except retry_on as exc:
            error = f"{type(exc).__name__}: {exc}"
            if retry_if is not None and not retry_if(exc):
                return None, error, attempt + 1, False  # the caller says what it does instead
            log.warning("%s attempt %d/%d failed: %s", what, attempt + 1, retries, error)
            if attempt + 1 < retries:
                sleep(backoff * 2**attempt)
    return None, error, retries, True


def cache_record(
    key: str, meta: dict[str, Any], status: str, response: str | None, error: str | None, attempts: int
) -> dict[str, Any]:
    return {
        **meta,
        "key": key,
        "backend": meta.get("backend"),
        "model": meta.get("model"),
        "status": status,
        "response": response,
        "error": error,
        "attempts": attempts,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
