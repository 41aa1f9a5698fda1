"""ICL image reuse in one run: a SMMILE++-shaped experiment on the tiny random Qwen2-VL, with and without the
`hf` backend's per-image preprocessing and vision-encoder cache.

Problems are generated from SynthDerm (`--problems` problems with 2, 3, 4, 5 demos in turn, images at
`--image-size` px) and asked under the SMMILE++ rule (2 -> 2 orders, 3 -> 6, 4 and 5 -> 24), so each image
appears in many prompts. The model is `build_tiny_qwen2_vl(image_pixels=--image-size**2)` (a 224 px image
becomes 256 patches, 64 tokens). Both arms run the whole path (`run_requests` into a fresh response cache,
batches of `--batch-size`, greedy `--max-new-tokens`): baseline `image_cache_size=0`, ours the default cache.
Printed: vision-encoder image passes, encoder calls, images preprocessed, wall time, and the ratios
(baseline / ours). The replies must be identical. Arms alternate `--repeats` times; times are medians.

    .venv/bin/python benchmarks/icl.py [--problems 8] [--image-size 224] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.hf import HFBackend
from panderm.mllm.cache import ResponseCache
from panderm.mllm.icl.problems import load_problems
from panderm.mllm.icl.run import prompt
from panderm.mllm.icl.strategies import make_variants
from panderm.mllm.icl.synth import make_icl_problems
from panderm.mllm.requests import run_requests
from panderm.mllm.tiny import build_tiny_qwen2_vl


def run_arm(
    model: Path, conversations: list, cache_size: int, args: argparse.Namespace, folder: Path
) -> dict:
    backend = HFBackend(
        str(model),
        settings=GenerationSettings(max_new_tokens=args.max_new_tokens),
        batch_size=args.batch_size,
        device="cpu",
        image_cache_size=cache_size,
    )
    start = time.perf_counter()
    with ResponseCache(folder / f"responses-{cache_size}-{time.monotonic_ns()}.jsonl") as cache:
        results = run_requests(backend, conversations, cache, progress=False)
    seconds = time.perf_counter() - start
    stats = backend.vision_stats()
    backend.close()
    return {"seconds": seconds, "replies": [r.response for r in results], **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = generate_synthderm(folder / "data", n_patients=16, image_size=args.image_size, seed=0)
        path = make_icl_problems(manifest, folder / "problems.jsonl", n_problems=args.problems, seed=0)
        problems = load_problems(path).problems
        variants = make_variants(problems, "smmile_pp")
        conversations = [prompt(v, "open", 42)[0] for v in variants]
        model = build_tiny_qwen2_vl(folder / "model", image_pixels=args.image_size**2)
        slots = sum(len(c.images()) for c in conversations)
        unique = len({p.sha256() for c in conversations for p in c.images()})
        print(
            f"{len(problems)} problems, {len(conversations)} SMMILE++ prompts, {slots} image slots, "
            f"{unique} unique images at {args.image_size} px; batch {args.batch_size}, "
            f"{args.max_new_tokens} new tokens"
        )
        arms: dict[str, list[dict]] = {"baseline (no image cache)": [], "ours (image cache)": []}
        for _ in range(args.repeats):
            arms["baseline (no image cache)"].append(run_arm(model, conversations, 0, args, folder))
            arms["ours (image cache)"].append(run_arm(model, conversations, 256, args, folder))
        (base, *_), (ours, *_) = arms.values()
        assert all(r["replies"] == base["replies"] for runs in arms.values() for r in runs), "replies differ"
        print(f"{'arm':28s} {'encoded':>8s} {'enc calls':>9s} {'preproc':>8s} {'seconds':>8s}")
        seconds = {}
        for name, runs in arms.items():
            seconds[name] = statistics.median(r["seconds"] for r in runs)
            r = runs[0]
            print(
                f"{name:28s} {r['images_encoded']:8d} {r['encoder_calls']:9d} "
                f"{r['images_preprocessed']:8d} {seconds[name]:8.2f}"
            )
        base_s, ours_s = seconds.values()
        for key, what in (
            ("images_encoded", "vision-encoder image passes"),
            ("images_preprocessed", "images preprocessed"),
        ):
            print(f"ratio {what} (baseline / ours): {base[key] / ours[key]:.1f}")
        print(f"ratio wall time (baseline / ours): {base_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
