"""Backend registry: `build_backend("hf" | "openai" | "expert" | an ICL baseline, model=..., **options)`.

Backends are imported by name on first use, so `openai` or `transformers` load only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from panderm.errors import ConfigError
from panderm.mllm.backends.base import Backend, GenerationSettings

BACKENDS: dict[str, str] = {
    "hf": "panderm.mllm.backends.hf:HFBackend",
    "openai": "panderm.mllm.backends.openai_api:OpenAIBackend",
    "expert": "panderm.mllm.backends.expert:ExpertBackend",
    # offline in-context-learning baselines (no model call)
    "random": "panderm.mllm.icl.baselines:RandomAnswerBackend",
    "majority": "panderm.mllm.icl.baselines:MajorityBackend",
    "knn_icl": "panderm.mllm.icl.baselines:KNNICLBackend",
}

__all__ = ["BACKENDS", "Backend", "GenerationSettings", "backend_class", "build_backend"]


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as `name`."""
    if name not in BACKENDS:
        raise ConfigError(f"backend={name!r} is not one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_backend(name: str, **options: Any) -> Backend:
    """Instantiate backend `name` with its keyword options (see each backend's class docstring)."""
    return backend_class(name)(**options)
