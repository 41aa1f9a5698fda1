"""Run many conversations through a backend with the response cache: batched, retried, resumable.

Each request's key hashes the backend name, model, the backend's identity (generation settings, adapter) and
the rendered conversation (image bytes included). Cached ok replies are reused; identical requests in one run
are sent once; misses go to the backend in batches of `backend.batch_size`, and each finished batch is in the
cache before the next starts, so a killed run loses at most one batch. Only transient failures
(`is_transient`: time-outs, lost connections, HTTP 408/429/5xx) are retried with backoff; a deterministic one
(a processor's ValueError, HTTP 400 "context too long", ...) is not. A batch that still fails is split and its
requests are tried one by one, so one bad request cannot fail its neighbours; when a batch fails
deterministically and every one of its requests then succeeds alone, batching itself is what fails, so the run
says so once and sends the rest one at a time. Final failures are recorded as failures (never as answers).

Before anything is looked up or sent, every image is checked to decode as an image (`check_images`), and a run
refuses them all at once otherwise. `run_and_close` ends with `check_failures`: a run in which every request
failed (or more than `max_failed_fraction` of them) raises a BackendError summing the failures up by kind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from panderm.errors import BackendError, ConfigError, DataError
from panderm.mllm.backends.base import Backend
from panderm.mllm.cache import (
    CacheResult,
    ResponseCache,
    attempt_call,
    cache_record,
    call_with_cache,
    request_key,
)
from panderm.mllm.conversation import Conversation, check_images

log = logging.getLogger(__name__)


def backend_key(backend: Backend, rendered: Conversation) -> str:
    """The cache key of one rendered conversation for `backend`."""
    return request_key(backend.name, backend.model, backend.identity(), rendered)


def render_checked(backend: Backend, conversations: Sequence[Conversation]) -> list[Conversation]:
    """The conversations as `backend` sends them (`render`), once every image is known to decode: DataError
    naming every image that is missing or not an image otherwise, before anything is sent."""
    rendered = [backend.render(c) for c in conversations]
    problems = check_images(p for c in rendered for p in c.images())
    if problems:
        raise DataError(
            f"{len(problems)} image(s) cannot be sent to a model, so nothing was sent; replace them with "
            "image files or remove their rows:\n  " + "\n  ".join(problems)
        )
    return rendered


def run_requests(
    backend: Backend,
    conversations: Sequence[Conversation],
    cache: ResponseCache,
    *,
    retries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = False,
) -> list[CacheResult]:
    """One CacheResult per conversation, in order (see the module docstring for batching and failures).
    Raises DataError naming every image that is missing or not an image, before any request."""
    rendered = render_checked(backend, conversations)
    keys = [backend_key(backend, r) for r in rendered]
    meta: dict[str, Any] = {"backend": backend.name, "model": backend.model}
    results: dict[str, CacheResult] = {}
    todo: dict[str, Conversation] = {}
    for key, conv in zip(keys, rendered, strict=True):
        hit = cache.final(key)
        if hit is not None:
            results[key] = hit
        else:
            todo.setdefault(key, conv)
    if retries < 1:
        raise BackendError(f"retries must be >= 1 (it counts attempts), got {retries}")
    pending = list(todo.items())
    run = _Run(backend, cache, retries, backoff, sleep, meta)
    bar = tqdm(total=len(pending), desc=f"{backend.name} requests", disable=not progress)
    for start in range(0, len(pending), backend.batch_size):
        batch = pending[start : start + backend.batch_size]
        results.update(run.batch(batch))
        bar.update(len(batch))
    bar.close()
    return [results[k] for k in keys]


def run_and_close(
    backend: Backend,
    conversations: Sequence[Conversation],
    cache_path: str | os.PathLike[str],
    *,
    max_failed_fraction: float | None = None,
    **options: Any,
) -> list[CacheResult]:
    """`run_requests` with the response cache at `cache_path`, then `backend.close()` (also on failure), then
    `check_failures(results, max_failed_fraction)`: what every MLLM command calls."""
    _check_fraction(max_failed_fraction)
    try:
        with ResponseCache(cache_path) as cache:
            results = run_requests(backend, conversations, cache, **options)
    finally:
        backend.close()
    check_failures(results, max_failed_fraction, cache=cache_path)
    return results


# backends describe failures in free text (an HTTP status, a time-out, an empty reply): these patterns give
# their kind; anything else counts under its exception type, the text before the first colon
FAILURE_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bHTTP (\d{3})\b"), "HTTP {}"),
    (re.compile(r"no reply within timeout|timed out|\btimeout\b", re.IGNORECASE), "timeout"),
    (re.compile(r"connection failed", re.IGNORECASE), "connection failed"),
    (re.compile(r"no choices"), "empty choices"),
    (re.compile(r"no text content"), "empty content"),
    (re.compile(r"unusable response|not a chat completion"), "malformed response"),
    (re.compile(r"replies for \d+ conversations"), "wrong number of replies"),
)


def failure_kind(error: str | None) -> str:
    """The kind of a recorded failure ("HTTP 500", "timeout", "empty choices", ... or the exception type)."""
    for pattern, kind in FAILURE_KINDS:
        match = pattern.search(error or "")
        if match:
            return kind.format(*match.groups())
    return (error or "").split(":", 1)[0].strip() or "unknown"


def failure_summary(results: Sequence[CacheResult]) -> str | None:
    """``"<k> of <n> requests failed (<kind>: <count>, ...); first error: <text>"``; None if none failed."""
    errors = [r.error or "" for r in results if r.status != "ok"]
    if not errors:
        return None
    kinds = ", ".join(f"{kind}: {n}" for kind, n in Counter(map(failure_kind, errors)).most_common())
    return f"{len(errors)} of {len(results)} requests failed ({kinds}); first error: {errors[0]:.500}"


def check_failures(
    results: Sequence[CacheResult],
    max_failed_fraction: float | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
) -> None:
    """Raise a BackendError summing up the failures (`failure_summary`) when every request failed
    (`max_failed_fraction` None) or when more than `max_failed_fraction` (0-1) of them failed; otherwise log
    how many failed, if any. ConfigError for a fraction outside [0, 1]."""
    _check_fraction(max_failed_fraction)
    summary = failure_summary(results)
    if summary is None:
        return
    n_failed = sum(r.status != "ok" for r in results)
    too_many = (
        n_failed == len(results)
        if max_failed_fraction is None
        else n_failed > max_failed_fraction * len(results)
    )
    if not too_many:
        log.warning("%s", summary)
        return
    limit = (
        "every request failed"
        if max_failed_fraction is None
        else f"more than max_failed_fraction={max_failed_fraction} of the requests failed"
    )
    where = f" (the failed calls are recorded in {cache}; a rerun into the same folder retries only those)"
    raise BackendError(
        f"{summary}\n{limit}{where if cache else ''}; to keep a run with failures anyway, set "
        "max_failed_fraction=1.0 (or the share of failed requests you accept)"
    )


def _check_fraction(max_failed_fraction: float | None) -> None:
    if max_failed_fraction is not None and not 0 <= max_failed_fraction <= 1:
        raise ConfigError(
            f"max_failed_fraction={max_failed_fraction} must be between 0 and 1, or null (fail only when "
            "every request failed)"
        )


# HTTP statuses worth another try: request time-out, rate limit, and any server-side error
_TRANSIENT_STATUS = frozenset({408, 429})


def is_transient(error: BaseException) -> bool:
    """Whether another attempt at the same request may succeed: True for time-outs, lost connections and
    HTTP 408/429/5xx; False for deterministic failures (a ValueError or TypeError from a processor or model
    call, CUDA out of memory, any other HTTP 4xx such as 400 "context too long", 413, 422, or a backend that
    returned the wrong number of replies). The exception and its causes are read outermost first (backends
    wrap the original in a BackendError); a failure none of them explains counts as transient, as before."""
    causes = list(_causes(error))
    for exc in causes:  # what the exceptions are decides first, then what their messages say
        if isinstance(exc, TimeoutError | ConnectionError):
            return True
        status = getattr(exc, "status_code", getattr(getattr(exc, "response", None), "status_code", None))
        if isinstance(status, int):
            return _transient_status(status)
        if isinstance(exc, torch.OutOfMemoryError):
            return False
        if isinstance(exc, ValueError | TypeError) and not isinstance(exc, json.JSONDecodeError):
            return False  # a garbled server reply (bad JSON) may come out right next time
    for exc in causes:
        kind = failure_kind(str(exc))
        if kind.startswith("HTTP "):
            return _transient_status(int(kind.removeprefix("HTTP ")))
        if kind in ("timeout", "connection failed"):
            return True
        if kind == "wrong number of replies":
            return False
    return True


def _transient_status(status: int) -> bool:
    return status in _TRANSIENT_STATUS or status >= 500


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        # `raise ... from None` hides the original from tracebacks but keeps it as __context__
        exc = exc.__cause__ or exc.__context__


@dataclass
class _Run:
    """One `run_requests` call's batches: `batching` turns off after a batch fails deterministically while
    each of its requests succeeds alone (said once, as a warning)."""

    backend: Backend
    cache: ResponseCache
    retries: int
    backoff: float
    sleep: Callable[[float], None]
    meta: dict[str, Any]
    batching: bool = True

    def single(self, key: str, conv: Conversation) -> CacheResult:
        return call_with_cache(
            self.cache,
            key,
            lambda: _replies(self.backend, [conv])[0],
            retries=self.retries,
            backoff=self.backoff,
            retry_if=is_transient,
            sleep=self.sleep,
            meta=self.meta,
        )

    def batch(self, batch: list[tuple[str, Conversation]]) -> dict[str, CacheResult]:
        if len(batch) == 1 or not self.batching:
            return {key: self.single(key, conv) for key, conv in batch}
        convs = [c for _, c in batch]
        replies, error, attempts, transient = attempt_call(
            lambda: _replies(self.backend, convs),
            retries=self.retries,
            backoff=self.backoff,
            retry_if=is_transient,
            sleep=self.sleep,
            what=f"batch of {len(convs)}",
        )
        if replies is not None:
            out = {}
            for (key, _), reply in zip(batch, replies, strict=True):
                self.cache.put(cache_record(key, self.meta, "ok", reply, None, attempts))
                out[key] = CacheResult("ok", reply, None, attempts, cached=False)
            return out
        if transient:
            log.warning("batch of %d failed %d times; trying its requests one by one", len(convs), attempts)
        out = {key: self.single(key, conv) for key, conv in batch}
        if not transient and all(r.status == "ok" for r in out.values()):
            self.batching = False
            log.warning(
                "%s backend (model %s): a batch of %d failed (%.300s) while each of its requests succeeds "
                "alone; sending the rest of this run one request at a time (batch_size=1 skips the "
                "failing batch attempt)",
                self.backend.name,
                self.backend.model,
                len(convs),
                error,
            )
        return out


def _replies(backend: Backend, conversations: list[Conversation]) -> list[str]:
    replies = backend.generate(conversations)
    if len(replies) != len(conversations) or not all(isinstance(r, str) for r in replies):
        raise BackendError(
            f"{backend.name} backend returned {len(replies)} replies for {len(conversations)} conversations "
            f"(expected one str each): {replies!r:.200}"
        )
    return [_LONE_SURROGATE.sub("\ufffd", reply) for reply in replies]


# A JSON reply may escape half of a UTF-16 pair ("\ud83d" alone): Python keeps it, but no UTF-8 file (cache,
# predictions, results) can hold it, so it becomes the replacement character once, here, for every writer.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
