"""Property-based tests (hypothesis) of manifest files: any class name or patient ID text, and image paths
with any (non-separator) characters, read back as written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panderm.data.manifest import read_manifest, write_table

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TRICKY = [
    "NA",
    "None",
    "null",
    "nan",
    "N/A",
    "#N/A",
    "007",
    "a,b",
    'q"t',
    "x\ry",
    "x\ny",
    "中文",
    "\x00",
    "é",
]
cell_text = st.sampled_from(TRICKY) | st.text(
    st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=8
)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# Labels are class names (an all-numeric label column holds class codes), compared after strip().
class_names = cell_text.map(str.strip).filter(lambda s: s != "" and not _number(s))
path_part = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"), min_size=1, max_size=8
).filter(lambda s: s.strip() == s and s not in (".", ".."))


def plain(column: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in column]


@st.composite
def manifests(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 6))
    names = draw(st.lists(path_part, min_size=n, max_size=n, unique=True))
    labels = draw(st.lists(st.none() | class_names, min_size=n, max_size=n))
    return pd.DataFrame(
        {
            "image": [f"images/{name}.png" for name in names],
            "split": draw(st.lists(st.sampled_from(["train", "val", "test"]), min_size=n, max_size=n)),
            "label": labels,
            # one patient a row, so no patient spans two splits
            "patient_id": draw(st.lists(cell_text, min_size=n, max_size=n, unique=True)),
        }
    )


@FAST
@given(table=manifests(), suffix=st.sampled_from([".csv", ".parquet"]))
def test_labels_patients_and_paths_read_back_as_written(
    tmp_path: Path, table: pd.DataFrame, suffix: str
) -> None:
    path = write_table(table, tmp_path / f"manifest{suffix}")
    manifest = read_manifest(path, check_files=False)
    assert manifest.table["image"].tolist() == table["image"].tolist()
    assert manifest.table["patient_id"].tolist() == table["patient_id"].tolist()
    assert plain(manifest.label_names()) == plain(table["label"])
    for i, image in enumerate(table["image"]):
        assert manifest.image_path(i) == tmp_path / image
    # saving the validated manifest and reading it again gives the same table
    again = read_manifest(
        manifest.save(tmp_path / f"again{suffix}"), classes=manifest.classes, check_files=False
    )
    pd.testing.assert_frame_equal(again.table, manifest.table)
