"""WebDataset shards of a manifest: written once, streamed at cluster scale, read back as the very samples
`ManifestDataset` gives.

Layout: ``out_dir/<split>/<prefix>-000000.tar, ...`` plus ``out_dir/<split>/index.json``. Each sample in a
tar is keyed by its manifest row (``000000042``) and holds the original image bytes unchanged under the
file's suffix (``.png``, ``.jpg``, ``.dcm``, ``.nii.gz``...), the mask bytes (``.mask.png``) when the row
has one, and ``.json`` metadata (label code and class name, manifest columns, row, position in the split).

Only shards listed in ``index.json`` are valid: each shard is written under a hidden temporary name and
renamed when it is closed, and the index is written last (atomically), so an interrupted run never leaves a
truncated shard that looks complete. Re-running `write_shards` with the same manifest and settings skips
the splits it finished.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from panderm.data.dataset import (
    BadImageLog,
    BadImagePolicy,
    apply_transform,
    bad_image_policy,
    collate,
    load_options,
)
from panderm.data.images import NIFTI_SUFFIXES, binarise_mask, decode_image, image_kind, load_image
from panderm.data.manifest import KNOWN_COLUMNS, SPLITS, Manifest, parse_boxes
from panderm.data.sampling import sample_seed
from panderm.data.transforms import seed_transform, takes_boxes
from panderm.errors import ConfigError, DataError, ImageLoadError
from panderm.io import atomic_write_json

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "panderm-shards/1"
TMP_SUFFIX = ".tmp"


# ----------------------------------------------------------------------------------------------- writing


def write_shards(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    *,
    max_count: int = 10000,
    max_size: int = 1 << 30,
    splits: Sequence[str] | None = None,
    prefix: str = "shard",
    progress: bool | None = None,
) -> list[Path]:
    """Write each split of `manifest` as WebDataset tar shards and return every shard path (split order).

    A shard closes after `max_count` samples or once it holds `max_size` bytes of payload (so a shard can
    exceed it by one sample). `splits` defaults to the splits present. Image and mask bytes are copied
    unchanged. A split whose index already records the same manifest rows and settings is kept as it is
    (resume); otherwise its index is removed first and written last. `progress` shows a bar (None: only on
    a terminal). Raises `ConfigError` for an unknown split or bad limits, `DataError` for a split with no
    rows, and `ImageLoadError` naming a source file that cannot be read.
    """
    if max_count < 1 or max_size < 1:
        raise ConfigError(f"max_count={max_count} and max_size={max_size} must both be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ConfigError(f"prefix={prefix!r}: use letters, digits, '_', '-' or '.' only")
    present = set(manifest.table["split"])
    if splits is None:
        splits = [s for s in SPLITS if s in present]
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"splits: unknown split {split!r} (expected some of {SPLITS})")
        if split not in present:
            raise DataError(f"{manifest.source}: split {split!r} has no rows to write")
    written: list[Path] = []
    for split in splits:
        written += _write_split(
            manifest,
            manifest.subset(split),
            Path(out_dir) / split,
            split=split,
            max_count=max_count,
            max_size=max_size,
            prefix=prefix,
            progress=progress,
        )
    return written


def _write_split(
    manifest: Manifest,
    part: Manifest,
    split_dir: Path,
    *,
    split: str,
    max_count: int,
    max_size: int,
    prefix: str,
    progress: bool | None,
) -> list[Path]:
    # The settings that decide the shard contents: an index recording the same values vouches for its shards.
    settings = {
        "format": INDEX_FORMAT,
        "split": split,
        "prefix": prefix,
        "max_count": max_count,
        "max_size": max_size,
        "split_fingerprint": part.fingerprint(),
    }
    done = _finished(split_dir, settings)
    if done is not None:
        log.info("%s: shards already written for this manifest and settings; keeping them", split_dir)
        return done
    split_dir.mkdir(parents=True, exist_ok=True)
    # The old index must go before any shard is touched: it would otherwise vouch for overwritten shards.
    (split_dir / INDEX_NAME).unlink(missing_ok=True)
    shards = _ShardFiles(split_dir)
    # The path is a %-pattern for ShardWriter; a '%' in a folder name must not be read as a placeholder.
    pattern = str(split_dir).replace("%", "%%") + os.sep + f".{prefix}-%06d.tar{TMP_SUFFIX}"
    bar = {"desc": f"shards {split}", "unit": "img", "disable": None if progress is None else not progress}
    writer = None
    try:
        writer = wds.ShardWriter(
            pattern, maxcount=max_count, maxsize=max_size, post=shards.close, opener=shards.open, verbose=0
        )
        # Rows as dicts once: pandas cell access per row would cost more than copying a small image.
        records = part.table.to_dict("records")
        for i, record in enumerate(tqdm(records, **bar)):
            writer.write(_sample(part, i, record))
            shards.counts[-1] += 1
        writer.close()  # closes (and so renames) the last shard
    except BaseException:
        shards.abort(writer)
        raise
    names = [path.name for path in shards.done]
    index = {
        **settings,
        "shards": [
            {"name": name, "count": count, "size": (split_dir / name).stat().st_size}
            for name, count in zip(names, shards.counts, strict=True)
        ],
        "num_samples": len(part),
        "classes": list(manifest.classes) if manifest.classes is not None else None,
        "manifest_fingerprint": manifest.fingerprint(),
        "source": manifest.source,
        "has_masks": any(part.mask_path(i) is not None for i in range(len(part))),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    atomic_write_json(split_dir / INDEX_NAME, index)
    _remove_stale(split_dir, prefix, keep=set(names))
    log.info("%s: %d samples in %d shard(s)", split_dir, len(part), len(names))
    return list(shards.done)


class _ShardFiles:
    """ShardWriter's opener/post hooks: each shard is written under a temporary name, renamed when closed."""

    def __init__(self, split_dir: Path) -> None:
        self.split_dir = split_dir
        self.file: BinaryIO | None = None
        self.tmp: Path | None = None
        self.done: list[Path] = []
        self.counts: list[int] = []

    def open(self, name: str) -> BinaryIO:
        self.tmp = Path(name)
        self.file = open(name, "wb")  # noqa: SIM115 (closed in `close`/`abort`, after TarWriter finishes)
        self.counts.append(0)
        return self.file

    def close(self, name: str) -> None:
        assert self.file is not None and self.tmp is not None
        self.file.close()
        final = self.split_dir / self.tmp.name.removeprefix(".").removesuffix(TMP_SUFFIX)
        os.replace(self.tmp, final)
        self.done.append(final)
        self.file = self.tmp = None

    def abort(self, writer: wds.ShardWriter | None) -> None:
        """Drop the shard being written (it is incomplete); finished shards stay but no index lists them."""
        # The open tar is closed without ShardWriter's `post`, which would rename it as if complete; closing
        # it at all keeps tarfile from flushing into the closed file when it is garbage-collected.
        tar = getattr(writer, "tarstream", None)
        if tar is not None:
            with contextlib.suppress(Exception):
                tar.close()
        if self.file is not None:
            self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        self.file = self.tmp = None


def _finished(split_dir: Path, settings: dict[str, Any]) -> list[Path] | None:
    """The shard paths of a finished split written with the same settings, or None."""
    try:
        index = read_index(split_dir)
    except DataError:
        return None
    if any(index.get(key) != value for key, value in settings.items()):
        return None
    paths = [split_dir / shard["name"] for shard in index["shards"]]
    sizes_ok = all(
        p.is_file() and p.stat().st_size == s["size"] for p, s in zip(paths, index["shards"], strict=True)
    )
    return paths if sizes_ok else None


def _remove_stale(split_dir: Path, prefix: str, keep: set[str]) -> None:
    """Delete shards of an earlier, larger run and temporaries of a killed one (never other files)."""
    own = re.compile(rf"\.?{re.escape(prefix)}-\d{{6}}\.tar({re.escape(TMP_SUFFIX)})?")
    for path in split_dir.iterdir():
        if own.fullmatch(path.name) and path.name not in keep:
            log.info("removing stale shard %s", path)
            path.unlink()


def _suffix(path: Path) -> str:
    """The tar member extension for a file: its suffix without the dot (``nii.gz`` whole), or ``bin``."""
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    return path.suffix.lower()[1:] or "bin"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot be read for sharding ({exc.strerror or exc})") from exc


def _sample(part: Manifest, i: int, record: dict[str, Any]) -> dict[str, Any]:
    """The tar members of row `i` (`record` is its table row): ``__key__``, image bytes, optional
    ``mask.<ext>`` bytes and ``json``."""
    row = int(record["row"])
    key = f"{row:09d}"
    image = part.image_path(i)
    fields = {"image": _suffix(image)}
    sample: dict[str, Any] = {"__key__": key, fields["image"]: _read_bytes(image)}
    mask = part.mask_path(i)
    if mask is not None:
        fields["mask"] = f"mask.{_suffix(mask)}"
        sample[fields["mask"]] = _read_bytes(mask)
    label = part.label(i)
    meta: dict[str, Any] = {column: _json_value(v) for column, v in record.items() if column in KNOWN_COLUMNS}
    meta.update(row=row, key=key, index=i, label=label, files=fields)
    meta["class"] = part.classes[label] if label is not None and part.classes else None
    # The user's own columns go one level down, so none can shadow a field the reader relies on.
    meta["extra"] = {
        str(c): _json_value(v) for c, v in record.items() if c not in KNOWN_COLUMNS and c != "row"
    }
    sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return sample


def _json_value(value: Any) -> Any:
    """A manifest cell as a JSON value: missing -> None, numpy scalars -> Python, dates -> ISO text."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    return str(value)


# ----------------------------------------------------------------------------------------------- reading


def read_index(split_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``index.json`` of one split folder: ``shards`` (``name``, ``count``, ``size``), ``num_samples``,
    ``classes``, ``manifest_fingerprint`` and the writing settings.

    Raises `DataError` naming the folder when there is no index (the shards were never finished) or it is
    unreadable or of another format.
    """
    path = Path(split_dir) / INDEX_NAME
    if not path.is_file():
        raise DataError(
            f"{path}: no shard index, so no shard in {Path(split_dir)} is known to be complete "
            "(was write_shards interrupted?); run write_shards again"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable shard index ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(
            f"{path}: shard index format {found!r} is not {INDEX_FORMAT!r}; write the shards again"
        )
    return index


def _indexed_shards(split_dir: Path) -> tuple[list[str], int]:
    """Shard paths listed in a split's index (each checked to exist with its recorded size) and the total."""
    index = read_index(split_dir)
    urls = []
    for shard in index["shards"]:
        path = split_dir / shard["name"]
        size = path.stat().st_size if path.is_file() else None
        if size != shard["size"]:
            found = "missing" if size is None else f"{size} bytes"
            raise DataError(
                f"{path}: shard is {found}, the index records {shard['size']} bytes; write the shards again"
            )
        urls.append(str(path))
    return urls, int(index["num_samples"])


def _length_from_neighbour_index(urls: Sequence[str]) -> int | None:
    """Total samples of local shards listed in the index beside them, or None when any is not listed."""
    folders = {Path(url).parent for url in urls}
    if len(folders) != 1 or not all(Path(url).is_file() for url in urls):
        return None
    try:
        counts = {s["name"]: int(s["count"]) for s in read_index(folders.pop())["shards"]}
    except DataError:
        return None
    names = [Path(url).name for url in urls]
    return sum(counts[n] for n in names) if all(n in counts for n in names) else None


class ShardDataset(IterableDataset):
    """Samples of WebDataset shards as the same dicts `ManifestDataset` gives: `image`, `label` (-1 if none),
    `boxes`, `index` (position in the split), `id` (manifest image path) and `mask` when the row has one.

    `source` is a split folder written by `write_shards` (shards and length from its ``index.json``), a list
    of such folders (their shards concatenated; `index` is then the position in that concatenation, so it
    stays unique) or shard URLs (a list, or a brace pattern such as
    ``"/data/train/shard-{000000..000099}.tar"``; `length` from the index beside them if any, else pass it).
    Shards are split across DDP ranks (`nodesplitter`) and then DataLoader workers, so each sees disjoint
    shards; `resampled=True` instead draws shards with replacement forever and each rank/worker yields its
    share of `len()` samples per epoch (equal counts, so DDP ranks stay in step). With `shuffle_buffer` > 0
    shard order and samples (within that buffer) are shuffled anew each epoch from `seed`, the epoch
    (`set_epoch`, or counted per iteration), the rank, the worker and the DataLoader's worker seed. Images are
    decoded to (H, W, 3) uint8 RGB (masks (H, W) uint8 {0, 1}), then go through the albumentations `transform`
    exactly as in `ManifestDataset`; with `augment_seed` the transform of each sample is seeded from
    (augment_seed, epoch, index), as `ManifestDataset(seed=)` does, so a sample's augmentation does not depend
    on shuffling, workers or interruptions. `reader_samples` gives the balanced, resumable stream of one
    reader that training loops need. A corrupt image raises `ImageLoadError` whose path is
    ``<shard>:<key>.<ext>``; with `on_bad_image="skip"` it yields None (which `collate` drops and counts) and
    is recorded in `bad_image_log`. A damaged tar raises `DataError`.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        with_masks: bool = True,
        resampled: bool = False,
        on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
        bad_image_log: BadImageLog | str | os.PathLike[str] | None = None,
        length: int | None = None,
        nodesplitter: Callable[[Iterator[Any]], Iterator[Any]] = wds.split_by_node,
        augment_seed: int | None = None,
    ) -> None:
        super().__init__()
        # Added to the `index` of each shard's samples: the position of its folder's first sample.
        self._offsets: dict[str, int] = {}
        single = isinstance(source, str | os.PathLike)
        folders = [source] if single else list(source)
        if folders and all(Path(folder).is_dir() for folder in folders):
            self.urls, total = [], 0
            for folder in folders:
                urls, count = _indexed_shards(Path(folder))
                self._offsets.update(dict.fromkeys(urls, total))
                self.urls += urls
                total += count
        else:
            if isinstance(source, str | os.PathLike):
                self.urls = wds.shardlists.expand_urls(str(source))
            else:
                self.urls = [str(url) for url in source]
            total = _length_from_neighbour_index(self.urls)
        if not self.urls:
            raise DataError(f"{source}: no shards to read")
        self.length = length if length is not None else total
        self.transform = transform
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.with_masks = with_masks
        self.augment_seed = augment_seed
        self.on_bad_image = bad_image_policy(on_bad_image)
        if bad_image_log is not None and not isinstance(bad_image_log, BadImageLog):
            bad_image_log = BadImageLog(bad_image_log)
        self.bad_image_log = bad_image_log
        self.nodesplitter = nodesplitter
        self._takes_boxes = takes_boxes(transform)
        self._epoch = -1
        self._explicit_epoch = False
        self._current_url: str | None = None

    def __len__(self) -> int:
        """Samples per epoch over all ranks and workers (from the index); TypeError when unknown."""
        if self.length is None:
            raise TypeError(
                f"length of shards {self.urls[:2]}... is unknown: read a split folder with {INDEX_NAME} "
                "or pass length="
            )
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch that seeds the next iteration's shuffle (otherwise each iteration counts one up)."""
        self._epoch, self._explicit_epoch = epoch, True

    def _iteration_seed(self) -> tuple[int, int]:
        """(seed for this rank/worker/epoch, number of parallel readers)."""
        if not self._explicit_epoch:
            self._epoch += 1
        self._explicit_epoch = False
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        info = get_worker_info()
        # The worker seed is fresh each epoch even when (non-persistent) workers copy a dataset whose epoch
        # counter never moved; it is reproducible through the DataLoader's generator.
        loader_seed = 0 if info is None else info.seed - info.id
        seed = wds.utils.make_seed(self.seed, self._epoch, rank, worker, loader_seed)
        return seed, world_size * num_workers

    def _pipeline(self, seed: int) -> wds.DataPipeline:
        # WebDataset's own stages, assembled here rather than through wds.WebDataset so that shard resampling
        # is seeded (wds.WebDataset(resampled=True) seeds from the clock) and the current shard is known.
        if self.resampled:
            shards: list[Any] = [wds.ResampledShards(self.urls, seed=seed, deterministic=True)]
        else:
            shards = [wds.SimpleShardList(self.urls), self.nodesplitter, wds.split_by_worker]
            if self.shuffle_buffer > 0:
                shards.append(wds.shuffle(len(self.urls), initial=len(self.urls), seed=seed))
        return wds.DataPipeline(*shards, *self._sample_stages(seed))

    def _sample_stages(self, seed: int, *select: Callable[[Iterator[Any]], Iterator[Any]]) -> list[Any]:
        """Shard dicts -> raw samples (then the `select` stages), shuffled within `shuffle_buffer`."""
        stages = [self._track_url, wds.tarfile_to_samples(handler=self._tar_error), *select]
        if self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, seed=seed + 1))
        return stages

    def reader_part(self, reader: int, readers: int) -> tuple[list[str], int, int]:
        """The samples reader `reader` of `readers` owns: (shard URLs, stride, offset), i.e. every stride-th
        sample of those shards from the offset-th on.

        With at least as many shards as readers each reader owns whole shards (reader r: shards r, r +
        readers, ...); with fewer, reader r reads shard r % shards and the readers sharing a shard take every
        k-th of its samples, so the parts are disjoint and together hold every sample once.
        """
        n = len(self.urls)
        if not 0 <= reader < readers:
            raise ValueError(f"reader {reader} is not in range({readers})")
        if n >= readers:
            return self.urls[reader::readers], 1, 0
        shard = reader % n
        return [self.urls[shard]], len(range(shard, readers, n)), reader // n

    def reader_samples(
        self, epoch: int, reader: int, readers: int, *, count: int, skip: int = 0
    ) -> Iterator[dict[str, Any] | None]:
        """Exactly `count` samples of reader `reader`'s part (`reader_part`) of `epoch`, after passing over
        its first `skip` samples without decoding them: the stream of one DDP rank x DataLoader worker when
        every reader must yield a fixed number of samples (ranks in step) and resume mid-epoch.

        The part is shuffled (shard order, then within `shuffle_buffer`) from (seed, epoch, reader, pass)
        only: the same arguments give the same samples in any process, whatever the DataLoader's worker
        seeds. A part smaller than `skip + count` is read again, reshuffled (a new pass), so a sample can
        come twice in one epoch; one larger leaves its tail out of this epoch. `resampled`, `nodesplitter`
        and `set_epoch` play no part. Raises `DataError` when the part is empty (more readers than samples).
        """
        if count <= 0:
            return
        urls, stride, offset = self.reader_part(reader, readers)

        def select(samples: Iterator[Any]) -> Iterator[Any]:
            return itertools.islice(samples, offset, None, stride)

        def passes() -> Iterator[dict[str, Any]]:
            for n in itertools.count():
                seed = wds.utils.make_seed(self.seed, epoch, reader, n)
                shards: list[Any] = [wds.SimpleShardList(urls)]
                if self.shuffle_buffer > 0:
                    shards.append(wds.shuffle(len(urls), initial=len(urls), seed=seed))
                empty = True
                for raw in wds.DataPipeline(*shards, *self._sample_stages(seed, select)):
                    empty = False
                    yield raw
                if empty:
                    raise DataError(
                        f"{urls[0]}: reader {reader} of {readers} (ranks x DataLoader workers) gets none "
                        "of its samples; write more, smaller shards or use fewer workers"
                    )

        for raw in itertools.islice(passes(), skip, skip + count):
            yield self._decode(raw, epoch)

    def _track_url(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # Shards are read one after another, so the last URL handed on is the one a tar error comes from.
        for item in source:
            self._current_url = item["url"]
            yield item

    def _tar_error(self, exc: Exception) -> bool:
        # webdataset appends the stream and URL to the exception's args; the first one is the reason.
        reason = exc.args[0] if exc.args else exc
        raise DataError(
            f"{self._current_url}: damaged shard ({type(exc).__name__}: {reason}); write it again"
        )

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        seed, readers = self._iteration_seed()
        samples: Iterator[dict[str, Any]] = iter(self._pipeline(seed))
        if self.resampled:
            share = max(1, self.length // readers) if self.length else None
            samples = itertools.islice(samples, share)
        for raw in samples:
            yield self._decode(raw, self._epoch)

    def _decode(self, raw: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        url, key = raw["__url__"], raw["__key__"]
        if "json" not in raw:
            raise DataError(f"{url}: sample {key!r} has no .json metadata (not written by write_shards?)")
        meta = json.loads(raw["json"])
        files = meta["files"]
        try:
            options = load_options({**meta["extra"], **meta})
            image = _decode_image(raw, files["image"], f"{url}:{key}", options=options)
            sample: dict[str, Any] = {
                "image": image,
                "label": -1 if meta["label"] is None else int(meta["label"]),
                "boxes": [list(box) for box in parse_boxes(meta.get("bbox"))],
                "index": int(meta["index"]) + self._offsets.get(url, 0),
                "id": str(meta["image"]),
            }
            if self.with_masks and "mask" in files:
                mask = _decode_image(raw, files["mask"], f"{url}:{key}", mode="L")
                if mask.shape != image.shape[:2]:
                    raise ImageLoadError(
                        f"{url}:{key}.{files['mask']}",
                        f"mask size {mask.shape[::-1]} (W, H) differs from image size {image.shape[1::-1]}",
                    )
                sample["mask"] = binarise_mask(mask, f"{url}:{key}.{files['mask']}")
        except ImageLoadError as exc:
            if self.on_bad_image is BadImagePolicy.error:
                raise
            log.warning("skipping unreadable image (manifest row %s): %s", meta.get("row"), exc)
            if self.bad_image_log is not None:
                self.bad_image_log.record(exc.path, exc.reason)
            return None
        if self.transform is not None:
            if self.augment_seed is not None:
                seed_transform(self.transform, sample_seed(self.augment_seed, epoch, sample["index"]))
            sample.update(apply_transform(self.transform, sample, self._takes_boxes))
        return sample


def _decode_image(
    raw: dict[str, Any], field: str, where: str, *, mode: str = "RGB", options: dict[str, Any] | None = None
) -> np.ndarray:
    """Decode member `field` of a raw sample like `load_image` decodes a file; errors name ``where.field``."""
    name = f"{where}.{field}"
    if field not in raw:
        raise ImageLoadError(name, "member missing from the shard")
    data = raw[field]
    if image_kind(Path(f"x.{field}")) == "pil":
        return decode_image(data, name, mode=mode)
    # pydicom and MONAI's NIfTI reader work on files, so a DICOM/NIfTI member goes through a temporary file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"image.{field.removeprefix('mask.')}"
        path.write_bytes(data)
        try:
            return load_image(path, mode=mode, **(options or {}))
        except ImageLoadError as exc:
            raise ImageLoadError(name, exc.reason) from exc


def shard_loader(
    split_dir: str | os.PathLike[str],
    transform: Callable[..., dict[str, Any]] | None,
    batch_size: int,
    num_workers: int = 0,
    *,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    drop_last: bool = False,
    resampled: bool = False,
    with_masks: bool = True,
    on_bad_image: BadImagePolicy | str = BadImagePolicy.error,
    bad_image_log: BadImageLog | str | os.PathLike[str] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over a split folder's shards, batched with `panderm.data.dataset.collate`.

    Workers persist across epochs; the loader's generator is seeded from `seed`, so shuffles are
    reproducible. With fewer shards than ranks x workers some readers idle: write more, smaller shards.
    Raises what `ShardDataset` raises.
    """
    dataset = ShardDataset(
        split_dir,
        transform,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        with_masks=with_masks,
        resampled=resampled,
        on_bad_image=on_bad_image,
        bad_image_log=bad_image_log,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
