"""Reader-study tables: loading (CSV, Parquet, .lrc), every validation problem reported at once with rows,
and AI-alone predictions added as a reader or a condition."""

from __future__ import annotations

import pandas as pd
import pytest

from panderm.errors import DataError, ManifestError
from readers.schema import add_ai, load_study, read_lrc, validate
from tests.conftest import shared_path


def table() -> pd.DataFrame:
    rows = []
    for reader in ("A", "B"):
        for cond in ("unaided", "ai_aided"):
            for case in range(4):
                rows.append(
                    {
                        "reader": reader,
                        "case": f"c{case}",
                        "condition": cond,
                        "truth": case % 2,
                        "rating": float(case + (cond == "ai_aided")),
                        "response": case % 2 if reader == "A" else 1,
                        "top_k": "x|y" if case else "y|x",
                        "experience": 3 if reader == "A" else 12,
                    }
                )
    return pd.DataFrame(rows)


def test_a_valid_table_loads_with_its_attributes(tmp_path):
    frame = table()
    study = load_study(frame)
    assert study.readers == ["A", "B"] and study.conditions == ["unaided", "ai_aided"]
    assert study.truth.to_dict() == {"c0": 0, "c1": 1, "c2": 0, "c3": 1}
    assert study.attribute_columns == ["experience"]
    assert study.reader_attributes["experience"].to_dict() == {"A": 3, "B": 12}
    assert study.data.loc[0, "top_k"] == ("y", "x")
    assert study.wide("rating", "unaided").shape == (4, 2)
    frame.to_csv(tmp_path / "s.csv", index=False)
    frame.to_parquet(tmp_path / "s.parquet")
    for path in (tmp_path / "s.csv", tmp_path / "s.parquet"):
        loaded = load_study(path)
        assert loaded.source == str(path)
        assert loaded.data[["reader", "case", "condition", "truth", "rating"]].equals(
            study.data[["reader", "case", "condition", "truth", "rating"]]
        )


def test_treatment_is_an_alias_and_a_condition_column_can_be_named():
    frame = table().rename(columns={"condition": "treatment"})
    assert load_study(frame).conditions == ["unaided", "ai_aided"]
    frame = table().rename(columns={"condition": "modality"})
    assert load_study(frame, condition_column="modality").conditions == ["unaided", "ai_aided"]
    with pytest.raises(DataError, match="condition column 'arm' not found"):
        load_study(frame, condition_column="arm")


def test_every_problem_is_reported_at_once_with_rows():
    frame = table().astype({"rating": object, "truth": float, "response": object})
    frame.loc[3, "truth"] = 0  # c3 unaided for A: truth 1 elsewhere
    frame.loc[5, "rating"] = "high"
    frame.loc[5, ["response", "top_k"]] = None
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)  # duplicate of row 1
    frame.loc[len(frame)] = {
        "reader": "C",
        "case": "c0",
        "condition": "unaided",
        "truth": 0.5,
        "rating": None,
    }
    frame.loc[len(frame) - 1, ["response", "top_k"]] = None
    problems = validate(frame)
    text = "\n".join(problems)
    assert "duplicate reader x case x condition rows: 1, 17" in text
    assert "truth inconsistent for case(s) ['c0', 'c3']" in text
    assert "truth must be a class label (not a fraction) in rows 18" in text
    assert "non-numeric rating in rows 6" in text
    assert "no rating/response/top_k value in rows 18" in text
    assert "reader 'C' missing condition(s): ai_aided" in text
    with pytest.raises(ManifestError) as err:
        load_study(frame)
    assert len(err.value.problems) == len(problems) == 6
    assert "<DataFrame>: 6 problem(s)" in str(err.value)


def test_missing_columns_and_values():
    assert validate(table().drop(columns=["truth"])) == ["missing required column(s): truth"]
    only_keys = table()[["reader", "case", "condition", "truth"]]
    assert validate(only_keys) == [
        "missing outcome column: need at least one of rating, response, top_k, confidence"
    ]
    frame = table()
    frame.loc[2, "reader"] = None
    assert "missing reader in rows 3" in validate(frame)


def test_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_study(tmp_path / "nope.csv")
    (tmp_path / "s.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unknown reader-study format '\.xlsx'"):
        load_study(tmp_path / "s.xlsx")
    bad = tmp_path / "bad.csv"
    table().drop(columns="case").to_csv(bad, index=False)
    with pytest.raises(ManifestError, match=r"bad.csv: 1 problem\(s\)\n  missing required column\(s\): case"):
        load_study(bad)


@pytest.mark.shared_data
def test_lrc_equals_the_long_csv():
    folder = shared_path("reader_franken")
    lrc = read_lrc(folder / "franken.lrc")
    long = pd.read_csv(folder / "franken_long.csv")
    assert len(lrc) == len(long) == 800 and lrc["case"].max() == 100
    key = ["reader", "condition", "case"]
    lrc = lrc.astype({"reader": int, "condition": int}).set_index(key).sort_index()
    long = long.rename(columns={"treatment": "condition"}).set_index(key).sort_index()
    assert (lrc["truth"] == long["truth"]).all() and (lrc["rating"] == long["rating"]).all()


def test_lrc_smaller_is_more_abnormal_is_negated(tmp_path):
    text = 'title\nR1\n "T1" "T2"\n L S\n1 5\n2 4\n*\n5 1\n*\nR2\n3 3\n*\n4 2\n*\n#\n'
    (tmp_path / "s.lrc").write_text(text)
    frame = read_lrc(tmp_path / "s.lrc")
    r1 = frame[frame["reader"] == "R1"].set_index(["condition", "case"])["rating"]
    assert r1["T1"].tolist() == [1, 2, 5] and r1["T2"].tolist() == [-5, -4, -1]
    assert frame.groupby("case")["truth"].first().tolist() == [0, 0, 1] or len(frame) == 12
    (tmp_path / "bad.lrc").write_text('title\nR1\n "T1"\n1\nx\n*\n')
    with pytest.raises(DataError, match="bad rating line 'x'"):
        read_lrc(tmp_path / "bad.lrc")


def test_ai_as_a_reader_or_a_condition():
    study = load_study(table())
    preds = pd.DataFrame({"case": ["c0", "c1", "c2", "c3"], "rating": [0.1, 0.9, 0.2, 0.8]})
    as_reader = add_ai(study, preds)
    assert as_reader.readers == ["A", "B", "AI"]
    ai = as_reader.data[as_reader.data["reader"] == "AI"]
    assert len(ai) == 8 and set(ai["condition"]) == {"unaided", "ai_aided"}
    as_condition = add_ai(study, preds, as_="condition", name="ai_alone")
    assert as_condition.conditions == ["unaided", "ai_aided", "ai_alone"]
    with pytest.raises(ManifestError) as err:
        add_ai(study, preds.iloc[:3].assign(case=["c0", "c1", "zz"]), name="A")
    problems = "\n".join(err.value.problems)
    assert "not in the study: ['zz']" in problems and "no prediction for case(s): ['c2', 'c3']" in problems
    assert "reader 'A' already in the study" in problems
    with pytest.raises(ManifestError, match="predictions missing column: case"):
        add_ai(study, preds.rename(columns={"case": "id"}))
