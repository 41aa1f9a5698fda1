"""Segmentation inference speed in one run: the whole predict path against a bare forward pass.

Ours: `probes.segmentation.predict.predict_masks` over a DataLoader of `PredictionDataset` samples (new
images, no true masks to read), i.e. decode each image file, resize it to the model size, normalise, forward
(encoder + head), resample the logits to the image's original size and take the argmax, one (H, W) mask per
image. Baseline: the same model's forward on the same images already decoded, resized and normalised in memory
(`model(x)` per batch, no resampling). The images are a generated SynthDerm archive (`--images` images at
`--source-size` px); the model is a randomly initialised ViT from `--encoder` with each head of `--heads`,
frozen, in eval mode. Calls alternate (bare, ours, bare, ...) `--repeats` times; the ratio is the median over
calls of bare seconds / our seconds (our images/s over bare images/s; goal >= 0.9).

    .venv/bin/python benchmarks/segmentation.py [--heads linear,fpn_upernet,unetr] [--num-workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from panderm.data.dataset import ManifestDataset, collate
from panderm.data.manifest import read_manifest
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.data.transforms import model_input_transform
from panderm.models.seg_heads import build_segmentation_model
from probes.encoders import load_probe_encoder
from probes.segmentation.data import PredictionDataset
from probes.segmentation.predict import predict_masks


def compare(
    model: torch.nn.Module,
    dataset: PredictionDataset,
    preloaded: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    head: str,
) -> str:
    """One line: our predict path vs the bare forward, alternating calls, median ratio."""

    @torch.no_grad()
    def bare() -> None:
        for start in range(0, len(preloaded), args.batch_size):
            model(preloaded[start : start + args.batch_size].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours() -> None:
        loader = DataLoader(
            dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate
        )
        for _ in predict_masks(model, loader, device=device):
            pass

    bare()  # warm-up
    ratios, times = [], {"bare": [], "ours": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("ours", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        ratios.append(times["bare"][-1] / times["ours"][-1])
    ours_speed = len(dataset) / statistics.median(times["ours"])
    bare_speed = len(dataset) / statistics.median(times["bare"])
    return (
        f"segmentation predict path ({head} head, {args.num_workers} workers) vs bare forward: "
        f"{ours_speed:.0f} vs {bare_speed:.0f} images/s ratio={statistics.median(ratios):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--source-size", type=int, default=128)
    parser.add_argument("--encoder", default="random:vit_tiny/8@64")
    parser.add_argument("--heads", default="linear,fpn_upernet,unetr")
    parser.add_argument("--batch-size", type=int, default=64)
    # as `panderm segment` predicts: no workers on the CPU (they would compete with the forward for the cores)
    parser.add_argument("--num-workers", type=int, default=0 if not torch.cuda.is_available() else 4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        # SynthDerm makes about 4.6 images per patient
        path = generate_synthderm(
            Path(tmp), n_patients=max(1, args.images * 10 // 46), image_size=args.source_size
        )
        manifest = read_manifest(path)
        encoder = load_probe_encoder(args.encoder)
        spec = encoder.spec
        transform = model_input_transform(spec.image_size, mean=spec.mean, std=spec.std)
        dataset = PredictionDataset(ManifestDataset(manifest, with_masks=False), transform)
        preloaded = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        size = f"{args.source_size} px -> {spec.image_size} px"
        print(f"{len(dataset)} images at {size}, {args.encoder}, {device}")
        for head in args.heads.split(","):
            model = build_segmentation_model(encoder, head).to(device).eval()
            print(compare(model, dataset, preloaded, args, device, head))


if __name__ == "__main__":
    main()
