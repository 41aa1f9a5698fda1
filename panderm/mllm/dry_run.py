"""`--dry-run` of `panderm vqa` and `panderm icl`: the run's requests rendered, checked, counted, none sent.

A dry run loads the samples or prompts exactly as the real run does, renders each conversation with the
backend's adapter and checks its images as `panderm.mllm.requests.run_requests` would (so a conversation over
the openai backend's `max_images`, or an image that does not decode, fails the dry run too), and computes the
request keys, so it knows how many requests are duplicates and how many the response cache already holds.
Nothing is called: the openai backend is built (its constructor sends nothing) but never asked, and the hf
backend is never built at all (`UnloadedHF` has its adapter, identity and processor, not its weights).

Token counts come from a processor: the hf backend's own (`AutoProcessor.from_pretrained(model)`, weights
never loaded), or for any other backend the processor or tokenizer in the `tokenizer` folder (e.g. the served
model's Hugging Face folder); without one they are unknown (null). A count is the length of the processor's
``input_ids`` for the prompt text (`panderm.mllm.backends.hf.prompt_text`) and the images as the server gets
them (the openai backend's `max_image_side` applied), so image tokens are included.

Writes `dry_run.jsonl` (one line per request: id, key, images, text_chars, tokens, cached, prompt) and
`dry_run.json` (the totals) into the run folder.
"""

from __future__ import annotations

import inspect
import logging
import statistics
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from panderm.errors import BackendError
from panderm.io import atomic_write_json, write_jsonl
from panderm.mllm.backends import Backend, build_backend
from panderm.mllm.backends.base import resolve_device
from panderm.mllm.backends.hf import HFBackend, prompt_text, resolve_dtype
from panderm.mllm.cache import ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart, TextPart, decode_rgb
from panderm.mllm.requests import backend_key, render_checked

log = logging.getLogger(__name__)
DETAILS = "dry_run.jsonl"
TOTALS = "dry_run.json"


def offline_backend(name: str, **options: Any) -> Backend:
    """Backend `name` as a dry run needs it: `build_backend` for every backend but hf (openai's constructor
    contacts nothing; expert and the ICL baselines are local), and for hf an `UnloadedHF` (no weights).
    TypeError for an option the backend does not take, as `build_backend` raises."""
    if name != "hf":
        return build_backend(name, **options)
    return UnloadedHF(**options)


class UnloadedHF(HFBackend):
    """An hf backend that renders, keys and counts tokens like `HFBackend` (same options, adapter and
    identity) but never loads the weights: `processor` is loaded on first use, `generate` raises."""

    def __init__(self, model: str, **options: Any) -> None:
        # the real constructor's signature checks the options (TypeError for one it does not take)
        bound = inspect.signature(HFBackend).bind(model, **options)
        bound.apply_defaults()
        args = bound.arguments
        Backend.__init__(
            self,
            str(model),
            settings=args["settings"],
            adapter=args["adapter"],
            batch_size=args["batch_size"],
        )
        self.device = resolve_device(args["device"])
        self.dtype = resolve_dtype(args["dtype"], self.device)
        self.local_files_only = bool(args["local_files_only"])
        self._model = None

    @cached_property
    def processor(self) -> Any:
        """The model's processor (AutoProcessor), without its weights."""
        return load_processor(self.model, local_files_only=self.local_files_only)

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        raise BackendError(f"hf backend: model {self.model} is not loaded in a dry run")

    def close(self) -> None:
        """Nothing to release."""


def load_processor(path: str, *, local_files_only: bool) -> Any:
    """`AutoProcessor.from_pretrained(path)` (the tokenizer alone where there is no processor); BackendError
    naming `path` when neither loads."""
    from transformers import AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, local_files_only=local_files_only)
    except Exception as first:  # a folder with only a tokenizer can count text
        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        except Exception:  # the processor's error says more
            raise BackendError(
                f"dry run: cannot load a processor or tokenizer from {path}: {type(first).__name__}: {first}"
            ) from first


def dry_run(
    backend: Backend,
    requests: Sequence[tuple[str, Conversation]],
    cache_path: str | Path,
    run_dir: str | Path,
    *,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Render, check, key and count (`id`, conversation) `requests` for `backend` without calling it; write
    `dry_run.jsonl` and `dry_run.json` into `run_dir`, print a summary and return the totals. `tokenizer` is a
    local processor/tokenizer folder for token counts (an hf backend counts with its own processor)."""
    try:
        return _dry_run(backend, requests, Path(cache_path), Path(run_dir), tokenizer)
    finally:
        backend.close()


def _dry_run(
    backend: Backend,
    requests: Sequence[tuple[str, Conversation]],
    cache_path: Path,
    run_dir: Path,
    tokenizer: str | None,
) -> dict[str, Any]:
    rendered = render_checked(backend, [c for _, c in requests])  # as the real run does (max_images too)
    keys = [backend_key(backend, r) for r in rendered]
    cache = ResponseCache(cache_path)  # read only: nothing is put
    cached = {k for k in set(keys) if cache.final(k) is not None}
    processor = _processor(backend, tokenizer)
    counted: dict[str, tuple[str, int]] = {}  # key -> (prompt, tokens): duplicates are counted once
    lines = []
    for (request_id, _), conv, key in zip(requests, rendered, keys, strict=True):
        if processor is not None and key not in counted:
            counted[key] = _count(backend, processor, conv, request_id)
        prompt, tokens = counted.get(key, (None, None))
        lines.append(
            {
                "id": request_id,
                "key": key,
                "images": len(conv.images()),
                "text_chars": text_chars(conv),
                "tokens": tokens,
                "cached": key in cached,
                "prompt": prompt,
            }
        )
    totals = _totals(backend, lines, cache_path, processor is not None)
    write_jsonl(run_dir / DETAILS, lines)
    atomic_write_json(run_dir / TOTALS, totals)
    print(summary(totals))
    log.info("dry run: %s and %s in %s", DETAILS, TOTALS, run_dir)
    return totals


def text_chars(conversation: Conversation) -> int:
    """Characters of text in a (rendered) conversation, every turn's text parts."""
    return sum(len(p.text) for t in conversation.turns for p in t.parts if isinstance(p, TextPart))


def _processor(backend: Backend, tokenizer: str | None) -> Any | None:
    if tokenizer:
        return load_processor(tokenizer, local_files_only=True)
    if isinstance(backend, UnloadedHF):
        return backend.processor
    return None


def _count(backend: Backend, processor: Any, conversation: Conversation, request_id: str) -> tuple[str, int]:
    """(prompt text, token count) of one rendered conversation, images included."""
    images = [_sent_image(backend, p) for p in conversation.images()]
    try:
        prompt = prompt_text(processor, conversation)
        encoded = processor(text=[prompt], images=[images]) if images else processor(text=[prompt])
    except (ValueError, TypeError) as exc:  # a chat template or processor that refuses the conversation
        raise BackendError(f"dry run: request {request_id}: the processor refuses it: {exc}") from exc
    return prompt, len(encoded["input_ids"][0])


def _sent_image(backend: Backend, part: ImagePart) -> Image.Image:
    """The pixels the backend sends for `part` (the openai backend's `sent_image` applies max_image_side)."""
    sent = getattr(backend, "sent_image", None)
    return sent(part) if callable(sent) else decode_rgb(part)


def _totals(backend: Backend, lines: list[dict[str, Any]], cache_path: Path, counted: bool) -> dict[str, Any]:
    unique = {line["key"]: line for line in lines}
    cached = sum(line["cached"] for line in unique.values())
    tokens = [line["tokens"] for line in lines] if counted else []
    return {
        "backend": backend.name,
        "model": backend.model,
        "requests": len(lines),
        "unique_requests": len(unique),
        "cached": cached,
        "to_send": len(unique) - cached,
        "images": sum(line["images"] for line in lines),
        "text_chars": sum(line["text_chars"] for line in lines),
        "tokens": {
            "min": min(tokens),
            "mean": round(statistics.fmean(tokens), 2),
            "max": max(tokens),
            "total": sum(tokens),
        }
        if tokens
        else None,
        "cache": str(cache_path),
    }


def summary(totals: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    tokens = totals["tokens"]
    counts = (
        f"tokens per request min {tokens['min']}, mean {tokens['mean']}, max {tokens['max']} "
        f"(total {tokens['total']})"
        if tokens
        else "tokens unknown (set dry_run_tokenizer=<a local processor folder> to count them)"
    )
    return (
        f"dry run ({totals['backend']} backend, model {totals['model']}): {totals['requests']} requests, "
        f"{totals['unique_requests']} unique, {totals['cached']} already cached, "
        f"{totals['to_send']} to send; "
        f"{totals['images']} images, {totals['text_chars']} text characters; {counts}. Nothing was sent."
    )
