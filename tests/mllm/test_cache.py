"""Response cache: request keys, JSONL persistence, retries, crash recovery and credential scrubbing."""

from __future__ import annotations

import json
import logging

import pytest

from panderm.errors import BackendError, DataError
from panderm.mllm.cache import CacheResult, ResponseCache, call_with_cache, request_key
from panderm.mllm.conversation import Conversation, ImagePart

META = {"backend": "fake", "model": "m1"}


class Counter:
    """A fake backend call: answers f"answer-{n}", optionally failing on chosen call numbers."""

    def __init__(self, fail_on=(), exc=None):
        self.calls = 0
        self.fail_on = set(fail_on)
        self.exc = exc if exc is not None else RuntimeError("boom")

    def __call__(self, answer="answer"):
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.exc
        return answer


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_request_key_counts_image_bytes_and_settings(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"pixels")
    b.write_bytes(b"pixels")
    conv_a = Conversation.system("s").user("q", ImagePart(path=a))
    conv_b = Conversation.system("s").user("q", ImagePart(path=b))
    key = request_key("fake", "m1", {"temperature": 0.0, "max_tokens": 8}, conv_a)
    assert key == request_key("fake", "m1", {"max_tokens": 8, "temperature": 0.0}, conv_b)
    assert len(key) == 64
    assert key != request_key("fake", "m1", {"temperature": 0.7, "max_tokens": 8}, conv_a)
    assert key != request_key("fake", "m2", {"temperature": 0.0, "max_tokens": 8}, conv_a)
    assert key != request_key("other", "m1", {"temperature": 0.0, "max_tokens": 8}, conv_a)
    b.write_bytes(b"other pixels")
    conv_c = Conversation.system("s").user("q", ImagePart(path=b))
    assert key != request_key("fake", "m1", {"temperature": 0.0, "max_tokens": 8}, conv_c)


def test_hit_does_not_call(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    call = Counter()
    first = call_with_cache(cache, "k", call, meta=META)
    second = call_with_cache(cache, "k", call, meta=META)
    assert first == CacheResult("ok", "answer", None, 1, cached=False)
    assert second == CacheResult("ok", "answer", None, 1, cached=True)
    assert call.calls == 1
    cache.close()
    reopened = ResponseCache(tmp_path / "c.jsonl")
    assert call_with_cache(reopened, "k", call, meta=META).cached
    assert call.calls == 1
    [record] = lines(tmp_path / "c.jsonl")
    assert record["backend"] == "fake" and record["model"] == "m1" and record["status"] == "ok"
    assert set(record) >= {"key", "response", "error", "attempts", "time"}


def test_retries_with_backoff(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    call = Counter(fail_on={1, 2})
    slept = []
    result = call_with_cache(cache, "k", call, sleep=slept.append, meta=META)
    assert result == CacheResult("ok", "answer", None, 3, cached=False)
    assert slept == [0.5, 1.0]
    assert cache.get("k")["attempts"] == 3


def test_final_failure_recorded_then_retried_on_new_instance(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    call = Counter(fail_on={1, 2, 3})
    slept = []
    result = call_with_cache(cache, "k", call, sleep=slept.append, meta=META)
    assert result == CacheResult("failed", None, "RuntimeError: boom", 3, cached=False)
    assert slept == [0.5, 1.0]  # no sleep after the last attempt
    assert cache.get("k")["status"] == "failed"
    cache.close()
    again = ResponseCache(path)
    retried = call_with_cache(again, "k", call, sleep=slept.append, meta=META)
    assert retried == CacheResult("ok", "answer", None, 1, cached=False)
    assert call.calls == 4
    assert [r["status"] for r in lines(path)] == ["failed", "ok"]
    assert ResponseCache(path).get("k")["status"] == "ok"


def test_non_retryable_exception_propagates_and_records_nothing(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    with pytest.raises(KeyError):
        call_with_cache(
            cache, "k", Counter(fail_on={1}, exc=KeyError("x")), retry_on=(RuntimeError,), meta=META
        )
    assert cache.get("k") is None
    with pytest.raises(BackendError, match="retries"):
        call_with_cache(cache, "k", Counter(), retries=0, meta=META)
    with pytest.raises(BackendError, match="not str"):
        call_with_cache(cache, "k", lambda: 3, meta=META)  # type: ignore[arg-type, return-value]


def test_truncated_last_line_ignored_and_repaired(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    with ResponseCache(path) as cache:
        call_with_cache(cache, "a", lambda: "A", meta=META)
        call_with_cache(cache, "b", lambda: "B", meta=META)
    good = path.read_bytes()
    path.write_bytes(good + b'{"key": "c", "sta')
    with caplog.at_level(logging.WARNING, logger="panderm.mllm.cache"):
        cache = ResponseCache(path)
    assert "truncated last line 3" in caplog.text
    assert path.read_bytes() == good  # repaired before any append
    assert cache.get("c") is None and cache.get("a")["response"] == "A" and len(cache) == 2
    call_with_cache(cache, "c", lambda: "C", meta=META)
    cache.close()
    assert [r["key"] for r in lines(path)] == ["a", "b", "c"]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "c.jsonl"
    with ResponseCache(path) as cache:
        call_with_cache(cache, "a", lambda: "A", meta=META)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with ResponseCache(path) as cache:
        assert cache.get("a")["response"] == "A"
        call_with_cache(cache, "b", lambda: "B", meta=META)
    assert [r["key"] for r in lines(path)] == ["a", "b"]


def test_corrupt_middle_line_raises_naming_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with ResponseCache(path) as cache:
        for key in "abc":
            call_with_cache(cache, key, lambda: "x", meta=META)
    rows = path.read_text().splitlines()
    rows[1] = rows[1][:20]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl.*line 2"):
        ResponseCache(path)
    rows[1] = json.dumps({"key": "b", "status": "maybe", "response": None, "error": None, "attempts": 1})
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="line 2: status 'maybe'"):
        ResponseCache(path)


def run_requests(cache, call, n=10):
    return [
        call_with_cache(cache, f"k{i}", lambda i=i: call(f"answer-{i}"), meta=META).response for i in range(n)
    ]


def test_killed_run_resumes_with_only_missing_calls(tmp_path):
    reference = run_requests(ResponseCache(tmp_path / "ref.jsonl"), Counter())
    path = tmp_path / "c.jsonl"
    killer = Counter(fail_on={6}, exc=KeyboardInterrupt())
    cache = ResponseCache(path)
    with pytest.raises(KeyboardInterrupt):
        run_requests(cache, killer)
    assert killer.calls == 6
    del cache  # the process "dies" without close()
    resumed = Counter()
    assert run_requests(ResponseCache(path), resumed) == reference
    assert resumed.calls == 5
    assert len(lines(path)) == 10


def test_credentials_never_written(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    meta = {
        **META,
        "api_key": "sk-secret-1",
        "Authorization": "Bearer sk-secret-2",
        "extra": {"OPENAI_API_KEY": "sk-secret-3", "max_tokens": 16},
        "prompt_id": "p1",
    }
    with caplog.at_level(logging.WARNING), ResponseCache(path) as cache:
        call_with_cache(cache, "k", lambda: "ok", meta=meta)
        cache.put(
            {"key": "j", "status": "ok", "response": "r", "error": None, "attempts": 1, "apiKey": "sk-4"}
        )
    text = path.read_text()
    assert "sk-" not in text and "secret" not in text.lower()
    [record, _] = lines(path)
    assert record["prompt_id"] == "p1" and record["extra"] == {"max_tokens": 16}
    assert "sk-" not in caplog.text  # values are never logged either
    assert "api_key" in caplog.text


def test_put_rejects_incomplete_record(tmp_path):
    with ResponseCache(tmp_path / "c.jsonl") as cache, pytest.raises(BackendError, match="missing field"):
        cache.put({"key": "k", "status": "ok"})
