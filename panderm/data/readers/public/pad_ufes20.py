"""PAD-UFES-20 (Pacheco et al., Data in Brief 2020) as published on Mendeley Data (doi:10.17632/zr7vgbcyr2).

Layout: ``metadata.csv`` and the smartphone images named by its ``img_id`` (``PAT_46_881_939.png``), which the
release splits over ``images/imgs_part_1`` .. ``imgs_part_3``; any subfolder is accepted. Columns as
published: patient_id, lesion_id, smoke, drink, background_father, background_mother, age, pesticide, gender,
skin_cancer_history, cancer_history, has_piped_water, has_sewage_system, fitspatrick (sic), region,
diameter_1, diameter_2, diagnostic (ACK, BCC, MEL, NEV, SCC, SEK; Bowen's disease is filed under SCC), itch,
grew, hurt, changed, bleed, elevation, img_id, biopsed. Clinical cells keep their published spelling
(``True``/``False``/``UNK``, empty = missing); age, fitspatrick and the diameters become numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest
from panderm.data.readers.public.common import (
    check_options,
    dataset_folder,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
    split_attach_build,
)
from panderm.errors import ManifestError

CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
NUMERIC = ("age", "fitspatrick", "diameter_1", "diameter_2")
REQUIRED = ("patient_id", "lesion_id", "diagnostic", "img_id", "fitspatrick")
OPTIONS = ("missing",)


def read_pad_ufes20(
    path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any
) -> Manifest:
    """Manifest of PAD-UFES-20 from its folder: label = `diagnostic` (`CLASSES`), modality ``clinical``,
    `patient_id` as published, a patient-grouped split stratified by diagnosis (seeded by `seed`, saved to
    ``out_dir/splits.csv`` and reused). Every clinical column is kept; `fitspatrick` stays as published and
    `fitzpatrick` holds it as an integer 1-6 (NA when empty). Option ``missing=skip`` drops rows whose image
    is absent (logged) instead of raising `ManifestError`. Raises `DataError` for a missing folder or
    metadata file, `ManifestError` for bad rows (unknown diagnosis, non-numeric cells, absent images).
    """
    check_options(options, OPTIONS, "pad_ufes20")
    folder = dataset_folder(path, "PAD-UFES-20")
    source = metadata_file(folder, ["metadata.csv"], "PAD-UFES-20")
    assert source is not None
    table = read_metadata(source)
    require_columns(table, REQUIRED, source)
    rows = row_numbers(table)
    problems = []
    for column in NUMERIC:
        if column in table:
            numbers = pd.to_numeric(table[column], errors="coerce")
            bad = numbers.isna() & table[column].notna()
            problems += [
                f"row {rows[i]}: field {column!r}: {table.at[i, column]!r} is not a number"
                for i in table.index[bad]
            ]
            table[column] = numbers
    fitz = table["fitspatrick"]
    bad_fitz = fitz.notna() & ~fitz.isin(range(1, 7))
    problems += [f"row {rows[i]}: field 'fitspatrick': {fitz[i]!r} is not 1-6" for i in table.index[bad_fitz]]
    if problems:
        raise ManifestError(str(source), problems)
    table["fitzpatrick"] = fitz.where(~bad_fitz).astype("Int64")
    table["label"] = table["diagnostic"]
    table["modality"] = "clinical"
    return split_attach_build(
        table,
        folder=folder,
        source=source,
        out_dir=out_dir,
        key="img_id",
        strata="diagnostic",
        group="patient_id",
        classes=CLASSES,
        seed=seed,
        missing=options.get("missing", "error"),
        rows=rows,
    )
