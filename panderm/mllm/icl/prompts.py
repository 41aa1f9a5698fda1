"""ICL prompts: each demonstration is a user turn (image + question) answered by an assistant turn with its
gold answer; the query is the last user turn (0-shot: the query turn alone). The backend's adapter then sets
the model family's system prompt and image/text order."""

from __future__ import annotations

from collections.abc import Sequence

from panderm.mllm.conversation import Conversation
from panderm.mllm.icl.problems import Example


def icl_conversation(
    demos: Sequence[Example], query: Example, *, question: str | None = None
) -> Conversation:
    """The prompt for `query` after `demos`; `question` replaces the query's text (e.g. the MCQA form)."""
    conversation = Conversation()
    for demo in demos:
        conversation = conversation.user(demo.image, demo.question).assistant(demo.answer)
    return conversation.user(query.image, query.question if question is None else question)
