"""`panderm pretrain data=shards`: training from WebDataset shards end to end, per-sample augmentations and
masks that depend only on (seed, epoch, index), exact mid-epoch resume, and errors naming the folder."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from panderm.data.dataset import collate
from panderm.data.manifest import read_manifest
from panderm.data.shards import ShardDataset, write_shards
from panderm.data.synthetic.synthderm import CLASSES, generate_synthderm
from panderm.errors import ConfigError, DataError
from panderm.models.checkpoints import load_encoder
from panderm.models.masking import MaskGenerator
from panderm.pretrain import run as run_module
from panderm.pretrain.datamodule import (
    MaskedDataset,
    PretrainDataModule,
    ShardPretrainDataModule,
    ShardStream,
)
from panderm.pretrain.run import run_pretrain
from tests.pretrain.test_run import pretrain_config

TRAIN_IMAGES = 44  # SynthDerm with 16 patients: 44 train, 12 val, 12 test


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: bitwise comparisons independent of threading, and fast on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthderm")
    return read_manifest(
        generate_synthderm(root, n_patients=16, image_size=64, seed=0), classes=list(CLASSES)
    )


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(manifest, out, max_count=16, progress=False)  # train: 3 shards of 16, 16 and 12 images
    assert len(manifest.subset("train")) == TRAIN_IMAGES
    return out


def shard_config(tmp_path, shards, *overrides: str):
    return pretrain_config(tmp_path, "data=shards", f"data.path={shards}", *overrides)


def masks() -> MaskGenerator:
    return MaskGenerator(kind="block", ratio=0.5, grid=(4, 4))  # 32 px images, patch 8


def data_module(shards, tmp_path, **kwargs) -> ShardPretrainDataModule:
    return ShardPretrainDataModule(shards, tmp_path / "run", masks(), image_size=32, batch_size=4, **kwargs)


def test_pretrain_from_shards_trains_exports_and_probes(shards, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="panderm.pretrain.datamodule"):
        metrics = run_pretrain(shard_config(tmp_path, shards, "trainer.max_epochs=2"), run)
    assert "balance_modalities does not apply to streamed shards" in caplog.text
    assert metrics["global_step"] == 2 * (TRAIN_IMAGES // 16)  # whole batches of 16, two epochs
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    assert 0.0 <= metrics["val/probe_balanced_accuracy"] <= 1.0  # the probe ran on <shards>/val
    encoder = load_encoder(run / "encoder")
    assert encoder.spec.image_size == 32 and encoder.depth == 2
    assert f"({TRAIN_IMAGES} training images)" in (run / "report.md").read_text()
    assert not (run / "data").exists()  # nothing generated: the shards are the data


def test_augmentations_and_masks_depend_only_on_seed_epoch_and_index(manifest, shards, tmp_path):
    data = data_module(shards, tmp_path, seed=3)
    assert data.num_train_images == TRAIN_IMAGES and data.num_classes == len(CLASSES)
    # Several splits together: `index` is the position in their concatenation, unique.
    both = ShardDataset([shards / "train", shards / "val"], shuffle_buffer=0, with_masks=False)
    assert sorted(s["index"] for s in both) == list(range(TRAIN_IMAGES + 12))

    def epoch(e: int, rank: int = 0, world_size: int = 1) -> dict[int, dict]:
        stream = ShardStream(
            data.train_shards, data.masks, seed=3, batch_size=4, rank=rank, world_size=world_size
        )
        stream.start(e)
        samples = list(stream)
        assert len(samples) == len(stream) == (TRAIN_IMAGES // world_size) // 4 * 4
        return {s["index"]: s for s in samples}

    first = epoch(0)
    # The same epoch read as two DDP ranks: other readers, another order; the same sample is the same.
    again = {**epoch(0, rank=0, world_size=2), **epoch(0, rank=1, world_size=2)}
    # The manifest path gives the very same sample for (seed, epoch, index).
    reference = PretrainDataModule(manifest, tmp_path / "run", masks(), image_size=32, batch_size=4, seed=3)
    mapped = MaskedDataset(reference._dataset(reference.train_manifest, train=True), reference.masks, 3)
    common = first.keys() & again.keys()
    assert len(common) >= 30
    for i in common:
        want = mapped[(0, i)]
        for got in (first[i], again[i]):
            assert got["id"] == want["id"]
            assert torch.equal(got["image"], want["image"]) and torch.equal(
                got["token_mask"], want["token_mask"]
            )
    # Another epoch: other augmentations and masks for the same images.
    later = epoch(1)
    shared = first.keys() & later.keys()
    assert sum(not torch.equal(first[i]["image"], later[i]["image"]) for i in shared) == len(shared)
    assert (
        sum(not torch.equal(first[i]["token_mask"], later[i]["token_mask"]) for i in shared)
        > len(shared) // 2
    )


def test_resumed_stream_continues_with_the_same_batches_with_workers(shards, tmp_path):
    data = data_module(shards, tmp_path, seed=1)
    stream = ShardStream(data.train_shards, data.masks, seed=1, batch_size=4)
    loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate)

    def batches(done: int) -> list[list[str]]:
        stream.start(2, done)
        return [batch["id"] for batch in loader]

    full = batches(0)
    assert len(full) == len(loader) == TRAIN_IMAGES // 4
    for done in (3, 6):  # odd: the batch after it came from the second worker
        assert batches(done) == full[done:]


@pytest.mark.parametrize("source", ["shards", "manifest"])
def test_killed_run_with_workers_resumes_to_the_same_weights(source, shards, tmp_path, monkeypatch):
    """Killed in the second epoch, resumed: the weights of an uninterrupted run. With DataLoader workers,
    whose iterator Lightning creates before a resumed run restores its epoch (the manifest path too)."""
    overrides = ["batch_size=8", "num_workers=2", "trainer.max_epochs=2", "online_probe=false"]
    if source == "shards":
        overrides = ["data=shards", f"data.path={shards}", *overrides]

    def config():
        return pretrain_config(tmp_path, *overrides)

    full = run_pretrain(config(), tmp_path / "full")
    assert full["global_step"] == 2 * (TRAIN_IMAGES // 8)

    class Sigterm(L.Callback):
        """What Lightning's SIGTERM handler does, here after the 3rd batch of the second epoch."""

        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == TRAIN_IMAGES // 8 + 3:
                trainer._signal_connector.received_sigterm = True

    real = run_module.build_trainer

    def build_trainer(cfg, run_dir, *callbacks):
        trainer = real(cfg, run_dir, *callbacks)
        trainer.callbacks.append(Sigterm())
        return trainer

    killed = tmp_path / "killed"
    monkeypatch.setattr(run_module, "build_trainer", build_trainer)
    with pytest.raises(SystemExit):
        run_pretrain(config(), killed)
    state = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    # Batch 3 came from the second worker: for shards the resumed loader's first worker must make it.
    key = "ShardPretrainDataModule" if source == "shards" else "PretrainDataModule"
    assert state[key] == {"epoch": 1, "batches": 3}
    monkeypatch.setattr(run_module, "build_trainer", real)
    resumed = run_pretrain(config(), killed)
    assert resumed["global_step"] == full["global_step"]
    expected = load_encoder(tmp_path / "full" / "encoder").state_dict()
    actual = load_encoder(killed / "encoder").state_dict()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


def test_bad_shard_paths_are_errors_naming_the_folder(shards, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such shard folder")):
        run_pretrain(shard_config(tmp_path, missing), tmp_path / "run")
    with pytest.raises(
        DataError, match=re.escape(f"{shards}: no shards of split 'extra'") + ".*'test', 'train'"
    ):
        data_module(shards, tmp_path, train_splits=["train", "extra"])
    unfinished = tmp_path / "unfinished"
    (unfinished / "train").mkdir(parents=True)
    with pytest.raises(
        DataError, match=re.escape(str(unfinished / "train" / "index.json")) + ": no shard index"
    ):
        data_module(unfinished, tmp_path)
    with pytest.raises(ConfigError, match=r"data\.path is required for data\.source=shards"):
        run_pretrain(pretrain_config(tmp_path, "data=shards"), tmp_path / "run")
