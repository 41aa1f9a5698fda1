"""Run many conversations through a backend with the response cache: batched, retried, resumable.

Each request's key hashes the backend name, model, the backend's identity (generation settings, adapter) and
the rendered conversation (image bytes included). Cached ok replies are reused; identical requests in one run
are sent once; misses go to the backend in batches of `backend.batch_size`, and each finished batch is in the
cache before the next starts, so a killed run loses at most one batch. A batch that still fails after the
retries is split and its requests are tried one by one, so one bad request cannot fail its neighbours; final
failures are recorded as failures (never as answers).

Before anything is looked up or sent, every image is checked to decode as an image (`check_images`), and a run
refuses them all at once otherwise. `run_and_close` ends with `check_failures`: a run in which every request
failed (or more than `max_failed_fraction` of them) raises a BackendError summing the failures up by kind.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

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
    rendered = [backend.render(c) for c in conversations]
    problems = check_images(p for c in rendered for p in c.images())
    if problems:
        raise DataError(
            f"{len(problems)} image(s) cannot be sent to a model, so nothing was sent; replace them with "
            "image files or remove their rows:\n  " + "\n  ".join(problems)
        )
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
    pending = list(todo.items())
    bar = tqdm(total=len(pending), desc=f"{backend.name} requests", disable=not progress)
    for start in range(0, len(pending), backend.batch_size):
        batch = pending[start : start + backend.batch_size]
        results.update(_run_batch(backend, batch, cache, retries, backoff, sleep, meta))
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


def _run_batch(
    backend: Backend,
    batch: list[tuple[str, Conversation]],
    cache: ResponseCache,
    retries: int,
    backoff: float,
    sleep: Callable[[float], None],
    meta: dict[str, Any],
) -> dict[str, CacheResult]:
    if len(batch) == 1:
        key, conv = batch[0]
        return {
            key: call_with_cache(
                cache,
                key,
                lambda: _replies(backend, [conv])[0],
                retries=retries,
                backoff=backoff,
                sleep=sleep,
                meta=meta,
            )
        }
    convs = [c for _, c in batch]
    # a batch failure of any kind falls back to single requests below
    replies, _, attempts = attempt_call(
        lambda: _replies(backend, convs),
        retries=retries,
        backoff=backoff,
        sleep=sleep,
        what=f"batch of {len(convs)}",
    )
    if replies is not None:
        out = {}
        for (key, _), reply in zip(batch, replies, strict=True):
            cache.put(cache_record(key, meta, "ok", reply, None, attempts))
            out[key] = CacheResult("ok", reply, None, attempts, cached=False)
        return out
    log.warning("batch of %d failed %d times; trying its requests one by one", len(convs), retries)
    return {
        k: v
        for item in batch
        for k, v in _run_batch(backend, [item], cache, retries, backoff, sleep, meta).items()
    }


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
