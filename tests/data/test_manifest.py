"""Manifest loading and validation: every problem reported at once, with row numbers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from panderm.config import DataConfig, DataSource
from panderm.data.manifest import build_manifest, format_boxes, parse_boxes, read_manifest
from panderm.data.sources import load_data
from panderm.errors import DataError, ManifestError
from tests.data.helpers import small_folder, write_image, write_mask, write_truncated_jpeg

CLASSES = ["nevus", "melanoma"]


def rows_named(error: ManifestError) -> set[int]:
    return {int(m) for p in error.problems for m in re.findall(r"row (\d+)", p)}


def test_clean_manifest_loads_with_class_codes(tmp_path):
    table = small_folder(tmp_path)
    table.to_csv(tmp_path / "manifest.csv", index=False)
    manifest = read_manifest(tmp_path / "manifest.csv", classes=CLASSES)
    assert len(manifest) == 6
    assert manifest.classes == ("nevus", "melanoma")
    assert manifest.table["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert manifest.boxes(0) == [(4.0, 5.0, 20.0, 15.0)]
    assert manifest.image_path(2) == tmp_path / "images" / "img2.png"
    assert manifest.subset("val").table["row"].tolist() == [3, 4]


def test_classes_inferred_sorted_and_parquet_roundtrip(tmp_path):
    table = small_folder(tmp_path)
    table.to_parquet(tmp_path / "m.parquet", index=False)
    manifest = read_manifest(tmp_path / "m.parquet")
    assert manifest.classes == ("melanoma", "nevus")
    manifest.save(tmp_path / "again.csv")
    again = read_manifest(tmp_path / "again.csv", classes=manifest.classes)
    assert again.table["label"].tolist() == manifest.table["label"].tolist()
    assert again.fingerprint() == manifest.fingerprint()


@pytest.mark.parametrize("column", ["label", "binary_label"])
def test_panderm_csv_loads_unchanged(tmp_path, column):
    # PanDerm's probe CSVs: image, split, label (or binary_label), integer labels, sometimes extra columns.
    for i in range(4):
        write_image(tmp_path / "imgs" / f"ISIC_{i:07d}.jpg", seed=i)
    csv = tmp_path / "panderm.csv"
    csv.write_text(
        "image,split,"
        + column
        + ",extra\n"
        + "".join(
            f"imgs/ISIC_{i:07d}.jpg,{['train', 'val', 'test', 'train'][i]},{i % 2},x{i}\n" for i in range(4)
        )
    )
    manifest = read_manifest(csv)
    assert manifest.classes == ("0", "1")
    assert manifest.table["label"].tolist() == [0, 1, 0, 1]
    assert manifest.table["extra"].tolist() == ["x0", "x1", "x2", "x3"]


def test_every_problem_is_reported_with_its_row(tmp_path):
    table = small_folder(tmp_path)
    write_truncated_jpeg(tmp_path / "images" / "broken.jpg")
    (tmp_path / "images" / "notimage.png").write_text("hello")
    extra = pd.DataFrame(
        [  # image, split, label, patient_id, bbox, mask; data rows 7..14
            ("images/missing.png", "train", "nevus", "Q1", None, None),  # 7: missing file
            ("images/img0.png", "train", "nevus", "P0", None, None),  # 8: duplicate of row 1
            ("images/img1.png", "holdout", "nevus", "Q2", None, None),  # 9: unknown split
            ("images/img2.png", "test", "bcc", "Q3", None, None),  # 10: unknown class
            ("../outside.png", "test", "nevus", "Q4", None, None),  # 11: escapes the root
            ("images/notimage.png", "test", "nevus", "Q5", None, None),  # 12: not an image
            ("images/img3.png", "test", "nevus", None, "9,9,3,3", None),  # 13: bad box
            ("images/img4.png", "test", "nevus", None, None, "masks/nope.png"),  # 14: missing mask
        ],
        columns=["image", "split", "label", "patient_id", "bbox", "mask"],
    )
    bad = pd.concat([table, extra], ignore_index=True)
    bad.loc[1, "split"] = "test"  # row 2: patient P0 now in train (row 1) and test (row 2)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "bad.csv", classes=CLASSES)
    error = info.value
    text = str(error)
    assert rows_named(error) >= {1, 2, 7, 8, 9, 10, 11, 12, 13, 14}
    assert "row 7: field 'image'" in text and "file not found" in text
    assert "row 8: field 'image': duplicate of row 1" in text
    assert "row 9: field 'split': unknown split 'holdout'" in text
    assert "row 10: field 'label': 'bcc' is outside the classes" in text
    assert "row 11: field 'image'" in text and "escapes the data root" in text
    assert "row 12: field 'image'" in text and "unreadable image" in text
    assert "row 13: field 'bbox'" in text
    assert "row 14: field 'mask'" in text and "nope.png" in text
    assert "patient 'P0' appears in more than one split: test (rows 2), train (rows 1" in text
    assert str(tmp_path / "bad.csv") in text
    # The truncated JPEG has a valid header: found by the deep check only, named by path.
    truncated = pd.DataFrame([{"image": "images/broken.jpg", "split": "train", "label": 0}])
    build_manifest(truncated, tmp_path)
    with pytest.raises(ManifestError, match=r"row 1: field 'image': .*broken\.jpg: unreadable image"):
        build_manifest(truncated, tmp_path, deep=True)


def test_integer_labels_out_of_range_and_non_integral(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    table = pd.DataFrame({"image": ["0.png", "1.png", "2.png"], "split": "train", "label": [0, 5, 1.5]})
    with pytest.raises(ManifestError) as info:
        build_manifest(table, tmp_path, classes=3)
    assert rows_named(info.value) == {2, 3}
    table = pd.DataFrame({"image": ["0.png", "1.png", "2.png"], "split": "train", "label": [-1, 0, 1]})
    with pytest.raises(ManifestError, match="row 1: field 'label': '-1'"):
        build_manifest(table, tmp_path)


def test_missing_columns_named_with_suggestion(tmp_path):
    table = pd.DataFrame({"img": ["a.png"], "Split": ["train"]})
    with pytest.raises(ManifestError) as info:
        build_manifest(table, tmp_path)
    text = str(info.value)
    assert "missing required column 'image'" in text and "did you mean 'img'" in text
    assert "missing required column 'split'" in text and "did you mean 'Split'" in text


def test_unlabeled_rows_and_split_aliases(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", seed=i)
    table = pd.DataFrame(
        {"image": ["0.png", "1.png"], "split": ["Training", "validation"], "label": ["a", None]}
    )
    manifest = build_manifest(table, tmp_path)
    assert manifest.table["split"].tolist() == ["train", "val"]
    assert manifest.label(0) == 0 and manifest.label(1) is None


def test_allow_outside_root_is_explicit(tmp_path):
    write_image(tmp_path / "outside.png")
    root = tmp_path / "root"
    root.mkdir()
    table = pd.DataFrame({"image": ["../outside.png"], "split": ["train"]})
    with pytest.raises(ManifestError, match="escapes the data root"):
        build_manifest(table, root)
    assert len(build_manifest(table, root, allow_outside_root=True)) == 1


def test_unreadable_manifest_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.csv: manifest file not found"):
        read_manifest(tmp_path / "nothere.csv")
    (tmp_path / "bin.parquet").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match=r"bin\.parquet: cannot be read as a table"):
        read_manifest(tmp_path / "bin.parquet")


def test_box_text_roundtrip():
    assert parse_boxes("1,2,3,4;5,6,7.5,8") == [(1, 2, 3, 4), (5, 6, 7.5, 8)]
    assert parse_boxes("[[1, 2, 3, 4]]") == [(1, 2, 3, 4)]
    assert parse_boxes("") == [] and parse_boxes(float("nan")) == []
    assert format_boxes(parse_boxes("1,2,3,4;5,6,7.5,8")) == "1,2,3,4;5,6,7.50,8"
    with pytest.raises(ValueError, match="4 numbers"):
        parse_boxes("1,2,3")


def test_latin1_manifest_is_named_with_how_to_pass_its_encoding(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", seed=i)
    path = tmp_path / "latin1.csv"
    path.write_bytes("image,split,site\n0.png,train,épaule\n1.png,test,tête\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_manifest(path)
    text = str(info.value)
    assert str(path) in text and "not UTF-8" in text and "data.encoding=latin-1" in text
    assert read_manifest(path, encoding="latin-1").table["site"].tolist() == ["épaule", "tête"]
    cfg = DataConfig(source=DataSource.manifest, path=str(path), encoding="latin-1")
    assert load_data(cfg, tmp_path).table["site"].tolist() == ["épaule", "tête"]
    with pytest.raises(DataError, match="unknown encoding 'latin-9x'"):
        read_manifest(path, encoding="latin-9x")


def test_misspelt_column_is_named_with_the_intended_one(tmp_path):
    write_image(tmp_path / "0.png")
    table = pd.DataFrame({"image": ["0.png"], "split": ["train"], "lable": ["nevus"], "site": ["arm"]})
    with pytest.raises(ManifestError) as info:
        build_manifest(table, tmp_path)
    assert len(info.value.problems) == 1  # `site` is metadata: nothing known resembles it
    assert "column 'lable'" in info.value.problems[0] and "did you mean 'label'" in info.value.problems[0]


def test_parquet_boxes_as_lists_of_floats(tmp_path):
    table = small_folder(tmp_path, n=3)
    table["bbox"] = pd.Series([[4.0, 5.0, 20.0, 15.0], [5.5, 6.0, 7.0, 8.25], None])  # list<double>
    table.to_parquet(tmp_path / "flat.parquet", index=False)
    manifest = read_manifest(tmp_path / "flat.parquet")
    assert [manifest.boxes(i) for i in range(3)] == [[(4, 5, 20, 15)], [(5.5, 6, 7, 8.25)], []]
    manifest.save(tmp_path / "again.csv")  # the list form survives a CSV round trip, losslessly
    assert read_manifest(tmp_path / "again.csv").boxes(1) == [(5.5, 6, 7, 8.25)]
    table["bbox"] = pd.Series([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], [], None])  # list<list<double>>
    table.to_parquet(tmp_path / "nested.parquet", index=False)
    assert read_manifest(tmp_path / "nested.parquet").boxes(0) == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_boxes(np.array([1.0, 2.0, 3.0, 4.0])) == [(1, 2, 3, 4)]
    bad = table.assign(bbox=pd.Series([[1.0, 2.0, 3.0], None, None]))
    with pytest.raises(ManifestError, match=r"row 1: field 'bbox': .*4 numbers"):
        build_manifest(bad, tmp_path)


def test_nan_in_a_float_label_column_is_an_unlabeled_row_named_by_row(tmp_path):
    """Integer codes with a gap (pandas reads them as floats with NaN, as `Manifest.save` writes them): the
    row is unlabeled (pretraining uses it), and `unlabeled_rows` names it for commands that need labels."""
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    table = pd.DataFrame(
        {"image": ["0.png", "1.png", "2.png"], "split": "train", "label": [0.0, 1.0, np.nan]}
    )
    manifest = build_manifest(table, tmp_path)
    assert manifest.table["label"].tolist()[:2] == [0, 1] and pd.isna(manifest.table["label"].iat[2])
    assert manifest.unlabeled_rows() == [3] and manifest.subset(rows=np.array([0, 1])).unlabeled_rows() == []
    unlabeled = table.assign(label=np.nan)  # no labels at all (a pretraining manifest)
    assert not build_manifest(unlabeled, tmp_path).has_labels


def test_deep_check_loads_masks_as_segmentation_does(tmp_path):
    table = small_folder(tmp_path, n=3)
    write_image(tmp_path / "masks" / "img1_mask.png", mode="L", seed=1)  # grey levels: not binary
    write_mask(tmp_path / "masks" / "img2_mask.png", size=(16, 16))  # image is 32x24
    assert len(build_manifest(table, tmp_path)) == 3  # the header check cannot see either
    with pytest.raises(ManifestError) as info:
        build_manifest(table, tmp_path, deep=True)
    assert rows_named(info.value) == {2, 3}
    text = str(info.value)
    assert "row 2: field 'mask'" in text and "mask is not binary" in text
    assert "row 3: field 'mask'" in text and "differs from image size (32, 24)" in text
