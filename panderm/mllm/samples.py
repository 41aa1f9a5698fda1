"""The unit of a VQA run: one prompt conversation (with its image), the gold reply and the task it tests.

`TASKS` are the task names `panderm vqa task=...` accepts; each decides how a reply is scored
(`panderm.mllm.scoring`). `width`/`height` are the original image size in pixels, which region text needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panderm.errors import ConfigError
from panderm.mllm.conversation import Conversation

TASKS: tuple[str, ...] = ("vqa", "region_to_text", "text_to_region", "grounded_report", "classify")


@dataclass(frozen=True)
class VQASample:
    """`conversation` ends with the user turn to answer (earlier turns are history); `answer` is the gold."""

    id: str
    conversation: Conversation
    answer: str
    task: str
    image: Path | None = None
    width: int | None = None
    height: int | None = None
    language: str = "en"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"sample {self.id}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.conversation.turns or self.conversation.turns[-1].role != "user":
            raise ConfigError(f"sample {self.id}: the conversation must end with a user turn")
