"""The `panderm` command: help, data validate exit codes and messages, Hydra config validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.cli import main
from panderm.config import DataConfig, DataSource, validate_config
from panderm.data.dataset import ManifestDataset
from panderm.data.sources import load_data
from panderm.errors import ConfigError
from tests.data.helpers import small_folder, write_image, write_mask


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "data" in out
    with pytest.raises(SystemExit):
        main(["data", "validate", "--help"])
    assert "--deep" in capsys.readouterr().out


def test_validate_ok_and_bad(tmp_path, capsys):
    table = small_folder(tmp_path)
    table.to_csv(tmp_path / "good.csv", index=False)
    assert main(["data", "validate", str(tmp_path / "good.csv")]) == 0
    assert "OK, 6 images (train 2, val 2, test 2)" in capsys.readouterr().out

    bad = pd.concat([table, table.iloc[[0]].assign(split="nope")], ignore_index=True)
    bad.loc[2, "image"] = "images/gone.png"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["data", "validate", str(tmp_path / "bad.csv"), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.csv: 4 problem(s)" in err
    assert "row 3: field 'image'" in err and "gone.png: file not found" in err
    assert "row 7: field 'split': unknown split 'nope'" in err
    assert "row 7: field 'image': duplicate of row 1" in err
    assert "patient 'P0' appears in more than one split" in err


def exit_code(args: list[str]) -> int:
    """`main(args)`'s status, also when Hydra ends the command with `SystemExit` (errors, --help)."""
    try:
        return main(args)
    except SystemExit as stop:
        return stop.code


def test_hydra_command_rejects_misspelt_key_and_shows_help(tmp_path, capsys):
    # in-process (the demo tests run the command as a subprocess): Hydra reports and exits before any task
    assert exit_code(["demo", "data.n_patiens=3", f"hydra.run.dir={tmp_path}/run"]) == 1
    assert "Key 'n_patiens' not in 'DataConfig'" in capsys.readouterr().err
    assert exit_code(["demo", "image_size=big", f"hydra.run.dir={tmp_path}/run"]) == 1
    assert "full_key: image_size" in capsys.readouterr().err
    assert exit_code(["demo", "--help"]) == 0
    assert "n_patients" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_shard_command_writes_an_index_per_split(tmp_path, capsys):
    table = small_folder(tmp_path / "data")
    table.to_csv(tmp_path / "data" / "m.csv", index=False)
    assert (
        main(["shard", str(tmp_path / "data" / "m.csv"), str(tmp_path / "shards"), "--max-count", "1"]) == 0
    )
    assert "6 shard(s)" in capsys.readouterr().out
    for split in ("train", "val", "test"):
        index = json.loads((tmp_path / "shards" / split / "index.json").read_text())
        assert index["num_samples"] == 2 and len(index["shards"]) == 2


def test_export_names_a_missing_run(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "overrides", "expected"),
    [
        (
            "pretrain",
            ["batch_size=0", "optim.lr=-1"],
            ["batch_size=0: must be a positive integer", "optim.lr=-1"],
        ),
        (
            "probe",
            ["batch_size=-4", "num_workers=-1"],
            ["batch_size=-4: must be a positive integer", "num_workers=-1"],
        ),
        (
            "segment",
            ["batch_size=0", "predict.overlap=1.5"],
            ["batch_size=0", "predict.overlap=1.5: must be in"],
        ),
    ],
)
def test_hydra_command_rejects_out_of_range_values(tmp_path, capsys, command, overrides, expected):
    # in-process: the check runs before the command's task is imported, so this is fast
    assert main([command, *overrides, f"hydra.run.dir={tmp_path}/run"]) == 1
    err = capsys.readouterr().err
    assert "2 invalid value(s)" in err and f"panderm {command}" in err
    for text in expected:
        assert text in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_validate_names_the_encoding_option(tmp_path, capsys):
    table = small_folder(tmp_path)
    table.assign(site="épaule").to_csv(tmp_path / "latin1.csv", index=False, encoding="latin-1")
    assert main(["data", "validate", str(tmp_path / "latin1.csv")]) == 1
    err = capsys.readouterr().err
    assert "latin1.csv" in err and "not UTF-8" in err and "--encoding latin-1" in err
    assert main(["data", "validate", str(tmp_path / "latin1.csv"), "--encoding", "latin-1"]) == 0


def test_validate_deep_checks_masks(tmp_path, capsys):
    table = small_folder(tmp_path)
    write_image(tmp_path / "masks" / "img1_mask.png", mode="L", seed=1)  # grey levels: not binary
    write_mask(tmp_path / "masks" / "img4_mask.png", size=(16, 16))  # its image is 32x24
    table.to_csv(tmp_path / "m.csv", index=False)
    assert main(["data", "validate", str(tmp_path / "m.csv")]) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path / "m.csv"), "--deep"]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "row 2: field 'mask'" in err and "mask is not binary" in err
    assert "row 5: field 'mask'" in err and "differs from image size" in err


def test_a_grey_mask_is_binarised_only_on_purpose(tmp_path, capsys):
    """A mask with grey levels (e.g. saved as JPEG) is refused with the command-line option that binarises
    it; `--mask-threshold` / `data.mask_threshold` apply `value > threshold`, in validation and in loading."""
    table = small_folder(tmp_path)
    grey = write_image(tmp_path / "masks" / "img1_mask.png", mode="L", seed=1)
    table.to_csv(tmp_path / "m.csv", index=False)
    assert main(["data", "validate", str(tmp_path / "m.csv"), "--deep"]) == 1
    assert "data.mask_threshold=127" in capsys.readouterr().err
    assert main(["data", "validate", str(tmp_path / "m.csv"), "--deep", "--mask-threshold", "127"]) == 0
    capsys.readouterr()
    cfg = DataConfig(source=DataSource.manifest, path=str(tmp_path / "m.csv"), mask_threshold=127)
    manifest = load_data(cfg, tmp_path)
    loaded = ManifestDataset(manifest).load(1)["mask"]
    np.testing.assert_array_equal(loaded, (np.asarray(Image.open(grey)) > 127).astype(np.uint8))
    with pytest.raises(ConfigError, match=r"data.mask_threshold=300: must be an integer in 0..255"):
        validate_config(DataConfig(mask_threshold=300), "data.")
