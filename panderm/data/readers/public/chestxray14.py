"""NIH ChestX-ray14 (Wang et al., CVPR 2017) in its published layout: a multi-label manifest.

Layout (the NIH release, nothing renamed): ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) with
columns ``Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
OriginalImage[Width, Height], OriginalImagePixelSpacing[x, y]`` (the 2017 file has a trailing empty column);
``Finding Labels`` joins the findings by ``|`` and says ``No Finding`` for none. The official split:
``train_val_list.txt`` and ``test_list.txt`` (one image name a line). Images under ``images/`` or the
archives' ``images_001/images/`` ... ``images_012/images/`` (found anywhere below the folder).
``BBox_List_2017.csv`` (optional) gives boxes for 880 test images; its header is
``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (read by position) and it spells ``Infiltrate`` for the
``Infiltration`` of Data_Entry.

The manifest: `label_set` over the 14 findings in the published order (`CLASSES`; "No Finding" = empty set),
`patient_id`, `follow_up`, `age`, `sex`, `view_position`, `width`, `height`, `pixel_spacing_x/_y`,
modality ``xray``, and for boxed images `bbox` (``x1,y1,x2,y2`` pixels, several joined by ``;``) and
`bbox_labels` (their findings, in the same order, joined by ``|``). Splits: test_list -> test; val is carved
from train_val by patient (`val_fraction`, seeded, stratified by "any finding") and saved to
``out_dir/splits.csv`` so a rerun reuses it; train_val's other rows are train.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from panderm.data.manifest import Manifest, build_manifest, format_boxes
from panderm.data.readers.public.common import (
    attach_images,
    check_options,
    dataset_folder,
    flag,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
)
from panderm.data.readers.public.splits import SPLITS_FILE, crossing_groups, grouped_splits, saved_splits
from panderm.errors import ConfigError, DataError, ManifestError
from panderm.io import write_csv

logger = logging.getLogger(__name__)

CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NO_FINDING = "No Finding"
BBOX_SPELLING = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's name -> Data_Entry's
METADATA = {  # Data_Entry column -> manifest column
    "Image Index": "image_index",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view_position",
    "OriginalImage[Width": "width",
    "Height]": "height",
    "OriginalImagePixelSpacing[x": "pixel_spacing_x",
    "y]": "pixel_spacing_y",
}
OPTIONS = ("val_fraction", "missing", "check_files")
VAL_FRACTION = 0.1


def carve_val(
    table: pd.DataFrame, path: Path, *, group: str, stratum: str, key: str, fraction: float, seed: int
) -> pd.Series:
    """ "train"/"val" for every row of `table` (the official train part of a dataset): whole `group`s in val,
    about `fraction` of the rows, stratified by column `stratum`, seeded; written to `path` (columns `key`,
    `split`) the first time and read back from it (`saved_splits`) ever after."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.options.val_fraction must lie in (0, 1), got {fraction}")
    if not path.is_file():
        # grouped_splits deals a held-out part as "test"; here that part is the val split
        held = grouped_splits(
            table[stratum].tolist(), table[group].tolist(), fractions=(1 - fraction, 0, fraction), seed=seed
        )
        split = np.where(held == "test", "val", "train")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, pd.DataFrame({key: table[key].astype(str), "split": split}))
    return saved_splits(table, path, labels=stratum, group=group, key=key)


def _read_list(folder: Path, name: str) -> set[str]:
    path = metadata_file(folder, [name], "ChestX-ray14")
    assert path is not None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def read_bbox_list(path: Path) -> pd.DataFrame:
    """`BBox_List_2017.csv` as one row per image: `image_index`, `bbox` (``x1,y1,x2,y2;...`` in pixels from
    the published x, y, w, h) and `bbox_labels` (Data_Entry's spelling, ``|``-joined in box order). The header
    has 9 names for 6 fields (``Bbox [x,y,w,h],,,``), so columns are taken by position."""
    raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype={0: str, 1: str})
    raw.columns = ["image_index", "finding", "x", "y", "w", "h"]
    if raw[["x", "y", "w", "h"]].isna().any().any():
        bad = int(raw[["x", "y", "w", "h"]].isna().any(axis=1).idxmax()) + 1
        raise DataError(f"{path}: row {bad}: a box needs 4 numbers x, y, w, h")
    raw["finding"] = raw["finding"].str.strip().replace(BBOX_SPELLING)
    boxes = raw.groupby("image_index", sort=False).apply(
        lambda g: pd.Series(
            {
                "bbox": format_boxes(zip(g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"], strict=True)),
                "bbox_labels": "|".join(g["finding"]),
            }
        ),
        include_groups=False,
    )
    return boxes.reset_index()


def read_chestxray14(
    path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any
) -> Manifest:
    """Manifest of ChestX-ray14 from its folder (see the module docstring for layout and columns).

    Options: ``val_fraction`` (default 0.1: the share of train_val's rows, whole patients, that become val),
    ``missing=skip`` (drop rows whose image is absent, logged; default: an error listing them),
    ``check_files`` (default false: images are found by name; true also opens each one). Raises `DataError`
    for a missing folder/file/column or patients crossing the official split, `ManifestError` naming the row
    for an unknown finding or an absent image, `ConfigError` for bad options.
    """
    check_options(options, OPTIONS, "chestxray14")
    folder = dataset_folder(path, "ChestX-ray14")
    source = metadata_file(folder, ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"], "ChestX-ray14")
    assert source is not None
    table = read_metadata(source)
    table = table.drop(columns=[c for c in table.columns if c == "" or c.startswith("Unnamed:")])
    require_columns(table, ("Image Index", "Finding Labels", "Patient ID"), source)
    table = table.rename(columns=METADATA)
    table["image_index"] = table["image_index"].str.strip()
    findings = table.pop("Finding Labels").fillna("").str.strip()
    # "No Finding" is the empty set; other names are checked here, where the source row is still known
    table["label_set"] = findings.map(lambda s: "|".join(n for n in s.split("|") if n.strip() != NO_FINDING))
    table["modality"] = "xray"
    rows = row_numbers(table)
    problems = [
        f"row {rows[i]}: field 'Finding Labels': {name!r} is not a ChestX-ray14 finding "
        f"(findings: {', '.join(CLASSES)}, or {NO_FINDING!r})"
        for i, cell in table["label_set"].items()
        for name in cell.split("|")
        if name and name not in CLASSES
    ]
    if problems:
        raise ManifestError(str(source), problems)

    test, train_val = _read_list(folder, "test_list.txt"), _read_list(folder, "train_val_list.txt")
    in_test, in_train = table["image_index"].isin(test), table["image_index"].isin(train_val)
    listed = in_test | in_train
    if not listed.all():
        first = table.loc[~listed, "image_index"].iloc[0]
        raise DataError(
            f"{source}: {int((~listed).sum())} image(s) in neither test_list.txt nor train_val_list.txt "
            f"(first: {first}); the official split names every image"
        )
    if (in_test & in_train).any():
        first = table.loc[in_test & in_train, "image_index"].iloc[0]
        raise DataError(f"{folder}: image {first} is in both test_list.txt and train_val_list.txt")
    table["split"] = "test"
    part = table[in_train].assign(any_finding=lambda t: t["label_set"] != "")
    table.loc[in_train, "split"] = carve_val(
        part,
        Path(out_dir) / SPLITS_FILE,
        group="patient_id",
        stratum="any_finding",
        key="image_index",
        fraction=float(options.get("val_fraction", VAL_FRACTION)),
        seed=seed,
    ).to_numpy()
    crossing = crossing_groups(table, "patient_id")
    if crossing:
        raise DataError(f"{folder}: patient(s) {crossing[:5]} cross the official train_val/test split")

    bbox_file = metadata_file(folder, ["BBox_List_2017.csv"], "ChestX-ray14", required=False)
    if bbox_file is not None:
        boxes = read_bbox_list(bbox_file)
        unknown = sorted(set(boxes["image_index"]) - set(table["image_index"]))
        if unknown:
            logger.warning("%s: %d boxed image(s) not in %s, ignored", bbox_file, len(unknown), source.name)
        table = table.merge(boxes, on="image_index", how="left")
    table = attach_images(
        table,
        table["image_index"],
        folder,
        source=source,
        missing=options.get("missing", "error"),
        rows=rows,
        id_field="Image Index",
        extensions=(".png",),
    )
    check = flag(options.get("check_files", False), "check_files")
    return build_manifest(table, folder, classes=CLASSES, source=str(source), check_files=check)
