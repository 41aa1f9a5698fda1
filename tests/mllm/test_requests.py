"""Backend base, adapters and run_requests with a scripted fake backend (no model)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from panderm.errors import BackendError, ConfigError, DataError
from panderm.mllm.adapters import ADAPTERS, adapter_for
from panderm.mllm.backends import BACKENDS, backend_class
from panderm.mllm.backends.base import Backend, GenerationSettings
from panderm.mllm.cache import CacheResult, ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart, TextPart
from panderm.mllm.requests import backend_key, check_failures, failure_kind, run_requests


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
