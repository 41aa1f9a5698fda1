"""Per-model-family prompt conventions: system prompt and image-before-text or text-before-image.

`adapter_for(model)` picks one by the model name (``adapter="auto"``) or by its name in `ADAPTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from panderm.errors import ConfigError
from panderm.mllm.conversation import Conversation, ImagePart, Turn

Order = Literal["image_first", "text_first", "as_given"]


@dataclass(frozen=True)
class Adapter:
    """`order` of parts within each turn (stable among images and among texts); `system_prompt` is added
    when the conversation has none (None: add nothing)."""

    name: str
    order: Order = "as_given"
    system_prompt: str | None = None

    def apply(self, conversation: Conversation) -> Conversation:
        turns = list(conversation.turns)
        if self.system_prompt and not (turns and turns[0].role == "system"):
            turns.insert(0, Turn("system", (self.system_prompt,)))
        if self.order != "as_given":
            turns = [Turn(t.role, _ordered(t.parts, self.order == "image_first")) for t in turns]
        return Conversation(tuple(turns))


def _ordered(parts: tuple, image_first: bool) -> tuple:
    images = tuple(p for p in parts if isinstance(p, ImagePart))
    texts = tuple(p for p in parts if not isinstance(p, ImagePart))
    return images + texts if image_first else texts + images


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("as_given"),
        # Qwen2/2.5-VL, LLaVA(-OneVision), InternVL/MedRegA: the image precedes the question in their training
        Adapter("qwen2_vl", "image_first", "You are a helpful assistant."),
        Adapter("llava", "image_first"),
        Adapter("medrega", "image_first"),
        # MedGemma's model card and OpenAI's examples put the instruction text before the image
        Adapter("medgemma", "text_first", "You are an expert medical imaging assistant."),
        Adapter("openai", "text_first"),
    )
}

# substrings of a lower-cased model name -> adapter (first match wins)
_AUTO: tuple[tuple[str, str], ...] = (
    ("medrega", "medrega"),
    ("qwen", "qwen2_vl"),
    ("llava", "llava"),
    ("medgemma", "medgemma"),
    ("gemma", "medgemma"),
    ("gpt-", "openai"),
)


def adapter_for(model: str, name: str = "auto") -> Adapter:
    """The adapter called `name`, or with ``name="auto"`` the one whose family appears in `model`."""
    if name != "auto":
        if name not in ADAPTERS:
            raise ConfigError(f"adapter={name!r} is not one of auto, {', '.join(ADAPTERS)}")
        return ADAPTERS[name]
    lowered = str(model).lower()
    return next((ADAPTERS[a] for key, a in _AUTO if key in lowered), ADAPTERS["as_given"])
