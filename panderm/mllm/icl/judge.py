"""LLM-as-judge for open-ended ICL answers: any backend, greedy decoding, through the response cache.

The judge sees the question, the reference answer and the generated answer and must reply "yes" (same
meaning) or "no". A reply that reads as neither is *unparseable* and a call that still fails after the
retries is *failed*; both are recorded as such and never counted as right or wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from panderm.errors import ConfigError, DataError
from panderm.mllm.backends.base import Backend
from panderm.mllm.cache import ResponseCache
from panderm.mllm.conversation import Conversation
from panderm.mllm.requests import run_requests

JUDGE_SYSTEM = (
    "You are a strict medical grader. You compare a generated answer with a reference answer and say "
    "whether they mean the same thing."
)
ROW_FIELDS = ("question", "true_answer", "generated_answer")
JUDGE_STATUSES = ("ok", "failed", "unparseable")
_VERDICTS = {"yes": True, "correct": True, "true": True, "no": False, "incorrect": False, "false": False}
_TAG = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.I | re.S)
_EDGES = " \t\r\n.,;:!?\"'`*_()[]"


def judge_conversation(question: str, true_answer: str, generated: str) -> Conversation:
    """The judge prompt for one answer: a strict-grader system turn and a yes/no user turn."""
    prompt = (
        f"Question: {question.strip()}\n"
        f"Reference answer: {true_answer.strip()}\n"
        f"Generated answer: {generated.strip()}\n\n"
        "Does the generated answer mean the same as the reference answer (the same diagnosis, finding or "
        "fact, however it is worded)? An answer that is vaguer, adds a wrong claim or names a different "
        'condition does not. Reply with exactly one word: "yes" or "no".'
    )
    return Conversation.system(JUDGE_SYSTEM).user(prompt)


def parse_judgement(reply: str | None) -> bool | None:
    """True for "yes"/"correct"/"true", False for "no"/"incorrect"/"false" (any case, optionally inside
    ``<answer></answer>``, surrounding punctuation and quotes ignored); None for anything else."""
    text = reply or ""
    tag = _TAG.fullmatch(text)
    if tag:
        text = tag.group(1)
    return _VERDICTS.get(text.strip(_EDGES).lower())


def judge_rows(
    backend: Backend,
    rows: Sequence[Mapping[str, str]],
    cache: ResponseCache,
    *,
    retries: int = 3,
    backoff: float = 0.5,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Judge each row (question, true_answer, generated_answer) with `backend` at temperature 0.

    Requests go through :func:`panderm.mllm.requests.run_requests` (cached, resumable, retried). Per row:
    ``judge_reply`` (None when the call failed), ``judge_correct`` (True/False, None unless parsed) and
    ``judge_status`` ("ok", "unparseable" or "failed"). ConfigError when the backend does not decode at
    temperature 0; DataError listing every row with a missing or non-text field.
    """
    if backend.settings.temperature != 0:
        raise ConfigError(
            f"judge backend {backend.name} ({backend.model}): temperature must be 0 for a reproducible "
            f"judge, got {backend.settings.temperature}"
        )
    problems = [
        f"row {i}: {field} is {'missing' if field not in row else 'not text'}"
        for i, row in enumerate(rows)
        for field in ROW_FIELDS
        if not isinstance(row.get(field), str)
    ]
    if problems:
        raise DataError(f"judge rows: {len(problems)} problem(s): " + "; ".join(problems))
    conversations = [judge_conversation(*(row[f] for f in ROW_FIELDS)) for row in rows]
    results = run_requests(backend, conversations, cache, retries=retries, backoff=backoff, progress=progress)
    out = []
    for result in results:
        verdict = parse_judgement(result.response) if result.status == "ok" else None
        status = "failed" if result.status != "ok" else "ok" if verdict is not None else "unparseable"
        out.append({"judge_reply": result.response, "judge_correct": verdict, "judge_status": status})
    return out


def judge_accuracy(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and accuracy of judged rows: ``n`` (all rows), ``correct``, ``unparseable``, ``failed`` and
    ``accuracy`` = 100 * correct / (n - unparseable - failed), i.e. in percent over the rows whose verdict
    was parsed (None when there are none)."""
    statuses = [r["judge_status"] for r in results]
    unknown = sorted({s for s in statuses if s not in JUDGE_STATUSES})
    if unknown:
        raise DataError(f"judge results: judge_status {unknown} not among {', '.join(JUDGE_STATUSES)}")
    correct = sum(1 for r in results if r["judge_status"] == "ok" and r["judge_correct"] is True)
    parsed = statuses.count("ok")
    return {
        "n": len(statuses),
        "correct": correct,
        "unparseable": statuses.count("unparseable"),
        "failed": statuses.count("failed"),
        "accuracy": 100.0 * correct / parsed if parsed else None,
    }
