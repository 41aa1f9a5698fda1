"""Frozen-encoder features: extraction over a manifest split, an on-disk cache, and user feature files.

`extract_features` runs the encoder (eval mode, `torch.inference_mode`, bf16 autocast on CUDA) over one
split with the encoder's own evaluation transform and returns a `FeatureSet`. `cached_features` does the
same through a cache: one ``.npz`` per (split, key), features in float16, written atomically, and read back
instead of recomputed on the next call. `load_feature_file` reads features a user computed elsewhere.

Cache key: sha256 of the canonical JSON of
- the encoder's identity (`probes.encoders.encoder_hash`: checkpoint hash, or spec + seed for random init),
- the manifest rows of the split (`manifest_hash`): per row the image path, label code, radiology loader
  options, and the image file's size and modification time (nanoseconds) -- cheap (one `stat` per image)
  and safe against edits, except an edit that keeps both size and mtime (e.g. a copy with ``cp -p`` over a
  same-sized different file); `hash_content=True` hashes the image bytes instead -- plus the class names,
- the transform (albumentations' own serialisation, or `repr` for other callables),
- pooling, the encoder's image size and the precision (bf16 on CUDA with `amp`, else fp32).

Float16 storage: features are stored as float16 (relative rounding error <= 2**-11) unless some value's
magnitude exceeds float16's largest finite value (65504); such a file is stored in float32 instead (logged)
rather than failing or saturating. Non-finite features from the encoder raise `ProbeError`.

Unreadable images: with ``on_bad_image="skip"`` (the probe's ``data.on_bad_image=skip``) an image that fails
to decode is left out and listed in `bad_image_log` (``skipped_images.csv``) by `ManifestDataset`, the
mechanism pretraining uses; the `FeatureSet` then holds the readable rows and names the others in
`skipped`. The cache records the skipped images too: a cache hit lists them again, and under
"error" a cache holding skipped images is recomputed, so the error names the file as without a cache.

Several devices: ``devices=N`` (N > 1) shards the split's batches over N worker processes, one per GPU
(``cuda:0`` .. ``cuda:N-1``) or N CPU processes, started with `torch.multiprocessing`'s spawn
(`_encode_data_parallel`); the calling process gathers their rows, puts them in manifest order and writes the
cache once. The batches are the ones a single process would run (contiguous runs of them per worker), so
every image's row is computed in the same batch as without sharding; `devices` is not part of the cache key.

Image size: panderm `Encoder`s have a fixed input size (timm's patch embedding checks it), so a transform
whose output is not the encoder's `image_size` square raises `ProbeError` naming both sizes before any
batch runs; encoders that declare `dynamic_image_size` (e.g. timm CNNs) accept any size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from tqdm.auto import tqdm

from panderm.data.dataset import (
    RADIOLOGY_OPTIONS,
    BadImageLog,
    BadImagePolicy,
    ManifestDataset,
    apply_transform,
    bad_image_policy,
    collate,
)
from panderm.data.manifest import Manifest
from panderm.data.transforms import eval_transform
from panderm.errors import ImageLoadError, PandermError, ProbeError
from panderm.io import atomic_path
from panderm.models.checkpoints import canonical_json
from panderm.models.encoder import POOLINGS
from probes.encoders import encoder_hash

log = logging.getLogger(__name__)

CACHE_VERSION = 1
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FEATURE_SPLITS = ("train", "val", "test")
_FLUSH_EVERY = 16  # batches kept on the device before one copy to the host (fewer synchronisations)


@dataclass
class FeatureSet:
    """Features of one split: `features` (N, D) float32, `labels` (N,) int64 (-1 = unlabeled) -- or, for a
    multi-label manifest, (N, C) float32 targets (1/0, NaN where uncertain; `Manifest.targets()`), `ids` (N,)
    str (manifest image paths), `meta` (the manifest's other columns per row, e.g. patient_id, modality,
    fitzpatrick, for subgroup analyses; None for user feature files), `classes`, `recipe` (how they were
    made: encoder hash, pooling, cache key...) and `skipped`: the ids (manifest image paths) of the split's
    rows left out as unreadable under ``on_bad_image="skip"`` (files and reasons are in the run's
    ``skipped_images.csv``)."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    split: str
    meta: pd.DataFrame | None = None
    classes: tuple[str, ...] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2 or len(self.labels) != n or len(self.ids) != n:
            raise ProbeError(
                f"split {self.split!r}: features {self.features.shape}, labels {self.labels.shape} and ids "
                f"({len(self.ids)},) do not describe the same N rows of (N, D) features"
            )
        if self.meta is not None and len(self.meta) != n:
            raise ProbeError(f"split {self.split!r}: meta has {len(self.meta)} rows for {n} features")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def is_multilabel(self) -> bool:
        """Whether `labels` are (N, C) multi-label targets."""
        return self.labels.ndim == 2

    def tensors(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features float32 (N, D), labels int64 (N,) or multi-label targets float32 (N, C)) as torch
        tensors on `device`."""
        x = self.features.astype(np.float32, copy=False)
        x = x if x.flags.writeable else x.copy()  # torch refuses to share read-only numpy memory
        dtype = torch.float32 if self.is_multilabel else torch.int64
        return torch.from_numpy(x).to(device), torch.tensor(self.labels, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------- extraction


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def probe_transform(encoder: nn.Module) -> A.Compose:
    """The encoder's evaluation transform: `eval_transform` at its image size with its normalisation."""
    spec = encoder.spec
    return eval_transform(spec.image_size, mean=spec.mean, std=spec.std)


def dynamic_image_size(encoder: nn.Module) -> bool:
    """Whether the encoder accepts inputs of any size (panderm `Encoder`s do not: timm checks the size)."""
    vit = getattr(encoder, "vit", None)
    if vit is not None:
        return bool(getattr(vit, "dynamic_img_size", False))
    return bool(getattr(encoder, "dynamic_image_size", False))


def check_image_batch(images: Any, encoder: nn.Module, what: str = "the transform") -> None:
    """Raise `ProbeError` unless `images` is a (..., 3, S, S) float tensor of the encoder's image size S
    (any H, W for dynamic-size encoders); the message names both sizes and how to fix it."""
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or not images.is_floating_point():
        kind = type(images).__name__
        shape = getattr(images, "shape", None)
        raise ProbeError(
            f"{what} must produce channels-first float tensors (end it with ToTensorV2), got {kind} "
            f"of shape {tuple(shape) if shape is not None else '?'}"
        )
    if dynamic_image_size(encoder):
        return
    size = int(encoder.spec.image_size)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if (h, w) != (size, size):
        raise ProbeError(
            f"{what} produces {h}x{w} images but the encoder expects {size}x{size} (its image_size={size}); "
            f"use the encoder's own transform (probe_transform / eval_transform({size}, mean=..., std=...)) "
            f"or load the encoder with image_size={h}"
        )


def inference_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, amp: bool) -> str:
    """The precision the encoder runs at: "bf16" (CUDA autocast) or "fp32"."""
    return "bf16" if amp and device.type == "cuda" else "fp32"


def encode_batches(
    encoder: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    pooling: str = "cls",
    device: str | torch.device | None = None,
    amp: bool = True,
    total: int | None = None,
    desc: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Run `encoder.features` over preprocessed image batches (B, 3, H, W); return (N, D) float32 numpy.

    The model-running core of `extract_features`: eval mode (the previous mode is restored afterwards),
    `torch.inference_mode`, bf16 autocast on CUDA when `amp`, inputs moved with ``non_blocking``, outputs
    kept on the device and copied to the host every few batches (one synchronisation each). The encoder is
    moved to `device` (default: CUDA if available). `total` (images) sizes the progress bar. Each batch's
    size is checked (`check_image_batch`). Raises `ProbeError` for a bad pooling, batch, or non-finite
    features.
    """
    if pooling not in POOLINGS:
        raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
    device = resolve_device(device)
    was_training = encoder.training
    first = next(encoder.parameters(), None)
    if first is not None and first.device != device:  # `.to` walks every submodule even when idle
        encoder.to(device)
    encoder.eval()
    pending: list[torch.Tensor] = []
    done: list[torch.Tensor] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        with torch.inference_mode(), inference_autocast(device, amp):
            for images in batches:
                check_image_batch(images, encoder)
                out = encoder.features(images.to(device, non_blocking=True), pooling)
                pending.append(out.float())
                bar.update(len(images))
                if len(pending) >= _FLUSH_EVERY:
                    done.append(torch.cat(pending).cpu())
                    pending = []
            if pending:
                done.append(torch.cat(pending).cpu())
    finally:
        bar.close()
        if was_training:
            encoder.train()
    if not done:
        return np.zeros((0, 0), np.float32)
    features = torch.cat(done).numpy()
    bad = ~np.isfinite(features)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise ProbeError(
            f"{desc}: the encoder produced {int(bad.sum())} non-finite feature value(s) in {rows} image(s); "
            "check the weights, or run without amp (bf16 can overflow)"
        )
    return features


def _labels(manifest: Manifest) -> np.ndarray:
    if manifest.is_multilabel:
        return manifest.targets()
    if "label" not in manifest.table:
        return np.full(len(manifest), -1, np.int64)
    return manifest.table["label"].fillna(-1).to_numpy(dtype=np.int64, copy=True)


def _meta(manifest: Manifest) -> pd.DataFrame:
    return manifest.table.drop(columns=[c for c in ("image", "label") if c in manifest.table])


def _split_rows(manifest: Manifest, split: str) -> Manifest:
    subset = manifest.subset(split)
    if len(subset) == 0:
        present = sorted(manifest.table["split"].unique())
        raise ProbeError(f"{manifest.source}: split {split!r} has no rows (splits present: {present})")
    return subset


def extract_features(
    encoder: nn.Module,
    manifest: Manifest,
    split: str,
    *,
    pooling: str = "cls",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    transform: Callable[..., dict[str, Any]] | None = None,
    amp: bool = True,
    progress: bool = True,
    on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
    bad_image_log: BadImageLog | str | os.PathLike[str] | None = None,
    devices: int = 1,
) -> FeatureSet:
    """Features of every image of one manifest split, in manifest order, as a `FeatureSet`.

    `transform` defaults to `probe_transform(encoder)` (its image size and normalisation); a user transform
    must produce CHW float tensors of the encoder's size. Images are read by `ManifestDataset` through a
    DataLoader (`num_workers`, pinned memory on CUDA): a corrupt image raises `ImageLoadError` naming it,
    or with `on_bad_image="skip"` is left out (the result holds the readable rows) and recorded in
    `bad_image_log` and the result's `skipped`. The model part is `encode_batches` (see there for device,
    amp and progress). `devices` > 1 shards the batches over that many worker processes, one per GPU when
    `device` is CUDA (the first `devices` GPUs), else CPU processes (`_encode_data_parallel`); the rows and
    their values are those of one process. Raises `ProbeError` for an empty split, a split whose every image
    was skipped, a bad pooling or `devices`, more devices than GPUs, or a transform whose output size does
    not fit the encoder.
    """
    if pooling not in POOLINGS:
        raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
    check_devices(devices)
    device = resolve_device(device)
    rows = _split_rows(manifest, split)
    transform = transform if transform is not None else probe_transform(encoder)
    dataset = ManifestDataset(
        rows, transform, with_masks=False, on_bad_image=on_bad_image, bad_image_log=bad_image_log
    )
    # One sample up front, so a wrong transform fails before workers start, naming both sizes.
    first = _first_readable(dataset)
    if first is not None:
        check_image_batch(first, encoder)
    # The batches one process runs; N workers each take a contiguous run of them (see the module docstring).
    batches = list(BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False))
    workers = min(devices, len(batches))
    options = {"pooling": pooling, "amp": amp, "num_workers": num_workers, "progress": progress}
    if workers > 1:
        features, positions = _encode_data_parallel(
            encoder, dataset, batches, workers, device, desc=f"features {split}", **options
        )
    else:
        features, positions = _encode_loader(
            encoder, dataset, batches, device, desc=f"features {split}", total=len(dataset), **options
        )
    skipped: list[str] = []
    if len(features) < len(rows):  # rows were skipped (recorded in the log by the workers that read them)
        skipped = rows.table["image"].astype(str).drop(index=positions).tolist()
        if not len(positions):
            where = f", listed in {dataset.bad_image_log.path}" if dataset.bad_image_log is not None else ""
            raise ProbeError(
                f"{manifest.source}: split {split!r}: every image is unreadable ({len(rows)}{where})"
            )
        rows = rows.subset(rows=positions)
    return FeatureSet(
        features=features,
        labels=_labels(rows),
        ids=rows.table["image"].astype(str).to_numpy(),
        split=split,
        meta=_meta(rows),
        classes=manifest.classes,
        recipe={"encoder": encoder_hash(encoder), "pooling": pooling, "precision": precision(device, amp)},
        skipped=skipped,
    )


def check_devices(devices: Any) -> int:
    """`devices` as an int, or `ProbeError` unless it is a positive integer."""
    if isinstance(devices, bool) or not isinstance(devices, int | np.integer) or devices < 1:
        raise ProbeError(f"devices={devices!r}: must be a positive integer (the number of feature processes)")
    return int(devices)


def _encode_loader(
    encoder: nn.Module,
    dataset: ManifestDataset,
    batches: Sequence[Sequence[int]],
    device: torch.device,
    *,
    pooling: str,
    amp: bool,
    num_workers: int,
    progress: bool,
    desc: str,
    total: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_batches` over the given batches of dataset positions: (features (M, D) float32, positions
    (M,) int64 of the rows kept, in the order of `batches`); skipped rows are absent from both."""
    kept: list[np.ndarray] = []
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )

    def images() -> Iterable[torch.Tensor]:
        for batch in loader:
            if "image" not in batch:  # every image of the batch was skipped
                continue
            kept.append(batch["index"].numpy())
            yield batch["image"]

    features = encode_batches(
        encoder, images(), pooling=pooling, device=device, amp=amp, total=total, desc=desc, progress=progress
    )
    return features, (np.concatenate(kept) if kept else np.zeros(0, np.int64))


def _encode_shard(
    rank: int,
    encoder: nn.Module,
    dataset: ManifestDataset,
    batches: Sequence[Sequence[int]],
    device_type: str,
    threads: int,
    out_dir: str,
    errors: Any,
    options: dict[str, Any],
) -> None:
    """One worker of `_encode_data_parallel`: encode `batches` on its device and write ``rank-<rank>.npz``
    (features, positions) into `out_dir`; a panderm error is sent to the parent through `errors`."""
    try:
        if device_type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
            torch.set_num_threads(threads)  # the parent's threads split between the CPU workers
        total = sum(len(b) for b in batches)
        progress = options.pop("progress") and rank == 0  # one bar (rank 0's share) instead of N interleaved
        desc = f"{options.pop('desc')} (rank 0 of {options.pop('workers')})"
        features, positions = _encode_loader(
            encoder, dataset, batches, device, progress=progress, desc=desc, total=total, **options
        )
        with atomic_path(Path(out_dir) / f"rank-{rank}.npz") as tmp, open(tmp, "wb") as handle:
            _save_arrays(handle, {"features": features, "positions": positions})
    except PandermError as error:
        # Re-raised in the parent as the same type (ImageLoadError, ProbeError...); their constructors take
        # other arguments than their message, so the state travels rather than the pickled exception.
        errors.put((type(error), str(error), dict(vars(error))))


def _raise_worker_error(kind: type[PandermError], message: str, state: dict[str, Any]) -> None:
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    vars(error).update(state)
    raise error


def _encode_data_parallel(
    encoder: nn.Module,
    dataset: ManifestDataset,
    batches: Sequence[Sequence[int]],
    workers: int,
    device: torch.device,
    *,
    pooling: str,
    amp: bool,
    num_workers: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """`_encode_loader` sharded over `workers` processes: worker r runs the r-th contiguous run of `batches`
    on ``cuda:r`` (CUDA `device`) or on the CPU; the rows come back in the order of `batches`.

    Why not Lightning's predict loop: with a spawning strategy it cannot return predictions
    (``return_predictions`` must be False), and its distributed sampler deals rows out round-robin, which
    changes every batch's composition (and so, in the last bits, the features). Why spawn and not a launcher
    that re-runs the command (Lightning's ``ddp``, torchrun): this runs inside a Hydra app (`panderm probe`,
    `panderm bench`), whose command a re-run would repeat in every process (run folders, cells, cache writes)
    -- the pitfall panderm/cli.py works around for pretraining. The workers need no process group: each
    writes its rows to a temporary file and this process gathers them, checks every row came back once, and
    its caller writes the cache once. The encoder is moved to the CPU first (it travels to the workers in
    shared memory) and moved back afterwards.
    """
    if device.type == "cuda" and workers > torch.cuda.device_count():
        raise ProbeError(
            f"devices={workers}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
            f"set devices to at most that number"
        )
    shards = [list(part) for part in np.array_split(np.arange(len(batches)), workers)]
    first = next(encoder.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    encoder.cpu()
    context = torch.multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    options = {"pooling": pooling, "amp": amp, "num_workers": num_workers, "progress": progress}
    threads = max(1, torch.get_num_threads() // workers)
    try:
        with tempfile.TemporaryDirectory(prefix="panderm-features-") as out_dir:
            processes = []
            for rank, shard in enumerate(shards):
                args = (encoder, dataset, [batches[i] for i in shard], device.type, threads, out_dir, errors)
                process = context.Process(
                    target=_encode_shard,
                    args=(rank, *args, {**options, "desc": desc, "workers": workers}),
                    daemon=False,
                )
                process.start()
                processes.append(process)
            for process in processes:
                process.join()
            while not errors.empty():
                _raise_worker_error(*errors.get())
            failed = [rank for rank, process in enumerate(processes) if process.exitcode != 0]
            if failed:
                codes = [processes[rank].exitcode for rank in failed]
                raise ProbeError(f"{desc}: feature worker(s) {failed} failed (exit codes {codes}; see above)")
            parts = []
            for rank in range(workers):
                with np.load(Path(out_dir) / f"rank-{rank}.npz", allow_pickle=False) as data:
                    parts.append((data["features"], data["positions"]))
    finally:
        encoder.to(home)
    positions = np.concatenate([p for _, p in parts])
    expected = np.concatenate([np.asarray(batches[i]) for shard in shards for i in shard])
    if len(np.unique(positions)) != len(positions) or not np.isin(positions, expected).all():
        raise ProbeError(f"{desc}: the feature workers returned rows twice or rows not asked for")
    nonempty = [f for f, _ in parts if f.size]
    width = nonempty[0].shape[1] if nonempty else 0
    features = np.concatenate([f.reshape(len(f), width) for f, _ in parts]).astype(np.float32, copy=False)
    return features, positions


def _first_readable(dataset: ManifestDataset) -> Any:
    """The transformed image of the first row that loads (None if none does); a row that does not load
    raises under the "error" policy and is passed over (not recorded) under "skip"."""
    for i in range(len(dataset)):
        try:
            sample = dataset.load(i)
        except ImageLoadError:
            if dataset.on_bad_image is BadImagePolicy.error:
                raise
            continue
        return apply_transform(dataset.transform, sample, False)["image"]
    return None


# ------------------------------------------------------------------------------------------------ cache


def describe_transform(transform: Any) -> str:
    """A stable text form of a transform for cache keys: albumentations' serialisation, else `repr`.

    A `repr` holding an object address (``at 0x...``) changes every run, so the cache would never hit;
    that case is logged as a warning.
    """
    try:
        return canonical_json(A.to_dict(transform))
    except Exception:  # not an albumentations pipeline, or one with a non-serialisable (lambda) step
        text = repr(transform)
        if " at 0x" in text:
            log.warning("transform %s has no stable description; cached features will not be reused", text)
        return text


def manifest_hash(manifest: Manifest, *, content: bool = False) -> str:
    """sha256 over the rows' image path, label, loader options and image file size + mtime (or, with
    `content`, the image bytes), plus the class names. Raises `ProbeError` naming a missing image file."""
    digest = hashlib.sha256()
    table = manifest.table
    digest.update(canonical_json({"classes": list(manifest.classes or ())}).encode())
    images = table["image"].astype(str).tolist()
    if manifest.is_multilabel:  # the label sets as written (normalised), so the key is short and exact
        sets = [c for c in ("label_set", "uncertain_set") if c in table]
        labels = table[sets].astype(str).agg("\x1e".join, axis=1).tolist()
    else:
        labels = _labels(manifest).tolist()
    rows = table["row"].tolist() if "row" in table else list(range(1, len(table) + 1))
    options = [c for c in RADIOLOGY_OPTIONS if c in table]
    extra = table[options].astype(str).to_numpy().tolist() if options else None
    for i, image in enumerate(images):
        path = manifest.path(image)  # the root check, as for every read
        try:
            if content:
                with open(path, "rb") as handle:
                    stamp = hashlib.file_digest(handle, "sha256").hexdigest()
            else:
                stat = os.stat(path)
                stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError as error:
            raise ProbeError(f"{path}: image of row {rows[i]} cannot be read ({error.strerror})") from error
        parts = [image, str(labels[i]), stamp, *(extra[i] if extra is not None else ())]
        digest.update(("\x1f".join(parts) + "\n").encode())
    return digest.hexdigest()


def cache_key(record: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of a cache record."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def _save_arrays(handle: Any, arrays: Mapping[str, np.ndarray]) -> None:
    np.savez(handle, **arrays)


def write_feature_cache(path: str | os.PathLike[str], features: FeatureSet, key: str) -> np.ndarray:
    """Write one split's features atomically (float16 unless a value exceeds 65504, then float32); returns
    the stored features array."""
    values = features.features
    if values.size and float(np.abs(values).max()) > FP16_MAX:
        log.info("%s: features exceed the float16 range (max |x| > %g); stored as float32", path, FP16_MAX)
        stored = values.astype(np.float32)
    else:
        stored = values.astype(np.float16)
    arrays = {
        "features": stored,
        "labels": features.labels.astype(np.float32 if features.is_multilabel else np.int64),
        "ids": np.asarray(features.ids, dtype=str),
        "skipped": np.asarray(features.skipped, dtype=str),
        "key": np.asarray(key),
        "recipe": np.asarray(canonical_json(features.recipe)),
        "version": np.asarray(CACHE_VERSION),
    }
    # A handle, not a path: np.savez appends ".npz" to a path that lacks it (the temporary file does).
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        _save_arrays(handle, arrays)
    return stored


def _read_cache(path: Path, key: str, rows: Manifest, split: str, classes: Any) -> FeatureSet | None:
    """The cached split, or None (with a warning) when the file is unreadable or does not match."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION or str(data["key"]) != key:
                raise ValueError("its key or version does not match its name")
            features = data["features"].astype(np.float32)
            labels = data["labels"]
            labels = labels.astype(np.float32 if labels.ndim == 2 else np.int64)
            ids = data["ids"].astype(str)
            recipe = json.loads(str(data["recipe"]))
            skipped = data["skipped"].astype(str) if "skipped" in data.files else np.zeros(0, str)
        keep = ~rows.table["image"].astype(str).isin(skipped).to_numpy()
        expected = rows.table["image"].astype(str).to_numpy()[keep]
        if features.ndim != 2 or len(features) != len(expected) or not np.array_equal(ids, expected):
            raise ValueError("its rows differ from the manifest's")
        if (~keep).sum() != len(skipped):
            raise ValueError("its skipped images differ from the manifest's rows")
        meta = _meta(rows.subset(rows=keep))
        return FeatureSet(features, labels, ids, split, meta, classes, recipe, skipped.tolist())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, ProbeError) as error:
        log.warning("feature cache %s is unreadable (%s); recomputing", path, error)
        return None


def _skipped_again(
    cached: FeatureSet,
    rows: Manifest,
    on_bad_image: BadImagePolicy | str,
    bad_image_log: BadImageLog | str | os.PathLike[str] | None,
) -> bool:
    """Whether a cached split stands: it skipped no image, or the policy is "skip" and every image it skipped
    still fails to load, each one logged and listed in `bad_image_log` as a fresh extraction would."""
    if not cached.skipped:
        return True
    if bad_image_policy(on_bad_image) is BadImagePolicy.error:
        return False
    again = rows.subset(rows=rows.table["image"].astype(str).isin(cached.skipped).to_numpy())
    dataset = ManifestDataset(again, with_masks=False, on_bad_image="skip", bad_image_log=bad_image_log)
    return all([dataset[i] is None for i in range(len(dataset))])  # a list: every image is listed


def cached_features(
    encoder: nn.Module,
    manifest: Manifest,
    splits: str | Sequence[str],
    *,
    pooling: str = "cls",
    cache_dir: str | os.PathLike[str],
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    transform: Callable[..., dict[str, Any]] | None = None,
    amp: bool = True,
    hash_content: bool = False,
    progress: bool = True,
    on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
    bad_image_log: BadImageLog | str | os.PathLike[str] | None = None,
    devices: int = 1,
) -> dict[str, FeatureSet]:
    """`extract_features` for each split through the on-disk cache in `cache_dir`; {split: FeatureSet}.

    Each split is one file ``<split>-<key[:32]>.npz`` (key: see the module docstring). A present, readable
    file whose key and rows match is returned without running the encoder (logged as "cache hit"); a
    corrupt or mismatching file is recomputed with a warning and overwritten. Cached features come back as
    float32 from float16 storage. A cached split with skipped images is used under ``on_bad_image="skip"``
    once those images are found still unreadable (and listed again in `bad_image_log`), and recomputed
    otherwise. Other arguments as in `extract_features`; `hash_content` hashes image bytes instead of size +
    mtime. `devices` (worker processes, see `extract_features`) is not part of the key: a cache written by N
    devices is read by one and vice versa. Raises as `extract_features`.
    """
    if pooling not in POOLINGS:
        raise ProbeError(f"pooling={pooling!r} is not one of {POOLINGS}")
    check_devices(devices)
    splits = [splits] if isinstance(splits, str) else list(splits)
    device = resolve_device(device)
    transform = transform if transform is not None else probe_transform(encoder)
    base = {
        "version": CACHE_VERSION,
        "encoder": encoder_hash(encoder),
        "transform": describe_transform(transform),
        "pooling": pooling,
        "image_size": int(encoder.spec.image_size),
        "precision": precision(device, amp),
    }
    out: dict[str, FeatureSet] = {}
    for split in splits:
        rows = _split_rows(manifest, split)
        record = {**base, "split": split, "manifest": manifest_hash(rows, content=hash_content)}
        key = cache_key(record)
        path = Path(cache_dir) / f"{split}-{key[:32]}.npz"
        if path.exists():
            cached = _read_cache(path, key, rows, split, manifest.classes)
            if cached is not None and _skipped_again(cached, rows, on_bad_image, bad_image_log):
                log.info("cache hit: %s features from %s", split, path)
                out[split] = cached
                continue
        log.info("cache miss: extracting %s features (%d images) into %s", split, len(rows), path)
        features = extract_features(
            encoder,
            manifest,
            split,
            pooling=pooling,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            transform=transform,
            amp=amp,
            progress=progress,
            on_bad_image=on_bad_image,
            bad_image_log=bad_image_log,
            devices=devices,
        )
        features.recipe = {**features.recipe, "cache_key": key}
        stored = write_feature_cache(path, features, key)
        # the values a later cache hit will read, so results do not depend on whether the cache was warm
        features.features = stored.astype(np.float32)
        out[split] = features
    return out


# ------------------------------------------------------------------------------------------ user files


def _is_integral(values: np.ndarray) -> bool:
    if values.dtype.kind in "iub":
        return True
    if values.dtype.kind == "f":
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return False


def _check_split(split: str, x: Any, y: Any, problems: list[str]) -> FeatureSet | None:
    """Validate one split's arrays, appending every problem; the FeatureSet when there is none."""
    before = len(problems)
    xk, yk = f"{split}_x", f"{split}_y"
    if x.dtype.kind not in "fiub":
        problems.append(f"{xk}: features must be numeric, got dtype {x.dtype}")
    elif x.ndim != 2:
        fix = " (reshape to (N, 1) for a single feature)" if x.ndim == 1 else ""
        problems.append(f"{xk}: features must be 2-D (N, D), got shape {x.shape}{fix}")
    elif x.dtype.kind == "f" and not np.isfinite(x).all():
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        rows = int((~np.isfinite(x)).any(axis=1).sum())
        problems.append(
            f"{xk}: {nan} NaN and {inf} infinite feature value(s) in {rows} row(s) of split {split}"
        )
    if y.ndim != 1:
        problems.append(f"{yk}: labels must be 1-D (N,), got shape {y.shape}")
    elif not _is_integral(y):
        bad = y if y.dtype.kind not in "f" else y[~(np.isfinite(y) & (y == np.round(y)))]
        problems.append(
            f"{yk}: labels must be integers (class codes 0..C-1), got dtype {y.dtype} "
            f"with {len(bad)} non-integer value(s), e.g. {bad[:3].tolist()}"
        )
    elif len(y) and int(y.min()) < 0:
        problems.append(f"{yk}: {int((y < 0).sum())} negative label(s); labels are class codes 0..C-1")
    if x.ndim >= 1 and y.ndim >= 1 and len(x) != len(y):
        problems.append(f"split {split}: {xk} has {len(x)} rows but {yk} has {len(y)} labels")
    if len(problems) > before:
        return None
    return FeatureSet(
        features=x.astype(np.float32),
        labels=y.astype(np.int64),
        ids=np.asarray([f"{split}/{i}" for i in range(len(y))]),
        split=split,
    )


def write_pixel_features(
    images_npz: str | os.PathLike[str],
    path: str | os.PathLike[str],
    image_id: Callable[[str, int], str] = lambda split, i: f"{split}/{i}",
) -> Path:
    """The raw-pixel baseline: each split's ``<split>_images`` of a MedMNIST-layout ``.npz`` flattened to
    [0, 1] floats, with ``<split>_labels``, written atomically as a feature file `load_feature_file` reads
    (ids from `image_id(split, index)`). Kept when `path` is newer than `images_npz`."""
    images_npz, path = Path(images_npz), Path(path)
    if path.is_file() and path.stat().st_mtime >= images_npz.stat().st_mtime:
        return path
    arrays = {}
    with np.load(images_npz, allow_pickle=False) as data:
        for split in FEATURE_SPLITS:
            if f"{split}_images" not in data.files:
                continue
            images = data[f"{split}_images"]
            arrays[f"{split}_x"] = images.reshape(len(images), -1).astype(np.float32) / 255.0
            arrays[f"{split}_y"] = data[f"{split}_labels"].reshape(-1).astype(np.int64)
            arrays[f"{split}_ids"] = np.array([image_id(split, i) for i in range(len(images))])
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        _save_arrays(handle, arrays)
    return path


def load_feature_file(path: str | os.PathLike[str]) -> dict[str, FeatureSet]:
    """Read user features from an ``.npz`` with ``train_x, train_y, test_x, test_y`` (+ optional ``val_*``).

    `*_x` are (N, D) numeric features, `*_y` (N,) integer class codes (integer-valued floats are accepted).
    Optional ``<split>_ids`` give row ids (default ``"<split>/<i>"``). Every problem is collected and raised
    together as one `ProbeError` naming the file: unreadable file, missing keys, 1-D or non-numeric
    features, NaN/inf features (count and split), non-integer or negative labels, x/y length mismatches
    (naming the split), and differing feature widths across splits. Unknown keys are ignored with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: feature file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ProbeError(f"{path}: not a readable .npz feature file ({error})") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ProbeError(f"{path}: expected an .npz archive with train_x, train_y, ..., got a single array")
    problems: list[str] = []
    with data:
        keys = set(data.files)
        required = [f"{s}_{a}" for s in ("train", "test") for a in ("x", "y")]
        problems += [f"missing key {k!r}" for k in required if k not in keys]
        if ("val_x" in keys) != ("val_y" in keys):
            have, lack = ("val_x", "val_y") if "val_x" in keys else ("val_y", "val_x")
            problems.append(f"key {have!r} is present but {lack!r} is missing")
        known = {f"{s}_{a}" for s in FEATURE_SPLITS for a in ("x", "y", "ids")}
        unknown = sorted(keys - known)
        if unknown:
            log.warning("%s: ignoring unknown key(s) %s", path, unknown)
        out: dict[str, FeatureSet] = {}
        for split in FEATURE_SPLITS:
            if f"{split}_x" not in keys or f"{split}_y" not in keys:
                continue
            arrays = {}
            for k in (f"{split}_x", f"{split}_y", f"{split}_ids"):
                if k in keys:
                    try:
                        arrays[k] = np.asarray(data[k])
                    except (ValueError, OSError, zipfile.BadZipFile) as error:
                        problems.append(f"{k}: cannot be read ({error})")
            if f"{split}_x" not in arrays or f"{split}_y" not in arrays:
                continue
            features = _check_split(split, arrays[f"{split}_x"], arrays[f"{split}_y"], problems)
            ids = arrays.get(f"{split}_ids")
            if features is not None and ids is not None:
                if ids.shape != (len(features),):
                    problems.append(f"{split}_ids: shape {ids.shape} does not match {len(features)} rows")
                else:
                    features.ids = ids.astype(str)
            if features is not None:
                out[split] = features
    widths = {split: fs.dim for split, fs in out.items()}
    if len(set(widths.values())) > 1:
        problems.append(f"feature widths differ between splits: {widths}")
    if problems:
        raise ProbeError("\n  ".join([f"{path}: {len(problems)} problem(s)", *problems]))
    return out
