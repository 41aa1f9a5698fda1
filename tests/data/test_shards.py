"""WebDataset shards: round trip against ManifestDataset, byte-identical members, the index, worker splitting,
corrupt images (error or skip) and interrupted writes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import panderm.data.shards as shards_module
from panderm.data.dataset import BadImageLog, ManifestDataset
from panderm.data.manifest import build_manifest
from panderm.data.shards import ShardDataset, read_index, shard_loader, write_shards
from panderm.data.transforms import segmentation_eval_transform
from panderm.errors import DataError, ImageLoadError
from tests.data.helpers import write_image, write_mask, write_truncated_jpeg

SPLIT_OF = ["train"] * 6 + ["val"] * 3 + ["test"] * 3


def mixed_table(root: Path) -> pd.DataFrame:
    """12 images (PNG and JPEG) with masks and boxes; row 4 has no mask/box/label; an extra `site` column."""
    rows = []
    for i, split in enumerate(SPLIT_OF):
        image = f"images/img{i}.{'png' if i % 2 else 'jpg'}"
        write_image(root / image, seed=i)
        write_mask(root / f"masks/img{i}.png", box=(2 + i, 3, 20, 15))
        rows.append(
            {
                "image": image,
                "split": split,
                "label": ["nevus", "melanoma"][i % 2],
                "patient_id": f"P{i // 3}",
                "modality": "dermoscopy",
                "mask": f"masks/img{i}.png",
                "bbox": f"{2 + i},3,20,15",
                "site": f"site{i % 3}",
            }
        )
    rows[4].update(mask=None, bbox=None, label=None)
    return pd.DataFrame(rows)


@pytest.fixture
def manifest(tmp_path):
    return build_manifest(mixed_table(tmp_path), tmp_path, classes=["nevus", "melanoma"])


@pytest.fixture
def out(tmp_path, manifest):
    out = tmp_path / "shards"
    write_shards(manifest, out, max_count=4, progress=False)
    return out


def by_id(samples):
    return {s["id"]: s for s in samples}


def assert_same_sample(got, want):
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[key], np.ndarray) and got[key].dtype == value.dtype, key
            np.testing.assert_array_equal(got[key], value)
        elif isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor) and torch.equal(got[key], value), key
        elif key == "boxes":
            np.testing.assert_allclose(np.reshape(got[key], (-1, 4)), np.reshape(value, (-1, 4)), rtol=1e-6)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("transform", [None, segmentation_eval_transform(16)], ids=["raw", "seg16"])
def test_round_trip_equals_manifest_dataset(manifest, out, transform):
    for split in ("train", "val", "test"):
        reference = ManifestDataset(manifest.subset(split), transform)
        want = by_id(reference[i] for i in range(len(reference)))
        # Shuffled reading: the same samples, whatever the order.
        shards = ShardDataset(out / split, transform, shuffle_buffer=50, seed=3)
        got = by_id(shards)
        assert len(shards) == len(reference) and got.keys() == want.keys()
        for key in want:
            assert_same_sample(got[key], want[key])
    unlabeled = by_id(ShardDataset(out / "train", shuffle_buffer=0))["images/img4.jpg"]
    assert unlabeled["label"] == -1 and unlabeled["boxes"] == [] and "mask" not in unlabeled


def test_members_hold_the_source_bytes_and_metadata(tmp_path, manifest, out):
    seen = {}
    for shard in sorted((out / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                seen[member.name] = tar.extractfile(member).read()
    meta = json.loads(seen["000000005.json"])
    assert seen["000000005.jpg"] == (tmp_path / "images/img4.jpg").read_bytes()
    assert seen["000000002.png"] == (tmp_path / "images/img1.png").read_bytes()
    assert seen["000000002.mask.png"] == (tmp_path / "masks/img1.png").read_bytes()
    assert "000000005.mask.png" not in seen and meta["mask"] is None
    assert meta["label"] is None and meta["class"] is None and meta["bbox"] is None
    assert meta["row"] == 5 and meta["image"] == "images/img4.jpg" and meta["extra"] == {"site": "site1"}
    labelled = json.loads(seen["000000002.json"])
    assert labelled["label"] == 1 and labelled["class"] == "melanoma" and labelled["patient_id"] == "P0"
    assert labelled["modality"] == "dermoscopy" and labelled["bbox"] == "3,3,20,15"


def test_max_count_makes_several_shards_listed_in_the_index(manifest, out):
    index = read_index(out / "train")
    assert [s["name"] for s in index["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    assert [s["count"] for s in index["shards"]] == [4, 2] and index["num_samples"] == 6
    assert index["classes"] == ["nevus", "melanoma"]
    assert index["manifest_fingerprint"] == manifest.fingerprint()
    for shard in index["shards"]:  # the counts are the members actually in each tar
        with tarfile.open(out / "train" / shard["name"]) as tar:
            assert sum(name.endswith(".json") for name in tar.getnames()) == shard["count"]
    assert [s["count"] for s in read_index(out / "val")["shards"]] == [3]
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "index.json",
        "shard-000000.tar",
        "shard-000001.tar",
    ]


def test_two_workers_see_every_sample_once_per_epoch(manifest, tmp_path):
    write_shards(manifest, tmp_path / "one", max_count=1, splits=["train"], progress=False)
    loader = shard_loader(tmp_path / "one" / "train", segmentation_eval_transform(16), 2, num_workers=2)
    want = sorted(manifest.subset("train").table["image"])
    for _epoch in range(2):
        assert sorted(i for batch in loader for i in batch["id"]) == want
    assert len(loader.dataset) == 6


def test_corrupt_jpeg_in_a_shard_raises_naming_shard_and_key(tmp_path):
    write_image(tmp_path / "good.png")
    write_truncated_jpeg(tmp_path / "bad.jpg")
    table = pd.DataFrame({"image": ["good.png", "bad.jpg"], "split": "train", "label": [0, 1]})
    write_shards(build_manifest(table, tmp_path), tmp_path / "out", progress=False)
    split_dir = tmp_path / "out" / "train"
    with pytest.raises(ImageLoadError, match=r"shard-000000\.tar:000000002\.jpg: unreadable image"):
        list(ShardDataset(split_dir, shuffle_buffer=0))

    log_path = tmp_path / "run" / "skipped_images.csv"
    loader = shard_loader(split_dir, None, 2, on_bad_image="skip", bad_image_log=log_path)
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 1 and [i for b in batches for i in b["id"]] == ["good.png"]
    assert [path for path, _ in BadImageLog(log_path).entries()] == [
        f"{split_dir}/shard-000000.tar:000000002.jpg"
    ]


def test_interrupted_write_leaves_no_indexed_shard(manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_shards(manifest, out, max_count=2, splits=["train"], progress=False)
    real = shards_module._sample

    def dies_at_row_5(part, i, record):
        if i == 4:
            raise KeyboardInterrupt  # a kill half way through the second shard
        return real(part, i, record)

    monkeypatch.setattr(shards_module, "_sample", dies_at_row_5)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, out, max_count=3, splits=["train"], progress=False)
    # The old index went first (its shards are being overwritten) and the partial shard was removed.
    with pytest.raises(DataError, match=r"no shard index.*interrupted"):
        ShardDataset(out / "train")
    assert not [p for p in (out / "train").iterdir() if p.name.startswith(".")]

    monkeypatch.setattr(shards_module, "_sample", real)
    paths = write_shards(manifest, out, max_count=3, splits=["train"], progress=False)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["index.json", *(p.name for p in paths)]
    assert len(list(ShardDataset(out / "train"))) == 6


def test_rerun_keeps_finished_splits_and_truncated_shards_are_refused(manifest, out):
    shard = out / "train" / "shard-000000.tar"
    before = shard.stat().st_mtime_ns
    write_shards(manifest, out, max_count=4, progress=False)
    assert shard.stat().st_mtime_ns == before
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"shard-000000\.tar: shard is 1000 bytes, the index records"):
        ShardDataset(out / "train")
    with pytest.raises(DataError, match=r"shard-000000\.tar: damaged shard \(ReadError"):
        list(ShardDataset([str(shard)], length=4))  # URLs bypass the index's size check
    write_shards(manifest, out, max_count=4, progress=False)  # the damaged split is written again
    assert len(list(ShardDataset(out / "train"))) == 6


def test_resampled_stream_and_url_lists(out):
    urls = sorted(str(p) for p in (out / "train").glob("*.tar"))
    assert len(ShardDataset(urls)) == 6  # length from the index beside the shards
    resampled = ShardDataset(out / "train", resampled=True, seed=1)
    ids = [s["id"] for s in resampled]
    assert len(ids) == 6 and set(ids) <= {f"images/img{i}.{'png' if i % 2 else 'jpg'}" for i in range(6)}
    with pytest.raises(TypeError, match="pass length="):
        len(ShardDataset("/nowhere/shard-{000000..000001}.tar"))


def test_ddp_ranks_read_disjoint_shards(manifest, out, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # what torchrun / Lightning's DDP launcher set
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([s["id"] for s in ShardDataset(out / "train", shuffle_buffer=0)])
    assert sorted(seen[0] + seen[1]) == sorted(manifest.subset("train").table["image"])
    assert len(seen[0]) == 4 and len(seen[1]) == 2  # one shard each: 4 + 2 samples
