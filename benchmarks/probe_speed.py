"""Probe speed in one run: our torch probes against scikit-learn, and our feature extraction and cache.

Synthetic features: `--train` x `--dim` training rows and `--test` test rows of `--classes` Gaussian classes.
Class means are drawn at scale `--sep` (`--knn-sep` for kNN: in 768 dimensions nearest neighbours need wider
class margins than a linear probe to reach a meaningful accuracy); the noise has a power-law spectrum
(eigenvalue i proportional to i^(-2 * `--alpha`), in a random orthonormal basis, mean variance 1) plus a
random per-dimension offset, so the features are anisotropic and off-centre like pooled encoder embeddings and
the accuracy is neither chance nor perfect. Everything is float32 on `--device`; scikit-learn gets the same
arrays as numpy.

Images (feature rows only): a generated SynthDerm archive of about `--images` images (`--source-size` px, all
in the train split) and a randomly initialised encoder from `--encoder` (default ViT-tiny/8 at 64 px, full
depth), both built once, in a temporary folder.

Comparisons (each a function in `COMPARISONS`, returning a `Row`; append new ones there, pick with `--only`):

- `compare_linear_single_c`: `fit_linear_sweep(c_grid=[C])` (standardise with train statistics, float32
  L-BFGS on sklearn's objective / N, preconditioned by the feature covariance as it is by default at this
  size) against `StandardScaler` + `LogisticRegression(C, solver="lbfgs")`; both stop when the largest
  gradient entry (ours: in the preconditioned coordinates) is below `--tol` (sklearn's default 1e-4), max
  1000 iterations. Both timings include the standardisation. scikit-learn (seconds per fit) is timed once,
  without a warm-up.
- `compare_linear_sweep` (not run by default: minutes on 2 cores): our default 25-value C grid with a
  stratified 20 % hold-out and refit, against the same procedure written with scikit-learn
  (`warm_start=True` along the grid, `--sweep-grid` values); each timed once, without a warm-up round.
- `compare_knn`: `knn_proba(variant="dino", k=20, T=0.07)` against `KNeighborsClassifier(n_neighbors=20,
  algorithm="brute", metric="cosine").predict_proba` on `--knn-queries` test rows (fit + predict both timed;
  both normalise the raw features inside the timed call, both run the similarities as one float32 matrix
  multiply). The line also gives that matrix multiply alone (already normalised inputs, preallocated output:
  `torch.mm(out=...)`) and the ratio sklearn / matmul, the ceiling for any exact float32 kNN on the device.
- `compare_feature_extraction`: every image is preprocessed once by the encoder's evaluation transform and
  stacked into host batches of `--batch` images. Ours is `probes.features.encode_batches` (the loop inside
  `extract_features`: size check, device move, inference mode, autocast on CUDA, batched host copies, the
  finite check); the baseline is a bare ``encoder.features(x.to(device))`` loop over the same batches under
  the same inference mode and autocast, then one concatenation to the host. After one warm-up the two run
  alternately on chunks of `--chunk` batches (which one goes first alternates too) for `--repeats` passes
  over the data, so that load from other processes hits both alike; the ratio is the median of the per-chunk
  speed ratios, the printed times and speeds come from the summed times (per pass over the images).
- `compare_extraction_end_to_end` (for information; not run by default): `extract_features` with its
  DataLoader (decode + transform + model, `--workers` workers) against the bare forward over preloaded
  tensors; `--repeats` calls, each bracketed by bare passes, the ratio being the median over calls of
  (bracket mean / call time).
- `compare_feature_cache`: `cached_features` on an empty cache folder (extract + write) as the baseline
  against the same call again (cache hit: stat every image for the manifest hash, read the .npz); best of
  three for the hit.

Times are the best of `--repeats` runs (ours and the baseline alternate), after one untimed warm-up of each
unless said otherwise. Each line ends in `ratio=<our speed / baseline speed>` (baseline seconds / our
seconds unless said otherwise). Progress bars are off.

Run: `.venv/bin/python benchmarks/probe_speed.py` (the default rows, about 1-2 minutes on 2 CPU cores);
`--all` adds the slow rows, `--only NAME ...` / `--skip NAME ...` pick rows, `--quick` shrinks every size for
a smoke run (its ratios are not the acceptance figures), smaller `--train`, `--knn-queries`, `--images` or
`--repeats` shorten single rows. On a GPU add `--device cuda` (and e.g. `--encoder random:vit_base/16@224
--images 2048 --batch 128 --workers 8`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from panderm.data.dataset import ManifestDataset
from panderm.data.manifest import Manifest, read_manifest
from panderm.data.synthetic.synthderm import generate_synthderm
from probes.encoders import load_probe_encoder
from probes.features import (
    cached_features,
    encode_batches,
    extract_features,
    inference_autocast,
    probe_transform,
)
from probes.knn import knn_proba
from probes.linear import DEFAULT_C_GRID, fit_linear_sweep, stratified_holdout

IMAGES_PER_PATIENT = 4.5  # SynthDerm's average with its default follow-up and modality rates
QUICK = {  # --quick: every size shrunk for a smoke run
    "train": 2_000, "test": 500, "knn_queries": 500, "sweep_grid": 7, "repeats": 1, "images": 128,
}  # fmt: skip


@dataclass
class Data:
    x: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64
    xq: np.ndarray  # (M, D) float32
    yq: np.ndarray
    xt: torch.Tensor  # the same on the device
    yt: torch.Tensor
    xqt: torch.Tensor
    classes: int


@dataclass
class Images:
    """The preprocessed images of a generated SynthDerm archive and a random encoder, built once."""

    encoder: nn.Module
    manifest: Manifest
    batches: list[torch.Tensor]  # preprocessed host batches (pinned on CUDA)
    root: Path  # scratch folder, removed at exit
    device: torch.device

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass
class Row:
    """One printed line; `ratio` defaults to baseline seconds / our seconds."""

    name: str
    ours_s: float
    baseline_s: float
    detail: str
    ratio: float | None = None

    def line(self) -> str:
        ratio = self.baseline_s / self.ours_s if self.ratio is None else self.ratio
        return (
            f"{self.name}: ours {1000 * self.ours_s:.1f} ms, baseline {1000 * self.baseline_s:.1f} ms, "
            f"{self.detail} ratio={ratio:.2f}"
        )


_DATA: dict[float, Data] = {}
_IMAGES: list[Images] = []
_SCRATCH = contextlib.ExitStack()  # temporary folders, closed when `main` ends


def features(args: argparse.Namespace, sep: float) -> Data:
    """The synthetic features with class-mean scale `sep` (built once per scale and reused)."""
    if sep not in _DATA:
        _DATA[sep] = make_data(args, sep)
    return _DATA[sep]


def make_data(args: argparse.Namespace, sep: float) -> Data:
    rng = np.random.default_rng(args.seed)
    d, k = args.dim, args.classes
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scale = np.arange(1, d + 1) ** -args.alpha
    scale /= np.sqrt(np.mean(scale**2))
    mix = (basis * scale) @ basis.T
    means = rng.normal(size=(k, d)) @ mix.T * sep
    offset = rng.normal(size=d)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, k, n)
        return (offset + means[y] + rng.normal(size=(n, d)) @ mix.T).astype(np.float32), y

    x, y = draw(args.train)
    xq, yq = draw(args.test)
    device = torch.device(args.device)
    return Data(
        x, y, xq, yq, torch.from_numpy(x).to(device), torch.from_numpy(y).to(device),
        torch.from_numpy(xq).to(device), k,
    )  # fmt: skip


def images(args: argparse.Namespace) -> Images:
    """The SynthDerm archive, its preprocessed batches and the encoder (built on first use, then reused)."""
    if not _IMAGES:
        device = torch.device(args.device)
        encoder = load_probe_encoder(args.encoder).to(device)
        root = Path(_SCRATCH.enter_context(tempfile.TemporaryDirectory(prefix="probe-bench-")))
        n_patients = max(1, round(args.images / IMAGES_PER_PATIENT))
        path = generate_synthderm(
            root / "data", n_patients=n_patients, image_size=args.source_size, splits=(1.0, 0.0, 0.0)
        )
        manifest = read_manifest(path)
        dataset = ManifestDataset(manifest, probe_transform(encoder), with_masks=False)
        stacked = torch.stack([dataset[i]["image"] for i in range(len(manifest))])
        batches = list(stacked.split(args.batch))
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        _IMAGES.append(Images(encoder, manifest, batches, root, device))
    return _IMAGES[0]


def images_name(args: argparse.Namespace, data: Images) -> str:
    size = data.encoder.spec.image_size
    return (
        f"{args.encoder} ({size}px, {args.pooling}), {data.count} images ({args.source_size}px source), "
        f"batch {args.batch}, {args.device}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[..., Any], device: torch.device, *args: Any) -> tuple[float, Any]:
    """(seconds, result) of one call of `fn(*args)`, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn(*args)
    sync(device)
    return time.perf_counter() - start, result


def best_of(
    repeats: int,
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: bool = True,
    once: tuple[str, ...] = (),
) -> tuple[dict[str, float], dict[str, Any]]:
    """({name: best seconds}, {name: last result}) over `repeats` rounds calling each of `fns` in turn.

    With `warmup`, a first untimed round warms allocators, thread pools and lazy imports. The functions
    named in `once` (long runs, where a warm-up or a best-of changes nothing) run a single timed call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for i in range(0 if warmup else 1, repeats + 1):
        for name, fn in fns.items():
            if name in once and i != 1:
                continue
            seconds, results[name] = timed(fn, device)
            if i:
                times[name].append(seconds)
    return {name: min(t) for name, t in times.items()}, results


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == y).mean())


# --------------------------------------------------------------------------------------- probe fitting


def compare_linear_single_c(args: argparse.Namespace) -> Row:
    c, tol, data = args.c, args.tol, features(args, args.sep)

    def ours():
        return fit_linear_sweep(
            data.xt, data.yt, num_classes=data.classes, c_grid=[c], tol=tol, max_iter=1000
        )

    def baseline():
        scaler = StandardScaler().fit(data.x)
        model = LogisticRegression(C=c, tol=tol, max_iter=1000).fit(scaler.transform(data.x), data.y)
        return scaler, model

    # sklearn takes seconds per fit here: one timed call (no warm-up, no best-of) keeps the run short.
    t, out = best_of(args.repeats, {"ours": ours, "base": baseline}, data.xt.device, once=("base",))
    probe, (scaler, model) = out["ours"], out["base"]
    acc_ours = accuracy(probe.predict(data.xqt), data.yq)
    acc_base = accuracy(model.predict(scaler.transform(data.xq)), data.yq)
    return Row(
        f"linear probe, single C={c:g} ({args.train}x{args.dim}, {data.classes} classes, {args.device})",
        t["ours"],
        t["base"],
        f"acc {acc_ours:.4f} vs {acc_base:.4f}, L-BFGS iterations {probe.recipe['iterations']} vs "
        f"{int(model.n_iter_.max())},",
    )


def sklearn_sweep(x: np.ndarray, y: np.ndarray, grid: list[float], tol: float, seed: int):
    """Our sweep procedure with scikit-learn: hold-out, warm-started grid, best balanced accuracy, refit."""
    fit_idx, hold_idx = (i.numpy() for i in stratified_holdout(torch.from_numpy(y), 0.2, seed))
    scaler = StandardScaler().fit(x[fit_idx])
    xf, xh = scaler.transform(x[fit_idx]), scaler.transform(x[hold_idx])
    model = LogisticRegression(tol=tol, max_iter=1000, warm_start=True)
    best_c, best_score = grid[0], -np.inf
    for c in grid:
        model.set_params(C=c).fit(xf, y[fit_idx])
        pred = model.predict(xh)
        recalls = [np.mean(pred[y[hold_idx] == k] == k) for k in np.unique(y[hold_idx])]
        if np.mean(recalls) > best_score:
            best_c, best_score = c, float(np.mean(recalls))
    scaler = StandardScaler().fit(x)
    final = LogisticRegression(C=best_c, tol=tol, max_iter=1000).fit(scaler.transform(x), y)
    return scaler, final, best_c


def compare_linear_sweep(args: argparse.Namespace) -> Row:
    data = features(args, args.sep)
    sk_grid = [float(c) for c in np.logspace(-4, 4, args.sweep_grid)]

    def ours():
        return fit_linear_sweep(data.xt, data.yt, num_classes=data.classes, tol=args.tol, seed=args.seed)

    def baseline():
        return sklearn_sweep(data.x, data.y, sk_grid, args.tol, args.seed)

    t, out = best_of(1, {"ours": ours, "base": baseline}, data.xt.device, warmup=False)
    probe, (scaler, model, c_base) = out["ours"], out["base"]
    acc_ours = accuracy(probe.predict(data.xqt), data.yq)
    acc_base = accuracy(model.predict(scaler.transform(data.xq)), data.yq)
    return Row(
        f"linear probe, C sweep + hold-out + refit ({len(DEFAULT_C_GRID)} vs {len(sk_grid)} C values)",
        t["ours"],
        t["base"],
        f"chosen C {probe.recipe['C']:.3g} vs {c_base:.3g}, acc {acc_ours:.4f} vs {acc_base:.4f},",
    )


def compare_knn(args: argparse.Namespace) -> Row:
    data = features(args, args.knn_sep)
    queries = data.xqt[: args.knn_queries]
    yq = data.yq[: args.knn_queries]
    # The floor: the similarity matrix multiply alone, inputs already normalised, output preallocated.
    bank, normed = F.normalize(data.xt, dim=1), F.normalize(queries, dim=1)
    sims = torch.empty(len(queries), len(bank), device=bank.device)

    def ours():
        return knn_proba(data.xt, data.yt, queries, num_classes=data.classes, k=20, temperature=0.07)

    def baseline():
        knn = KNeighborsClassifier(n_neighbors=20, algorithm="brute", metric="cosine").fit(data.x, data.y)
        return knn.predict_proba(data.xq[: args.knn_queries])

    def matmul():
        return torch.mm(normed, bank.t(), out=sims)

    t, out = best_of(args.repeats, {"ours": ours, "base": baseline, "mm": matmul}, data.xt.device)
    return Row(
        f"kNN k=20 ({args.train} train x {len(yq)} queries, class-mean scale {args.knn_sep:g}, dino T=0.07 "
        "vs sklearn brute cosine)",
        t["ours"],
        t["base"],
        f"acc {accuracy(out['ours'].argmax(1), yq):.4f} vs {accuracy(out['base'].argmax(1), yq):.4f}, "
        f"bare float32 matmul {1000 * t['mm']:.1f} ms (sklearn / matmul {t['base'] / t['mm']:.2f}),",
    )


# ------------------------------------------------------------------------------------ feature extraction


def compare_feature_extraction(args: argparse.Namespace) -> Row:
    data = images(args)
    encoder, device, pooling = data.encoder, data.device, args.pooling

    def ours(chunk: list[torch.Tensor]) -> None:
        encode_batches(encoder, chunk, pooling=pooling, device=device, progress=False)

    def bare(chunk: list[torch.Tensor]) -> None:
        with torch.inference_mode(), inference_autocast(device, True):
            outs = [encoder.features(b.to(device, non_blocking=True), pooling) for b in chunk]
            torch.cat(outs).float().cpu()

    chunks = [data.batches[i : i + args.chunk] for i in range(0, len(data.batches), args.chunk)]
    ours(chunks[0]), bare(chunks[0])  # warm-up (allocator, kernels)
    # Fine interleaving (chunk by chunk, alternating which goes first) so that load from other processes on
    # a shared machine falls on both alike; the ratio is the median of the per-chunk speed ratios (robust to
    # load bursts), the times and speeds are from the summed times.
    total = {"ours": 0.0, "bare": 0.0}
    ratios = []
    for round_ in range(args.repeats):
        for i, chunk in enumerate(chunks):
            order = ("ours", "bare") if (i + round_) % 2 == 0 else ("bare", "ours")
            took = {name: timed(ours if name == "ours" else bare, device, chunk)[0] for name in order}
            ratios.append(took["bare"] / took["ours"])
            for name, seconds in took.items():
                total[name] += seconds
    per_pass = {name: seconds / args.repeats for name, seconds in total.items()}
    return Row(
        f"feature extraction, encode_batches vs bare forward (preloaded tensors; {images_name(args, data)})",
        per_pass["ours"],
        per_pass["bare"],
        f"{data.count / per_pass['ours']:.1f} vs {data.count / per_pass['bare']:.1f} img/s, median of "
        f"{len(ratios)} interleaved chunks,",
        ratio=statistics.median(ratios),
    )


def compare_extraction_end_to_end(args: argparse.Namespace) -> Row:
    data = images(args)
    encoder, device, pooling = data.encoder, data.device, args.pooling

    def bare() -> None:
        with torch.inference_mode(), inference_autocast(device, True):
            outs = [encoder.features(b.to(device, non_blocking=True), pooling) for b in data.batches]
            torch.cat(outs).float().cpu()

    def end_to_end() -> None:
        extract_features(
            encoder, data.manifest, "train", pooling=pooling, batch_size=args.batch,
            num_workers=args.workers, device=device, progress=False,
        )  # fmt: skip

    # `--repeats` calls, each bracketed by full bare passes (shared between neighbours); the ratio is the
    # median over calls of the bracket mean over the call's time.
    bare_times = [timed(bare, device)[0]]
    e2e_times = []
    for _ in range(args.repeats):
        e2e_times.append(timed(end_to_end, device)[0])
        bare_times.append(timed(bare, device)[0])
    ratios = [(a + b) / 2 / e for a, b, e in zip(bare_times, bare_times[1:], e2e_times, strict=False)]
    ours_s, bare_s = statistics.median(e2e_times), statistics.median(bare_times)
    return Row(
        f"feature extraction end to end, extract_features ({args.workers} workers, decode + transform) vs "
        "bare forward (preloaded tensors)",
        ours_s,
        bare_s,
        f"{data.count / ours_s:.1f} vs {data.count / bare_s:.1f} img/s, for information,",
        ratio=statistics.median(ratios),
    )


def compare_feature_cache(args: argparse.Namespace) -> Row:
    data = images(args)
    cache = data.root / "cache"

    def cached() -> None:
        cached_features(
            data.encoder, data.manifest, "train", pooling=args.pooling, cache_dir=cache,
            batch_size=args.batch, num_workers=args.workers, device=data.device, progress=False,
        )  # fmt: skip

    first, _ = timed(cached, data.device)  # empty cache folder: extract + write
    hit = min(timed(cached, data.device)[0] for _ in range(3))
    size_kib = sum(p.stat().st_size for p in cache.glob("*.npz")) / 1024
    return Row(
        f"cached_features re-run (cache hit) vs first run ({data.count} images, {size_kib:.0f} KiB fp16)",
        hit,
        first,
        "best of 3 hits,",
    )


#: One function per printed line, in printing order.
COMPARISONS: list[Callable[[argparse.Namespace], Row]] = [
    compare_linear_single_c,
    compare_linear_sweep,
    compare_knn,
    compare_feature_extraction,
    compare_extraction_end_to_end,
    compare_feature_cache,
]
#: Rows left out unless `--all` or `--only` asks for them (minutes on 2 CPU cores, or for information).
SLOW = {compare_linear_sweep.__name__, compare_extraction_end_to_end.__name__}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [compare.__name__ for compare in COMPARISONS]
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--sep", type=float, default=0.1, help="scale of the class means")
    parser.add_argument("--alpha", type=float, default=0.5, help="power-law decay of the noise spectrum")
    parser.add_argument("--c", type=float, default=1.0, help="C of the single-C comparison")
    parser.add_argument("--tol", type=float, default=1e-4, help="gradient tolerance of both solvers")
    parser.add_argument("--sweep-grid", type=int, default=25, help="C values of the scikit-learn sweep")
    parser.add_argument("--knn-queries", type=int, default=2_000)
    parser.add_argument("--knn-sep", type=float, default=0.3, help="class-mean scale of the kNN features")
    parser.add_argument("--encoder", default="random:vit_tiny/8@64", help="encoder of the feature rows")
    parser.add_argument("--images", type=int, default=256, help="about this many generated images")
    parser.add_argument("--source-size", type=int, default=80, help="generated image size (pixels)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch")
    parser.add_argument("--pooling", default="cls")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of extract_features")
    parser.add_argument("--chunk", type=int, default=1, help="batches per interleaved timing chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"run only these: {names}")
    parser.add_argument("--skip", nargs="+", choices=names, metavar="NAME", default=[], help="skip these")
    parser.add_argument("--all", action="store_true", help=f"also run the slow rows {sorted(SLOW)}")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: defaults {QUICK}")
    parser.add_argument("--seed", type=int, default=0)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    print(
        f"{args.train} train / {args.test} test x {args.dim} float32 features, {args.classes} classes "
        f"(class-mean scale {args.sep:g}, noise spectrum decay {args.alpha:g}), "
        f"{args.device}, torch {torch.get_num_threads()} thread(s); best of {args.repeats} runs"
    )
    with _SCRATCH:
        for compare in COMPARISONS:
            name = compare.__name__
            wanted = name in args.only if args.only else args.all or name not in SLOW
            if not wanted or name in args.skip:
                continue
            print(compare(args).line(), flush=True)


if __name__ == "__main__":
    main()
