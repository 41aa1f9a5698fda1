"""Data configs -> manifests: generators, user manifests and real-format readers through one function."""

from __future__ import annotations

import pytest

from panderm.config import DataConfig, DataSource
from panderm.data.sources import SKIPPED_IMAGES, load_data, make_dataset
from panderm.errors import ConfigError
from tests.conftest import shared_path
from tests.data.helpers import small_folder, write_truncated_jpeg


def test_synthetic_sources_generate_into_the_run_folder(tmp_path):
    derm = load_data(DataConfig(n_patients=12, image_size=48), tmp_path)
    assert derm.root == tmp_path / "data" / "synthderm"
    assert derm.classes == ("nevus", "melanoma", "seborrheic_keratosis", "bcc")
    cxr = load_data(
        DataConfig(source=DataSource.synthcxr, name="cxr", n_patients=12, image_size=48), tmp_path
    )
    assert cxr.root == tmp_path / "data" / "cxr" and set(cxr.table["modality"]) == {"xray"}
    assert make_dataset(cxr, DataConfig(), tmp_path)[0]["image"].shape == (48, 48, 3)


def test_user_manifest_source_with_skip_policy(tmp_path):
    table = small_folder(tmp_path)
    write_truncated_jpeg(tmp_path / "images" / "broken.jpg")
    table.loc[len(table)] = {"image": "images/broken.jpg", "split": "test", "label": "nevus"}
    table.to_csv(tmp_path / "m.csv", index=False)
    cfg = DataConfig(
        source=DataSource.manifest, name="mine", path=str(tmp_path / "m.csv"), on_bad_image="skip"
    )
    manifest = load_data(cfg, tmp_path / "run")
    dataset = make_dataset(manifest, cfg, tmp_path / "run")
    assert dataset[6] is None
    assert (tmp_path / "run" / SKIPPED_IMAGES).read_text().count("broken.jpg") == 1


def test_reader_sources_need_a_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path is required for data\.source=isic"):
        load_data(DataConfig(source=DataSource.isic, name="isic"), tmp_path)


@pytest.mark.shared_data
def test_reader_sources_dispatch_to_the_readers(tmp_path):
    ph2 = load_data(DataConfig(source=DataSource.ph2, name="ph2", path=str(shared_path("ph2"))), tmp_path)
    assert len(ph2) == 200 and ph2.classes == ("common_nevus", "atypical_nevus", "melanoma")
    npz = shared_path("breastmnist", "breastmnist.npz")
    breast = load_data(DataConfig(source=DataSource.medmnist, name="breast", path=str(npz)), tmp_path)
    assert breast.table["split"].value_counts().to_dict() == {"train": 546, "test": 156, "val": 78}
    assert (tmp_path / "data" / "breast" / "manifest.csv").is_file()
