"""Property-based tests (hypothesis) of the reader-study files: a random valid study written to CSV, Parquet
or the Iowa `.lrc` form reads back equal, and no file content makes the readers fail other than with
DataError."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from panderm.errors import DataError
from readers.schema import OUTCOMES, ReaderStudy, load_study, read_lrc, save_study

STUDIES = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # each example loads a study twice with pandas (about 0.1 s)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# IDs are integers, or text of any kind (commas, quotes, line breaks, NUL, CJK, "NA", "007", " x ") that is
# not itself a plain integer (such a column reads back as integers).
SPECIAL = [
    "NA",
    "None",
    "null",
    "nan",
    "007",
    "1.0",
    "-0",
    " a",
    "b ",
    "a,b",
    'q"t',
    "x\ry",
    "x\r\ny",
    "\x00",
    "中",
]
id_text = st.sampled_from(SPECIAL) | st.text(
    st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=8
)
id_text = id_text.filter(lambda s: re.fullmatch(r"0|-?[1-9][0-9]*", s) is None)
# Outcome and attribute cells read pandas' missing-value markers as missing (R writes NA for a missing
# value), so no label is one of them.
PANDAS_NA = {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}  # fmt: skip
label_text = st.text(
    st.characters(blacklist_categories=["Cs", "Cc", "Z"], blacklist_characters="|"), min_size=1, max_size=8
).filter(lambda s: s.strip() == s and s not in PANDAS_NA)


def ids(n: int) -> st.SearchStrategy[list]:
    return st.lists(id_text, min_size=n, max_size=n, unique=True) | st.lists(
        st.integers(-5, 10**6), min_size=n, max_size=n, unique=True
    )


@st.composite
def studies(draw: st.DrawFn) -> ReaderStudy:
    """A valid random study: every reader reads every case in every condition."""
    readers = draw(ids(draw(st.integers(1, 3))))
    cases = draw(ids(draw(st.integers(2, 5))))
    conditions = draw(ids(2))
    truth = draw(st.lists(st.integers(0, 1), min_size=len(cases), max_size=len(cases)))
    outcomes = draw(st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=4, unique=True))
    attribute = draw(st.sampled_from([None, st.integers(0, 30), label_text.map("x".__add__)]))
    rows = []
    for reader in readers:
        level = draw(attribute) if attribute is not None else None
        for condition in conditions:
            for case, t in zip(cases, truth, strict=True):
                row = {"reader": reader, "case": case, "condition": condition, "truth": t}
                if "rating" in outcomes:
                    row["rating"] = draw(st.floats(-1e6, 1e6, allow_nan=False))
                if "response" in outcomes:
                    row["response"] = draw(st.integers(0, 1))
                if "top_k" in outcomes:
                    row["top_k"] = "|".join(draw(st.lists(label_text, min_size=1, max_size=3)))
                if "confidence" in outcomes:
                    row["confidence"] = draw(st.integers(1, 5))
                if attribute is not None:
                    row["experience"] = level
                rows.append(row)
    return load_study(pd.DataFrame(rows))


@STUDIES
@given(study=studies(), suffix=st.sampled_from([".csv", ".parquet"]))
def test_a_saved_study_loads_back_equal(tmp_path: Path, study: ReaderStudy, suffix: str) -> None:
    path = save_study(study, tmp_path / f"study{suffix}")
    pd.testing.assert_frame_equal(load_study(path).data, study.data, check_dtype=False)


def lrc_text(names: list[str], treatments: list[str], ratings: dict, truth: list[int]) -> str:
    """The Iowa `.lrc` form: title; per reader its name, the quoted treatment names, the ratings of the
    negative cases, `*`, the positive cases, `*`; `#` at the end."""
    lines = ["title"]
    for reader in names:
        lines += [reader, "  ".join(f'"{t}"' for t in treatments)]
        for positive in (0, 1):
            lines += [
                " ".join(repr(ratings[reader, t, c]) for t in treatments) + f"  case {c}"
                for c in range(len(truth))
                if truth[c] == positive
            ]
            lines.append("*")
    return "\n".join([*lines, "#", ""])


word = st.text(st.characters(whitelist_categories=["L", "N"]), min_size=1, max_size=6)


@FAST
@given(
    names=st.lists(word.filter(lambda w: w.upper() not in ("L", "S")), min_size=1, max_size=3, unique=True),
    treatments=st.lists(word, min_size=1, max_size=3, unique=True),
    truth=st.lists(st.integers(0, 1), min_size=2, max_size=6).map(sorted),
    data=st.data(),
)
def test_lrc_round_trip(
    tmp_path: Path, names: list[str], treatments: list[str], truth: list[int], data: st.DataObject
) -> None:
    keys = [(r, t, c) for r in names for t in treatments for c in range(len(truth))]
    values = data.draw(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=len(keys), max_size=len(keys))
    )
    ratings = dict(zip(keys, values, strict=True))
    (tmp_path / "s.lrc").write_text(lrc_text(names, treatments, ratings, truth), encoding="utf-8")
    frame = read_lrc(tmp_path / "s.lrc")
    expected = pd.DataFrame(
        [(r, t, c + 1, truth[c], ratings[r, t, c]) for r, t, c in keys],
        columns=["reader", "condition", "case", "truth", "rating"],
    ).sort_values(["reader", "condition", "case"], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


lrc_like = st.lists(
    st.sampled_from(["title", "R1", '"T1" "T2"', "L S", "L", "1 2", "3", "x", "*", "#", "", " "]), max_size=14
).map("\n".join)


@FAST
@given(text=lrc_like | st.text(max_size=80))
@example(text="title\nR1\n")
@example(text='title\nR1\n"T1"\n')
def test_any_lrc_text_reads_or_raises_data_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "s.lrc").write_text(text, encoding="utf-8")
    try:
        frame = read_lrc(tmp_path / "s.lrc")
    except DataError as exc:
        assert "s.lrc" in str(exc)
    else:
        assert list(frame.columns) == ["reader", "condition", "case", "truth", "rating"]


def test_save_study_refuses_top_k_labels_it_cannot_write(tmp_path: Path) -> None:
    study = load_study(
        pd.DataFrame(
            {"reader": ["A", "A"], "case": [1, 2], "condition": ["u", "u"], "truth": [0, 1]}
            | {"top_k": [("a|b", "c"), ("c",)]}
        )
    )
    with pytest.raises(DataError, match=r"top_k label 'a\|b'"):
        save_study(study, tmp_path / "s.csv")


def test_ids_keep_their_spelling_and_a_column_of_single_top_k_labels_loads(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text(
        "reader,case,condition,truth,top_k\nNA,007,u,0,1\nNA,008,u,1,2\n", encoding="utf-8"
    )
    study = load_study(tmp_path / "s.csv")  # pandas read reader "NA" as missing and case "007" as 7
    assert study.readers == ["NA"] and study.cases == ["007", "008"]
    assert study.data["top_k"].tolist() == [("1",), ("2",)]
    frame = pd.DataFrame({"reader": "A", "case": [1, 2], "condition": "u", "truth": [0, 1], "top_k": [1, 0]})
    assert load_study(frame).data["top_k"].tolist() == [(1,), (0,)]  # was TypeError: int is not iterable
