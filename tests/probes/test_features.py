"""Feature extraction, the feature cache, user feature files and probe encoders (tiny models, SynthDerm)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probes.features as features_module
from panderm.data.dataset import BadImageLog, ManifestDataset
from panderm.data.manifest import Manifest, build_manifest, read_manifest
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.data.transforms import eval_transform
from panderm.errors import ImageLoadError, ProbeError
from panderm.models.checkpoints import save_encoder
from panderm.models.encoder import Encoder, create_encoder
from probes.encoders import TimmEncoder, encoder_hash, forget_identity, load_probe_encoder
from probes.features import (
    FeatureSet,
    cached_features,
    extract_features,
    load_feature_file,
    manifest_hash,
    probe_transform,
    write_feature_cache,
    write_pixel_features,
)
from probes.run import run_probe
from tests.data.helpers import small_folder, write_truncated_jpeg
from tests.models.test_panderm_import import panderm_state

SIZE = 32


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synthderm")
    return read_manifest(generate_synthderm(root, n_patients=6, image_size=SIZE, seed=0))


def tiny(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return create_encoder("vit_tiny", 8, SIZE, depth=2)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return tiny()


def run(encoder, manifest, split="train", **kwargs) -> FeatureSet:
    return extract_features(encoder, manifest, split, device="cpu", progress=False, **kwargs)


def cached(encoder, manifest, cache_dir, splits=("train",), **kwargs) -> dict[str, FeatureSet]:
    return cached_features(
        encoder, manifest, splits, cache_dir=cache_dir, device="cpu", progress=False, **kwargs
    )


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every split `cached_features` extracts (it looks the function up at call time)."""
    calls: list[str] = []
    real = features_module.extract_features

    def counting(encoder, manifest, split, **kwargs):
        calls.append(split)
        return real(encoder, manifest, split, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", counting)
    return calls


# ----------------------------------------------------------------------------------------------- extraction


def test_features_equal_bare_forward(encoder: Encoder, manifest) -> None:
    fs = run(encoder, manifest, batch_size=5)
    rows = manifest.subset("train")
    dataset = ManifestDataset(rows, probe_transform(encoder), with_masks=False)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        reference = encoder.eval().features(images, "cls").numpy()
    assert fs.features.dtype == np.float32 and fs.features.shape == (len(rows), encoder.embed_dim)
    np.testing.assert_allclose(fs.features, reference, atol=1e-5, rtol=1e-5)
    assert fs.labels.tolist() == rows.table["label"].astype(int).tolist()
    assert fs.ids.tolist() == rows.table["image"].tolist()
    assert {"patient_id", "modality", "fitzpatrick"} <= set(fs.meta.columns)
    assert fs.classes == manifest.classes and fs.split == "train"
    x, y = fs.tensors()
    assert x.shape == fs.features.shape and y.dtype == torch.int64


def test_pooling_variants(encoder: Encoder, manifest) -> None:
    out = {p: run(encoder, manifest, "test", pooling=p).features for p in ("cls", "mean", "cls+mean")}
    n, d = len(manifest.subset("test")), encoder.embed_dim
    assert out["cls"].shape == out["mean"].shape == (n, d)
    assert out["cls+mean"].shape == (n, 2 * d)
    np.testing.assert_allclose(out["cls+mean"], np.concatenate([out["cls"], out["mean"]], 1), atol=1e-5)
    with pytest.raises(ProbeError, match="pooling='max'"):
        run(encoder, manifest, pooling="max")


def test_training_mode_restored(manifest) -> None:
    encoder = tiny().train()
    run(encoder, manifest, "test")
    assert encoder.training


def test_transform_size_mismatch_names_both_sizes(encoder: Encoder, manifest) -> None:
    with pytest.raises(ProbeError, match=r"64x64 images but the encoder expects 32x32"):
        run(encoder, manifest, transform=eval_transform(64))


def test_transform_without_tensor_output(encoder: Encoder, manifest) -> None:
    import albumentations as A

    with pytest.raises(ProbeError, match="ToTensorV2"):
        run(encoder, manifest, transform=A.Compose([A.Resize(SIZE, SIZE)]))


def test_empty_split(encoder: Encoder, manifest) -> None:
    with pytest.raises(ProbeError, match="split 'val' has no rows"):
        run(encoder, manifest.subset("train"), "val")


# -------------------------------------------------------------------------------------------------- cache


def test_second_call_reads_the_cache(encoder, manifest, tmp_path, counter, caplog) -> None:
    first = cached(encoder, manifest, tmp_path, ("train", "test"))
    assert counter == ["train", "test"]
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with caplog.at_level(logging.INFO, logger="probes.features"):
        second = cached(encoder, manifest, tmp_path, ("train", "test"))
    assert counter == ["train", "test"], "the second call must not extract"
    assert "cache hit" in caplog.text
    for split in ("train", "test"):
        a, b = first[split], second[split]
        np.testing.assert_allclose(b.features, a.features, rtol=2**-10, atol=1e-6)
        assert b.features.dtype == np.float32
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.ids, b.ids)
        assert b.meta.equals(a.meta) and b.classes == a.classes
        assert a.recipe["cache_key"] == b.recipe["cache_key"]
    with np.load(next(tmp_path.glob("train-*.npz"))) as data:
        assert data["features"].dtype == np.float16


def test_key_changes_with_pooling_weights_and_manifest(manifest, tmp_path, counter) -> None:
    encoder = tiny()
    cached(encoder, manifest, tmp_path)
    cached(encoder, manifest, tmp_path, pooling="mean")
    assert counter == ["train", "train"]
    before = encoder_hash(encoder)
    with torch.no_grad():
        encoder.vit.norm.bias.add_(0.5)
    assert encoder_hash(encoder) != before  # an in-memory encoder is identified by its weights
    cached(encoder, manifest, tmp_path)
    assert len(counter) == 3
    # touching one image of the split (new mtime) changes the manifest hash
    image = manifest.image_path(int(np.flatnonzero(manifest.table["split"] == "train")[0]))
    stat = os.stat(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cached(encoder, manifest, tmp_path)
    assert len(counter) == 4
    cached(encoder, manifest, tmp_path)
    assert len(counter) == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_manifest_hash_sees_labels_and_content(manifest) -> None:
    rows = manifest.subset("test")
    changed = rows.subset(rows=np.arange(len(rows)))
    changed.table.loc[0, "label"] = (int(rows.table["label"].iat[0]) + 1) % manifest.num_classes
    assert manifest_hash(changed) != manifest_hash(rows)
    assert manifest_hash(rows, content=True) == manifest_hash(rows.subset(), content=True)
    assert manifest_hash(rows, content=True) != manifest_hash(rows)


def test_failed_write_leaves_no_file(encoder, manifest, tmp_path, monkeypatch) -> None:
    def broken(handle, arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(features_module, "_save_arrays", broken)
    with pytest.raises(OSError, match="disk full"):
        cached(encoder, manifest, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_is_recomputed(encoder, manifest, tmp_path, counter, caplog) -> None:
    first = cached(encoder, manifest, tmp_path)["train"]
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="probes.features"):
        again = cached(encoder, manifest, tmp_path)["train"]
    assert counter == ["train", "train"]
    assert "unreadable" in caplog.text and path.name in caplog.text
    np.testing.assert_array_equal(again.features, first.features)
    cached(encoder, manifest, tmp_path)  # the rewritten file is good again
    assert counter == ["train", "train"]


def test_fp16_overflow_is_stored_as_fp32(tmp_path) -> None:
    values = np.array([[1.0, -7e4], [3.0, 2.5]], np.float32)
    fs = FeatureSet(values, np.array([0, 1]), np.array(["a", "b"]), "train")
    write_feature_cache(tmp_path / "f.npz", fs, "k")
    with np.load(tmp_path / "f.npz") as data:
        assert data["features"].dtype == np.float32
        np.testing.assert_array_equal(data["features"], values)


# ------------------------------------------------------------------------------------------ user files


def save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def good(n: int = 6, d: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{s}_{a}": (rng.normal(size=(n, d)) if a == "x" else rng.integers(0, 3, n))
        for s in ("train", "val", "test")
        for a in ("x", "y")
    }


def test_feature_file_roundtrip(tmp_path) -> None:
    arrays = good()
    arrays["train_y"] = arrays["train_y"].astype(np.float64)  # integral floats are accepted
    sets = load_feature_file(save(tmp_path / "f.npz", **arrays))
    assert list(sets) == ["train", "val", "test"]
    np.testing.assert_allclose(sets["val"].features, arrays["val_x"].astype(np.float32))
    assert sets["train"].labels.dtype == np.int64 and sets["test"].ids[0] == "test/0"
    del arrays["val_x"], arrays["val_y"]
    assert list(load_feature_file(save(tmp_path / "g.npz", **arrays))) == ["train", "test"]


def test_pixel_features_flatten_scale_and_name_rows(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for s, n in (("train", 5), ("test", 3))}
    labels = {s: np.arange(len(x))[:, None] % 2 for s, x in images.items()}  # MedMNIST's (N, 1) labels
    source = tmp_path / "set.npz"
    np.savez(
        source,
        **{f"{s}_images": x for s, x in images.items()},
        **{f"{s}_labels": y for s, y in labels.items()},
    )
    path = write_pixel_features(source, tmp_path / "out" / "pixels.npz", lambda split, i: f"{split}-{i:02d}")
    sets = load_feature_file(path)
    assert list(sets) == ["train", "test"] and sets["test"].features.shape == (3, 48)
    np.testing.assert_allclose(sets["train"].features[2], images["train"][2].reshape(-1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(sets["test"].labels, [0, 1, 0])
    assert list(sets["test"].ids) == ["test-00", "test-01", "test-02"]
    stamp = path.stat().st_mtime_ns
    assert write_pixel_features(source, path) == path and path.stat().st_mtime_ns == stamp  # newer: kept


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("test_y"), "missing key 'test_y'"),
        (lambda a: a.pop("val_y"), "'val_x' is present but 'val_y' is missing"),
        (lambda a: a.update(val_y=a["val_y"][:-1]), "split val: val_x has 6 rows but val_y has 5 labels"),
        (lambda a: a["test_x"].__setitem__((slice(0, 2), 0), np.nan), "test_x: 2 NaN .* split test"),
        (lambda a: a.update(train_y=a["train_y"] + 0.5), "train_y: labels must be integers"),
        (lambda a: a.update(train_x=a["train_x"][:, 0]), r"train_x: features must be 2-D .* \(6,\)"),
        (lambda a: a.update(val_x=a["val_x"][:, :2]), "feature widths differ"),
    ],
)
def test_feature_file_errors(tmp_path, change, message) -> None:
    arrays = good()
    change(arrays)
    with pytest.raises(ProbeError, match=message):
        load_feature_file(save(tmp_path / "f.npz", **arrays))


def test_feature_file_reports_every_problem(tmp_path) -> None:
    arrays = good()
    arrays.pop("train_x")
    arrays["test_y"] = arrays["test_y"][:3]
    arrays["val_y"] = arrays["val_y"] - 5
    with pytest.raises(ProbeError, match="3 problem") as error:
        load_feature_file(save(tmp_path / "f.npz", **arrays))
    assert "missing key 'train_x'" in str(error.value) and "negative label" in str(error.value)
    with pytest.raises(ProbeError, match="not found"):
        load_feature_file(tmp_path / "absent.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ProbeError, match="not a readable"):
        load_feature_file(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------- encoders


def test_random_encoder_is_seeded() -> None:
    a = load_probe_encoder("random:vit_tiny/8@32,depth=2")
    b = load_probe_encoder("random:vit_tiny/8@32,depth=2")
    c = load_probe_encoder("random:vit_tiny/8@32,depth=2", seed=1)
    assert isinstance(a, Encoder) and (a.spec.patch_size, a.spec.image_size, a.depth) == (8, 32, 2)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert torch.equal(a.vit.pos_embed, b.vit.pos_embed) and encoder_hash(a) == encoder_hash(b)
    assert encoder_hash(a) != encoder_hash(c)
    assert load_probe_encoder("random:vit_tiny/8@32,depth=2", image_size=48).spec.image_size == 48
    with pytest.raises(ProbeError, match="option 'heads=3'"):
        load_probe_encoder("random:vit_tiny/8@32,heads=3")


def test_exported_checkpoint_file_and_folder(tmp_path, manifest) -> None:
    source = tiny(seed=3)
    save_encoder(source, tmp_path / "export" / "enc")
    by_stem = load_probe_encoder(tmp_path / "export" / "enc")
    by_folder = load_probe_encoder(str(tmp_path / "export"))
    assert encoder_hash(by_stem) == encoder_hash(by_folder)
    assert torch.equal(by_stem.vit.cls_token, source.vit.cls_token)
    bigger = load_probe_encoder(tmp_path / "export" / "enc.safetensors", image_size=48)
    assert bigger.spec.image_size == 48 and encoder_hash(bigger) != encoder_hash(by_stem)
    assert run(bigger, manifest, "test").features.shape[1] == source.embed_dim
    forget_identity(by_stem)
    assert encoder_hash(by_stem) == encoder_hash(source)  # falls back to hashing the weights


def test_missing_files_are_clear(tmp_path) -> None:
    with pytest.raises(ProbeError, match=r"absent\.safetensors: encoder checkpoint or folder not found"):
        load_probe_encoder(tmp_path / "absent.safetensors")
    with pytest.raises(ProbeError, match="PanDerm checkpoint file not found"):
        load_probe_encoder(f"panderm_vit_base:{tmp_path / 'absent.pth'}")
    with pytest.raises(ProbeError, match="no exported encoder"):
        load_probe_encoder(tmp_path)
    with pytest.raises(ProbeError, match="unknown timm model"):
        load_probe_encoder("timm:no_such_model_xyz")


def test_panderm_release_checkpoint(tmp_path) -> None:
    path = tmp_path / "panderm.pth"
    torch.save({"model": panderm_state(depth=2, grid=4, patch=16)}, path)
    encoder = load_probe_encoder(path, image_size=64)
    assert (encoder.spec.arch, encoder.depth, encoder.spec.image_size) == ("vit_tiny", 2, 64)
    assert encoder_hash(encoder) == encoder_hash(load_probe_encoder(f"panderm:{path}", image_size=64))


def test_timm_encoder(tmp_path, manifest) -> None:
    vit = load_probe_encoder("timm:test_vit", image_size=SIZE)
    assert isinstance(vit, TimmEncoder) and vit.spec.image_size == SIZE
    assert run(vit, manifest, "test", pooling="cls+mean").features.shape[1] == 2 * vit.embed_dim
    path = tmp_path / "w.pth"
    torch.save(vit.model.state_dict(), path)
    loaded = load_probe_encoder(f"timm:test_vit:{path}", image_size=SIZE, seed=5)
    assert torch.equal(loaded.model.cls_token, vit.model.cls_token)
    cnn = load_probe_encoder("timm:test_resnet")
    assert cnn.dynamic_image_size
    fs = run(cnn, manifest, "test", pooling="mean", transform=eval_transform(40))
    assert fs.features.shape[1] == cnn.embed_dim
    with pytest.raises(ProbeError, match="pooling='mean'"):
        run(cnn, manifest, "test", transform=eval_transform(40))


# ------------------------------------------------------------------------------------ unreadable images


def with_broken_image(tmp_path: Path) -> tuple[Manifest, Path]:
    """A small manifest whose second train row is a truncated JPEG (header intact, data cut)."""
    table = small_folder(tmp_path / "data").drop(columns=["mask", "bbox"])
    broken = write_truncated_jpeg(tmp_path / "data" / "images" / "broken.jpg")
    row = {"image": "images/broken.jpg", "split": "train", "label": "nevus", "patient_id": "P0"}
    table = pd.concat([table.iloc[:1], pd.DataFrame([row]), table.iloc[1:]], ignore_index=True)
    return build_manifest(table, tmp_path / "data", classes=["nevus", "melanoma"]), broken


@pytest.mark.parametrize("batch_size", [1, 2])
def test_unreadable_image_is_named_or_skipped_and_listed(encoder, tmp_path, batch_size) -> None:
    manifest, broken = with_broken_image(tmp_path)
    with pytest.raises(ImageLoadError, match=r"broken\.jpg: unreadable image"):
        run(encoder, manifest, batch_size=batch_size)
    log_path = tmp_path / "run" / "skipped_images.csv"
    kept = run(encoder, manifest, batch_size=batch_size, on_bad_image="skip", bad_image_log=log_path)
    assert [path for path, _ in BadImageLog(log_path).entries()] == [str(broken)]
    assert kept.skipped == ["images/broken.jpg"]
    readable = manifest.subset("train")
    readable = readable.subset(rows=(readable.table["image"] != "images/broken.jpg").to_numpy())
    clean = run(encoder, readable, batch_size=batch_size)
    assert list(kept.ids) == list(clean.ids) == ["images/img0.png", "images/img1.png"]
    np.testing.assert_array_equal(kept.labels, clean.labels)
    assert kept.meta.equals(clean.meta)
    np.testing.assert_allclose(kept.features, clean.features, rtol=1e-5, atol=1e-6)


def test_skipped_images_survive_the_cache(encoder, tmp_path, counter) -> None:
    manifest, broken = with_broken_image(tmp_path)
    cache = tmp_path / "cache"
    first = cached(encoder, manifest, cache, on_bad_image="skip", bad_image_log=tmp_path / "a.csv")
    second = cached(encoder, manifest, cache, on_bad_image="skip", bad_image_log=tmp_path / "b.csv")
    assert counter == ["train"], "the second call must read the cache"
    assert list(second["train"].ids) == list(first["train"].ids) and len(second["train"]) == 2
    assert second["train"].skipped == first["train"].skipped == ["images/broken.jpg"]
    assert [path for path, _ in BadImageLog(tmp_path / "b.csv").entries()] == [str(broken)]
    with pytest.raises(ImageLoadError, match=r"broken\.jpg"):  # without skip the cache does not hide it
        cached(encoder, manifest, cache)


def test_probe_run_honours_on_bad_image(tmp_path) -> None:
    from tests.probes.test_run import probe_config

    table = small_folder(tmp_path / "data", n=12).drop(columns=["mask", "bbox"])
    write_truncated_jpeg(tmp_path / "data" / "images" / "broken.jpg")
    table.loc[len(table)] = {
        "image": "images/broken.jpg",
        "split": "train",
        "label": "nevus",
        "patient_id": "P0",
    }
    table.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    options = [
        "data=manifest",
        f"data.path={tmp_path / 'data' / 'manifest.csv'}",
        "data.classes=[nevus,melanoma]",
    ]
    options += ["probe=knn", "bootstrap=0"]
    with pytest.raises(ImageLoadError, match=r"broken\.jpg: unreadable image"):
        run_probe(probe_config(tmp_path, *options), tmp_path / "strict")
    metrics = run_probe(probe_config(tmp_path, *options, "data.on_bad_image=skip"), tmp_path / "lenient")
    listed = pd.read_csv(tmp_path / "lenient" / "skipped_images.csv")
    assert listed["path"].tolist() == [str(tmp_path / "data" / "images" / "broken.jpg")]
    assert metrics["skipped_images"] == 1
    assert "1 unreadable image(s) skipped" in (tmp_path / "lenient" / "report.md").read_text()
