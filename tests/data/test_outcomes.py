"""Follow-up and outcome columns (lesion_id, timepoint, event, time): parsed and checked with the manifest,
every problem named by row and field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from panderm.data.manifest import build_manifest
from panderm.data.outcomes import parse_events, parse_timepoints
from panderm.errors import ManifestError


def _table(**columns: list) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"image": [f"img{i}.png" for i in range(n)], "split": ["train"] * n, "label": ["a"] * n}
    return pd.DataFrame({**base, **columns})


def test_timepoints_numbers_and_dates_order_alike():
    dates = parse_timepoints(["2021-03-04", "2020-12-31", None, "2022-01-01"])
    assert np.isnan(dates[2])
    assert np.argsort(dates[[0, 1, 3]]).tolist() == [1, 0, 2]
    assert dates[0] - dates[1] == (pd.Timestamp("2021-03-04") - pd.Timestamp("2020-12-31")).days
    assert parse_timepoints(["2", 0, "1.5"]).tolist() == [2.0, 0.0, 1.5]
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        parse_timepoints(["1", "soon"])
    with pytest.raises(ValueError, match="mixed"):
        parse_timepoints(["1", "2021-01-01"])


def test_events_accept_common_spellings_only():
    assert parse_events([1, "0", "True", "no", "", None, 1.0]).tolist()[:4] == [1, 0, 1, 0]
    assert np.isnan(parse_events(["", None])).all()
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        parse_events([1, 2])


def test_clean_follow_up_manifest_loads(tmp_path):
    table = _table(  # two dermoscopy images at one visit are allowed (the longitudinal probe names them)
        patient_id=["P1", "P1", "P1", "P2", "P2"],
        lesion_id=["L1", "L1", "L1", "L2", "L2"],
        timepoint=[0, 1, 0, 0, 0],
        modality=["dermoscopy", "dermoscopy", "clinical", "dermoscopy", "dermoscopy"],
        event=[1, 1, 1, 0, 0],
        time=[2.5, 2.5, 2.5, 7.0, 7.0],
    )
    manifest = build_manifest(table, tmp_path, check_files=False)
    assert manifest.table["lesion_id"].tolist() == ["L1", "L1", "L1", "L2", "L2"]


def test_every_outcome_problem_named_by_row(tmp_path):
    table = _table(
        patient_id=["P1", "P2", "P3", "P3", "P4", "P5", "P6", "P6"],
        lesion_id=["L1", "L1", "L2", "L2", "L3", "L4", "L5", "L5"],
        timepoint=[0, 1, 0, 0, "later", 0, 0, 1],
        event=[1, 1, 0, 0, 3, "", 1, 0],
        time=[1.0, 1.0, 2.0, 2.0, -1, 4.0, 3.0, 3.0],
    )
    table.loc[1, "split"] = "test"  # lesion L1 (rows 1-2) in two splits and two patients
    with pytest.raises(ManifestError) as info:
        build_manifest(table, tmp_path, check_files=False)
    text = str(info.value)
    assert "lesion 'L1' has more than one split" in text and "rows 1, 2" in text
    assert "lesion 'L1' has more than one patient_id" in text
    assert "row 5: field 'timepoint': 'later' is not a number or a date" in text
    assert "row 5: field 'event': 3 is not 0/1" in text
    assert "row 5: field 'time': -1.0 is not a number >= 0" in text
    assert "row 6: field 'event': empty while 'time' is given" in text
    assert "lesion 'L5' has different outcomes on its rows (7, 8)" in text


def test_event_needs_time_and_misspelt_columns_are_named(tmp_path):
    with pytest.raises(ManifestError, match="column 'event' needs a 'time' column"):
        build_manifest(_table(event=[1, 0]), tmp_path, check_files=False)
    with pytest.raises(ManifestError, match="did you mean 'timepoint'"):
        build_manifest(_table(time_point=[0, 1]), tmp_path, check_files=False)
