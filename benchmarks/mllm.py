"""Local MLLM speed in one run: batched generation and the response cache, on a tiny random Qwen2-VL.

The model is `panderm.mllm.tiny.build_tiny_qwen2_vl` (built in a temporary folder, loaded by `HFBackend`);
the requests are `--conversations` single-turn conversations, each with its own random 64x64 PNG and one of
a few questions, greedy decoding of `--max-new-tokens` tokens.

(a) Batched: `generate` over all conversations with ``batch_size=--batch-size`` (left-padded batches)
    against the same backend with ``batch_size=1``; the replies must be the same. Ratio: one-by-one seconds
    over batched seconds.
(b) Cache hits: `run_requests` over a warm response cache (every request a hit: render, hash the image
    bytes, look up) against an uncached one-by-one `generate` of the same conversations. Ratio: uncached
    seconds per record over cached seconds per record.

Calls alternate (baseline, ours, ...) `--repeats` times; each ratio is the median over the repeats.

    .venv/bin/python benchmarks/mllm.py [--conversations 32] [--batch-size 8] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.hf import HFBackend
from panderm.mllm.cache import ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.requests import run_requests
from panderm.mllm.tiny import build_tiny_qwen2_vl

QUESTIONS = (
    "Is this melanoma?",
    "What is the most likely diagnosis of this skin lesion?",
    "Describe the colour, shape and border of the lesion.",
    "Benign or malignant? Answer with one word.",
)


def make_conversations(count: int, seed: int = 0) -> list[Conversation]:
    """`count` conversations, each a question and its own random 64x64 PNG."""
    rng = np.random.default_rng(seed)
    conversations = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        conversations.append(
            Conversation.user(QUESTIONS[i % len(QUESTIONS)], ImagePart(data=buffer.getvalue()))
        )
    return conversations


def alternate(
    baseline: Callable[[], object], ours: Callable[[], object], repeats: int
) -> tuple[float, float, float]:
    """Median baseline seconds, median our seconds, median of baseline/ours over alternating calls."""
    times: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(repeats):
        for name, fn in (("baseline", baseline), ("ours", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [b / o for b, o in zip(times["baseline"], times["ours"], strict=True)]
    return statistics.median(times["baseline"]), statistics.median(times["ours"]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    conversations = make_conversations(args.conversations)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_qwen2_vl(Path(tmp) / "tiny_qwen2_vl")
        batched = HFBackend(str(path), settings=settings, batch_size=args.batch_size, device=args.device)
        single = HFBackend.from_pretrained_objects(
            batched._model, batched.processor, name=batched.model, settings=settings, batch_size=1
        )
        rendered = [batched.render(c) for c in conversations]
        n = len(rendered)
        print(
            f"{n} conversations (64x64 images), tiny random Qwen2-VL, {args.max_new_tokens} new tokens, "
            f"greedy, {batched.device}, {torch.get_num_threads()} threads"
        )
        same = batched.generate(rendered) == single.generate(rendered)  # also the warm-up
        base_s, ours_s, ratio = alternate(
            lambda: single.generate(rendered), lambda: batched.generate(rendered), args.repeats
        )
        print(
            f"batched generate (batch_size {args.batch_size}) vs one-by-one: {n / ours_s:.1f} vs "
            f"{n / base_s:.1f} conversations/s, same replies: {'yes' if same else 'NO'} ratio={ratio:.2f}"
        )

        cache = ResponseCache(Path(tmp) / "cache.jsonl")
        run_requests(batched, conversations, cache)  # fill the cache
        calls: list[int] = []
        generate = batched.generate
        batched.generate = lambda convs: calls.append(len(convs)) or generate(convs)  # type: ignore[method-assign]
        base_s, ours_s, ratio = alternate(
            lambda: single.generate(rendered),
            lambda: run_requests(batched, conversations, cache),
            args.repeats,
        )
        cache.close()
        print(
            f"run_requests over a warm cache vs uncached generate: {ours_s / n * 1e6:.0f} us vs "
            f"{base_s / n * 1e3:.1f} ms per record, model calls on hits: {sum(calls)} ratio={ratio:.0f}"
        )


if __name__ == "__main__":
    main()
