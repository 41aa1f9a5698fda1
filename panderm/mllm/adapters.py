"""Per-model-family prompt conventions: system prompt and image-before-text or text-before-image.

`adapter_for(model)` picks one by its name in `ADAPTERS`, or with ``adapter="auto"`` by the model's family:
first from the model's own config (`model_type`, then `architectures`, in ``<model>/config.json`` of a local
folder, or the config of an already loaded model), so a fine-tuned Qwen2-VL saved as ``checkpoint-1000`` is
still prompted as Qwen; only when no config names a known family, by a family name inside the model name.
Fine-tunes that keep their base's config (MedGemma is a Gemma 3, MedRegA an InternVL) are told apart by
their name within that family.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
        # Qwen2/2.5/3-VL, LLaVA(-NeXT, -OneVision), InternVL and MedRegA (InternVL-based): the image precedes
        # the question in their training data and model cards
        Adapter("qwen2_vl", "image_first", "You are a helpful assistant."),
        Adapter("llava", "image_first"),
        Adapter("internvl", "image_first"),
        Adapter("medrega", "image_first"),
        # Gemma 3's model card puts the image first under a system prompt; MedGemma's puts the instruction
        # text before the image, as OpenAI's examples do
        Adapter("gemma3", "image_first", "You are a helpful assistant."),
        Adapter("medgemma", "text_first", "You are an expert medical imaging assistant."),
        Adapter("openai", "text_first"),
        # SmolVLM/Idefics3 and Llama 3.2 Vision (mllama) model cards put the image before the question
        Adapter("smolvlm", "image_first"),
        Adapter("mllama", "image_first"),
        # PaliGemma has no chat template: the hf backend's plain prompt (image tokens, then the text lines)
        Adapter("paligemma", "image_first"),
    )
}

# config.json `model_type` -> adapter; `architectures` entries are matched by their lower-cased class-name
# prefix in _ARCHITECTURES (a config written by remote code may name only those)
_MODEL_TYPES: dict[str, str] = {
    **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"), "qwen2_vl"),
    **dict.fromkeys(("llava", "llava_next", "llava_onevision", "llava_next_video"), "llava"),
    **dict.fromkeys(("gemma3", "gemma3n"), "gemma3"),
    **dict.fromkeys(("internvl", "internvl_chat"), "internvl"),
    **dict.fromkeys(("idefics3", "smolvlm"), "smolvlm"),
    "mllama": "mllama",
    "paligemma": "paligemma",
}
_ARCHITECTURES: tuple[tuple[str, str], ...] = (
    ("qwen2vl", "qwen2_vl"),
    ("qwen2_5_vl", "qwen2_vl"),
    ("qwen3vl", "qwen2_vl"),
    ("llava", "llava"),
    ("gemma3", "gemma3"),
    ("internvl", "internvl"),
    ("idefics3", "smolvlm"),
    ("smolvlm", "smolvlm"),
    ("mllama", "mllama"),
    ("paligemma", "paligemma"),
)
# fine-tunes whose config names the base family, told apart by name: (family, part of the name, adapter)
_DERIVED: tuple[tuple[str, str, str], ...] = (
    ("gemma3", "medgemma", "medgemma"),
    ("internvl", "medrega", "medrega"),
)

# substrings of a lower-cased model name -> adapter (first match wins); the fallback when no config says
_AUTO: tuple[tuple[str, str], ...] = (
    ("medrega", "medrega"),
    ("internvl", "internvl"),
    ("qwen", "qwen2_vl"),
    ("llava", "llava"),
    ("medgemma", "medgemma"),
    ("paligemma", "paligemma"),
    ("gemma", "gemma3"),
    ("smolvlm", "smolvlm"),
    ("idefics3", "smolvlm"),
    ("mllama", "mllama"),
    ("gpt-", "openai"),
)


def adapter_for(model: str, name: str = "auto", config: Mapping[str, Any] | None = None) -> Adapter:
    """The adapter called `name`, or with ``name="auto"`` the one of the model's family: from `config` (a
    loaded model's config as a mapping) or else ``<model>/config.json`` when `model` is a local folder (read
    here, nothing is downloaded), and only when neither names a known family, from a family name inside
    `model` (`as_given` if none). ConfigError for an unknown `name` or an unreadable config.json."""
    if name != "auto":
        if name not in ADAPTERS:
            raise ConfigError(f"adapter={name!r} is not one of auto, {', '.join(ADAPTERS)}")
        return ADAPTERS[name]
    family = config_family(config if config is not None else local_config(model))
    lowered = str(model).lower()
    if family is not None:
        derived = next((a for base, part, a in _DERIVED if base == family and part in lowered), family)
        return ADAPTERS[derived]
    return next((ADAPTERS[a] for key, a in _AUTO if key in lowered), ADAPTERS["as_given"])


def config_family(config: Mapping[str, Any] | None) -> str | None:
    """The adapter name of a model config's `model_type`, else of its first known `architectures` entry;
    None when it names no known family (or there is no config)."""
    if not config:
        return None
    model_type = str(config.get("model_type") or "").lower()
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    architectures = config.get("architectures") or ()
    for architecture in architectures if isinstance(architectures, list | tuple) else ():
        lowered = str(architecture).lower()
        family = next((a for prefix, a in _ARCHITECTURES if lowered.startswith(prefix)), None)
        if family is not None:
            return family
    return None


def local_config(model: str) -> dict[str, Any] | None:
    """The parsed ``config.json`` of `model` when it is a local folder holding one, else None (a hub id or
    API model name). ConfigError naming the file when it is not a JSON object."""
    if not str(model):
        return None
    path = Path(str(model)).expanduser() / "config.json"
    try:
        if not path.is_file():
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError:  # e.g. a model name too long to be a path: not a local folder
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: not a readable model config ({exc}); restore the checkpoint's config.json, or name the "
            f"prompt adapter yourself (adapter=<one of {', '.join(ADAPTERS)}>)"
        ) from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a model config must be a JSON object, got {type(config).__name__}")
    return config
