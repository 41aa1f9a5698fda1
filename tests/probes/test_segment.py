"""`panderm segment` end to end on tiny SynthDerm: outputs consistent with each other and with a numpy
recomputation, frozen encoders left bit-identical, fine-tuning with layer-wise decay, checkpoint-only
prediction, sliding windows, resume after SIGTERM, and bad masks."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from panderm.cli import main
from panderm.config import register_configs
from panderm.data.dataset import collate
from panderm.data.manifest import read_manifest
from panderm.data.transforms import segmentation_eval_transform
from panderm.errors import CheckpointError, ProbeError
from panderm.models.encoder import Encoder
from panderm.models.seg_heads import load_segmenter
from panderm.models.seg_outputs import logits_to_masks
from panderm.paths import config_dir
from probes.segmentation import run as segment
from probes.segmentation.data import SegmentationDataModule, masked_counts
from probes.segmentation.predict import window_logits
from probes.segmentation.run import build_model, run_segment
from probes.segmentation.train import SegmentationTask
from tests.killing import (
    SigtermAt,
    Snapshots,
    add_callbacks,
    assert_same_log,
    assert_same_weights,
    last_state,
    one_thread,
    stopped_like_sigkill,
    write_trapped_checkpoint,
)

TINY = [
    "data.n_patients=12",
    "data.image_size=32",
    "encoder='random:vit_tiny/8@32,depth=2'",
    "num_workers=0",
    "batch_size=8",
    "trainer.max_epochs=2",
    "trainer.progress_bar=false",
    "optim.warmup_steps=2",
]


def segment_config(tmp_path, *overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir("segment")), version_base="1.3"):
        return compose("segment", overrides=[*TINY, f"data.out_dir={tmp_path / 'synthderm'}", *overrides])


def dice_by_hand(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * inter / total


def test_frozen_run_writes_consistent_outputs(tmp_path):
    run = tmp_path / "run"
    metrics = run_segment(segment_config(tmp_path, "head=linear"), run)
    assert metrics["train"]["encoder_unchanged"] is True
    per_image = pd.read_csv(run / "per_image.csv")
    counts = metrics["splits"]
    assert set(per_image["split"]) == {"val", "test"}
    for split in ("val", "test"):
        assert (per_image["split"] == split).sum() == counts[split]["images"]
        pngs = sorted((run / "masks" / split).glob("*.png"))
        assert len(pngs) == counts[split]["images"]
        assert (run / "figures" / f"overlay_{split}.png").is_file()
        summary = metrics["eval"][split]["raw"]
        scored = per_image[(per_image["split"] == split) & per_image["dice"].notna()]
        assert summary["dice"] == pytest.approx(scored["dice"].mean())
    # the saved PNGs, scored by hand against the true masks, give the CSV's Dice
    manifest = pd.read_csv(tmp_path / "synthderm" / "manifest.csv")
    truth_of = dict(zip(manifest["image"], manifest["mask"], strict=True))
    for row in per_image[per_image["split"] == "test"].head(6).itertuples():
        pred = np.asarray(Image.open(run / "masks" / "test" / f"{os.path.basename(row.id)[:-4]}.png")) > 0
        truth = np.asarray(Image.open(tmp_path / "synthderm" / truth_of[row.id])) > 0
        assert pred.shape == truth.shape
        assert row.dice == pytest.approx(dice_by_hand(pred, truth), abs=1e-6)
    assert (run / "segmenter.safetensors").is_file() and (run / "segmenter.json").is_file()
    assert (run / "figures" / "segment_loss.png").is_file()
    assert "Segmentation metrics" in (run / "report.md").read_text()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["eval"]["test"]["raw"]["dice"] == pytest.approx(metrics["eval"]["test"]["raw"]["dice"])


def test_precompute_encodes_each_image_once_and_trains_the_head_on_those_maps(tmp_path, monkeypatch):
    """precompute=true: the frozen encoder sees each train and val image once (not once per epoch); the maps
    it serves are the model's own `encode` of the evaluation-transformed image, so the head trains on exactly
    what `forward` would give it."""
    seen = []
    intermediates = Encoder.intermediates
    monkeypatch.setattr(
        Encoder,
        "intermediates",
        lambda self, x, layers: seen.append(len(x)) or intermediates(self, x, layers),
    )
    cfg = segment_config(
        tmp_path, "head=unetr", "precompute=true", "trainer.max_epochs=2", "predict.splits=[]"
    )
    with pytest.raises(ProbeError, match=r"none of predict\.splits"):  # training done; nothing to predict
        run_segment(cfg, tmp_path / "run")
    counts = masked_counts(read_manifest(tmp_path / "synthderm" / "manifest.csv"))
    assert sum(seen) == counts["train"]["with_mask"] + counts["val"]["with_mask"]
    model = build_model(cfg)
    data = SegmentationDataModule(
        read_manifest(tmp_path / "synthderm" / "manifest.csv"),
        tmp_path,
        image_size=32,
        batch_size=8,
        encode=model.encode,
    )
    encoded = data._encoded_dataset("train")
    plain = data._dataset(data.train_manifest, segmentation_eval_transform(32), train=False)
    for i in (0, len(encoded) - 1):
        sample = encoded[(2, i)]
        assert sample is encoded[i] and torch.equal(sample["image"], plain[i]["image"])
        expected = model.encode(sample["image"][None])
        torch.testing.assert_close(sample["maps"], torch.stack(expected, dim=1)[0])
    batch = collate([encoded[0], encoded[1]])
    task = SegmentationTask(model)
    torch.testing.assert_close(task._logits(batch), model(batch["image"]))


def test_precompute_needs_a_frozen_encoder(tmp_path, capsys):
    args = ["segment", f"hydra.run.dir={tmp_path / 'run'}", f"data.out_dir={tmp_path / 'data'}"]
    assert main([*args, "mode=finetune", "precompute=true"]) == 1
    assert "precompute=true needs mode=frozen" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_checkpoint_only_run_reproduces_the_predictions(tmp_path):
    first = tmp_path / "first"
    run_segment(segment_config(tmp_path, "head=fpn_upernet", "trainer.max_epochs=1"), first)
    again = tmp_path / "again"
    run_segment(segment_config(tmp_path, f"checkpoint={first / 'segmenter'}"), again)
    a, b = pd.read_csv(first / "per_image.csv"), pd.read_csv(again / "per_image.csv")
    pd.testing.assert_frame_equal(a, b)
    assert not (again / "checkpoints").exists()


def test_finetune_trains_the_encoder_with_layer_decay(tmp_path):
    run = tmp_path / "run"
    metrics = run_segment(
        segment_config(tmp_path, "head=unetr", "mode=finetune", "trainer.max_epochs=1"), run
    )
    assert "encoder_unchanged" not in metrics["train"]
    model = load_segmenter(run / "segmenter")
    assert not model.frozen
    from probes.encoders import load_probe_encoder

    initial = load_probe_encoder("random:vit_tiny/8@32,depth=2")
    changed = [
        name
        for name, value in initial.state_dict().items()
        if not torch.equal(value, model.encoder.state_dict()[name])
    ]
    assert any("blocks.1." in name for name in changed)


def test_sliding_window_matches_the_whole_image_pass_at_the_training_size():
    from panderm.models.encoder import create_encoder
    from panderm.models.seg_heads import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model(create_encoder("vit_tiny", 8, 32, depth=2), "linear").eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        whole = model(image)
        windowed = window_logits(model, image, 32)
        assert torch.allclose(whole, windowed, atol=1e-5)
        large = window_logits(model, torch.randn(1, 3, 80, 56), 32, overlap=0.5)
    assert large.shape == (1, 2, 80, 56)
    masks = logits_to_masks(torch.randn(3, 2, 8, 8), [(16, 16), (20, 12), (16, 16)])
    assert [m.shape for m in masks] == [(16, 16), (20, 12), (16, 16)]


def test_sliding_window_prediction_through_the_command(tmp_path):
    run = tmp_path / "run"
    # the 32-px SynthDerm images predicted at scale 1.5 (48 px) with 32-px windows
    overrides = [
        "trainer.max_epochs=1",
        "predict.mode=sliding_window",
        "predict.scale=1.5",
        "predict.splits=[test]",
    ]
    metrics = run_segment(segment_config(tmp_path, *overrides), run)
    frame = pd.read_csv(run / "per_image.csv")
    assert len(frame) == metrics["splits"]["test"]["images"]
    first = np.asarray(Image.open(next((run / "masks" / "test").glob("*.png"))))
    assert first.shape == (32, 32)  # predictions come back at the original size


def _write_case(folder, name, image_size, mask):
    image = np.random.default_rng(0).integers(0, 255, (*image_size, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("size", "differs from image size"),
        ("nonbinary", "not binary"),
        ("missing", "file not found"),
    ],
)
def test_bad_masks_are_clear_errors_naming_the_file(tmp_path, capsys, case, message):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for i, split in enumerate(["train", "train", "val"]):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        _write_case(folder, f"img{i}", (32, 32), mask)
        rows.append({"image": f"img{i}.png", "mask": f"img{i}_mask.png", "split": split})
    bad = folder / "img1_mask.png"
    if case == "size":
        Image.fromarray(np.zeros((30, 32), np.uint8)).save(bad)
    elif case == "nonbinary":
        Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(bad)
    else:
        bad.unlink()
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    code = main(
        [
            "segment",
            f"hydra.run.dir={tmp_path / 'run'}",
            "data=manifest",
            f"data.path={folder / 'manifest.csv'}",
            "encoder='random:vit_tiny/8@32,depth=2'",
            "num_workers=0",
            "trainer.max_epochs=1",
            "trainer.progress_bar=false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "img1_mask.png" in err and message in err


def test_empty_masks_are_trained_on_and_scored_by_the_documented_policy(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for i, split in enumerate(["train", "train", "val", "val"]):
        _write_case(folder, f"img{i}", (32, 32), np.zeros((32, 32), np.uint8))
        rows.append({"image": f"img{i}.png", "mask": f"img{i}_mask.png", "split": split})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    cfg = segment_config(
        tmp_path, "data=manifest", f"data.path={folder / 'manifest.csv'}", "trainer.max_epochs=1"
    )
    metrics = run_segment(cfg, tmp_path / "run")
    frame = pd.read_csv(tmp_path / "run" / "per_image.csv")
    for row in frame.itertuples():
        assert row.true_area == 0
        assert row.dice == (1.0 if row.pred_area == 0 else 0.0)
    assert metrics["eval"]["val"]["raw"]["n_hd95_undefined"] == 2


RESUME = [
    "batch_size=4",
    "trainer.checkpoint_every_n_steps=1",
    "mode=finetune",
    "predict.save_masks=false",
]


@pytest.mark.slow
def test_stopped_runs_resume_to_the_uninterrupted_weights_and_log(tmp_path, monkeypatch):
    """SIGTERM mid-epoch, and SIGKILL after the checkpoint of an epoch's last batch (the killed run's log
    going on past it): both resumed runs end with the uninterrupted segmenter and its log, row for row."""
    cfg = segment_config(tmp_path, *RESUME)
    with one_thread(), monkeypatch.context() as patch:
        add_callbacks(patch, segment, Snapshots(tmp_path / "snapshots"))
        total = run_segment(cfg, tmp_path / "full")["train"]["global_step"]
    killed = tmp_path / "killed"
    with one_thread(), monkeypatch.context() as patch:
        add_callbacks(patch, segment, SigtermAt(2))
        with pytest.raises(SystemExit):
            run_segment(cfg, killed)
    assert last_state(killed)["SegmentationDataModule"]["batches"] > 0  # stopped inside an epoch
    stopped_like_sigkill(tmp_path / "full", tmp_path / "snapshots" / f"{total // 2}.ckpt", tmp_path / "kill9")
    for run in (killed, tmp_path / "kill9"):
        with one_thread():
            run_segment(cfg, run)
        assert_same_weights(tmp_path / "full" / "segmenter.safetensors", run / "segmenter.safetensors")
        log = assert_same_log(tmp_path / "full", run)
        assert log["train/loss_epoch"].notna().sum() == 2 and log["val/dice"].notna().sum() == 2
        assert (run / "figures" / "segment_loss.png").is_file()


def test_resume_never_unpickles_code_from_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    last = write_trapped_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "marker")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        run_segment(segment_config(tmp_path, "head=linear"), tmp_path / "run")
    assert str(last) in str(info.value)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("head=unet", "'unet'"),
        ("mode=partial", "mode='partial' is not one of"),
        ("predict.mode=tiles", "predict.mode='tiles' is not one of"),
        ("encoder=missing/encoder.safetensors", "not found"),
    ],
)
def test_bad_segment_configurations_are_clear_errors(tmp_path, capsys, override, message):
    code = main(
        ["segment", f"hydra.run.dir={tmp_path / 'run'}", f"data.out_dir={tmp_path / 'data'}", override]
    )
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # failed before generating any data


def test_timm_encoder_trains_saves_and_reloads(tmp_path):
    overrides = ["encoder=timm:vit_tiny_patch16_224", "image_size=32", "head=unetr", "trainer.max_epochs=1"]
    overrides.append("+head_options.feature_size=8")  # the smallest UNETR decoder: the test is about timm
    first = tmp_path / "first"
    run_segment(segment_config(tmp_path, *overrides, "predict.splits=[test]"), first)
    again = tmp_path / "again"
    run_segment(segment_config(tmp_path, f"checkpoint={first / 'segmenter'}", "predict.splits=[test]"), again)
    pd.testing.assert_frame_equal(pd.read_csv(first / "per_image.csv"), pd.read_csv(again / "per_image.csv"))


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_masks_from_logits_equal_torch_argmax_of_the_resampled_logits(classes):
    from panderm.models.seg_outputs import channel_argmax

    logits = torch.randn(4, classes, 8, 8)
    logits[0, :, 0, 0] = 1.0  # a tie goes to the lower class
    expected = torch.nn.functional.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False)
    expected = expected.argmax(1).numpy()
    masks = np.stack(logits_to_masks(logits, [(24, 20)] * 4))
    assert (masks != expected).mean() < 1e-3  # float rounding of the logit difference at exact ties only
    assert np.array_equal(channel_argmax(logits).numpy(), logits.argmax(1).numpy())
