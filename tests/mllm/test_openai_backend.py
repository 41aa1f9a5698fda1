"""OpenAI-compatible backend: the real `openai` client against a local chat-completions server."""

from __future__ import annotations

import io
import json
import logging
import socket
from base64 import b64decode, b64encode

import numpy as np
import pytest
from PIL import Image

from panderm.errors import BackendError, ConfigError
from panderm.mllm.backends import build_backend, openai_api
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.openai_api import OpenAIBackend
from panderm.mllm.cache import ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.requests import backend_key, failure_kind, is_transient, run_requests
from tests.mllm.chat_server import MISBEHAVIOURS

KEY_ENV = "PANDERM_TEST_OPENAI_KEY"
KEY = "sk-test-Zq9v8XkL2m"


def encoded(format: str, value: int) -> bytes:
    """A tiny real image (only bytes that decode as an image are sent)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, format=format)
    return buffer.getvalue()


PNG = ImagePart(data=encoded("PNG", 10))
JPEG = ImagePart(data=encoded("JPEG", 200), mime="image/jpeg")


def no_sleep(_: float) -> None:
    pass


@pytest.fixture
def make(chat_server, monkeypatch):
    """Build an OpenAIBackend against the test server, with the key in KEY_ENV."""
    monkeypatch.setenv(KEY_ENV, KEY)
    built: list[OpenAIBackend] = []

    def _make(model: str = "test-vlm", **options) -> OpenAIBackend:
        options = {"base_url": chat_server.base_url, "api_key_env": KEY_ENV, **options}
        backend = OpenAIBackend(model, **options)
        built.append(backend)
        return backend

    yield _make
    for backend in built:
        backend.close()


def run(backend, convs, path, **kw):
    kw = {"retries": 3, "sleep": no_sleep, **kw}
    with ResponseCache(path) as cache:
        return run_requests(backend, convs, cache, **kw)


def user_content(body, index=-1):
    return [m for m in body["messages"] if m["role"] == "user"][index]["content"]


def test_data_urls_carry_exact_base64_and_mime(chat_server, make):
    backend = make(adapter="as_given")
    assert backend.generate([Conversation.user("Describe both.", PNG, JPEG)]) == [
        "images=2; last=Describe both."
    ]
    content = user_content(chat_server.bodies()[0])
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert urls == [
        "data:image/png;base64," + b64encode(PNG.bytes()).decode(),
        "data:image/jpeg;base64," + b64encode(JPEG.bytes()).decode(),
    ]
    assert b64decode(urls[1].split(",", 1)[1]) == JPEG.bytes()


@pytest.mark.parametrize(
    ("model", "adapter", "first", "system"),
    [
        ("gpt-4o-mini", "auto", "text", None),
        ("test-vlm", "openai", "text", None),
        ("test-vlm", "qwen2_vl", "image_url", "You are a helpful assistant."),
    ],
)
def test_part_order_and_system_prompt_follow_the_adapter(
    chat_server, make, tmp_path, model, adapter, first, system
):
    backend = make(model, adapter=adapter)
    [result] = run(backend, [Conversation.user(PNG, "What is this?")], tmp_path / "c.jsonl")
    assert result.status == "ok" and result.response == "images=1; last=What is this?"
    body = chat_server.bodies()[0]
    assert [p["type"] for p in user_content(body)] == [first, ({"text", "image_url"} - {first}).pop()]
    assert [m["content"] for m in body["messages"] if m["role"] == "system"] == ([system] if system else [])


def test_system_prompt_and_demonstrations_arrive_as_sent(chat_server, make):
    conv = (
        Conversation.system("You are a dermatologist.")
        .user(PNG, "Case 1: diagnosis?")
        .assistant("melanoma")
        .user(JPEG, "Case 2: diagnosis?")
    )
    backend = make(adapter="as_given")
    assert backend.generate([conv]) == ["images=2; last=Case 2: diagnosis?"]
    messages = chat_server.bodies()[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "You are a dermatologist."
    assert messages[2]["content"] == "melanoma"
    assert messages[1]["content"][1] == {"type": "text", "text": "Case 1: diagnosis?"}
    assert messages[3]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_generation_settings_and_extra_body_reach_the_server(chat_server, make):
    settings = GenerationSettings(max_new_tokens=7, temperature=0.0, top_p=0.9, seed=42)
    backend = make("served-model", settings=settings, extra_body={"top_k": 1})
    backend.generate([Conversation.user("hi")])
    body = chat_server.bodies()[0]
    assert body["model"] == "served-model"
    assert (body["temperature"], body["top_p"], body["seed"], body["top_k"]) == (0.0, 0.9, 42, 1)
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body
    assert backend.identity()["extra_body"] == {"top_k": 1}
    plain = make("served-model", settings=settings)
    rendered = backend.render(Conversation.user("hi"))
    assert backend_key(backend, rendered) != backend_key(plain, rendered)  # extra_body changes replies

    legacy = make(settings=settings, max_tokens_param="max_tokens")
    legacy.generate([Conversation.user("hi")])
    assert (
        chat_server.bodies()[1]["max_tokens"] == 7 and "max_completion_tokens" not in chat_server.bodies()[1]
    )


def test_key_reaches_the_server_and_nothing_else(chat_server, make, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    backend = make()
    chat_server.fail_next(1, 401, "invalid key in {authorization}")  # a server that echoes the credential
    convs = [Conversation.user("first"), Conversation.user(PNG, "second")]
    out = run(backend, convs, tmp_path / "c.jsonl")
    assert [r.status for r in out] == ["failed", "ok"]
    assert "HTTP 401" in out[0].error and "***" in out[0].error and out[0].attempts == 1  # not retried
    headers = [r["headers"]["authorization"] for r in chat_server.requests]
    assert headers == [f"Bearer {KEY}"] * 2
    assert KEY not in (tmp_path / "c.jsonl").read_text()
    assert KEY not in caplog.text and "HTTP 401" in caplog.text
    assert KEY not in repr(backend) and KEY_ENV in repr(backend)
    assert KEY not in json.dumps(backend.identity())
    assert KEY not in json.dumps(vars(backend), default=str)


def test_missing_key_is_a_config_error_and_none_sends_a_placeholder(chat_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        OpenAIBackend("m", base_url=chat_server.base_url, api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(ConfigError, match=KEY_ENV):
        OpenAIBackend("m", base_url=chat_server.base_url, api_key_env=KEY_ENV)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the client would pick this up by itself if given None
    local = OpenAIBackend("m", base_url=chat_server.base_url, api_key_env=None)
    assert local.generate([Conversation.user("hi")]) == ["images=0; last=hi"]
    assert chat_server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"
    local.close()


@pytest.mark.parametrize("status", [500, 429])
def test_transient_failure_is_retried_by_run_requests(chat_server, make, tmp_path, status):
    chat_server.fail_next(1, status)
    [result] = run(make(), [Conversation.user("hi")], tmp_path / "c.jsonl")
    assert (result.status, result.response, result.attempts) == ("ok", "images=0; last=hi", 2)
    assert len(chat_server.requests) == 2  # the client itself never retried


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_deterministic_failure_is_not_retried_by_run_requests(chat_server, make, tmp_path, status):
    chat_server.fail_next(1, status, "maximum context length exceeded")
    [result] = run(make(), [Conversation.user("hi")], tmp_path / "c.jsonl")
    assert (result.status, result.attempts) == ("failed", 1) and f"HTTP {status}" in result.error
    assert len(chat_server.requests) == 1


def test_persistent_failure_is_recorded_and_retried_on_rerun(chat_server, make, tmp_path):
    chat_server.fail_next(3, 503)
    conv = [Conversation.user("hi")]
    [failed] = run(make(), conv, tmp_path / "c.jsonl")
    assert (failed.status, failed.response, failed.attempts) == ("failed", None, 3)
    assert (
        "BackendError" in failed.error
        and "HTTP 503" in failed.error
        and "injected failure 503" in failed.error
    )
    [again] = run(make(), conv, tmp_path / "c.jsonl")
    assert (again.status, again.response, again.cached) == ("ok", "images=0; last=hi", False)
    assert len(chat_server.requests) == 4


@pytest.mark.parametrize("kind", MISBEHAVIOURS)
def test_broken_replies_fail_and_are_never_answers(chat_server, make, tmp_path, kind):
    backend = make()
    chat_server.misbehave_next(1, kind)
    with pytest.raises(BackendError, match="openai backend"):
        backend.generate([Conversation.user("hi")])
    chat_server.misbehave_next(1, kind)
    [result] = run(backend, [Conversation.user("hi")], tmp_path / "c.jsonl", retries=1)
    assert (result.status, result.response) == ("failed", None)


def test_connection_and_timeout_errors_are_backend_errors(chat_server, make, monkeypatch):
    chat_server.delay = 0.5
    with pytest.raises(BackendError, match=r"timeout=0\.1"):
        make(timeout=0.1).generate([Conversation.user("hi")])
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(BackendError, match="connection failed"):
        make(base_url=closed).generate([Conversation.user("hi")])


def test_concurrent_batches_give_the_same_replies_in_order(chat_server, make, tmp_path):
    convs = [Conversation.user(PNG if i % 2 else JPEG, f"question {i}") for i in range(8)]
    sequential = run(make(batch_size=1), convs, tmp_path / "one.jsonl")
    assert chat_server.max_in_flight == 1
    chat_server.delay = 0.2
    concurrent = run(make(batch_size=4), convs, tmp_path / "four.jsonl")
    assert [r.response for r in concurrent] == [r.response for r in sequential]
    assert [r.response for r in sequential] == [f"images=1; last=question {i}" for i in range(8)]
    assert chat_server.max_in_flight == 4


def test_each_unique_image_is_encoded_once(make, monkeypatch):
    calls = []
    monkeypatch.setattr(openai_api, "b64encode", lambda data: calls.append(data) or b64encode(data))
    backend = make(adapter="as_given")
    demo = Conversation.user(PNG, "example").assistant("nevus")
    backend.generate([demo.user(JPEG, "query 1"), demo.user(ImagePart(data=PNG.bytes()), "query 2")])
    assert sorted(calls) == sorted([PNG.bytes(), JPEG.bytes()])


def test_registry_builds_the_backend(chat_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = build_backend("openai", model="gpt-4o", base_url=chat_server.base_url, api_key_env=KEY_ENV)
    assert isinstance(backend, OpenAIBackend) and backend.adapter.name == "openai"
    assert backend.generate([Conversation.user("hi")]) == ["images=0; last=hi"]
    backend.close()


def test_invalid_options_name_the_field(make):
    with pytest.raises(ConfigError, match="timeout"):
        make(timeout=0)
    with pytest.raises(ConfigError, match="max_tokens_param"):
        make(max_tokens_param="max_length")
    with pytest.raises(ConfigError, match="extra_body sets temperature"):
        make(extra_body={"temperature": 1.0})
    with pytest.raises(ConfigError, match="api_key_env"):
        make(api_key_env="")
    with pytest.raises(ConfigError, match="turn 1"):
        make().generate([Conversation.user("q").add("assistant", PNG)])


# -- serving at scale: concurrency, time-outs, image options ----------------------------------------------


def test_batch_size_caps_the_requests_in_flight_and_they_overlap(chat_server, make):
    chat_server.delay = 0.2  # each request is held, so concurrent ones are seen in flight together
    convs = [Conversation.user(f"question {i}") for i in range(7)]
    replies = make(batch_size=3).generate(convs)
    assert replies == [f"images=0; last=question {i}" for i in range(7)]
    assert len(chat_server.requests) == 7 and chat_server.max_in_flight == 3


def test_a_reply_slower_than_timeout_fails_naming_it_and_is_retried_as_transient(chat_server, make, tmp_path):
    chat_server.delay = 0.3
    backend = make(timeout=0.05)
    with pytest.raises(BackendError, match=r"no reply within timeout=0\.05 s") as caught:
        backend.generate([Conversation.user("hi")])
    assert is_transient(caught.value) and failure_kind(str(caught.value)) == "timeout"
    [result] = run(backend, [Conversation.user("again")], tmp_path / "c.jsonl", retries=2)
    assert (result.status, result.attempts) == ("failed", 2) and "timeout=0.05" in result.error
    assert len(chat_server.requests) == 3  # one direct call, then two attempts


def image_urls(body):
    return [
        p["image_url"]
        for m in body["messages"]
        if m["role"] == "user"
        for p in m["content"]
        if "image_url" in p
    ]


def test_image_detail_is_sent_when_set_and_changes_the_key(chat_server, make):
    conv = Conversation.user("Describe.", PNG, JPEG)
    plain, low = make(adapter="as_given"), make(adapter="as_given", image_detail="low")
    plain.generate([conv])
    low.generate([conv])
    assert [set(u) for u in image_urls(chat_server.bodies()[0])] == [{"url"}, {"url"}]
    assert [u["detail"] for u in image_urls(chat_server.bodies()[1])] == ["low", "low"]
    assert "image_detail" not in plain.identity() and low.identity()["image_detail"] == "low"
    keys = {
        backend_key(b, b.render(conv)) for b in (plain, low, make(adapter="as_given", image_detail="high"))
    }
    assert len(keys) == 3


def decoded_url(url: str) -> tuple[str, Image.Image]:
    head, data = url.split(",", 1)
    return head, Image.open(io.BytesIO(b64decode(data)))


def test_max_image_side_downscales_larger_images_only(chat_server, make):
    rng = np.random.default_rng(0)
    big_pixels = rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)  # 60 wide, 30 high
    buffer = io.BytesIO()
    Image.fromarray(big_pixels).save(buffer, format="JPEG")
    big = ImagePart(data=buffer.getvalue(), mime="image/jpeg")
    backend = make(adapter="as_given", max_image_side=16)
    backend.generate([Conversation.user("Both?", big, JPEG)])
    [sent_big, sent_small] = [u["url"] for u in image_urls(chat_server.bodies()[0])]
    head, image = decoded_url(sent_big)
    expected = Image.open(io.BytesIO(big.bytes())).convert("RGB").resize((16, 8), Image.Resampling.LANCZOS)
    assert head == "data:image/png;base64" and image.size == (16, 8)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert backend.sent_image(big).size == (16, 8)
    assert sent_small == "data:image/jpeg;base64," + b64encode(JPEG.bytes()).decode()  # 4x4: byte for byte
    plain = make(adapter="as_given")
    conv = plain.render(Conversation.user("q", big))
    assert backend.identity()["max_image_side"] == 16 and "max_image_side" not in plain.identity()
    assert backend_key(backend, conv) != backend_key(plain, conv)


def test_max_images_refuses_a_conversation_before_any_request(chat_server, make, tmp_path):
    backend = make(max_images=2)
    ok, over = Conversation.user(PNG, "one"), Conversation.user(PNG, JPEG, PNG, "three")
    with pytest.raises(ConfigError, match=r"3 images, more than max_images=2.*--limit-mm-per-prompt"):
        run(backend, [ok, over], tmp_path / "c.jsonl")
    with pytest.raises(ConfigError, match="3 images"):
        backend.generate([ok, over])
    assert chat_server.requests == [] and not (tmp_path / "c.jsonl").exists()
    assert backend.generate([Conversation.user(PNG, JPEG, "two")]) == ["images=2; last=two"]
    assert "max_images" not in backend.identity()  # a limit changes no reply


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("image_detail", "medium"),
        ("image_detail", ""),
        ("max_image_side", 0),
        ("max_image_side", 12.5),
        ("max_images", -1),
        ("max_images", True),
    ],
)
def test_invalid_image_options_name_the_field(make, option, value):
    with pytest.raises(ConfigError, match=rf"{option} must be .*got {value!r}"):
        make(**{option: value})
