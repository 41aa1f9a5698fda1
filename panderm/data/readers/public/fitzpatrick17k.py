"""Fitzpatrick17k (Groh et al., CVPR Workshops 2021) as published at github.com/mattgroh/fitzpatrick17k.

Layout: ``fitzpatrick17k.csv`` (md5hash, fitzpatrick_scale, fitzpatrick_centaur, label, nine_partition_label,
three_partition_label, qc, url, url_alphanum) and the images the usual download scripts save as
``<md5hash>.jpg``, in the folder or any subfolder. The atlases' URLs die, so most copies lack some images:
``missing=skip`` drops those rows with a logged count. ``fitzpatrick_scale`` (and ``_centaur``) are 1-6 with
``-1`` for unknown. No patient id and no official split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.data.manifest import Manifest
from panderm.data.readers.public.common import (
    check_options,
    choice,
    dataset_folder,
    metadata_file,
    read_metadata,
    require_columns,
    row_numbers,
    split_attach_build,
)
from panderm.errors import ManifestError

# the 114 conditions of the `label` column, spelt exactly as in fitzpatrick17k.csv
CONDITIONS = (
    "acanthosis nigricans", "acne", "acne vulgaris",
    "acquired autoimmune bullous diseaseherpes gestationis", "acrodermatitis enteropathica",
    "actinic keratosis", "allergic contact dermatitis", "aplasia cutis", "basal cell carcinoma",
    "basal cell carcinoma morpheiform", "becker nevus", "behcets disease", "calcinosis cutis", "cheilitis",
    "congenital nevus", "dariers disease", "dermatofibroma", "dermatomyositis",
    "disseminated actinic porokeratosis", "drug eruption", "drug induced pigmentary changes",
    "dyshidrotic eczema", "eczema", "ehlers danlos syndrome", "epidermal nevus", "epidermolysis bullosa",
    "erythema annulare centrifigum", "erythema elevatum diutinum", "erythema multiforme",
    "erythema nodosum", "factitial dermatitis", "fixed eruptions", "folliculitis", "fordyce spots",
    "granuloma annulare", "granuloma pyogenic", "hailey hailey disease", "halo nevus", "hidradenitis",
    "ichthyosis vulgaris", "incontinentia pigmenti", "juvenile xanthogranuloma", "kaposi sarcoma", "keloid",
    "keratosis pilaris", "langerhans cell histiocytosis", "lentigo maligna", "lichen amyloidosis",
    "lichen planus", "lichen simplex", "livedo reticularis", "lupus erythematosus", "lupus subacute",
    "lyme disease", "lymphangioma", "malignant melanoma", "melanoma", "milia", "mucinosis", "mucous cyst",
    "mycosis fungoides", "myiasis", "naevus comedonicus", "necrobiosis lipoidica", "nematode infection",
    "neurodermatitis", "neurofibromatosis", "neurotic excoriations", "neutrophilic dermatoses",
    "nevocytic nevus", "nevus sebaceous of jadassohn", "papilomatosis confluentes and reticulate",
    "paronychia", "pediculosis lids", "perioral dermatitis", "photodermatoses", "pilar cyst",
    "pilomatricoma", "pityriasis lichenoides chronica", "pityriasis rosea", "pityriasis rubra pilaris",
    "porokeratosis actinic", "porokeratosis of mibelli", "porphyria", "port wine stain",
    "prurigo nodularis", "psoriasis", "pustular psoriasis", "pyogenic granuloma", "rhinophyma", "rosacea",
    "sarcoidosis", "scabies", "scleroderma", "scleromyxedema", "seborrheic dermatitis",
    "seborrheic keratosis", "solid cystic basal cell carcinoma", "squamous cell carcinoma", "stasis edema",
    "stevens johnson syndrome", "striae", "sun damaged skin", "superficial spreading melanoma ssm",
    "syringoma", "telangiectases", "tick bite", "tuberous sclerosis", "tungiasis", "urticaria",
    "urticaria pigmentosa", "vitiligo", "xanthomas", "xeroderma pigmentosum",
)  # fmt: skip
NINE_PARTITIONS = (
    "benign dermal", "benign epidermal", "benign melanocyte", "genodermatoses", "inflammatory",
    "malignant cutaneous lymphoma", "malignant dermal", "malignant epidermal", "malignant melanoma",
)  # fmt: skip
THREE_PARTITIONS = ("benign", "malignant", "non-neoplastic")
# label option -> (column of fitzpatrick17k.csv, classes); the csv's own `label` column is renamed
# `condition` in the manifest, whose `label` is the chosen task's class
LABELS = {
    "three_partition_label": ("three_partition_label", THREE_PARTITIONS),
    "nine_partition_label": ("nine_partition_label", NINE_PARTITIONS),
    "label": ("condition", CONDITIONS),
}
SCALES = ("fitzpatrick_scale", "fitzpatrick_centaur")
OPTIONS = ("label", "missing")


def read_fitzpatrick17k(
    path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any
) -> Manifest:
    """Manifest of Fitzpatrick17k from its folder. Option ``label``: ``three_partition_label`` (default),
    ``nine_partition_label`` or ``label`` (the 114 `CONDITIONS`, kept in the manifest as column
    `condition`). `fitzpatrick` is ``fitzpatrick_scale`` as an integer 1-6, NA where it is -1 (unknown);
    modality ``clinical``. The split is image-level, stratified by condition (so by both partitions too),
    seeded by `seed`, made over every metadata row, saved to ``out_dir/splits.csv`` and reused. Option
    ``missing=skip`` drops rows whose image is absent (logged). Raises `DataError` for a missing folder or
    metadata file, `ManifestError` for bad cells or absent images, `ConfigError` for bad options.
    """
    check_options(options, OPTIONS, "fitzpatrick17k")
    label = str(options.get("label", "three_partition_label"))
    choice(label, LABELS, "label", "fitzpatrick17k")
    folder = dataset_folder(path, "Fitzpatrick17k")
    source = metadata_file(folder, ["fitzpatrick17k.csv"], "Fitzpatrick17k")
    assert source is not None
    table = read_metadata(source)
    require_columns(table, ("md5hash", "fitzpatrick_scale", "label", *LABELS), source)
    table = table.rename(columns={"label": "condition"})
    rows = row_numbers(table)
    problems = []
    for column in [c for c in SCALES if c in table]:
        scale = pd.to_numeric(table[column], errors="coerce")
        bad = ~scale.isin([-1, 1, 2, 3, 4, 5, 6])
        problems += [
            f"row {rows[i]}: field {column!r}: {table.at[i, column]!r} is not 1-6 or -1 (unknown)"
            for i in table.index[bad]
        ]
        table[column] = scale
    if problems:
        raise ManifestError(str(source), problems)
    table["fitzpatrick"] = table["fitzpatrick_scale"].where(table["fitzpatrick_scale"] > 0).astype("Int64")
    column, classes = LABELS[label]
    table["label"] = table[column]
    table["modality"] = "clinical"
    return split_attach_build(
        table,
        folder=folder,
        source=source,
        out_dir=out_dir,
        key="md5hash",
        strata="condition",
        group="md5hash",
        classes=classes,
        seed=seed,
        missing=options.get("missing", "error"),
        rows=rows,
    )
