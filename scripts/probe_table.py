"""The README's MedMNIST probe table: three feature sources x linear probes on three real MedMNIST sets.

For each data set (DermaMNIST, PneumoniaMNIST, BreastMNIST from ../shared/data, see each SOURCE.md) and each
feature source

- ``random``: a randomly initialised ViT-tiny/8 at 64 px with the demo's depth (``RANDOM_SPEC``, seed 0),
- ``pretrained``: the encoder of ``panderm pretrain`` (its default objective, on SynthDerm) at the demo's
  budget (`panderm.config.DemoPretrainConfig`: epochs, batch size, depth, objective options), trained into
  ``<out>/pretrain_<epochs>ep_depth<depth>[_<option><value>...]`` (reused when there) unless
  ``--pretrained PATH`` names an exported encoder,
- ``pixels``: the raw 28x28 pixels (all channels, scaled to [0, 1]) flattened and written as a features
  ``.npz`` that the probe reads with ``features=``,

it runs `probes.run.run_probe` (the code behind ``panderm probe``) with each probe of ``--probes`` (default
``linear_sweep``, optionally ``knn``) and collects test balanced accuracy and AUROC (binary, or macro
one-vs-rest) with their bootstrap 95% intervals into a markdown table, printed and written to
``<out>/probe_table.md`` (plus ``probe_table.csv``). Encoder features are cached in ``<out>/feature_cache``
and the PNG export of each npz is kept in ``<out>/data``, so a second run only refits the probes.

Run: ``.venv/bin/python scripts/probe_table.py [--out DIR] [--datasets a,b] [--limit N] [--pretrained PATH]``.
``--limit N`` keeps about N images per split (stratified by class, seeded) for a quick check.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from panderm.config import DemoPretrainConfig, register_configs  # noqa: E402
from panderm.demo import random_encoder_spec  # noqa: E402
from panderm.paths import config_dir  # noqa: E402
from probes.features import write_pixel_features  # noqa: E402
from probes.run import run_probe  # noqa: E402

log = logging.getLogger("probe_table")

SHARED_DATA = Path(os.environ.get("PANDERM_SHARED_DATA", REPO.parent / "shared" / "data"))
#: data set name -> npz under ../shared/data (the file name must start with the MedMNIST set name, which
#: gives the reader its class names). PneumoniaMNIST: the reconstruction with the official split sizes.
DATASETS: dict[str, str] = {
    "dermamnist": "dermamnist_jpeg/dermamnist_28_jpeg.npz",
    "pneumoniamnist": "pneumoniamnist/pneumoniamnist_reconstructed_full.npz",
    "breastmnist": "breastmnist/breastmnist.npz",
}
DEMO_DEPTH = DemoPretrainConfig().depth
RANDOM_SPEC = random_encoder_spec(64, DEMO_DEPTH)
SOURCES = ("random", "pretrained", "pixels")
SPLITS = ("train", "val", "test")


@dataclass
class Row:
    dataset: str
    source: str
    probe: str
    n_train: int
    n_test: int
    balanced_accuracy: float
    balanced_accuracy_ci: tuple[float, float] | None
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    seconds: float
    run_dir: str


# ------------------------------------------------------------------------------------------------ data


def subsample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of about `limit` rows, stratified by label (each present class keeps >= 1 row)."""
    labels = labels.reshape(-1)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n = max(1, round(limit * len(rows) / len(labels)))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def prepare_npz(name: str, source: Path, out: Path, limit: int | None, seed: int) -> Path:
    """The npz to probe: `source` itself, or with `limit` a stratified subset written to `out/data`."""
    if limit is None:
        return source
    path = out / "data" / f"{name}_limit{limit}_seed{seed}.npz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    with np.load(source, allow_pickle=False) as data:
        for i, split in enumerate(SPLITS):
            labels = data[f"{split}_labels"]
            rows = subsample(labels, limit, seed + i)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = data[f"{split}_images"][rows], labels[rows]
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    log.info("%s: subset of about %d images per split -> %s", name, limit, path)
    return path


# ------------------------------------------------------------------------------------------ pretraining


def pretrained_encoder(out: Path, given: str | None) -> str:
    """The pretrained encoder: `given`, else one trained at the demo's budget into `out/pretrain_<epochs>ep`
    (reused when that folder already holds its export)."""
    if given:
        return given
    budget = DemoPretrainConfig()
    options = budget.objective_options
    tag = "".join(f"_{key}{value}" for key, value in sorted(options.items()))
    run = out / f"pretrain_{budget.max_epochs}ep_depth{budget.depth or 12}{tag}"
    encoder = run / "encoder.safetensors"
    if encoder.is_file():
        log.info("pretrained encoder: reusing %s", encoder)
        return str(encoder)
    command = [
        sys.executable,
        "-m",
        "panderm.cli",
        "pretrain",
        f"hydra.run.dir={run}",
        f"trainer.max_epochs={budget.max_epochs}",
        f"batch_size={budget.batch_size}",
        f"encoder.depth={budget.depth or 'null'}",
        *(f"+objective.options.{key}={value}" for key, value in options.items()),
        "trainer.progress_bar=false",
    ]
    log.info("pretraining at the demo's budget (%d epochs): %s", budget.max_epochs, " ".join(command[2:]))
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    log.info("pretraining done in %.0f s", time.perf_counter() - start)
    if not encoder.is_file():
        raise SystemExit(f"pretraining finished but {encoder} was not written")
    return str(encoder)


# ---------------------------------------------------------------------------------------------- probes


def probe_config(overrides: Sequence[str], *, encoder: str | None, features: str | None) -> DictConfig:
    """The `panderm probe` config for `overrides`, with the encoder spec or features file set."""
    register_configs()
    with initialize_config_dir(str(config_dir("probe")), version_base="1.3"):
        cfg = compose("probe", overrides=list(overrides))
    cfg.encoder, cfg.features = encoder, features
    return cfg


def _interval(test: dict[str, Any], key: str) -> tuple[float, float] | None:
    intervals = test.get("ci95", {}).get("intervals", {})
    return tuple(intervals[key]) if key in intervals else None  # type: ignore[return-value]


def run_one(args: argparse.Namespace, dataset: str, npz: Path, source: str, probe: str, feature: str) -> Row:
    """One `run_probe` call; `feature` is the encoder spec/path, or the features npz for `pixels`."""
    run_dir = args.out / "runs" / dataset / source / probe
    overrides = [
        "data=medmnist",
        f"data.path={npz}",
        f"data.out_dir={args.out / 'data' / 'export' / npz.stem}",
        f"cache_dir={args.out / 'feature_cache'}",
        f"probe={probe}",
        f"bootstrap={args.bootstrap}",
        f"plots={str(args.plots).lower()}",
        f"num_workers={args.num_workers}",
        f"batch_size={args.batch_size}",
        f"seed={args.seed}",
    ]
    is_file = source == "pixels"
    if is_file and probe == "linear_sweep":
        # RGB pixels are 2352-d, above the sweep's automatic preconditioning limit (2048); whitening gives the
        # same optimum in ~7x fewer L-BFGS iterations on these highly correlated columns (minutes -> seconds)
        overrides.append("+probe.options.precondition=true")
    cfg = probe_config(overrides, encoder=None if is_file else feature, features=feature if is_file else None)
    log.info("%s / %s / %s ...", dataset, source, probe)
    start = time.perf_counter()
    metrics = run_probe(cfg, run_dir)
    seconds = time.perf_counter() - start
    with np.load(npz, allow_pickle=False) as data:
        n_train = len(data["train_labels"])
    test = metrics["test"]
    values = test["values"]
    auroc_key = "auroc" if "auroc" in values else "auroc_macro_ovr"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    row = Row(
        dataset=dataset,
        source=source,
        probe=probe,
        n_train=n_train,
        n_test=int(test["n"]),
        balanced_accuracy=float(values["balanced_accuracy"]),
        balanced_accuracy_ci=_interval(test, "balanced_accuracy"),
        auroc=float(values[auroc_key]) if auroc_key in values else None,
        auroc_ci=_interval(test, auroc_key),
        seconds=seconds,
        run_dir=str(run_dir),
    )
    if len(predictions) != row.n_test:
        raise RuntimeError(f"{run_dir}: {len(predictions)} predictions for {row.n_test} test images")
    recipe = metrics.get("recipe", {})
    log.info(
        "%s / %s / %s: balanced accuracy %.3f, AUROC %s (%s) in %.1f s",
        dataset,
        source,
        probe,
        row.balanced_accuracy,
        "n/a" if row.auroc is None else f"{row.auroc:.3f}",
        f"C={recipe['C']:g}" if "C" in recipe else probe,
        seconds,
    )
    return row


# ----------------------------------------------------------------------------------------------- table


def _cell(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def source_labels(pretrained: str | None) -> dict[str, str]:
    """How the table names each feature source (`pretrained`: the --pretrained path, if one was given)."""
    budget = DemoPretrainConfig()
    options = "".join(f", {key} {value}" for key, value in budget.objective_options.items())
    blocks = DEMO_DEPTH or 12
    return {
        "random": f"random init (`{RANDOM_SPEC}`)",
        "pretrained": f"`{pretrained}`"
        if pretrained
        else f"demo-pretrained ViT-tiny/8@64, {blocks} blocks ({budget.max_epochs} epochs{options})",
        "pixels": "raw pixels (28x28, flattened)",
    }


def markdown_table(rows: Sequence[Row], labels: dict[str, str]) -> str:
    """The results as a markdown table: data set, source, probe, balanced accuracy and AUROC [95% CI]."""
    lines = [
        "| data set | features | probe | balanced accuracy [95% CI] | AUROC [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {labels[r.source]} | {r.probe} | "
            f"{_cell(r.balanced_accuracy, r.balanced_accuracy_ci)} | {_cell(r.auroc, r.auroc_ci)} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "probe_table", help="output folder")
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}"
    )
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {SOURCES}")
    parser.add_argument("--probes", default="linear_sweep", help="comma-separated: linear_sweep, knn, ...")
    parser.add_argument("--limit", type=int, default=None, help="keep about N images per split (quick run)")
    parser.add_argument("--pretrained", default=None, help="exported encoder to use instead of pretraining")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="the ../shared/data folder")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--plots", action="store_true", help="also write each run's figures (slower)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    args.probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = [d for d in args.datasets if d not in DATASETS] + [s for s in args.sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown data set(s)/source(s) {unknown}; choose from {list(DATASETS)} / {SOURCES}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    args.out = args.out.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    missing = [str(args.data_root / DATASETS[d]) for d in args.datasets]
    missing = [path for path in missing if not Path(path).is_file()]
    if missing:
        log.error("data not found: %s (set --data-root or PANDERM_SHARED_DATA)", ", ".join(missing))
        return 1
    pretrained = pretrained_encoder(args.out, args.pretrained) if "pretrained" in args.sources else None
    rows: list[Row] = []
    for dataset in args.datasets:
        npz = prepare_npz(dataset, args.data_root / DATASETS[dataset], args.out, args.limit, args.seed)
        features = {"random": RANDOM_SPEC, "pretrained": pretrained}
        if "pixels" in args.sources:
            features["pixels"] = str(
                write_pixel_features(npz, args.out / "features" / f"{npz.stem}_pixels.npz")
            )
        for source in args.sources:
            for probe in args.probes:
                rows.append(run_one(args, dataset, npz, source, probe, str(features[source])))
    table = markdown_table(rows, source_labels(args.pretrained))
    (args.out / "probe_table.md").write_text(table)
    pd.DataFrame([r.__dict__ for r in rows]).to_csv(args.out / "probe_table.csv", index=False)
    elapsed = time.perf_counter() - start
    print(table)
    print(
        f"{len(rows)} runs in {elapsed:.0f} s on {date.today()}, {platform.machine()} with "
        f"{os.cpu_count()} CPU(s); table in {args.out / 'probe_table.md'}; runs in {args.out / 'runs'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
