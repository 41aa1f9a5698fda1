"""Offline ICL baselines as backends (no model call, CPU only), so they run through the same cache, resume
and scoring as any MLLM. Each reads the demonstrations from the conversation: every user turn followed by an
assistant turn is a demo (its image, its answer); the last user turn is the query.

- `random`: a seeded random demo's answer (uniform over the demos, so frequent answers are likelier), the
  draw keyed by the conversation, so it does not depend on the run order;
- `majority`: the most frequent demo answer under SMMILE's normalisation; ties go to the answer that appears
  first in the prompt; the reply is that answer's first spelling;
- `knn_icl`: the answer of the demo whose image is most similar to the query's (cosine of our encoder's
  features; ties go to the earlier demo).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from panderm.errors import BackendError
from panderm.mllm.backends.base import Backend, GenerationSettings
from panderm.mllm.cache import canonical_json
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.icl.embeddings import ImageEmbedder
from panderm.mllm.icl.scoring import smmile_normalise


def demonstrations(conversation: Conversation) -> tuple[list[tuple[ImagePart | None, str]], ImagePart | None]:
    """([(demo image, demo answer)], query image) read from an ICL conversation."""
    turns = [t for t in conversation.turns if t.role != "system"]
    if not turns or turns[-1].role != "user":
        raise BackendError("ICL baseline: the conversation does not end with a user turn (the query)")
    demos = []
    for turn, reply in itertools.pairwise(turns):
        if turn.role == "user" and reply.role == "assistant":
            images = [p for p in turn.parts if isinstance(p, ImagePart)]
            demos.append((images[-1] if images else None, reply.text))
    query_images = [p for p in turns[-1].parts if isinstance(p, ImagePart)]
    if not demos:
        raise BackendError("ICL baseline: the conversation has no demonstrations (0-shot) to answer from")
    return demos, query_images[-1] if query_images else None


class _Baseline(Backend):
    def __init__(
        self,
        model: str | None = None,
        *,
        settings: GenerationSettings | None = None,
        adapter: str = "as_given",
        batch_size: int = 64,
    ) -> None:
        super().__init__(model or self.name, settings=settings, adapter=adapter, batch_size=batch_size)

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        return [self.answer(c) for c in conversations]

    def answer(self, conversation: Conversation) -> str:
        raise NotImplementedError


class RandomAnswerBackend(_Baseline):
    """A seeded random demo answer (seed: `settings.seed`)."""

    name = "random"

    def answer(self, conversation: Conversation) -> str:
        demos, _ = demonstrations(conversation)
        key = hashlib.sha256(canonical_json(conversation.canonical()).encode()).hexdigest()
        return random.Random(f"{self.settings.seed}:{key}").choice(demos)[1]


class MajorityBackend(_Baseline):
    """The most frequent demo answer (ties: first in the prompt)."""

    name = "majority"

    def answer(self, conversation: Conversation) -> str:
        answers = [a for _, a in demonstrations(conversation)[0]]
        counts = Counter(smmile_normalise(a) for a in answers)
        best = max(counts.values())
        return next(a for a in answers if counts[smmile_normalise(a)] == best)


class KNNICLBackend(_Baseline):
    """The answer of the demo most similar to the query by `encoder` (a saved panderm encoder)."""

    name = "knn_icl"
    order_invariant = True  # the most similar demo is the same in every order (ties: see `answer`)

    def __init__(
        self, model: str | None = None, *, encoder: str | os.PathLike[str], device: str = "auto", **kw: Any
    ) -> None:
        self.embedder = ImageEmbedder(encoder, device=device)
        super().__init__(model or f"knn_icl(encoder={self.embedder.weights_sha256[:12]})", **kw)

    def answer(self, conversation: Conversation) -> str:
        demos, query = demonstrations(conversation)
        if query is None or any(image is None for image, _ in demos):
            raise BackendError("knn_icl baseline: the query and every demo need an image")
        scores = self.embedder.similarity([image for image, _ in demos], query)  # type: ignore[misc]
        return demos[int(np.argmax(scores))][1]
