"""Does pretraining help? Each objective pretrains a ViT on unlabelled DermaMNIST train images, then frozen
probes compare it with the same architecture at random init and with raw pixels.

Two stages, so settings are never chosen on test images:

- ``--stage select``: every objective of ``--objectives`` at ``--steps`` (one seed), scored on the
  DermaMNIST **val** split (linear probe fitted on train, kNN with train as the memory); writes
  ``<out>/select.csv`` and prints the ranking;
- ``--stage table``: the objectives of ``--objectives`` at ``--steps`` for every seed of ``--seeds``, each
  evaluated with `panderm probe` (``linear_sweep``: C chosen on val, refit on train+val; ``knn`` with class-
  balanced votes) on the DermaMNIST **test** split, against random init (one per seed) and raw pixels, with
  the paired difference (pretrained - random) and its bootstrap CI over test images; writes
  ``<out>/pretrain_table.md`` / ``.csv``, ``learning_curve.png`` (probe accuracy vs pretraining steps, from
  each run's kNN monitor), and the nuisance check (|corr| of the first principal component of test features
  with image brightness).

Pretraining sees the train split's images only (never its labels, never val/test images); the online
monitors read val. Run folders are kept under ``<out>/runs`` and reused, so an interrupted table resumes.

Run: ``.venv/bin/python scripts/pretrain_table.py --stage select --steps 300``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, roc_auc_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from panderm.config import register_configs  # noqa: E402
from panderm.data.readers import read_medmnist  # noqa: E402
from panderm.paths import config_dir  # noqa: E402
from panderm.pretrain.run import run_pretrain  # noqa: E402
from probes.encoders import load_probe_encoder  # noqa: E402
from probes.features import extract_features, write_pixel_features  # noqa: E402
from probes.knn import knn_proba  # noqa: E402
from probes.predictions import paired_difference_table  # noqa: E402
from probes.run import run_probe  # noqa: E402

log = logging.getLogger("pretrain_table")
SHARED_DATA = Path(os.environ.get("PANDERM_SHARED_DATA", REPO.parent / "shared" / "data"))
DERMAMNIST = SHARED_DATA / "dermamnist_jpeg" / "dermamnist_28_jpeg.npz"


def compose_pretrain(overrides: list[str]):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("pretrain", overrides=overrides)


def pretrain(
    out: Path, export: Path, objective: str, seed: int, steps: int, args: argparse.Namespace
) -> Path:
    """Pretrain one encoder (reused when its run folder already holds an export); returns the run folder."""
    run = out / "runs" / f"{objective}_s{seed}_{steps}"
    if (run / "encoder.safetensors").is_file():
        return run
    cfg = compose_pretrain(
        [
            f"objective={objective}",
            "data=medmnist",
            f"data.path={DERMAMNIST}",
            f"data.out_dir={export}",
            f"image_size={args.image_size}",
            f"encoder.patch_size={args.patch_size}",
            f"batch_size={args.batch_size}",
            f"seed={seed}",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=-1",
            "trainer.progress_bar=false",
            "num_workers=1",
            *args.override,
        ]
    )
    start = time.perf_counter()
    run_pretrain(cfg, run)
    (run / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return run


def features(spec: str, manifest, split: str, image_size: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    encoder = load_probe_encoder(spec, image_size=image_size, seed=seed)
    fs = extract_features(encoder, manifest, split, progress=False, amp=False)
    return np.asarray(fs.features, dtype=np.float32), np.asarray(fs.labels)


def score_on_val(spec: str, manifest, image_size: int, num_classes: int) -> dict[str, float]:
    """Linear (standardised L2 logistic regression with class-balanced weights, C=1, fitted on train) and
    class-balanced kNN (k=20, T=0.07, train as memory) on the val split: balanced accuracy and macro
    one-vs-rest AUROC."""
    train_x, train_y = features(spec, manifest, "train", image_size)
    val_x, val_y = features(spec, manifest, "val", image_size)
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)
    clf.fit(scaler.transform(train_x), train_y)
    proba = clf.predict_proba(scaler.transform(val_x))
    knn = knn_proba(train_x, train_y, val_x, num_classes=num_classes, balanced=True)
    return {
        "linear_bacc": balanced_accuracy_score(val_y, proba.argmax(1)),
        "linear_auroc": roc_auc_score(val_y, proba, multi_class="ovr", average="macro"),
        "knn_bacc": balanced_accuracy_score(val_y, knn.argmax(1)),
        "knn_auroc": roc_auc_score(val_y, knn, multi_class="ovr", average="macro"),
    }


def select(args: argparse.Namespace, out: Path, manifest, export: Path) -> None:
    rows = []
    path = out / "select.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    num_classes = len(manifest.classes)
    candidates = [("random", None)] + [(o, o) for o in args.objectives.split(",")]
    for name, objective in candidates:
        if len(done) and name in set(done["objective"]):
            rows.append(done[done["objective"] == name].iloc[0].to_dict())
            continue
        start = time.perf_counter()
        if objective is None:
            spec = f"random:vit_tiny/{args.patch_size}@{args.image_size}"
        else:
            spec = str(pretrain(out, export, objective, args.seeds[0], args.steps, args) / "encoder")
        seconds = time.perf_counter() - start
        row = {"objective": name, "steps": args.steps if objective else 0, "pretrain_s": round(seconds, 1)}
        row.update(score_on_val(spec, manifest, args.image_size, num_classes))
        log.info("%s", row)
        rows.append(row)
        pd.DataFrame(rows).to_csv(path, index=False)
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


# ------------------------------------------------------------------------------------------------ table


def probe_run(
    spec: str, probe: str, run_dir: Path, export: Path, args: argparse.Namespace, seed: int
) -> Path:
    """`panderm probe` (its code: `run_probe`) on DermaMNIST with `spec`; reused when already done."""
    if (run_dir / "metrics.json").is_file():
        return run_dir
    register_configs()
    overrides = [
        "data=medmnist",
        f"data.path={DERMAMNIST}",
        f"data.out_dir={export}",
        f"probe={probe}",
        f"seed={seed}",
        f"cache_dir={args.out / 'feature_cache'}",
        "plots=false",
    ]
    if probe == "knn":
        overrides.append("probe.options.balanced=true")
    with initialize_config_dir(str(config_dir("probe")), version_base="1.3"):
        cfg = compose("probe", overrides=overrides)
    if spec.endswith(".npz"):
        cfg.features, cfg.encoder = spec, None
    else:
        cfg.encoder = spec
    run_probe(cfg, run_dir)
    return run_dir


def brightness_check(spec: str, manifest, image_size: int) -> float:
    """|corr| between the first principal component of test CLS features and mean image brightness."""
    x, _ = features(spec, manifest, "test", image_size)
    x = x - x.mean(0)
    pc1 = x @ np.linalg.svd(x, full_matrices=False)[2][0]
    with np.load(DERMAMNIST, allow_pickle=False) as data:
        brightness = data["test_images"].reshape(len(x), -1).mean(1)
    return float(abs(np.corrcoef(pc1, brightness)[0, 1]))


def _ci(d: dict[str, float]) -> str:
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _value(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics["ci95"]["intervals"][name]
    return f"{metrics['values'][name]:.3f} [{low:.3f}, {high:.3f}]"


def learning_curve(runs: dict[str, Path], path: Path) -> None:
    """kNN balanced accuracy on val (the runs' monitor) against pretraining steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, run in runs.items():
        log_csv = run / "logs" / "metrics.csv"
        frame = pd.read_csv(log_csv) if log_csv.is_file() else pd.DataFrame()
        if "monitor/knn_bacc" in frame:
            points = frame.dropna(subset=["monitor/knn_bacc"])
            ax.plot(points["step"], points["monitor/knn_bacc"], "o-", label=name)
    ax.set(xlabel="pretraining step", ylabel="kNN balanced accuracy (val, leave-one-out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(args: argparse.Namespace, out: Path, manifest, export: Path) -> None:
    """Pretrain every (objective, seed) at the budget (and the first seed at a quarter of it), probe each
    encoder, random init per seed and raw pixels on the test split, and tabulate paired differences."""
    budgets = [(o, seed, args.steps) for seed in args.seeds for o in args.objectives.split(",")]
    budgets += [(o, args.seeds[0], args.steps // 4) for o in args.objectives.split(",")]
    runs = {
        f"{o} seed {seed}, {steps} steps": pretrain(out, export, o, seed, steps, args)
        for o, seed, steps in budgets
    }
    learning_curve(runs, out / "learning_curve.png")
    pixels = str(
        write_pixel_features(
            DERMAMNIST,
            out / "features" / "dermamnist_pixels.npz",
            lambda split, i: f"images/{split}_{i:05d}.png",
        )
    )
    random_spec = f"random:vit_tiny/{args.patch_size}@{args.image_size}"
    rows: list[dict[str, Any]] = []
    for probe in ("linear_sweep", "knn"):
        pixel_run = probe_run(pixels, probe, out / "probes" / f"pixels_{probe}", export, args, 0)
        pixel_metrics = json.loads((pixel_run / "metrics.json").read_text())["test"]
        rows.append(
            {
                "features": "raw pixels",
                "probe": probe,
                "bacc": _value(pixel_metrics, "balanced_accuracy"),
                "auroc": _value(pixel_metrics, "auroc_macro_ovr"),
            }
        )
        for seed in args.seeds:
            random_run = probe_run(
                random_spec, probe, out / "probes" / f"random_s{seed}_{probe}", export, args, seed
            )
            random_metrics = json.loads((random_run / "metrics.json").read_text())["test"]
            rows.append(
                {
                    "features": f"random init (seed {seed})",
                    "probe": probe,
                    "seed": seed,
                    "bacc": _value(random_metrics, "balanced_accuracy"),
                    "auroc": _value(random_metrics, "auroc_macro_ovr"),
                }
            )
            for objective, run_seed, steps in budgets:
                if run_seed != seed:
                    continue
                run = out / "runs" / f"{objective}_s{seed}_{steps}"
                probe_dir = probe_run(
                    str(run / "encoder"), probe, out / "probes" / f"{run.name}_{probe}", export, args, seed
                )
                metrics = json.loads((probe_dir / "metrics.json").read_text())["test"]
                predictions = probe_dir / "predictions.csv"
                vs_random = paired_difference_table(predictions, random_run / "predictions.csv", seed=seed)
                vs_pixels = paired_difference_table(predictions, pixel_run / "predictions.csv", seed=seed)
                seconds = (run / "seconds.txt").read_text().strip() if (run / "seconds.txt").is_file() else ""
                rows.append(
                    {
                        "features": f"{objective}, {steps} steps ({seconds} s)",
                        "probe": probe,
                        "seed": seed,
                        "objective": objective,
                        "steps": steps,
                        "bacc": _value(metrics, "balanced_accuracy"),
                        "auroc": _value(metrics, "auroc_macro_ovr"),
                        "bacc - random": _ci(vs_random["balanced_accuracy"]),
                        "auroc - random": _ci(vs_random["auroc_macro_ovr"]),
                        "bacc - pixels": _ci(vs_pixels["balanced_accuracy"]),
                        "d_random": vs_random["balanced_accuracy"]["difference"],
                        "d_random_low": vs_random["balanced_accuracy"]["low"],
                        "d_pixels": vs_pixels["balanced_accuracy"]["difference"],
                        "d_auroc": vs_random["auroc_macro_ovr"]["difference"],
                    }
                )
                log.info("%s", rows[-1])
                pd.DataFrame(rows).to_csv(out / "pretrain_table.csv", index=False)
    frame = pd.DataFrame(rows)
    shown = ["features", "probe", "seed", "bacc", "auroc", "bacc - random", "auroc - random", "bacc - pixels"]
    lines = [frame[shown].fillna("").to_markdown(index=False), ""]
    full = frame[frame["steps"] == args.steps] if "steps" in frame else frame.iloc[:0]
    for (objective, probe), group in full.groupby(["objective", "probe"]):
        d, n = group["d_random"], len(group)
        lines.append(
            f"- {objective}, {probe}: bacc - random {d.mean():+.3f} ± {d.std(ddof=1):.3f} (mean ± sd, {n} "
            f"seeds; CI above 0 on {(group['d_random_low'] > 0).sum()} of {n}), bacc - pixels "
            f"{group['d_pixels'].mean():+.3f}, macro AUROC - random {group['d_auroc'].mean():+.3f}"
        )
    nuisance = {"random init": brightness_check(random_spec, manifest, args.image_size)}
    for objective in args.objectives.split(","):
        run = out / "runs" / f"{objective}_s{args.seeds[0]}_{args.steps}"
        nuisance[objective] = brightness_check(str(run / "encoder"), manifest, args.image_size)
    lines.append(
        "- |corr(PC1 of test features, image brightness)|: "
        + ", ".join(f"{k} {v:.2f}" for k, v in nuisance.items())
    )
    (out / "pretrain_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("select", "table"), default="select")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "pretrain_table")
    parser.add_argument("--objectives", default="simclr,dino,ibot,mlm_ema,mae")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--override", action="append", default=[], help="extra `panderm pretrain` override")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    export = out / "data" / "dermamnist"  # the PNG export the probes and every pretraining run share
    manifest = read_medmnist(DERMAMNIST, export)
    (out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    if args.stage == "select":
        select(args, out, manifest, export)
    else:
        table(args, out, manifest, export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
