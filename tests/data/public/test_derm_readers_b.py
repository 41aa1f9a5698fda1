"""Readers of PAD-UFES-20, Derm7pt, DDI and Fitzpatrick17k on their published layouts.

Derm7pt, DDI and Fitzpatrick17k are read from the real metadata files in ../shared/data/layouts (never
copied), with tiny generated images written under the names those files list. PAD-UFES-20's metadata is not
there: its fixture is written here from the dataset's published description (Pacheco et al., Data in Brief
2020; column names and value spellings as released: ``True``/``False``/``UNK``, ``fitspatrick`` 1.0-6.0,
``PAT_<patient>_<lesion>_<n>.png``). Expected numbers come from pandas on the raw files or by hand.
"""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from panderm.config import DataConfig, DataSource
from panderm.data.readers.public import read_public
from panderm.data.readers.public.splits import SPLITS_FILE, crossing_groups
from panderm.data.sources import load_data
from panderm.errors import ConfigError, DataError, ManifestError
from tests.conftest import REPO, shared_path

TINY = Image.fromarray(np.full((4, 4, 3), 128, np.uint8))


def write_images(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        TINY.save(path)


def labels(manifest) -> pd.Series:
    """Class names of the manifest's rows."""
    return manifest.table["label"].map(lambda code: manifest.classes[code])


# ------------------------------------------------------------------------------------------------ Derm7pt


@pytest.fixture(scope="module")
def derm7pt(tmp_path_factory) -> Path:
    """The release layout: meta/ copied from the real files, images under names differing in case from
    meta.csv's (folders upper case on disk, every third file name upper case) as in the release."""
    meta_src = shared_path("layouts", "derm7pt", "meta")
    root = tmp_path_factory.mktemp("derm7pt")
    shutil.copytree(meta_src, root / "meta")
    meta = pd.read_csv(meta_src / "meta.csv")
    on_disk = {}
    for i, written in enumerate(pd.concat([meta["clinic"], meta["derm"]])):
        folder, name = written.split("/")
        on_disk.setdefault(written.lower(), f"{folder.upper()}/{name.upper() if i % 3 == 0 else name}")
    write_images(root / "images", list(on_disk.values()))
    return root


@pytest.fixture(scope="module")
def derm7pt_meta() -> pd.DataFrame:
    return pd.read_csv(shared_path("layouts", "derm7pt", "meta", "meta.csv"))


@pytest.fixture(scope="module")
def derm7pt_some(tmp_path_factory, derm7pt_meta) -> tuple[Path, pd.DataFrame]:
    """The same layout with the images of some cases only (read with missing=skip): every tenth case, the
    9 whose clinical image is the dermoscopic one (see notes) and case 816 (FCl/ for folder FCL)."""
    meta = derm7pt_meta
    some = meta[(meta.index % 10 == 0) | meta["notes"].notna() | (meta["case_num"] == 816)]
    root = tmp_path_factory.mktemp("derm7pt_some")
    shutil.copytree(shared_path("layouts", "derm7pt", "meta"), root / "meta")
    written = pd.concat([some["clinic"], some["derm"]]).drop_duplicates()
    write_images(root / "images", [f"{w.split('/')[0].upper()}/{w.split('/')[1]}" for w in written])
    return root, some


def index_split(n: int) -> pd.Series:
    """The official split, read independently of the reader."""
    split = pd.Series(index=range(n), dtype=object)
    for name, file in (("train", "train"), ("val", "valid"), ("test", "test")):
        split[pd.read_csv(shared_path("layouts", "derm7pt", "meta", f"{file}_indexes.csv"))["indexes"]] = name
    return split


@pytest.mark.shared_data
def test_derm7pt_diagnosis_in_the_official_split(derm7pt, derm7pt_meta, tmp_path):
    manifest = read_public("derm7pt", derm7pt, out_dir=tmp_path)
    table = manifest.table
    assert manifest.classes == ("BCC", "NEV", "MEL", "MISC", "SK")
    assert manifest.source == str(derm7pt / "meta" / "meta.csv")
    assert len(table) == 1011 and set(table["modality"]) == {"dermoscopy"}
    assert table["split"].value_counts().to_dict() == {"train": 413, "test": 395, "val": 203}
    # by hand from meta.csv's diagnosis counts: MEL = 102+64+53+28+4+1, NEV = 399+79+33+28+17+13+6,
    # MISC = vascular lesion 29 + dermatofibroma 20 + lentigo 24 + melanosis 16 + miscellaneous 8
    assert labels(manifest).value_counts().to_dict() == {
        "NEV": 575,
        "MEL": 252,
        "MISC": 97,
        "SK": 45,
        "BCC": 42,
    }
    expected = index_split(len(derm7pt_meta))
    assert (table["split"].to_numpy() == expected[table["case_num"].astype(int) - 1].to_numpy()).all()
    first = table.iloc[0]  # case 1: basal cell carcinoma, derm NEL/Nel026.jpg, on disk NEL/NEL026.JPG
    assert first["case_num"] == "1" and labels(manifest)[0] == "BCC"
    assert first["image"] == "images/NEL/NEL026.JPG" and first["vascular_structures"] == "arborizing"
    assert first["diagnosis"] == "basal cell carcinoma" and first["lesion_id"] == "case_1"
    row = table[table["case_num"] == "816"].iloc[0]  # meta.csv writes FCl/Fcl068.jpg, the folder is FCL
    assert row["image"].lower() == "images/fcl/fcl068.jpg" and row["image"].startswith("images/FCL/")
    for column in ("pigment_network", "streaks", "seven_point_score", "management", "notes", "case_id"):
        assert column in table


@pytest.mark.shared_data
def test_derm7pt_both_keeps_each_case_in_one_split(derm7pt, tmp_path):
    manifest = read_public("derm7pt", derm7pt, out_dir=tmp_path, image_type="both")
    table = manifest.table
    # 9 cases name their dermoscopic image as the clinical one: they get one row
    assert len(table) == 2 * 1011 - 9
    assert table["modality"].value_counts().to_dict() == {"dermoscopy": 1011, "clinical": 1002}
    assert crossing_groups(table, "lesion_id") == []
    per_case = table.groupby("lesion_id")["split"].first().value_counts().to_dict()
    assert per_case == {"train": 413, "test": 395, "val": 203}


@pytest.mark.shared_data
def test_derm7pt_clinical_images(derm7pt_some, tmp_path):
    root, some = derm7pt_some
    clinic = read_public("derm7pt", root, out_dir=tmp_path, image_type="clinic", missing="skip").table
    assert len(clinic) == len(some) and (clinic["modality"] == "dermoscopy").sum() == 9
    assert set(clinic.loc[clinic["modality"] == "dermoscopy", "notes"].notna()) == {True}
    assert clinic["image"].str.lower().tolist() == ("images/" + some["clinic"].str.lower()).tolist()


@pytest.mark.shared_data
def test_derm7pt_criteria_labels(derm7pt_some, tmp_path):
    root, some = derm7pt_some
    vascular = read_public("derm7pt", root, out_dir=tmp_path, label="vascular_structures", missing="skip")
    assert vascular.classes == ("absent", "regular", "irregular")
    regular = {"arborizing", "comma", "hairpin", "within regression", "wreath"}  # the paper's grouping
    expected = some["vascular_structures"].map(
        lambda v: "absent" if v == "absent" else "regular" if v in regular else "irregular"
    )
    assert labels(vascular).tolist() == expected.tolist()
    raw = read_public(
        "derm7pt", root, out_dir=tmp_path, label="vascular_structures", grouped="false", missing="skip"
    )
    assert len(raw.classes) == 8 and labels(raw).tolist() == some["vascular_structures"].tolist()
    with pytest.raises(ConfigError, match="label='colour'"):
        read_public("derm7pt", root, out_dir=tmp_path, label="colour")


@pytest.mark.shared_data
def test_derm7pt_missing_image_names_the_case(derm7pt_some, tmp_path):
    root, some = derm7pt_some
    with pytest.raises(ManifestError) as error:
        read_public("derm7pt", root, out_dir=tmp_path)
    assert len(error.value.problems) == 1011 - len(some)
    assert error.value.problems[0].startswith("row 2: field 'derm': case 2: no file images/NEL/Nel028.jpg")
    assert len(read_public("derm7pt", root, out_dir=tmp_path, missing="skip")) == len(some)


# ------------------------------------------------------------------------------------------------ DDI


@pytest.fixture(scope="module")
def ddi(tmp_path_factory) -> Path:
    """The real ddi_metadata.csv with an image for each of its 653 rows (the release keeps them beside it)."""
    root = tmp_path_factory.mktemp("ddi")
    source = shared_path("layouts", "ddi", "ddi_metadata.csv")
    shutil.copy(source, root / "ddi_metadata.csv")
    write_images(root, pd.read_csv(source, dtype=str)["DDI_file"].tolist())
    return root


@pytest.fixture(scope="module")
def ddi_out(tmp_path_factory) -> Path:
    """One run folder for the DDI tests, so that the split is made once and then reused."""
    return tmp_path_factory.mktemp("ddi_out")


@pytest.mark.shared_data
def test_ddi_malignancy_skin_tone_and_saved_split(ddi, ddi_out, tmp_path):
    raw = pd.read_csv(ddi / "ddi_metadata.csv", dtype=str)
    manifest = read_public("ddi", ddi, out_dir=ddi_out, seed=0)
    table = manifest.table
    assert manifest.classes == ("benign", "malignant") and len(table) == 653
    assert labels(manifest).value_counts().to_dict() == {"benign": 483, "malignant": 170}  # SOURCE.md
    assert table["skin_tone"].value_counts().to_dict() == {"34": 241, "12": 208, "56": 204}
    assert table["fitzpatrick"].value_counts().to_dict() == {"III-IV": 241, "I-II": 208, "V-VI": 204}
    first = table.iloc[0]  # 0,1,000001.png,56,TRUE,melanoma-in-situ
    assert (first["image"], first["DDI_ID"], first["fitzpatrick"]) == ("000001.png", "1", "V-VI")
    assert labels(manifest)[0] == "malignant" and first["disease"] == "melanoma-in-situ"
    assert not any(c.startswith("Unnamed") for c in table.columns)
    assert crossing_groups(table, "DDI_file") == []
    shares = table["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["test"] - 0.2) < 0.03
    # stratified by malignancy x skin tone: each stratum's test share is near 0.2
    strata = table.groupby([table["malignant"], table["skin_tone"]])["split"].apply(
        lambda s: (s == "test").mean()
    )
    assert strata.between(0.1, 0.3).all()
    saved = pd.read_csv(ddi_out / SPLITS_FILE, dtype=str)
    assert dict(zip(saved["DDI_file"], saved["split"], strict=True)) == dict(
        zip(table["DDI_file"], table["split"], strict=True)
    )
    again = read_public("ddi", ddi, out_dir=ddi_out, seed=5, label="disease")  # reuses the saved split
    assert (again.table["split"].to_numpy() == table["split"].to_numpy()).all()
    assert len(again.classes) == 77
    assert labels(again).value_counts().to_dict() == raw["disease"].value_counts().to_dict()
    other = read_public("ddi", ddi, out_dir=tmp_path / "other", seed=5)
    assert (other.table["split"].to_numpy() != table["split"].to_numpy()).any()


@pytest.mark.shared_data
def test_ddi_missing_images_error_or_skip(ddi, ddi_out, caplog):
    image = ddi / "000002.png"
    image.rename(ddi / "000002.bak")
    try:
        with pytest.raises(ManifestError) as error:
            read_public("ddi", ddi, out_dir=ddi_out)
        assert error.value.source == str(ddi / "ddi_metadata.csv")
        assert error.value.problems[0].startswith("row 2: field 'DDI_file': no image file for '000002.png'")
        with caplog.at_level(logging.WARNING):
            assert len(read_public("ddi", ddi, out_dir=ddi_out, missing="skip")) == 652
        assert "1 of 653 images" in caplog.text
    finally:
        (ddi / "000002.bak").rename(image)


@pytest.mark.shared_data
def test_ddi_through_load_data(ddi, ddi_out, tmp_path):
    cfg = DataConfig(source=DataSource.ddi, name="ddi", path=str(ddi), out_dir=str(ddi_out))
    manifest = load_data(cfg, tmp_path)
    assert len(manifest) == 653 and (ddi_out / SPLITS_FILE).is_file()


# -------------------------------------------------------------------------------------------- Fitzpatrick17k


@pytest.fixture(scope="module")
def fitzpatrick(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The real csv (first 3000 rows) with images for a subset only, as after a download with dead URLs:
    every fifth row plus every row whose Fitzpatrick type is unknown (-1), under images/."""
    root = tmp_path_factory.mktemp("fitzpatrick17k")
    source = shared_path("layouts", "fitzpatrick17k", "fitzpatrick17k.csv")
    shutil.copy(source, root / "fitzpatrick17k.csv")
    raw = pd.read_csv(source, dtype={"md5hash": str})
    present = raw[(raw.index % 5 == 0) | (raw["fitzpatrick_scale"] == -1)]
    write_images(root / "images", [f"{h}.jpg" for h in present["md5hash"]])
    return root, present


@pytest.fixture(scope="module")
def fitz_out(tmp_path_factory) -> Path:
    """One run folder for the Fitzpatrick17k tests, so that the split of 3000 rows is made once."""
    return tmp_path_factory.mktemp("fitz_out")


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_fitzpatrick17k_labels_scale_and_skipped_images(fitzpatrick, fitz_out, caplog):
    root, present = fitzpatrick
    with caplog.at_level(logging.WARNING):
        manifest = read_public("fitzpatrick17k", root, out_dir=fitz_out, missing="skip")
    assert f"{3000 - len(present)} of 3000 images" in caplog.text
    table = manifest.table
    assert len(table) == len(present) and manifest.classes == ("benign", "malignant", "non-neoplastic")
    counts = present["three_partition_label"].value_counts().to_dict()
    assert labels(manifest).value_counts().to_dict() == counts
    assert table["fitzpatrick"].isna().sum() == (present["fitzpatrick_scale"] == -1).sum() > 0
    known = present["fitzpatrick_scale"] > 0
    assert (
        table["fitzpatrick"].dropna().to_numpy() == present.loc[known, "fitzpatrick_scale"].to_numpy()
    ).all()
    first = table.iloc[0]  # row 1 of the csv: drug induced pigmentary changes, types 3/3, non-neoplastic
    assert first["image"] == "images/5e82a45bc5d78bd24ae9202d194423f8.jpg"
    assert first["condition"] == "drug induced pigmentary changes" and first["fitzpatrick"] == 3
    assert first["nine_partition_label"] == "inflammatory" and labels(manifest)[0] == "non-neoplastic"
    assert crossing_groups(table, "md5hash") == []
    # the split covers all 3000 metadata rows, so images downloaded later keep theirs
    assert len(pd.read_csv(fitz_out / SPLITS_FILE)) == 3000
    nine = read_public("fitzpatrick17k", root, out_dir=fitz_out, missing="skip", label="nine_partition_label")
    assert len(nine.classes) == 9
    conditions = read_public("fitzpatrick17k", root, out_dir=fitz_out, missing="skip", label="label")
    assert len(conditions.classes) == 114 > present["label"].nunique()
    assert labels(conditions).value_counts().to_dict() == present["label"].value_counts().to_dict()
    assert (conditions.table["split"].to_numpy() == table["split"].to_numpy()).all()


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_fitzpatrick17k_missing_images_are_listed(fitzpatrick, fitz_out):
    root, present = fitzpatrick
    with pytest.raises(ManifestError) as error:
        read_public("fitzpatrick17k", root, out_dir=fitz_out)
    assert len(error.value.problems) == 3000 - len(present)
    assert error.value.problems[0].startswith("row 2: field 'md5hash': no image file for 'fa2911a9")
    with pytest.raises(ConfigError, match="label='four'"):
        read_public("fitzpatrick17k", root, out_dir=fitz_out, label="four")


# ------------------------------------------------------------------------------------------------ PAD-UFES-20

PAD_COLUMNS = [
    "patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
    "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
    "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed",
    "bleed", "elevation", "img_id", "biopsed",
]  # fmt: skip
PAD_CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")


def answer(rng: np.random.Generator, choices: list[str]) -> str:
    return str(rng.choice(choices))


@pytest.fixture(scope="module")
def pad_ufes20(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """metadata.csv in the published columns and spellings (written from the dataset's description, not
    from the real file, which is not in ../shared/data): 40 patients, 1-3 lesions each, 1-2 images per
    lesion; a third of the patients without the clinical questionnaire (empty cells), as in the release;
    images spread over images/imgs_part_1..3."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("pad_ufes20")
    rows, lesion, image = [], 0, 0
    for patient in range(40):
        questionnaire = patient % 3 != 0
        for _ in range(rng.integers(1, 4)):
            lesion += 1
            diagnostic = PAD_CLASSES[(patient + lesion) % 6]
            for _ in range(rng.integers(1, 3)):
                image += 1
                boolean = partial(answer, rng, ["True", "False"] if questionnaire else [""])
                symptom = partial(answer, rng, ["True", "False", "UNK"])
                rows.append({
                    "patient_id": f"PAT_{patient}", "lesion_id": str(lesion), "smoke": boolean(),
                    "drink": boolean(), "background_father": "POMERANIA" if questionnaire else "",
                    "background_mother": "GERMANY" if questionnaire else "", "age": str(rng.integers(6, 95)),
                    "pesticide": boolean(),
                    "gender": answer(rng, ["FEMALE", "MALE"] if questionnaire else [""]),
                    "skin_cancer_history": boolean(), "cancer_history": boolean(),
                    "has_piped_water": boolean(), "has_sewage_system": boolean(),
                    "fitspatrick": f"{rng.integers(1, 7)}.0" if questionnaire else "",
                    "region": str(rng.choice(["ARM", "NECK", "FACE", "CHEST", "BACK", "NOSE"])),
                    "diameter_1": f"{rng.integers(2, 20)}.0" if questionnaire else "",
                    "diameter_2": f"{rng.integers(2, 20)}.0" if questionnaire else "",
                    "diagnostic": diagnostic, "itch": symptom(), "grew": symptom(), "hurt": symptom(),
                    "changed": symptom(), "bleed": symptom(), "elevation": symptom(),
                    "img_id": f"PAT_{patient}_{lesion}_{image}.png",
                    "biopsed": str(diagnostic in ("BCC", "MEL", "SCC")),
                })  # fmt: skip
    table = pd.DataFrame(rows, columns=PAD_COLUMNS)
    table.to_csv(root / "metadata.csv", index=False)
    for i, name in enumerate(table["img_id"]):
        write_images(root / "images" / f"imgs_part_{i % 3 + 1}", [name])
    return root, table


def test_pad_ufes20_patient_grouped_split_and_clinical_columns(pad_ufes20, tmp_path):
    root, raw = pad_ufes20
    manifest = read_public("pad_ufes20", root, out_dir=tmp_path, seed=1)
    table = manifest.table
    assert manifest.classes == PAD_CLASSES and manifest.source == str(root / "metadata.csv")
    assert len(table) == len(raw) and set(table["modality"]) == {"clinical"}
    assert labels(manifest).value_counts().to_dict() == raw["diagnostic"].value_counts().to_dict()
    assert crossing_groups(table, "patient_id") == [] and set(table["split"]) == {"train", "val", "test"}
    assert list(table["img_id"]) == list(raw["img_id"])
    assert table["image"].str.match(r"images/imgs_part_[123]/PAT_\d+_\d+_\d+\.png$").all()
    expected = raw["fitspatrick"].map(lambda v: int(float(v)) if v else pd.NA).astype("Int64")
    assert table["fitzpatrick"].equals(expected.rename("fitzpatrick"))
    assert table["fitspatrick"].isna().sum() == (raw["fitspatrick"] == "").sum() > 0
    assert set(table["itch"].dropna()) <= {"True", "False", "UNK"} and "smoke" in table and "biopsed" in table
    again = read_public("pad_ufes20", root, out_dir=tmp_path, seed=7)
    assert (again.table["split"].to_numpy() == table["split"].to_numpy()).all()


def test_pad_ufes20_missing_image_and_folder_errors(pad_ufes20, tmp_path):
    root, raw = pad_ufes20
    image = root / "images" / "imgs_part_1" / raw["img_id"].iloc[0]
    image.rename(image.with_suffix(".bak"))
    try:
        with pytest.raises(
            ManifestError, match=f"row 1: field 'img_id': no image file for '{raw['img_id'][0]}'"
        ):
            read_public("pad_ufes20", root, out_dir=tmp_path)
        assert len(read_public("pad_ufes20", root, out_dir=tmp_path, missing="skip")) == len(raw) - 1
    finally:
        image.with_suffix(".bak").rename(image)
    with pytest.raises(DataError, match="PAD-UFES-20 folder not found"):
        read_public("pad_ufes20", tmp_path / "nowhere", out_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no PAD-UFES-20 metadata file metadata\.csv"):
        read_public("pad_ufes20", tmp_path / "empty", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown option"):
        read_public("pad_ufes20", root, out_dir=tmp_path, label="cancer")


def test_data_configs_name_their_readers():
    for name in ("pad_ufes20", "derm7pt", "ddi", "fitzpatrick17k"):
        cfg = OmegaConf.load(REPO / "configs" / "data" / f"{name}.yaml")
        assert cfg.source == cfg.name == name and DataSource(name).value == name
        assert OmegaConf.is_missing(cfg, "path")
