"""Segmentation heads on real dermoscopy: ISIC 2017 (train 2000 / val 150) and PH2 (200, external).

Trains each head (linear, fpn_upernet, unetr) briefly on a frozen ViT-tiny/8 at 64 px on this CPU, once on
an encoder pretrained here on the ISIC 2017 images (`panderm pretrain`'s default objective on the train and
unlabelled test images, no masks) and once at random init, and scores ISIC val and all of PH2 at their
original resolution. Two baselines a reviewer asks for are scored alike: one centred ellipse for every image
(axes fitted on the ISIC training masks) and Otsu thresholding (+ largest component, hole filling). Writes
`<out>/segmentation_table.md` (and .csv) with per-image-mean Dice, IoU and HD95, plus the pretrained-minus-
random Dice difference per head with a paired bootstrap 95% CI.

    .venv/bin/python scripts/segmentation_table.py                   # full run (see README for timings)
    .venv/bin/python scripts/segmentation_table.py --limit 40 --epochs 1 --pretrain-epochs 1   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from panderm.config import PretrainConfig, SegmentConfig
from panderm.data.images import load_image, load_mask
from panderm.data.manifest import Manifest, read_manifest
from panderm.data.readers import read_isic, read_ph2
from panderm.pretrain.run import run_pretrain
from probes.segmentation.baselines import CentreEllipse, otsu_segment
from probes.segmentation.metrics import segmentation_metrics, summarise
from probes.segmentation.run import run_segment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HEADS = ("linear", "fpn_upernet", "unetr")
BOOTSTRAP = 2000


def write_manifest(manifest: Manifest, path: Path, splits: dict[str, int | None]) -> Path:
    """The rows of `splits` (at most n each, the first n: a deterministic subset) as a manifest CSV."""
    table = manifest.table
    parts = [
        table[table["split"] == s].head(n) if n else table[table["split"] == s] for s, n in splits.items()
    ]
    columns = [c for c in ("image", "mask", "split", "label") if c in table]
    out = pd.concat(parts)[columns]
    if "label" in out:
        out["label"] = out["label"].astype("Int64")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


def data_config(path: Path, root: Path, name: str) -> dict:
    return {"source": "manifest", "name": name, "path": str(path), "root": str(root)}


def pretrain(manifest_csv: Path, root: Path, out: Path, epochs: int, image_size: int) -> Path:
    cfg = OmegaConf.structured(PretrainConfig)
    cfg.data = OmegaConf.merge(cfg.data, data_config(manifest_csv, root, "isic2017"))
    cfg.image_size, cfg.encoder.image_size = image_size, image_size
    cfg.train_splits = ["train", "test"]
    cfg.trainer.max_epochs, cfg.trainer.progress_bar = epochs, False
    run_pretrain(cfg, out)
    return out / "encoder.safetensors"


def segment(encoder: str, head: str, data: dict, out: Path, args: argparse.Namespace, **extra) -> dict:
    cfg = OmegaConf.structured(SegmentConfig)
    cfg.encoder, cfg.head, cfg.mode = encoder, head, "frozen"
    cfg.data = OmegaConf.merge(cfg.data, data)
    cfg.trainer.max_epochs, cfg.trainer.progress_bar = args.epochs, False
    cfg.batch_size, cfg.plots = args.batch_size, not args.no_plots
    for key, value in extra.items():
        OmegaConf.update(cfg, key, value)
    return run_segment(cfg, out)


def per_image(run: Path, split: str) -> pd.Series:
    frame = pd.read_csv(run / "per_image.csv")
    frame = frame[(frame["split"] == split) & frame["dice"].notna()]
    return frame.set_index("id")["dice"]


def score_baselines(manifest: Manifest, ellipse: CentreEllipse) -> dict[str, pd.DataFrame]:
    frames: dict[str, list[pd.DataFrame]] = {"centre ellipse": [], "Otsu": []}
    for i in range(len(manifest)):
        image = load_image(manifest.image_path(i))
        truth = load_mask(manifest.mask_path(i), shape=image.shape[:2])[None] > 0
        for name, pred in (
            ("centre ellipse", ellipse.predict(truth.shape)),
            ("Otsu", otsu_segment(image[None])),
        ):
            frame = segmentation_metrics(pred, truth)
            frame.index = [manifest.table["image"].iat[i]]
            frames[name].append(frame)
    return {name: pd.concat(parts) for name, parts in frames.items()}


def paired_difference(a: pd.Series, b: pd.Series, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the images both scored, with a percentile bootstrap 95% CI (paired resampling)."""
    diff = (a - b.reindex(a.index)).dropna().to_numpy()
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--isic", type=Path, default=SHARED / "isic2017_seg_256")
    parser.add_argument("--ph2", type=Path, default=SHARED / "ph2")
    parser.add_argument("--out", type=Path, default=Path("outputs/segmentation_table"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6, help="segmentation training epochs per head")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--pretrained", help="use this exported encoder instead of pretraining one")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="at most N images per split (smoke runs)")
    parser.add_argument("--no-plots", action="store_true", help="skip the overlay figures (smoke runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    out = args.out
    isic = read_isic(args.isic, boxes_from_masks=False)  # segmentation reads the masks themselves
    limit = args.limit
    seg_csv = write_manifest(isic, out / "isic_segmentation.csv", {"train": limit, "val": limit})
    isic_data = data_config(seg_csv, args.isic, "isic2017")
    ph2 = read_ph2(args.ph2)
    ph2_csv = write_manifest(ph2, out / "ph2.csv", {"test": limit})
    ph2_data = data_config(ph2_csv, args.ph2, "ph2")

    timings = {}
    encoders = {"random init": f"random:vit_tiny/8@{args.image_size}"}
    if args.pretrained:
        encoders = {"pretrained": args.pretrained, **encoders}
    else:
        all_csv = write_manifest(isic, out / "isic_all.csv", {"train": limit, "val": limit, "test": limit})
        t = time.perf_counter()
        encoders = {
            "pretrained": str(
                pretrain(all_csv, args.isic, out / "pretrain", args.pretrain_epochs, args.image_size)
            ),
            **encoders,
        }
        timings["pretrain"] = time.perf_counter() - t

    rows, dice = [], {}
    for source, encoder in encoders.items():
        for head in args.heads.split(","):
            run = out / f"{source.replace(' ', '_')}-{head}"
            t = time.perf_counter()
            result = segment(encoder, head, isic_data, run, args, **{"predict.splits": ["val"]})
            timings[f"{source}/{head}"] = time.perf_counter() - t
            external = segment(
                encoder,  # recorded only: the checkpoint holds the trained encoder
                head,
                ph2_data,
                run / "ph2",
                args,
                checkpoint=str(run / "segmenter"),
                **{"predict.splits": ["test"], "predict.save_masks": False},
            )
            for dataset, res, split, folder in (
                ("ISIC 2017 val", result, "val", run),
                ("PH2 (external)", external, "test", run / "ph2"),
            ):
                raw, post = res["eval"][split]["raw"], res["eval"][split]["postprocessed"]
                rows.append(
                    {
                        "data": dataset,
                        "method": f"{head} head, {source}",
                        "Dice": raw["dice"],
                        "IoU": raw["iou"],
                        "HD95 (px)": raw["hd95"],
                        "Dice post-processed": post["dice"],
                        "images": raw["n_images"],
                    }
                )
                dice[(dataset, source, head)] = per_image(folder, split)

    ellipse = CentreEllipse().fit(
        np.stack(
            [
                load_mask(p)
                for p in (args.isic / m for m in pd.read_csv(seg_csv).query("split == 'train'")["mask"])
            ]
        )
    )
    for dataset, csv, root in (("ISIC 2017 val", seg_csv, args.isic), ("PH2 (external)", ph2_csv, args.ph2)):
        manifest = read_manifest(csv, root)
        manifest = manifest.subset("val") if dataset.startswith("ISIC") else manifest
        for name, frame in score_baselines(manifest, ellipse).items():
            s = summarise(frame)
            rows.append(
                {
                    "data": dataset,
                    "method": f"baseline: {name}",
                    "Dice": s["dice"],
                    "IoU": s["iou"],
                    "HD95 (px)": s["hd95"],
                    "Dice post-processed": float("nan"),
                    "images": s["n_images"],
                }
            )
    table = pd.DataFrame(rows).sort_values(["data", "method"], kind="stable")
    gains = []
    if "pretrained" in encoders:
        for dataset in ("ISIC 2017 val", "PH2 (external)"):
            for head in args.heads.split(","):
                mean, low, high = paired_difference(
                    dice[(dataset, "pretrained", head)], dice[(dataset, "random init", head)]
                )
                gains.append(
                    {
                        "data": dataset,
                        "head": head,
                        "Dice pretrained - random": f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                    }
                )
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "segmentation_table.csv", index=False)
    text = table.to_markdown(index=False, floatfmt=".3f")
    if gains:
        text += "\n\n" + pd.DataFrame(gains).to_markdown(index=False)
    text += (
        f"\n\nTotal {time.perf_counter() - start:.0f} s; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + "\n"
    )
    (out / "segmentation_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
