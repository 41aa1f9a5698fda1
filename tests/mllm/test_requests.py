"""Backend base, adapters and run_requests with a scripted fake backend (no model)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import torch

from panderm.errors import BackendError, ConfigError, DataError
from panderm.mllm.adapters import ADAPTERS, adapter_for
from panderm.mllm.backends import BACKENDS, backend_class
from panderm.mllm.backends.base import Backend, GenerationSettings
from panderm.mllm.cache import CacheResult, ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart, TextPart
from panderm.mllm.requests import backend_key, check_failures, failure_kind, is_transient, run_requests


class Scripted(Backend):
    """Replies "<last user text>!"; fails on texts listed in `bad` and for the first `flaky` batch calls."""

    name = "scripted"

    def __init__(self, bad: Sequence[str] = (), flaky: int = 0, **kw) -> None:
        super().__init__("scripted-1", **kw)
        self.bad, self.flaky, self.calls = set(bad), flaky, []

    def generate(self, conversations):
        self.calls.append([c.turns[-1].text for c in conversations])
        if self.flaky:
            self.flaky -= 1
            raise TimeoutError("transient")
        if any(c.turns[-1].text in self.bad for c in conversations):
            raise RuntimeError("model refused")
        return [c.turns[-1].text + "!" for c in conversations]


def convs(*texts: str) -> list[Conversation]:
    return [Conversation.user(t) for t in texts]


def test_generation_settings_validate_everything_at_once():
    with pytest.raises(ConfigError) as err:
        GenerationSettings(max_new_tokens=0, temperature=-1, top_p=0)
    assert all(k in str(err.value) for k in ("max_new_tokens", "temperature", "top_p"))
    assert GenerationSettings().greedy and not GenerationSettings(temperature=0.7).greedy


def test_adapters_order_parts_and_add_system_prompt():
    img = ImagePart(data=b"\x89PNG-a")
    conv = Conversation.user("question", img)
    qwen = adapter_for("Qwen/Qwen2-VL-2B-Instruct").apply(conv)
    assert [t.role for t in qwen.turns] == ["system", "user"]
    assert isinstance(qwen.turns[1].parts[0], ImagePart) and qwen.turns[1].parts[1] == TextPart("question")
    gpt = adapter_for("gpt-4o").apply(Conversation.user(img, "question"))
    assert gpt.turns[0].parts == (TextPart("question"), img)
    given = adapter_for("my-model").apply(conv)
    assert given == conv  # unknown family: untouched
    own_system = Conversation.system("Be brief.").user(img, "q")
    assert adapter_for("qwen2.5-vl").apply(own_system).turns[0].text == "Be brief."
    assert adapter_for("anything", "llava") is ADAPTERS["llava"]
    with pytest.raises(ConfigError, match="adapter='nope'"):
        adapter_for("m", "nope")


def test_registry_names_every_backend():
    assert set(BACKENDS) == {"hf", "openai", "expert", "random", "majority", "knn_icl"}
    assert all(backend_class(name).name == name for name in BACKENDS)
    with pytest.raises(ConfigError, match="backend='gemini'"):
        backend_class("gemini")


def test_batches_cache_and_dedupe(tmp_path):
    backend = Scripted(batch_size=2)
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs("a", "b", "a", "c"), cache)
    assert [r.response for r in out] == ["a!", "b!", "a!", "c!"]
    assert backend.calls == [["a", "b"], ["c"]]  # the repeated "a" is sent once
    again = Scripted(batch_size=2)
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out2 = run_requests(again, convs("a", "b", "c", "d"), cache)
    assert again.calls == [["d"]]
    assert [r.cached for r in out2] == [True, True, True, False]


def test_key_depends_on_settings_adapter_and_model():
    conv = Conversation.user("q")
    base = Scripted()
    assert backend_key(base, conv) != backend_key(
        Scripted(settings=GenerationSettings(max_new_tokens=9)), conv
    )
    assert backend_key(base, conv) != backend_key(Scripted(adapter="qwen2_vl"), base.render(conv))
    assert backend_key(base, conv) == backend_key(Scripted(batch_size=4), conv)  # batching changes nothing


def test_failed_batch_falls_back_to_single_requests(tmp_path):
    backend = Scripted(bad=["b"], batch_size=3)
    sleeps: list[float] = []
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs("a", "b", "c"), cache, retries=2, backoff=0.1, sleep=sleeps.append)
    assert [r.status for r in out] == ["ok", "failed", "ok"]
    assert out[1].response is None and "model refused" in out[1].error and out[1].attempts == 2
    # 2 batch attempts, then a, b (2 attempts), c one by one
    assert backend.calls == [["a", "b", "c"]] * 2 + [["a"], ["b"], ["b"], ["c"]]
    assert sleeps == [0.1, 0.1]
    retry = Scripted(batch_size=3)
    with ResponseCache(tmp_path / "c.jsonl") as cache:  # the failure is retried next run, the rest cached
        out = run_requests(retry, convs("a", "b", "c"), cache)
    assert retry.calls == [["b"]] and [r.response for r in out] == ["a!", "b!", "c!"]


def test_transient_batch_failure_is_retried(tmp_path):
    backend = Scripted(flaky=1, batch_size=2)
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs("a", "b"), cache, sleep=lambda s: None)
    assert [(r.status, r.attempts) for r in out] == [("ok", 2), ("ok", 2)]
    assert len(backend.calls) == 2


def test_wrong_number_of_replies_is_a_failure_not_an_answer(tmp_path):
    class Extra(Scripted):
        def generate(self, conversations):
            return ["x"] * (len(conversations) + 1)

    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(Extra(batch_size=2), convs("a", "b", "c"), cache, retries=1)
    assert [r.status for r in out] == ["failed"] * 3
    assert all("2 replies for 1" in r.error for r in out)


def test_failures_are_summed_up_by_kind_and_checked_against_the_allowed_share(caplog):
    errors = [
        "BackendError: openai backend (model='m', base_url=http://h/v1/): HTTP 500: boom",
        "BackendError: openai backend (model='m', base_url=http://h/v1/): no reply within timeout=2 s",
        "BackendError: openai backend (model='m', base_url=http://h/v1/): connection failed: refused",
        "RuntimeError: CUDA out of memory",
    ]
    failed = [CacheResult("failed", None, e, 3, cached=False) for e in errors]
    assert [failure_kind(e) for e in errors] == ["HTTP 500", "timeout", "connection failed", "RuntimeError"]
    ok = CacheResult("ok", "yes", None, 1, cached=True)
    check_failures([ok, *failed])  # a partly failed run passes and says so
    assert "4 of 5 requests failed (HTTP 500: 1, timeout: 1, connection failed: 1, RuntimeError: 1)" in (
        caplog.text
    )
    with pytest.raises(BackendError, match=r"(?s)4 of 4 requests failed.*HTTP 500: boom.*every request"):
        check_failures(failed, cache="responses.jsonl")
    with pytest.raises(BackendError, match=r"more than max_failed_fraction=0\.5"):
        check_failures([ok, *failed], 0.5)
    check_failures(failed, 1.0)
    check_failures([ok], 0.0)
    with pytest.raises(ConfigError, match=r"max_failed_fraction=1\.5"):
        check_failures([ok], 1.5)


def test_images_that_do_not_decode_are_refused_before_any_request(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("root:x:0:0")
    backend = Scripted()
    bad = [Conversation.user(ImagePart(path=text, source="file.csv row 4"), "q"), Conversation.user("ok")]
    with ResponseCache(tmp_path / "c.jsonl") as cache, pytest.raises(DataError) as err:
        run_requests(backend, bad, cache)
    assert "file.csv row 4" in str(err.value) and "not an image" in str(err.value)
    assert backend.calls == [] and not (tmp_path / "c.jsonl").exists()


def test_a_lone_surrogate_in_a_reply_is_replaced_once_for_every_writer(tmp_path):
    """A reply holding half a UTF-16 pair (JSON may escape one) is cached and returned with U+FFFD instead
    of crashing the UTF-8 cache; the rest of the text is kept."""

    class HalfEmoji(Scripted):
        def generate(self, conversations):
            return ["ok \ud83d done" for _ in conversations]

    with ResponseCache(tmp_path / "c.jsonl") as cache:
        (result,) = run_requests(HalfEmoji(), convs("a"), cache)
    assert result.status == "ok" and result.response == "ok \ufffd done"
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        (again,) = run_requests(HalfEmoji(), convs("a"), cache)
    assert again.cached and again.response == "ok \ufffd done"


class Failing(Scripted):
    """Scripted, but a call holding a text in `raises` raises that text's exception, and (with `no_batches`)
    every call of more than one conversation fails the way a processor that cannot batch does."""

    def __init__(self, raises: dict[str, BaseException] | None = None, no_batches: bool = False, **kw):
        super().__init__(**kw)
        self.raises, self.no_batches = raises or {}, no_batches

    def generate(self, conversations):
        texts = [c.turns[-1].text for c in conversations]
        self.calls.append(texts)
        if self.no_batches and len(texts) > 1:
            try:
                raise ValueError("images of different sizes cannot be stacked")
            except ValueError as exc:  # as hf.py does: the processor's error wrapped in a BackendError
                raise BackendError(f"hf backend: generation failed: {exc}") from exc
        for text in texts:
            if text in self.raises:
                raise self.raises[text]
        return [t + "!" for t in texts]


class ClientStatusError(Exception):
    """An HTTP client's error: the status is an attribute, not in the message."""

    def __init__(self, status_code: int) -> None:
        super().__init__("request rejected")
        self.status_code = status_code


def _status_error(status: int) -> BackendError:
    """What the openai backend raises for an HTTP error: the client's exception hidden with `from None`."""
    try:
        try:
            raise ClientStatusError(status)
        except ClientStatusError as exc:
            raise BackendError(f"openai backend (model='m'): HTTP {exc.status_code}: nope") from None
    except BackendError as wrapped:
        return wrapped


def _wrapped(exc: BaseException) -> BackendError:
    try:
        raise BackendError(f"hf backend: generation failed: {type(exc).__name__}: {exc}") from exc
    except BackendError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (_status_error(429), True),
        (_status_error(500), True),
        (_status_error(503), True),
        (_status_error(408), True),
        (_status_error(400), False),
        (_status_error(401), False),
        (_status_error(403), False),
        (_status_error(404), False),
        (_status_error(413), False),
        (_status_error(422), False),
        (BackendError("openai backend (model='m'): HTTP 400: maximum context length is 4096 tokens"), False),
        (BackendError("openai backend (model='m'): no reply within timeout=2 s"), True),
        (BackendError("openai backend (model='m'): connection failed: refused"), True),
        (_wrapped(ValueError("Mismatch in `image` token count")), False),
        (_wrapped(TypeError("unexpected keyword argument 'pixel_values'")), False),
        (_wrapped(torch.OutOfMemoryError("CUDA out of memory")), False),
        (_wrapped(TimeoutError("slow disk")), True),
        (BackendError("scripted backend returned 3 replies for 2 conversations (expected one str)"), False),
        (ClientStatusError(429), True),
        (ClientStatusError(422), False),
        (_wrapped(ClientStatusError(502)), True),
        (RuntimeError("model refused"), True),  # unexplained: retried as before
    ],
)
def test_failures_are_classified_transient_or_deterministic(error, transient):
    assert is_transient(error) is transient


def test_a_deterministic_failure_is_not_retried(tmp_path):
    backend = Failing(raises={"b": _wrapped(ValueError("prompt longer than the context"))}, batch_size=3)
    sleeps: list[float] = []
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs("a", "b", "c", "d"), cache, retries=3, sleep=sleeps.append)
    assert [r.status for r in out] == ["ok", "failed", "ok", "ok"]
    assert out[1].attempts == 1 and "prompt longer than the context" in out[1].error
    # one batch call, then one call each, no backoff; "b" alone explains the failure, so batching goes on
    assert backend.calls == [["a", "b", "c"], ["a"], ["b"], ["c"], ["d"]] and sleeps == []
    again = Failing(raises={"b": _status_error(413)}, batch_size=2)
    with ResponseCache(tmp_path / "d.jsonl") as cache:
        out = run_requests(again, convs("a", "b", "c", "d"), cache, retries=3, sleep=sleeps.append)
    assert again.calls == [["a", "b"], ["a"], ["b"], ["c", "d"]] and sleeps == []
    assert [r.attempts for r in out] == [1, 1, 1, 1]


def test_transient_failures_are_still_retried_with_backoff(tmp_path):
    backend = Failing(raises={"b": _status_error(503)}, batch_size=2)
    sleeps: list[float] = []
    with ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs("a", "b"), cache, retries=3, backoff=0.5, sleep=sleeps.append)
    assert backend.calls == [["a", "b"]] * 3 + [["a"]] + [["b"]] * 3
    assert sleeps == [0.5, 1.0, 0.5, 1.0] and [r.status for r in out] == ["ok", "failed"]
    assert out[1].attempts == 3 and "HTTP 503" in out[1].error


def test_a_batch_that_fails_structurally_says_so_once_and_the_run_goes_on_one_by_one(tmp_path, caplog):
    backend = Failing(no_batches=True, batch_size=3)
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING), ResponseCache(tmp_path / "c.jsonl") as cache:
        out = run_requests(backend, convs(*"abcdefgh"), cache, retries=3, sleep=sleeps.append)
    assert [r.response for r in out] == [t + "!" for t in "abcdefgh"]
    # three batches, but only the first is tried as a batch (once): the rest go straight to single requests
    assert backend.calls == [["a", "b", "c"]] + [[t] for t in "abcdefgh"] and sleeps == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "scripted backend" in message and "images of different sizes cannot be stacked" in message
    assert "one request at a time" in message
