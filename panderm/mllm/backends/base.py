"""What every MLLM backend is: a model identity, generation settings, an adapter, and `generate`.

A backend turns a batch of conversations into a batch of reply strings, or raises. It never caches, retries
or scores: `panderm.mllm.requests.run_requests` does that for every backend alike. The adapter (per model
family) decides the system prompt and whether images come before or after the text within a turn; the
rendered conversation is what the backend sends and what the response cache hashes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from panderm.errors import BackendError, ConfigError
from panderm.mllm.adapters import Adapter, adapter_for
from panderm.mllm.conversation import Conversation


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda when available, else cpu; otherwise the named device (BackendError if not one)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BackendError(f"device={device!r} is not a torch device ({exc})") from exc


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; greedy by default (temperature 0). Part of every request key."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if problems:
            raise ConfigError("generation settings: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """Base class: `name` (registry id), `model` (what it runs), `settings`, `adapter`, `batch_size`."""

    name: ClassVar[str]
    # True when a reply never depends on the order of the in-context demonstrations (e.g. kNN-ICL): `panderm
    # icl` then asks one order per problem under the strategies that only reorder demos
    order_invariant: ClassVar[bool] = False

    def __init__(
        self,
        model: str,
        *,
        settings: GenerationSettings | None = None,
        adapter: str | Adapter = "auto",
        batch_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"{self.name} backend: batch_size must be >= 1, got {batch_size}")
        self.model = str(model)
        self.settings = settings or GenerationSettings()
        self.adapter = adapter if isinstance(adapter, Adapter) else adapter_for(self.model, adapter)
        self.batch_size = batch_size

    def render(self, conversation: Conversation) -> Conversation:
        """The conversation as this model family wants it (system prompt, image/text order)."""
        return self.adapter.apply(conversation)

    def identity(self) -> dict[str, Any]:
        """What, besides the conversation, determines a reply: hashed into every request key."""
        return {"settings": self.settings.as_dict(), "adapter": self.adapter.name}

    @abstractmethod
    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        """One reply per (already rendered) conversation, in order; raise on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release resources (connections, GPU memory)."""
