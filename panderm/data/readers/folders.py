"""Readers for folders of photographs with optional lesion masks and label tables (ISIC, PH2, your own).

The images stay where they are: a manifest row points at each file relative to a root, the mask (matched by
file stem + a suffix such as ``_segmentation``) is recorded next to it, and the lesion's bounding box is
derived from the mask. Label tables are joined by image id; an image without a label row and a label row
without an image are both reported, together, in one error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from panderm.data.images import image_size, load_mask, mask_to_box
from panderm.data.manifest import Manifest, build_manifest, format_boxes, read_table
from panderm.errors import ConfigError, DataError, ImageLoadError, ManifestError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_lesion", "_mask")
#: File stems ending like this are never images (ISIC 2017 ships superpixel maps beside its images).
EXCLUDE_SUFFIXES = ("_superpixels",)
#: Columns a label table may set per image, overriding the reader's defaults.
OVERRIDABLE = ("split", "patient_id", "modality")
LIST_LIMIT = 20

Labels = pd.DataFrame | str | os.PathLike[str] | None


def _listing(names: Iterable[object], limit: int = LIST_LIMIT) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def _strip_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    lower = name.lower()
    for ext in extensions:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def relative_to_root(path: Path, root: Path) -> str:
    """`path` relative to `root` in POSIX form; raises `DataError` when it lies outside `root`."""
    absolute, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not absolute.is_relative_to(base):
        raise DataError(f"{absolute} lies outside the data root {base}; choose a root that contains it")
    return absolute.relative_to(base).as_posix()


def read_labels(labels: pd.DataFrame | str | os.PathLike[str], *, id_column: str) -> tuple[pd.DataFrame, str]:
    """A label table (DataFrame, CSV or Parquet path) and a name for messages; ids are read as text.

    Raises `DataError` naming the file when it is missing or unreadable.
    """
    if isinstance(labels, pd.DataFrame):
        return labels.copy(), "<labels table>"
    path = Path(labels)
    if not path.is_file():
        raise DataError(f"{path}: label table not found")
    if path.suffix == ".parquet":
        return read_table(path), str(path)
    try:  # read ids as text so that "001" stays "001"
        return pd.read_csv(path, dtype={id_column: str}), str(path)
    except Exception as exc:  # pandas raises many types; the user needs the file name and the cause
        raise DataError(f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})") from exc


def join_labels(
    table: pd.DataFrame,
    labels: pd.DataFrame | str | os.PathLike[str],
    *,
    key: str = "image_id",
    id_column: str = "image_id",
    label_column: str | None = None,
    patient_column: str | None = None,
) -> pd.DataFrame:
    """Join a label table onto reader rows: `labels[id_column]` matches `table[key]` (many rows per id).

    `label_column` (default ``label`` when present) becomes `label`; `patient_column` becomes `patient_id`;
    other columns are kept as metadata, and ``split``/``patient_id``/``modality`` in the label table override
    the reader's values. Ids may carry an image extension (``ISIC_0000000.jpg``). Raises `DataError` naming
    the table when a column is missing, and `ManifestError` listing, together, every row without a label
    row, every label row without a row, and duplicate label ids.
    """
    frame, source = read_labels(labels, id_column=id_column)
    for column, option in (
        (id_column, "id_column"),
        (label_column, "label_column"),
        (patient_column, "patient_column"),
    ):
        if column is not None and column not in frame:
            raise DataError(f"{source}: no column {column!r} (columns: {list(frame.columns)}); set {option}=")
    if label_column is None and "label" in frame:
        label_column = "label"
    ids = frame[id_column].map(lambda v: _strip_extension(str(v).strip()) if pd.notna(v) else "")
    problems = []
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        problems.append(f"{len(duplicated)} id(s) appear in more than one label row: {_listing(duplicated)}")
    if (ids == "").any():
        rows = [i + 1 for i in np.flatnonzero((ids == "").to_numpy())]
        problems.append(f"label rows {_listing(rows)}: field {id_column!r} is empty")
    unkeyed = int(table[key].isna().sum())
    if unkeyed:
        problems.append(f"{unkeyed} row(s) have no {key!r} to join the labels on")
    wanted = set(table[key].dropna().astype(str))
    known = set(ids) - {""}
    without_label = sorted(wanted - known)
    without_image = sorted(known - wanted)
    if without_label:
        problems.append(f"{len(without_label)} image(s) without a label row: {_listing(without_label)}")
    if without_image:
        problems.append(f"{len(without_image)} label row(s) without an image: {_listing(without_image)}")
    if problems:
        raise ManifestError(source, problems)

    renames = {}
    if label_column is not None:
        renames[label_column] = "label"
    if patient_column is not None:
        renames[patient_column] = "patient_id"
    # a column the renaming targets (say `label` when label_column="diagnosis") would otherwise appear twice
    frame = frame.drop(columns=[c for c in renames.values() if c in frame and c not in renames])
    frame = frame.rename(columns=renames)
    frame[key] = ids.to_numpy()
    if id_column != key and id_column in frame:
        frame = frame.drop(columns=id_column)
    for column in list(frame.columns):
        if column == key or column not in table:
            continue
        if column in OVERRIDABLE or column == "label":
            table = table.drop(columns=column)
        else:  # the reader's own value (a path, a box, ...) wins over a same-named label column
            frame = frame.drop(columns=column)
    return table.merge(frame, on=key, how="left", validate="many_to_one")


def _image_files(
    folder: Path, extensions: Sequence[str], skip_suffixes: Sequence[str]
) -> tuple[dict[str, Path], list[str]]:
    """Image files of one folder (not recursive) by stem, sorted, plus problems (two files, one stem)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    extensions = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if any(path.stem.endswith(s) for s in skip_suffixes):
            continue
        if path.stem in found:
            problems.append(f"{path}: same image id {path.stem!r} as {found[path.stem].name}")
            continue
        found[path.stem] = path
    return found, problems


def _mask_files(
    folder: Path, suffixes: Sequence[str], extensions: Sequence[str], *, bare: bool
) -> dict[str, Path]:
    """Mask files by the image id they belong to: ``<id><suffix>.<ext>``, or ``<id>.<ext>`` when `bare`."""
    if not folder.is_dir():
        raise DataError(f"{folder}: mask folder not found")
    extensions = tuple(e.lower() for e in extensions)
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith(".")
    )
    masks: dict[str, Path] = {}
    for suffix in suffixes:  # earlier suffixes win, then bare names
        for path in files:
            if suffix and path.stem.endswith(suffix):
                masks.setdefault(path.stem[: -len(suffix)], path)
    if bare:
        for path in files:
            masks.setdefault(path.stem, path)
    return masks


def mask_boxes(images: Sequence[Path], masks: Sequence[Path | None]) -> tuple[list[str], list[str]]:
    """`bbox` cells (empty for no mask or an empty mask) and problems (unreadable, size differs from image).

    Decodes each mask (`load_mask`) but reads only the header of each image (`image_size`, which knows the
    EXIF orientation); ~1 ms a 256x256 pair.
    """
    cells, problems = [], []
    for image, mask in zip(images, masks, strict=True):
        cells.append("")
        if mask is None:
            continue
        field = "image"
        try:
            width, height = image_size(image)
            field = "mask"
            box = mask_to_box(load_mask(mask, shape=(height, width)))
        except ImageLoadError as exc:
            problems.append(f"field {field!r}: {exc}")
            continue
        cells[-1] = format_boxes([box]) if box is not None else ""
    return cells, problems


def image_folder_table(
    images_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str] | None = None,
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
    labels: Labels = None,
    id_column: str = "image_id",
    label_column: str | None = None,
    split: str = "train",
    patient_column: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    boxes_from_masks: bool = True,
    modality: str | None = None,
) -> pd.DataFrame:
    """The unvalidated rows `read_image_folder` builds (for readers that combine several folders).

    Raises `DataError`/`ManifestError` as `read_image_folder` does.
    """
    images_dir, root = Path(images_dir), Path(root)
    same_folder = masks_dir is not None and os.path.abspath(masks_dir) == os.path.abspath(images_dir)
    skip = (*EXCLUDE_SUFFIXES, *(mask_suffixes if same_folder else ()))
    images, problems = _image_files(images_dir, extensions, skip)
    masks = (
        _mask_files(Path(masks_dir), mask_suffixes, extensions, bare=not same_folder)
        if masks_dir is not None
        else {}
    )
    ids = list(images)
    table = pd.DataFrame(
        {
            "image": [relative_to_root(images[i], root) for i in ids],
            "split": split,
            "image_id": ids,
        }
    )
    if masks_dir is not None:
        found = [masks.get(i) for i in ids]
        table.insert(1, "mask", [relative_to_root(m, root) if m is not None else "" for m in found])
        if boxes_from_masks:
            cells, box_problems = mask_boxes([images[i] for i in ids], found)
            table.insert(2, "bbox", cells)
            problems += box_problems
        missing = sum(m is None for m in found)
        if missing:
            logger.info("%s: %d of %d images have no mask in %s", images_dir, missing, len(ids), masks_dir)
    if problems:
        raise ManifestError(str(images_dir), problems)
    if modality is not None:
        table["modality"] = modality
    if labels is not None:
        table = join_labels(
            table, labels, id_column=id_column, label_column=label_column, patient_column=patient_column
        )
    elif label_column is not None or patient_column is not None:
        raise ConfigError("label_column/patient_column name columns of `labels`, but no labels were given")
    return table


def read_image_folder(
    images_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    masks_dir: str | os.PathLike[str] | None = None,
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
    labels: Labels = None,
    id_column: str = "image_id",
    label_column: str | None = None,
    split: str = "train",
    classes: Sequence[str] | int | None = None,
    patient_column: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    boxes_from_masks: bool = True,
    modality: str | None = None,
) -> Manifest:
    """Manifest of a folder of images (one row per file, sorted by name; the folder is not searched deeper).

    The image id is the file stem. A mask is ``<id><suffix>.<any image ext>`` in `masks_dir` (or
    ``<id>.<ext>`` when `masks_dir` is a separate folder); masks may share the images' folder. With
    `boxes_from_masks` each mask is decoded once to derive `bbox` (x1,y1,x2,y2, x2/y2 exclusive) and checked
    to match its image's size. `labels` (DataFrame or CSV/Parquet path) is joined by `id_column`;
    `label_column` (default ``label``) gives the labels, `patient_column` the patients, other columns are
    kept. `root` (default: the folder holding both images and masks) is what manifest paths are relative to.
    Raises `DataError`/`ManifestError` listing every problem: missing folders, unmatched image/label ids,
    unreadable or mis-sized masks, invalid labels.
    """
    images_dir = Path(images_dir)
    if root is None:
        folders = [os.path.abspath(images_dir)] + (
            [os.path.abspath(masks_dir)] if masks_dir is not None else []
        )
        root = os.path.commonpath(folders)
    table = image_folder_table(
        images_dir,
        root=root,
        masks_dir=masks_dir,
        mask_suffixes=mask_suffixes,
        labels=labels,
        id_column=id_column,
        label_column=label_column,
        split=split,
        patient_column=patient_column,
        extensions=extensions,
        boxes_from_masks=boxes_from_masks,
        modality=modality,
    )
    if table.empty:
        raise DataError(f"{images_dir}: no image files with extensions {list(extensions)}")
    return build_manifest(table, root, classes=classes, source=str(images_dir))


# ----------------------------------------------------------------------------------------------- splits


def stratified_splits(
    labels: Sequence[object] | pd.Series, fractions: Sequence[float], *, seed: int = 0
) -> np.ndarray:
    """Assign "train"/"val"/"test" to each item with `fractions` (train, val, test), stratified by label.

    Uses scikit-learn's `train_test_split` (test first, then val from the rest). Raises `ConfigError` when the
    fractions are not three non-negative numbers summing to 1.
    """
    from sklearn.model_selection import train_test_split

    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(f"fractions {tuple(fractions)}: expected (train, val, test) >= 0 summing to 1")
    train_f, val_f, test_f = (float(f) for f in fractions)
    labels = np.asarray(pd.Series(labels).astype(str))
    index = np.arange(len(labels))
    out = np.full(len(labels), "train", dtype=object)
    rest = index
    if test_f > 0:
        rest, test = train_test_split(index, test_size=test_f, stratify=labels, random_state=seed)
        out[test] = "test"
    if val_f > 0:
        share = val_f / (train_f + val_f)
        if share >= 1.0:
            out[rest] = "val"
        else:
            _, val = train_test_split(rest, test_size=share, stratify=labels[rest], random_state=seed)
            out[val] = "val"
    return out


# ------------------------------------------------------------------------------------------------- PH2

PH2_CLASSES = ("common_nevus", "atypical_nevus", "melanoma")


def read_ph2(
    root: str | os.PathLike[str],
    *,
    split: str = "test",
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    boxes_from_masks: bool = True,
) -> Manifest:
    """Manifest of PH2 laid out as ``images/IMDxxx.jpg``, ``masks/IMDxxx_lesion.png``, ``labels.csv``.

    Labels 0/1/2 are `PH2_CLASSES` (common nevus, atypical nevus, melanoma); the label table's other columns
    (clinical diagnosis, dermoscopic criteria) are kept. PH2 has no official split: every row gets `split`,
    or with `fractions` (train, val, test) a stratified split seeded by `seed`. Raises `DataError` when the
    layout is not found and `ManifestError` listing every problem.
    """
    root = Path(root)
    labels = root / "labels.csv"
    for needed in (root / "images", root / "masks", labels):
        if not needed.exists():
            raise DataError(
                f"{root}: not a PH2 folder ({needed.name} missing; expected images/, masks/, labels.csv)"
            )
    table = image_folder_table(
        root / "images",
        root=root,
        masks_dir=root / "masks",
        labels=labels,
        label_column="label",
        split=split,
        boxes_from_masks=boxes_from_masks,
        modality="dermoscopy",
    )
    if fractions is not None:
        table["split"] = stratified_splits(table["label"], fractions, seed=seed)
    return build_manifest(table, root, classes=PH2_CLASSES, source=str(root))


# ------------------------------------------------------------------------------------------------ ISIC

ISIC2016_CLASSES = ("benign", "malignant")
ISIC2017_CLASSES = ("nevus", "melanoma", "seborrheic_keratosis")
#: ISIC 2018 Task 3 classes, in the order of its ground-truth columns MEL, NV, BCC, AKIEC, BKL, DF, VASC.
ISIC2018_CLASSES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
ISIC_CLASSES = {2016: ISIC2016_CLASSES, 2017: ISIC2017_CLASSES, 2018: ISIC2018_CLASSES}
_YEAR_PREFIXES = {2016: "ISBI2016_ISIC_", 2017: "ISIC-2017_", 2018: "ISIC2018_"}


def read_isic(
    root: str | os.PathLike[str],
    *,
    year: int | None = None,
    task: str | None = None,
    boxes_from_masks: bool = True,
) -> Manifest:
    """Manifest of an ISIC challenge folder, in either of two layouts.

    (a) ``{train,val,test}/images/ISIC_x.jpg`` + ``{split}/masks/ISIC_x_segmentation.png`` +
    ``{split}_labels.csv`` (``image_id`` and ``diagnosis``, or 2017 one-hot columns), plus
    ``test_unlabeled/images/`` as unlabeled test rows. (b) The official ISIC 2016/2017/2018 downloads unpacked
    side by side (``ISIC-2017_Training_Data/``, ``ISIC-2017_Training_Part1_GroundTruth/``,
    ``ISIC-2017_Training_Part3_GroundTruth.csv``, ...); `year` picks one when several are present. For 2018,
    `task` ("segmentation" = Task 1, "classification" = Task 3; default both) chooses the image sets, and
    Task 3 lesion groupings become `patient_id`. Classes: 2016 benign/malignant, 2017 `ISIC2017_CLASSES`,
    2018 `ISIC2018_CLASSES`. Metadata columns (age_approximate, sex, ...) are kept. Raises `DataError` when
    no known layout is found and `ManifestError` listing every problem.
    """
    root = Path(root)
    if task not in (None, "segmentation", "classification"):
        raise ConfigError(f"task {task!r}: expected 'segmentation', 'classification' or None (both)")
    if not root.is_dir():
        raise DataError(f"{root}: ISIC folder not found")
    if any((root / split / "images").is_dir() for split in ("train", "val", "test", "test_unlabeled")):
        table, classes = _isic_split_folders(root, boxes_from_masks)
    else:
        year = _isic_year(root, year)
        table, classes = _isic_official(root, year, task, boxes_from_masks)
    if table.empty:
        raise DataError(f"{root}: no ISIC images found")
    return build_manifest(table, root, classes=classes, source=str(root))


def _isic_split_folders(root: Path, boxes: bool) -> tuple[pd.DataFrame, tuple[str, ...] | None]:
    parts = []
    for split, folder in (("train", "train"), ("val", "val"), ("test", "test"), ("test", "test_unlabeled")):
        images = root / folder / "images"
        if not images.is_dir():
            continue
        masks = root / folder / "masks"
        label_file = root / f"{folder}_labels.csv"
        labels = _isic2017_labels(label_file) if label_file.is_file() else None
        parts.append(
            image_folder_table(
                images,
                root=root,
                masks_dir=masks if masks.is_dir() else None,
                labels=labels,
                split=split,
                boxes_from_masks=boxes,
                modality="dermoscopy",
            )
        )
    table = _concat(parts)
    names = set(table["label"].dropna()) if "label" in table else set()
    return table, ISIC2017_CLASSES if names <= set(ISIC2017_CLASSES) else None


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack row groups; integer columns that gained NA (unlabeled rows) become nullable integers again."""
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    for column in table.columns:
        values = table[column]
        if values.dtype.kind == "f" and values.notna().any() and (values.dropna() % 1 == 0).all():
            table[column] = values.astype("Int64")
    return table


def _isic_year(root: Path, year: int | None) -> int:
    names = [p.name for p in root.iterdir()]
    present = [y for y, prefix in _YEAR_PREFIXES.items() if any(n.startswith(prefix) for n in names)]
    if year is not None:
        if year not in _YEAR_PREFIXES:
            raise ConfigError(f"year {year!r}: expected one of {sorted(_YEAR_PREFIXES)}")
        if year not in present:
            raise DataError(f"{root}: no ISIC {year} folders ({_YEAR_PREFIXES[year]}*) found")
        return year
    if not present:
        raise DataError(
            f"{root}: no ISIC layout found (expected train/images/ or official folders such as "
            f"ISIC-2017_Training_Data/); entries: {_listing(sorted(names))}"
        )
    if len(present) > 1:
        raise DataError(
            f"{root}: ISIC {present} folders are all present; point data.path at "
            "a folder holding one year, or pass year= in Python"
        )
    return present[0]


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _isic_official(
    root: Path, year: int, task: str | None, boxes: bool
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    parts = []
    common = {"root": root, "boxes_from_masks": boxes, "modality": "dermoscopy"}
    if year == 2016:
        for split, name in (("train", "Training"), ("test", "Test")):
            images = _first_existing(
                root / f"ISBI2016_ISIC_Part1_{name}_Data", root / f"ISBI2016_ISIC_Part3_{name}_Data"
            )
            if images is None:
                continue
            masks = _first_existing(root / f"ISBI2016_ISIC_Part1_{name}_GroundTruth")
            csv = _first_existing(root / f"ISBI2016_ISIC_Part3_{name}_GroundTruth.csv")
            labels = _isic2016_labels(csv) if csv is not None else None
            parts.append(image_folder_table(images, masks_dir=masks, labels=labels, split=split, **common))
    elif year == 2017:
        for split, names in (
            ("train", ("Training",)),
            ("val", ("Validation",)),
            ("test", ("Test_v2", "Test")),
        ):
            name = next((n for n in names if (root / f"ISIC-2017_{n}_Data").is_dir()), None)
            if name is None:
                continue
            images = root / f"ISIC-2017_{name}_Data"
            masks = _first_existing(root / f"ISIC-2017_{name}_Part1_GroundTruth")
            csv = _first_existing(root / f"ISIC-2017_{name}_Part3_GroundTruth.csv")
            labels = _isic2017_labels(csv) if csv is not None else None
            table = image_folder_table(images, masks_dir=masks, labels=labels, split=split, **common)
            meta = _first_existing(
                images / f"ISIC-2017_{name}_Data_metadata.csv", root / f"ISIC-2017_{name}_Data_metadata.csv"
            )
            parts.append(_add_metadata(table, meta) if meta is not None else table)
    else:
        for split, name in (("train", "Training"), ("val", "Validation"), ("test", "Test")):
            segmentation = root / f"ISIC2018_Task1-2_{name}_Input"
            if task in (None, "segmentation") and segmentation.is_dir():
                masks = _first_existing(root / f"ISIC2018_Task1_{name}_GroundTruth")
                parts.append(image_folder_table(segmentation, masks_dir=masks, split=split, **common))
            classification = root / f"ISIC2018_Task3_{name}_Input"
            if task in (None, "classification") and classification.is_dir():
                truth = f"ISIC2018_Task3_{name}_GroundTruth"
                csv = _first_existing(root / truth / f"{truth}.csv", root / f"{truth}.csv")
                labels = (
                    _one_hot_labels(csv, ISIC2018_CLASSES, id_column="image") if csv is not None else None
                )
                groups = f"ISIC2018_Task3_{name}_LesionGroupings.csv"
                grouping = _first_existing(root / truth / groups, root / groups)
                if labels is not None and grouping is not None:
                    lesions = read_labels(grouping, id_column="image")[0]
                    lesions = lesions.rename(columns={"image": "image_id", "lesion_id": "patient_id"})
                    labels = labels.merge(lesions, on="image_id", how="left")
                parts.append(image_folder_table(classification, labels=labels, split=split, **common))
    return _concat(parts), ISIC_CLASSES[year]


def _add_metadata(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Left-join per-image metadata (age_approximate, sex, ...) by image id; images without a row keep NA."""
    meta, _ = read_labels(path, id_column="image_id")
    if "image_id" not in meta:
        raise DataError(f"{path}: no column 'image_id' (columns: {list(meta.columns)})")
    meta = meta[[c for c in meta.columns if c == "image_id" or c not in table]]
    return table.merge(meta.drop_duplicates("image_id"), on="image_id", how="left")


def _isic2016_labels(path: Path) -> pd.DataFrame:
    """ISIC 2016 Part 3 truth, no header: ``ISIC_x,benign|malignant`` (train) or ``ISIC_x,0.0|1.0`` (test)."""
    try:
        frame = pd.read_csv(path, header=None, dtype=str)
    except Exception as exc:  # pandas raises many types; name the file
        raise DataError(f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})") from exc
    if frame.shape[1] < 2:
        raise DataError(f"{path}: expected two columns (image id, benign/malignant), found {frame.shape[1]}")
    if not str(frame.iat[0, 0]).startswith("ISIC"):  # a header row
        frame = frame.iloc[1:]
    mapping = {"benign": "benign", "malignant": "malignant", "0": "benign", "1": "malignant"}
    values = frame[1].astype(str).str.strip().str.lower().str.replace(r"\.0+$", "", regex=True)
    labels = values.map(mapping)
    bad = [
        f"row {i + 1}: field 'label': {v!r} is not benign/malignant/0/1"
        for i, v in enumerate(values)
        if pd.isna(labels.iat[i])
    ]
    if bad:
        raise ManifestError(str(path), bad)
    return pd.DataFrame({"image_id": frame[0].str.strip().to_numpy(), "label": labels.to_numpy()})


def _isic2017_labels(path: Path) -> pd.DataFrame:
    """ISIC 2017 labels: a ``diagnosis`` column, or the official one-hot melanoma/seborrheic_keratosis."""
    frame, source = read_labels(path, id_column="image_id")
    if "image_id" not in frame:
        raise DataError(f"{source}: no column 'image_id' (columns: {list(frame.columns)})")
    if "diagnosis" in frame:
        return frame.rename(columns={"diagnosis": "label"})
    if "label" in frame:
        return frame
    missing = [c for c in ("melanoma", "seborrheic_keratosis") if c not in frame]
    if missing:
        raise DataError(f"{source}: no 'diagnosis' column and no one-hot columns {missing}")
    flags = frame[["melanoma", "seborrheic_keratosis"]].apply(pd.to_numeric, errors="coerce")
    problems = [
        f"row {i + 1}: fields 'melanoma'/'seborrheic_keratosis': ({', '.join(f'{x:g}' for x in v)}) "
        "is not 0/1 with at most one 1"
        for i, v in enumerate(flags.to_numpy())
        if not (np.isin(v, (0, 1)).all() and v.sum() <= 1)
    ]
    if problems:
        raise ManifestError(source, problems)
    names = np.where(
        flags["melanoma"] == 1,
        "melanoma",
        np.where(flags["seborrheic_keratosis"] == 1, "seborrheic_keratosis", "nevus"),
    )
    return frame.assign(label=names)


def _one_hot_labels(path: Path, classes: Sequence[str], *, id_column: str) -> pd.DataFrame:
    """A one-hot truth table (columns = upper-case class names) to ``image_id`` + ``label`` (+ columns)."""
    frame, source = read_labels(path, id_column=id_column)
    columns = [c.upper() for c in classes]
    missing = [c for c in (id_column, *columns) if c not in frame]
    if missing:
        raise DataError(f"{source}: missing columns {missing} (columns: {list(frame.columns)})")
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy()
    problems = [
        f"row {i + 1}: fields {columns}: ({', '.join(f'{v:g}' for v in row)}) is not one-hot"
        for i, row in enumerate(values)
        if not (np.isin(row, (0, 1)).all() and row.sum() == 1)
    ]
    if problems:
        raise ManifestError(source, problems)
    labels = np.asarray(classes, dtype=object)[values.argmax(axis=1)]
    return frame.rename(columns={id_column: "image_id"}).assign(label=labels)
