"""LLM-as-judge: prompt, verdict parsing, and judge_rows against the local chat-completions server."""

from __future__ import annotations

import pytest

from panderm.errors import ConfigError, DataError
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.openai_api import OpenAIBackend
from panderm.mllm.cache import ResponseCache
from panderm.mllm.icl.judge import judge_accuracy, judge_conversation, judge_rows, parse_judgement
from tests.mllm import chat_server as server_module

# what the fake judge replies when the generated answer holds the key
VERDICTS = {"superficial spreading melanoma": "Yes.", "seborrheic keratosis": "no", "blue nevus": "Maybe?"}
ROWS = [
    {"question": "Diagnosis?", "true_answer": "melanoma", "generated_answer": generated}
    for generated in VERDICTS
]


@pytest.fixture
def judge(chat_server, monkeypatch):
    """An OpenAI-compatible judge backend whose server replies per VERDICTS."""

    def reply_for(body):
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else "\n".join(p.get("text", "") for p in last)
        return next((v for k, v in VERDICTS.items() if k in text), "unknown")

    monkeypatch.setattr(server_module, "reply_for", reply_for)
    backends = []

    def make(**options):
        backend = OpenAIBackend("judge-llm", base_url=chat_server.base_url, api_key_env=None, **options)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def test_judge_conversation_holds_all_three_texts():
    conv = judge_conversation("What is it? ", "melanoma", " a melanoma in situ ")
    assert [t.role for t in conv.turns] == ["system", "user"]
    assert "strict medical grader" in conv.turns[0].text
    user = conv.turns[1].text
    assert "What is it?" in user and "melanoma" in user and "a melanoma in situ" in user
    assert '"yes"' in user and '"no"' in user


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("yes", True),
        ("Yes.", True),
        (" YES! ", True),
        ("Correct", True),
        ("true", True),
        ("<answer>yes</answer>", True),
        ('"no"', False),
        ("No.", False),
        ("incorrect", False),
        ("False", False),
        ("<answer> No </answer>\n", False),
        ("**no**", False),
        ("maybe", None),
        ("Yes and no", None),
        ("The answers mean the same.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_judgement(reply, verdict):
    assert parse_judgement(reply) is verdict


def test_judge_rows_ok_unparseable_and_cache_reuse(chat_server, judge, tmp_path):
    with ResponseCache(tmp_path / "judge.jsonl") as cache:
        out = judge_rows(judge(), ROWS, cache, backoff=0)
    assert out == [
        {"judge_reply": "Yes.", "judge_correct": True, "judge_status": "ok"},
        {"judge_reply": "no", "judge_correct": False, "judge_status": "ok"},
        {"judge_reply": "Maybe?", "judge_correct": None, "judge_status": "unparseable"},
    ]
    assert len(chat_server.requests) == 3
    assert chat_server.bodies()[0]["temperature"] == 0
    assert judge_accuracy(out) == {"n": 3, "correct": 1, "unparseable": 1, "failed": 0, "accuracy": 50.0}
    with ResponseCache(tmp_path / "judge.jsonl") as cache:
        assert judge_rows(judge(), ROWS, cache) == out
    assert len(chat_server.requests) == 3  # every reply came from the cache


def test_failed_call_is_recorded_and_retried_on_the_next_run(chat_server, judge, tmp_path):
    chat_server.fail_next(2)  # both attempts of the first row's request
    with ResponseCache(tmp_path / "judge.jsonl") as cache:
        out = judge_rows(judge(), ROWS, cache, retries=2, backoff=0)
    assert out[0] == {"judge_reply": None, "judge_correct": None, "judge_status": "failed"}
    assert [r["judge_status"] for r in out[1:]] == ["ok", "unparseable"]
    assert len(chat_server.requests) == 4
    assert judge_accuracy(out) == {"n": 3, "correct": 0, "unparseable": 1, "failed": 1, "accuracy": 0.0}
    chat_server.misbehave_next(1, "null_content")
    with ResponseCache(tmp_path / "judge.jsonl") as cache:
        again = judge_rows(judge(), ROWS, cache, retries=2, backoff=0)
    assert len(chat_server.requests) == 6  # only the failed row is asked again (a broken reply, then ok)
    assert again[0] == {"judge_reply": "Yes.", "judge_correct": True, "judge_status": "ok"}


def test_judge_needs_temperature_zero_and_complete_rows(judge, tmp_path):
    bad_rows = [ROWS[0], {"question": "q", "true_answer": "t"}, {**ROWS[0], "question": None}]
    with ResponseCache(tmp_path / "judge.jsonl") as cache:
        with pytest.raises(ConfigError, match=r"temperature must be 0.*0\.7"):
            judge_rows(judge(settings=GenerationSettings(temperature=0.7)), ROWS, cache)
        with pytest.raises(DataError, match=r"row 1: generated_answer is missing.*row 2: question"):
            judge_rows(judge(), bad_rows, cache)
    assert judge_accuracy([]) == {"n": 0, "correct": 0, "unparseable": 0, "failed": 0, "accuracy": None}
