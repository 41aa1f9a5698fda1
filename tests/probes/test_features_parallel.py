"""Data-parallel feature extraction (`devices=N`): on the CPU, 2 spawned processes give the rows, values and
cache file of 1 process; `panderm bench` passes `devices` to its cells without changing their digests."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import probes.features as features_module
from panderm.config import BenchConfig
from panderm.data.dataset import BadImageLog, ManifestDataset
from panderm.data.manifest import build_manifest, read_manifest
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.errors import ImageLoadError, ProbeError
from panderm.models.encoder import create_encoder
from probes.bench.cells import Cell, cell_config, cell_digest
from probes.bench.suite import Task
from probes.features import cached_features, check_devices, extract_features, probe_transform
from tests.data.helpers import write_truncated_jpeg

SIZE = 32
BROKEN = "images/broken.jpg"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SynthDerm manifest whose train split has a truncated JPEG in its middle."""
    root = tmp_path_factory.mktemp("synthderm")
    table = read_manifest(generate_synthderm(root, n_patients=4, image_size=SIZE, seed=0)).table
    table = table.drop(columns=[c for c in ("row", "mask", "bbox") if c in table])
    write_truncated_jpeg(root / BROKEN)
    train = table.index[table["split"] == "train"]
    broken = {**table.loc[train[2]].to_dict(), "image": BROKEN}
    table = pd.concat([table.loc[: train[2]], pd.DataFrame([broken]), table.loc[train[2] + 1 :]])
    classes = list(read_manifest(root / "manifest.csv").classes)
    return build_manifest(table.reset_index(drop=True), root, classes=classes)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("vit_tiny", 8, SIZE, depth=1)


def _cached(encoder, manifest, cache_dir: Path, devices: int, log: Path):
    return cached_features(
        encoder,
        manifest,
        "train",
        cache_dir=cache_dir,
        device="cpu",
        batch_size=2,
        progress=False,
        on_bad_image="skip",
        bad_image_log=log,
        devices=devices,
    )["train"]


@pytest.mark.slow  # one spawn of 2 CPU processes: each imports torch, timm and panderm (~25 s here)
def test_two_processes_equal_one_process_and_share_its_cache(encoder, manifest, tmp_path, monkeypatch):
    one = extract_features(
        encoder, manifest, "train", device="cpu", batch_size=2, progress=False, on_bad_image="skip"
    )
    assert one.skipped == [BROKEN] and len(one) >= 4  # >= 3 batches of 2: both workers get rows

    written = []  # the float32 features the 2-process run hands to the cache writer (before float16)
    real_write = features_module.write_feature_cache

    def spy(path, features, key):
        written.append((Path(path).name, features.features.copy()))
        return real_write(path, features, key)

    monkeypatch.setattr(features_module, "write_feature_cache", spy)
    two = _cached(encoder, manifest, tmp_path / "two", devices=2, log=tmp_path / "two.csv")
    monkeypatch.setattr(features_module, "write_feature_cache", real_write)

    # every readable row once, in manifest order, bit-identical to one process (same batches, same kernels)
    assert list(two.ids) == list(one.ids) and two.skipped == one.skipped == [BROKEN]
    np.testing.assert_array_equal(written[0][1], one.features)
    np.testing.assert_array_equal(two.labels, one.labels)
    assert two.meta.equals(one.meta)
    assert [Path(p).name for p, _ in BadImageLog(tmp_path / "two.csv").entries()] == ["broken.jpg"]

    # the same cache file (key) as one process writes, with the same stored values
    ref = _cached(encoder, manifest, tmp_path / "one", devices=1, log=tmp_path / "one.csv")
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one").iterdir()) == [written[0][0]]
    with np.load(tmp_path / "one" / files[0]) as a, np.load(tmp_path / "two" / files[0]) as b:
        np.testing.assert_array_equal(a["features"], b["features"])
        assert str(a["key"]) == str(b["key"])
    np.testing.assert_array_equal(ref.features, two.features)

    # a cache written by 2 processes is read by 1 (and vice versa) without running the encoder
    def refuse(*args, **kwargs):
        raise AssertionError("the cache must be read, not recomputed")

    monkeypatch.setattr(features_module, "extract_features", refuse)
    again = _cached(encoder, manifest, tmp_path / "two", devices=1, log=tmp_path / "again.csv")
    np.testing.assert_array_equal(again.features, two.features)
    _cached(encoder, manifest, tmp_path / "one", devices=4, log=tmp_path / "again4.csv")


def test_more_devices_than_batches_runs_in_this_process(encoder, manifest, monkeypatch):
    """One batch cannot be shared: no worker process starts, the result is the one-process result."""
    monkeypatch.setattr(features_module, "_encode_data_parallel", None)  # would fail if called
    one = extract_features(encoder, manifest, "val", device="cpu", batch_size=64, progress=False)
    many = extract_features(encoder, manifest, "val", device="cpu", batch_size=64, progress=False, devices=8)
    np.testing.assert_array_equal(one.features, many.features)


@pytest.mark.parametrize("devices", [0, -1, 1.5, True, "2"])
def test_devices_must_be_a_positive_integer(encoder, manifest, devices):
    with pytest.raises(ProbeError, match=r"devices=.*positive integer"):
        extract_features(encoder, manifest, "val", device="cpu", progress=False, devices=devices)
    assert check_devices(np.int64(3)) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
def test_more_gpus_than_visible_is_refused(encoder, manifest):
    with pytest.raises(ProbeError, match=r"devices=2: only 0 CUDA device\(s\)"):
        extract_features(encoder, manifest, "train", device="cuda", batch_size=2, progress=False, devices=2)


def test_a_worker_error_comes_back_as_its_own_type(encoder, manifest):
    """A worker (run here in-process) sends an ImageLoadError to the parent, which raises it unchanged."""
    rows = manifest.subset("train")
    dataset = ManifestDataset(rows, probe_transform(encoder), with_masks=False)
    broken = int(np.flatnonzero(rows.table["image"] == BROKEN)[0])
    errors: queue.SimpleQueue = queue.SimpleQueue()
    options = {"pooling": "cls", "amp": False, "num_workers": 0, "progress": False, "desc": "f", "workers": 2}
    features_module._encode_shard(0, encoder, dataset, [[broken]], "cpu", 1, "unused", errors, options)
    with pytest.raises(ImageLoadError, match=r"broken\.jpg") as caught:
        features_module._raise_worker_error(*errors.get_nowait())
    assert caught.value.path.endswith("broken.jpg") and caught.value.reason


def test_bench_passes_devices_to_probe_cells_outside_the_digest(tmp_path):
    task = Task("t", "classification", {}, ["knn"], {}, "auroc", [0], None)
    cell = Cell(task, "knn", "random:vit_tiny/8@64", 0, tmp_path)
    configs = {}
    for devices in (1, 4):
        bench = OmegaConf.structured(BenchConfig)
        bench.devices, bench.cache_dir = devices, str(tmp_path / "cache")
        configs[devices] = cell_config(cell, bench, {}, {})
    assert configs[1].devices == 1 and configs[4].devices == 4
    assert cell_digest(configs[1]) == cell_digest(configs[4])
    # and equal to the digest of the same config without the field (a cell done before `devices` existed)
    before = OmegaConf.to_container(configs[4], resolve=True)
    del before["devices"]
    assert cell_digest(before) == cell_digest(configs[1])
