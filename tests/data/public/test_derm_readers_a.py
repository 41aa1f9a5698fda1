"""Readers of HAM10000, ISIC 2019, ISIC 2020 and BCN20000 in their published layouts.

The HAM10000 and ISIC tests read the REAL metadata files of ../shared/data/layouts: a subset of their lines
(bytes as published: CRLF, float one-hot, `_downsampled` ids, empty cells) is written to a temporary
dataset folder together with tiny generated JPEGs under the file names those lines list. References are
pandas reads of the same files and `grouped_splits` called directly; BCN20000's fixture follows its published
description (no real file was available).
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.config import DataConfig
from panderm.data.readers.public import read_public
from panderm.data.readers.public.splits import SPLITS_FILE, crossing_groups, grouped_splits
from panderm.data.sources import load_data
from panderm.errors import ConfigError, DataError, ManifestError
from tests.conftest import shared_path

pytestmark = pytest.mark.shared_data


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = jpeg_bytes()


def write_images(folder: Path, names: Iterable[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(JPEG)


def copy_lines(source: Path, target: Path, ids: set[str], column: int) -> None:
    """Header + the lines of `source` whose field `column` is in `ids`, byte for byte (line endings kept)."""
    lines = source.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines[1:] if line.split(b",")[column].strip().decode() in ids]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join([lines[0], *kept]))


def reference(source: Path, ids: set[str], column: str) -> pd.DataFrame:
    """Independent reference: pandas' read of the real file, restricted to `ids`, in file order."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    return frame[frame[column].isin(ids)].reset_index(drop=True)


def label_names(manifest) -> list[str]:
    return manifest.label_names().tolist()


# ------------------------------------------------------------------------------------------- fixtures


def ham_ids() -> set[str]:
    """Per dx: all images of 4 multi-image lesions and 10 single-image lesions (or fewer where absent)."""
    meta = pd.read_csv(shared_path("layouts", "ham10000", "HAM10000_metadata.csv"))
    sizes = meta.groupby("lesion_id")["image_id"].transform("size")
    chosen = []
    for _, rows in meta.groupby("dx"):
        multi = rows[sizes[rows.index] > 1]["lesion_id"].drop_duplicates().head(4)
        single = rows[sizes[rows.index] == 1]["lesion_id"].head(10)
        chosen += [*multi, *single]
    return set(meta.loc[meta["lesion_id"].isin(chosen), "image_id"])


def make_ham(root: Path) -> tuple[Path, pd.DataFrame]:
    source = shared_path("layouts", "ham10000", "HAM10000_metadata.csv")
    ids = ham_ids() | {"ISIC_0027419", "ISIC_0024306"}
    copy_lines(source, root / "HAM10000_metadata.csv", ids, column=1)
    for i, name in enumerate(sorted(ids)):  # the release splits the images into two folders
        write_images(root / f"HAM10000_images_part_{1 + i % 2}", [f"{name}.jpg"])
    return root, reference(source, ids, "image_id")


def isic2019_ids() -> set[str]:
    """Per class: 6 images with an empty lesion id (where any) and all images of 3 multi-image lesions."""
    folder = shared_path("layouts", "isic2019")
    truth = pd.read_csv(folder / "ISIC_2019_Training_GroundTruth.csv")
    meta = pd.read_csv(folder / "ISIC_2019_Training_Metadata.csv")
    table = meta.assign(label=truth.iloc[:, 1:].idxmax(axis=1))
    sizes = table.groupby("lesion_id")["image"].transform("size")
    chosen: set[str] = {"ISIC_0000080_downsampled", "ISIC_0000017_downsampled"}
    for _, rows in table.groupby("label"):
        chosen |= set(rows.loc[rows["lesion_id"].isna(), "image"].head(6))
        lesions = rows.loc[sizes[rows.index] > 1, "lesion_id"].drop_duplicates().head(3)
        chosen |= set(table.loc[table["lesion_id"].isin(lesions), "image"])
    return chosen


def make_isic2019(root: Path) -> tuple[Path, pd.DataFrame]:
    folder = shared_path("layouts", "isic2019")
    ids = isic2019_ids()
    for name in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        copy_lines(folder / name, root / name, ids, column=0)
    write_images(root / "ISIC_2019_Training_Input", [f"{i}.jpg" for i in ids])
    test = set(pd.read_csv(folder / "ISIC_2019_Test_Metadata.csv")["image"].head(5))
    copy_lines(folder / "ISIC_2019_Test_Metadata.csv", root / "ISIC_2019_Test_Metadata.csv", test, column=0)
    write_images(root / "ISIC_2019_Test_Input", [f"{i}.jpg" for i in test])
    truth = reference(folder / "ISIC_2019_Training_GroundTruth.csv", ids, "image")
    meta = reference(folder / "ISIC_2019_Training_Metadata.csv", ids, "image")
    return root, truth.merge(meta, on="image")


def isic2020_ids() -> set[str]:
    """Every non-`unknown` diagnosis (up to 15 each), 40 `unknown` rows and every image of 3 patients."""
    meta = pd.read_csv(shared_path("layouts", "isic2020", "ISIC_2020_Training_GroundTruth.csv"))
    chosen = set(meta.groupby("diagnosis").head(15)["image_name"])
    chosen |= set(meta.loc[meta["diagnosis"] == "unknown", "image_name"].head(40))
    patients = meta["patient_id"].value_counts().index[:3]
    return chosen | set(meta.loc[meta["patient_id"].isin(patients), "image_name"])


def make_isic2020(root: Path) -> tuple[Path, pd.DataFrame]:
    source = shared_path("layouts", "isic2020", "ISIC_2020_Training_GroundTruth.csv")
    ids = isic2020_ids()
    target = root / "ISIC_2020_Training_GroundTruth.csv"
    copy_lines(source, target, ids, column=0)
    target.write_bytes(target.read_bytes().rstrip(b"\n"))  # the full release ends without a newline
    write_images(root / "ISIC_2020_Training_JPEG" / "train", [f"{i}.jpg" for i in ids])
    return root, reference(source, ids, "image_name")


BCN_DIAGNOSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")


def bcn_table(with_split: bool = True) -> pd.DataFrame:
    """A metadata table in the published BCN20000 layout: 8 classes x 6 lesions (every other with 2 images),
    one lesion in three in the official test split; diagnoses as codes and, for some rows, full names."""
    names = {"MEL": "melanoma", "NV": "nevus", "BKL": "seborrheic keratosis"}
    rows, n = [], 0
    for c, code in enumerate(BCN_DIAGNOSES):
        for lesion in range(6):
            for _ in range(1 + lesion % 2):
                n += 1
                rows.append(
                    {
                        "bcn_filename": f"BCN_{n:010d}.jpg",
                        "age_approx": "" if n % 7 == 0 else str(30 + 5 * (n % 9)),
                        "anatom_site_general": ["anterior torso", "head/neck", ""][n % 3],
                        "diagnosis": names.get(code, code) if lesion == 0 else code,
                        "lesion_id": f"BCN_{c * 10 + lesion:07d}",
                        "capture_date": "2012-03-04",
                        "sex": ["male", "female", ""][n % 3],
                        "split": "test" if lesion % 3 == 2 else "train",
                    }
                )
    table = pd.DataFrame(rows)
    return table if with_split else table.drop(columns="split")


def make_bcn(root: Path, with_split: bool = True) -> tuple[Path, pd.DataFrame]:
    table = bcn_table(with_split)
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "bcn_20k_train.csv", index=False)
    write_images(root / "BCN_20k_train", table["bcn_filename"])
    return root, table


MAKERS: dict[str, Callable[[Path], tuple[Path, pd.DataFrame]]] = {
    "ham10000": make_ham,
    "isic2019": make_isic2019,
    "isic2020": make_isic2020,
    "bcn20000": make_bcn,
}
GROUP = {"ham10000": "lesion_id", "isic2019": "patient_id", "isic2020": "patient_id", "bcn20000": "lesion_id"}
ID = {"ham10000": "image_id", "isic2019": "image_id", "isic2020": "image_name", "bcn20000": "bcn_filename"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory):
    """Each dataset's folder, its reference table and the manifest read from it (built once per module)."""
    cache: dict[str, tuple[Path, pd.DataFrame, object, Path]] = {}

    def get(name: str):
        if name not in cache:
            root, ref = MAKERS[name](tmp_path_factory.mktemp(name) / "dataset")
            out = root.parent / "out"
            cache[name] = (root, ref, read_public(name, root, out_dir=out, seed=0), out)
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------- tests


def test_ham10000_rows_classes_splits_and_metadata(layouts) -> None:
    root, ref, manifest, out = layouts("ham10000")
    assert manifest.classes == ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
    assert len(manifest) == len(ref) and set(ref["dx"]) == set(manifest.classes)
    assert manifest.table["image_id"].tolist() == ref["image_id"].tolist()  # metadata order kept
    assert label_names(manifest) == ref["dx"].tolist()
    assert manifest.label_names().value_counts().to_dict() == ref["dx"].value_counts().to_dict()
    expected = grouped_splits(ref["dx"], ref["lesion_id"], seed=0)
    assert manifest.table["split"].tolist() == list(expected)
    assert manifest.table["patient_id"].tolist() == ref["lesion_id"].tolist()
    table = manifest.table.set_index("image_id")
    assert table.at["ISIC_0027419", "lesion_id"] == "HAM_0000118"  # first data line of the file
    assert label_names(manifest)[0] == "bkl" and table.at["ISIC_0027419", "dx_name"].startswith("benign ker")
    assert table.at["ISIC_0027419", "age"] == 80.0 and table.at["ISIC_0027419", "localization"] == "scalp"
    assert table.at["ISIC_0024306", "dx_type"] == "follow_up" and table.at["ISIC_0024306", "sex"] == "male"
    ages = pd.to_numeric(ref["age"].replace("", np.nan))
    assert table["age"].isna().sum() == ages.isna().sum()
    assert (table["sex"] == "unknown").sum() == (ref["sex"] == "unknown").sum()
    folders = {Path(p).parts[0] for p in manifest.table["image"]}
    assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert set(manifest.table["modality"]) == {"dermoscopy"}
    assert manifest.source == str(root / "HAM10000_metadata.csv")
    assert (out / SPLITS_FILE).is_file()


def test_isic2019_onehot_labels_lesion_groups_and_unlabeled_test(layouts) -> None:
    root, ref, manifest, out = layouts("isic2019")
    columns = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert manifest.classes == tuple(columns)  # UNK is 0 in every training row: not a class
    gold = ref[columns].astype(float).idxmax(axis=1)
    assert len(manifest) == len(ref) and set(gold) == set(columns)
    assert label_names(manifest) == gold.tolist()
    assert manifest.label_names().value_counts().to_dict() == gold.value_counts().to_dict()
    group = ref["lesion_id"].mask(ref["lesion_id"] == "", ref["image"])
    assert manifest.table["patient_id"].tolist() == group.tolist()
    assert manifest.table["split"].tolist() == list(grouped_splits(gold, group, seed=0))
    table = manifest.table.set_index("image_id")
    assert (
        table.at["ISIC_0000017_downsampled", "image"]
        == "ISIC_2019_Training_Input/ISIC_0000017_downsampled.jpg"
    )
    empty = table.loc["ISIC_0000080_downsampled"]  # a metadata row empty but for its image
    assert pd.isna(empty["lesion_id"]) and pd.isna(empty["age_approx"]) and pd.isna(empty["sex"])
    assert empty["patient_id"] == "ISIC_0000080_downsampled"
    assert table.at["ISIC_0000000", "age_approx"] == 55 and table.at["ISIC_0000000", "sex"] == "female"
    assert table["lesion_id"].isna().sum() == (ref["lesion_id"] == "").sum()
    with_test = read_public("isic2019", root, out_dir=out, include_unlabeled_test="true")
    extra = with_test.table.iloc[len(manifest) :]
    assert len(extra) == 5 and set(extra["split"]) == {"test"} and extra["label"].isna().all()
    pd.testing.assert_frame_equal(with_test.table.iloc[: len(manifest)], manifest.table, check_dtype=False)


def test_isic2020_binary_and_diagnosis_labels_patient_groups(layouts) -> None:
    root, ref, manifest, out = layouts("isic2020")
    assert manifest.classes == ("benign", "malignant")
    assert len(manifest) == len(ref)
    assert label_names(manifest) == ref["benign_malignant"].tolist()
    assert manifest.table["patient_id"].tolist() == ref["patient_id"].tolist()
    assert manifest.table["split"].tolist() == list(grouped_splits(ref["target"], ref["patient_id"], seed=0))
    table = manifest.table.set_index("image_name")
    assert label_names(manifest)[ref.index[ref["image_name"] == "ISIC_0149568"][0]] == "malignant"
    assert (
        table.at["ISIC_0149568", "patient_id"] == "IP_0962375"
        and table.at["ISIC_0149568", "age_approx"] == 55
    )
    assert table.at["ISIC_0149568", "image"] == "ISIC_2020_Training_JPEG/train/ISIC_0149568.jpg"
    by_diagnosis = read_public("isic2020", root, out_dir=out, label="diagnosis")
    known = ref[ref["diagnosis"] != "unknown"].reset_index(drop=True)
    assert len(by_diagnosis) == len(known) and "lentigo NOS" in by_diagnosis.classes
    assert label_names(by_diagnosis) == known["diagnosis"].tolist()
    same = manifest.table.set_index("image")["split"]
    assert (by_diagnosis.table.set_index("image")["split"] == same[by_diagnosis.table["image"]]).all()
    with pytest.raises(ConfigError, match="label='target'"):
        read_public("isic2020", root, out_dir=out, label="target")


def test_bcn20000_official_split_made_split_and_names(layouts, tmp_path) -> None:
    _, ref, manifest, _ = layouts("bcn20000")
    assert manifest.classes == BCN_DIAGNOSES
    gold = ref["diagnosis"].replace({"melanoma": "MEL", "nevus": "NV", "seborrheic keratosis": "BKL"})
    assert label_names(manifest) == gold.tolist()
    assert manifest.table["split"].tolist() == ref["split"].tolist()  # the official split
    assert manifest.table["patient_id"].tolist() == ref["lesion_id"].tolist()
    root, ref = make_bcn(tmp_path / "no_split", with_split=False)
    made = read_public("bcn20000", root, out_dir=tmp_path / "out")
    assert made.table["split"].tolist() == list(grouped_splits(gold, ref["lesion_id"], seed=0))
    assert crossing_groups(made.table, "lesion_id") == []
    table = bcn_table()
    table.loc[table.index[-2:], "diagnosis"] = ""  # two rows without a diagnosis
    table.to_csv(root / "bcn_20k_train.csv", index=False)
    write_images(root, [])
    (tmp_path / "out" / SPLITS_FILE).unlink()
    assert len(read_public("bcn20000", root, out_dir=tmp_path / "out")) == len(table) - 2
    kept = read_public("bcn20000", root, out_dir=tmp_path / "out", include_unlabeled=True)
    assert (
        kept.table["label"].isna().sum() == 2
        and kept.table["split"].iloc[-2:].tolist() == table["split"].iloc[-2:].tolist()
    )


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_groups_never_cross_splits_and_the_split_is_reused(layouts, name: str) -> None:
    root, _, manifest, out = layouts(name)
    assert set(manifest.table["split"]) == {"train", "val", "test"} or name == "bcn20000"
    assert crossing_groups(manifest.table, GROUP[name]) == []
    assert crossing_groups(manifest.table, "patient_id") == []
    again = read_public(name, root, out_dir=out, seed=7)  # another seed: the saved split still wins
    assert again.table["split"].tolist() == manifest.table["split"].tolist()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_images_are_listed_or_skipped(tmp_path, caplog, name: str) -> None:
    root, ref = MAKERS[name](tmp_path / "dataset")
    images = sorted(p for p in root.rglob("*.jpg") if "Test" not in str(p))
    gone = {images[0].stem, images[3].stem}
    for stem in gone:
        next(root.rglob(f"{stem}.jpg")).unlink()
    with pytest.raises(ManifestError) as error:
        read_public(name, root, out_dir=tmp_path / "out")
    assert len(error.value.problems) == 2 and "missing=skip" in str(error.value)
    ids = ref[ID[name] if name != "isic2019" else "image"].map(lambda i: Path(i).stem)
    for stem in gone:
        row = int(np.flatnonzero(ids == stem)[0]) + 1
        assert any(p.startswith(f"row {row}:") and stem in p for p in error.value.problems)
    with caplog.at_level(logging.WARNING):
        skipped = read_public(name, root, out_dir=tmp_path / "out", missing="skip")
    assert len(skipped) == len(ref) - 2 and "2 of" in caplog.text
    assert not set(skipped.table["image"].map(lambda p: Path(p).stem)) & gone


def test_missing_folder_metadata_and_bad_options_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match=r"nowhere: HAM10000 folder not found"):
        read_public("ham10000", tmp_path / "nowhere", out_dir=tmp_path / "out")
    for name, expected in (
        ("ham10000", "HAM10000_metadata.csv"),
        ("isic2019", "ISIC_2019_Training_GroundTruth.csv"),
        ("isic2020", "ISIC_2020_Training_GroundTruth.csv"),
        ("bcn20000", "bcn20000_metadata"),
    ):
        with pytest.raises(DataError, match=expected):
            read_public(name, tmp_path, out_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown option"):
        read_public("ham10000", tmp_path, out_dir=tmp_path / "out", lable="dx")
    with pytest.raises(ConfigError, match="missing='maybe'"):
        read_public("ham10000", make_ham(tmp_path / "ham")[0], out_dir=tmp_path / "out", missing="maybe")


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_load_data_returns_the_same_manifest(layouts, tmp_path, name: str) -> None:
    root, _, manifest, out = layouts(name)
    cfg = DataConfig(source=name, name=name, path=str(root), out_dir=str(out))
    loaded = load_data(cfg, tmp_path)
    pd.testing.assert_frame_equal(loaded.table, manifest.table)
    assert (loaded.classes, loaded.root, loaded.source) == (manifest.classes, manifest.root, manifest.source)
    shutil.rmtree(tmp_path, ignore_errors=True)
