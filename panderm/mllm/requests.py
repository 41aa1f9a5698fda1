"""Run many conversations through a backend with the response cache: batched, retried, resumable.

Each request's key hashes the backend name, model, the backend's identity (generation settings, adapter) and
the rendered conversation (image bytes included). Cached ok replies are reused; identical requests in one run
are sent once; misses go to the backend in batches of `backend.batch_size`, and each finished batch is in the
cache before the next starts, so a killed run loses at most one batch. A batch that still fails after the
retries is split and its requests are tried one by one, so one bad request cannot fail its neighbours; final
failures are recorded as failures (never as answers).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from panderm.errors import BackendError
from panderm.mllm.backends.base import Backend
from panderm.mllm.cache import (
    CacheResult,
    ResponseCache,
    attempt_call,
    cache_record,
    call_with_cache,
    request_key,
)
from panderm.mllm.conversation import Conversation

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
    """One CacheResult per conversation, in order (see the module docstring for batching and failures)."""
    rendered = [backend.render(c) for c in conversations]
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
    **options: Any,
) -> list[CacheResult]:
    """`run_requests` with the response cache at `cache_path`, then `backend.close()` (also on failure)."""
    try:
        with ResponseCache(cache_path) as cache:
            return run_requests(backend, conversations, cache, **options)
    finally:
        backend.close()


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
    return replies
