"""Data loading speed: ManifestDataset (+ collate, DataLoader) against a bare PIL loop, in one run.

Run: `.venv/bin/python benchmarks/data_loading.py [--n-patients 150] [--image-size 128]`. Prints one line per
comparison ending in `ratio=<ours/baseline images per second>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from panderm.data.dataset import ManifestDataset, collate
from panderm.data.manifest import read_manifest
from panderm.data.synthetic.synthderm import CLASSES, generate_synthderm
from panderm.data.transforms import eval_transform


def images_per_second(fn: Callable[[], int], repeats: int = 3) -> float:
    """Best of `repeats` runs of `fn` (which returns the number of images it processed)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-patients", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=112)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(
            generate_synthderm(tmp, n_patients=args.n_patients, image_size=args.image_size), classes=CLASSES
        )
        transform = eval_transform(args.crop)
        paths = [manifest.image_path(i) for i in range(len(manifest))]
        dataset = ManifestDataset(manifest, transform, with_masks=False)
        with_masks = ManifestDataset(manifest, transform)

        def bare_loop() -> int:  # the baseline: decode + transform, nothing else
            for path in paths:
                with Image.open(path) as img:
                    transform(image=np.asarray(img.convert("RGB")))
            return len(paths)

        def dataset_loop(ds: ManifestDataset) -> Callable[[], int]:
            def run() -> int:
                for i in range(len(ds)):
                    ds[i]
                return len(ds)

            return run

        def loader(workers: int) -> Callable[[], int]:
            def run() -> int:
                dl = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate)
                return sum(len(batch["index"]) for batch in dl)

            return run

        base = images_per_second(bare_loop)
        print(f"{len(paths)} images, {args.image_size}px, crop {args.crop}px; bare loop: {base:.0f} img/s")
        ours = images_per_second(dataset_loop(dataset))
        print(f"ManifestDataset (labels, boxes) vs bare loop: {ours:.0f} img/s ratio={ours / base:.2f}")
        masks = images_per_second(dataset_loop(with_masks))
        print(f"ManifestDataset + masks vs without masks: {masks:.0f} img/s ratio={masks / ours:.2f}")
        batched = images_per_second(loader(0))
        print(f"DataLoader 0 workers + collate vs bare loop: {batched:.0f} img/s ratio={batched / base:.2f}")
        parallel = images_per_second(loader(2))
        print(f"DataLoader 2 workers vs 0 workers: {parallel:.0f} img/s ratio={parallel / batched:.2f}")


if __name__ == "__main__":
    main()
