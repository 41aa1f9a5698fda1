"""DDI, Diverse Dermatology Images (Daneshjou et al., Sci. Adv. 2022), as distributed by Stanford AIMI.

Layout: ``ddi_metadata.csv`` (columns ``,DDI_ID,DDI_file,skin_tone,malignant,disease``: the first, unnamed
column is a pandas index and is dropped) and the images named by ``DDI_file`` (``000001.png``) in the folder
or any subfolder. ``malignant`` is spelt ``TRUE``/``FALSE``; ``skin_tone`` is a grouped Fitzpatrick code,
12 (I-II), 34 (III-IV) or 56 (V-VI), kept as that code. There is no patient id and no official split.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

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

logger = logging.getLogger(__name__)

MALIGNANT_CLASSES = ("benign", "malignant")
SKIN_TONES = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
# The `disease` names of the 653 rows of the mirror we could check (the release has 656; DDI_ID 8, 54 and
# 55 were absent): a name outside this list is appended after it, with a warning, rather than refused.
DISEASES = (
    "abrasions-ulcerations-and-physical-injuries", "abscess", "acne-cystic", "acquired-digital-fibrokeratoma",
    "acral-melanotic-macule", "acrochordon", "actinic-keratosis", "angioleiomyoma", "angioma",
    "arteriovenous-hemangioma", "atypical-spindle-cell-nevus-of-reed", "basal-cell-carcinoma",
    "basal-cell-carcinoma-nodular", "basal-cell-carcinoma-superficial", "benign-keratosis",
    "blastic-plasmacytoid-dendritic-cell-neoplasm", "blue-nevus", "cellular-neurothekeoma",
    "chondroid-syringoma", "clear-cell-acanthoma", "coccidioidomycosis", "condyloma-accuminatum",
    "dermatofibroma", "dermatomyositis", "dysplastic-nevus", "eccrine-poroma", "eczema-spongiotic-dermatitis",
    "epidermal-cyst", "epidermal-nevus", "fibrous-papule", "folliculitis", "foreign-body-granuloma",
    "glomangioma", "graft-vs-host-disease", "hematoma", "hyperpigmentation", "inverted-follicular-keratosis",
    "kaposi-sarcoma", "keloid", "leukemia-cutis", "lichenoid-keratosis", "lipoma",
    "lymphocytic-infiltrations", "melanocytic-nevi", "melanoma", "melanoma-acral-lentiginous",
    "melanoma-in-situ", "metastatic-carcinoma",
    "molluscum-contagiosum", "morphea", "mycosis-fungoides", "neurofibroma", "neuroma",
    "nevus-lipomatosus-superficialis", "nodular-melanoma-(nm)", "onychomycosis",
    "pigmented-spindle-cell-nevus-of-reed", "prurigo-nodularis", "pyogenic-granuloma",
    "reactive-lymphoid-hyperplasia", "scar", "sebaceous-carcinoma", "seborrheic-keratosis",
    "seborrheic-keratosis-irritated", "solar-lentigo", "squamous-cell-carcinoma",
    "squamous-cell-carcinoma-in-situ", "squamous-cell-carcinoma-keratoacanthoma",
    "subcutaneous-t-cell-lymphoma", "syringocystadenoma-papilliferum", "tinea-pedis", "trichilemmoma",
    "trichofolliculoma", "verruca-vulgaris", "verruciform-xanthoma", "wart", "xanthogranuloma",
)  # fmt: skip
LABELS = ("malignant", "disease")
OPTIONS = ("label", "missing")


def read_ddi(path: str | os.PathLike[str], *, out_dir: Path, seed: int = 0, **options: Any) -> Manifest:
    """Manifest of DDI from its folder. Option ``label``: ``malignant`` (default; classes benign,
    malignant) or ``disease`` (`DISEASES`). `skin_tone` stays the 12/34/56 code and `fitzpatrick` holds
    its grouped range (``I-II``, ``III-IV``, ``V-VI``); modality ``clinical``. The split is image-level,
    stratified by malignancy x skin tone, seeded by `seed`, saved to ``out_dir/splits.csv`` and reused.
    Option ``missing=skip`` drops rows whose image is absent (logged). Raises `DataError` for a missing
    folder or metadata file, `ManifestError` for bad cells or absent images, `ConfigError` for bad options.
    """
    check_options(options, OPTIONS, "ddi")
    label = str(options.get("label", "malignant"))
    choice(label, LABELS, "label", "ddi")
    folder = dataset_folder(path, "DDI")
    source = metadata_file(folder, ["ddi_metadata.csv"], "DDI")
    assert source is not None
    table = read_metadata(source)
    table = table.drop(columns=[c for c in table.columns if c == "" or c.startswith("Unnamed:")])
    require_columns(table, ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"), source)
    rows = row_numbers(table)
    malignant = table["malignant"].str.strip().str.upper().map({"TRUE": True, "FALSE": False})
    tone = table["skin_tone"].str.strip()
    problems = [
        f"row {rows[i]}: field 'malignant': {table.at[i, 'malignant']!r} is not TRUE or FALSE"
        for i in table.index[malignant.isna()]
    ]
    problems += [
        f"row {rows[i]}: field 'skin_tone': {table.at[i, 'skin_tone']!r} is not one of {list(SKIN_TONES)}"
        for i in table.index[~tone.isin(list(SKIN_TONES))]
    ]
    if problems:
        raise ManifestError(str(source), problems)
    table["malignant"] = malignant.astype(bool)
    table["skin_tone"] = tone
    table["fitzpatrick"] = tone.map(SKIN_TONES)
    classes: tuple[str, ...] = MALIGNANT_CLASSES
    if label == "malignant":
        table["label"] = table["malignant"].map({False: "benign", True: "malignant"})
    else:
        table["label"] = table["disease"]
        extra = sorted(set(table["disease"].dropna()) - set(DISEASES))
        if extra:
            logger.warning(
                "%s: disease name(s) not in the known DDI list, added as classes: %s", source, extra
            )
        classes = DISEASES + tuple(extra)
    table["modality"] = "clinical"
    # no patient id: each image is its own group; strata = malignancy x skin tone, whatever the label option
    return split_attach_build(
        table,
        folder=folder,
        source=source,
        out_dir=out_dir,
        key="DDI_file",
        strata=table["malignant"].astype(str) + "/" + tone,
        group="DDI_file",
        classes=classes,
        seed=seed,
        missing=options.get("missing", "error"),
        rows=rows,
    )
