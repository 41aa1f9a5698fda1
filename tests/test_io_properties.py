"""Property-based tests (hypothesis) of the CSV and JSONL files runs write: whatever text a model replies
(line breaks, a lone carriage return, quotes, commas, NUL, CJK, "NA", "None", "007") reads back identically
through the project's own readers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from panderm.io import read_csv, read_jsonl, write_csv, write_jsonl
from panderm.mllm.icl.scoring import TEXT_COLUMNS as RESULT_TEXT
from panderm.mllm.icl.scoring import read_results, score_frame
from panderm.mllm.scoring import read_predictions, write_predictions
from probes.predictions import read_predictions as read_probe_predictions
from probes.predictions import write_predictions as write_probe_predictions

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text a model may reply: any characters (surrogates aside, which UTF-8 cannot encode), with the ones that
# break naive CSV/JSONL handling drawn often.
TRICKY = [
    "\r", "\n", "\r\n", '"', ",", "\x00", "\t", " ", "中文", "\u2028", "\x85", "\ufeff", "NA", "None", "null",
    "nan", "007", "1.0", "True", "#N/A", "",
]  # fmt: skip
replies = st.lists(
    st.sampled_from(TRICKY) | st.text(st.characters(blacklist_categories=["Cs"]), max_size=6), max_size=6
).map("".join)


def same(a: object, b: object) -> bool:
    """Cell equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@FAST
@given(texts=st.lists(replies, min_size=1, max_size=6), data=st.data())
def test_csv_cells_read_back_identically(tmp_path: Path, texts: list[str], data: st.DataObject) -> None:
    n = len(texts)
    draw = data.draw
    frame = pd.DataFrame(
        {
            "text": texts,
            "ints": draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n)),
            "floats": draw(st.lists(st.floats(allow_infinity=False), min_size=n, max_size=n)),
            "flags": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        }
    )
    write_csv(tmp_path / "t.csv", frame)
    back = read_csv(tmp_path / "t.csv", text=["text"])
    assert list(back.columns) == list(frame.columns)
    assert back["text"].tolist() == texts
    assert back["ints"].tolist() == frame["ints"].tolist()
    assert all(same(a, b) for a, b in zip(back["floats"], frame["floats"], strict=True))
    assert back["flags"].tolist() == frame["flags"].tolist()


@FAST
@given(records=st.lists(st.fixed_dictionaries({"reply": replies, "n": st.integers(), "x": st.none()})))
def test_jsonl_records_read_back_identically_and_split_on_any_line_break(
    tmp_path: Path, records: list[dict]
) -> None:
    write_jsonl(tmp_path / "r.jsonl", records)
    assert read_jsonl(tmp_path / "r.jsonl") == records
    # a reader that splits with str.splitlines() (as many do) sees one record a line too
    lines = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


@st.composite
def icl_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Rows like `panderm icl` writes (open-ended mode), with arbitrary questions, answers and replies."""
    n = draw(st.integers(1, 5))
    rows = []
    for i in range(n):
        reply = draw(replies)
        rows.append(
            {
                "problem_id": draw(st.sampled_from([f"p{i}", f"{i:03d}", "NA"])) + f"-{i}",
                "final_question": draw(replies),
                "true_answer": draw(replies | st.sampled_from(["None", "null", "nan"])),
                "generated_answer": reply.strip(),
                "full_response": reply,
                "status": draw(st.sampled_from(["ok", "ok", "failed"])),
                "error": draw(st.sampled_from(["", "BackendError: HTTP 503\r\nretry"])),
                "mode": "open",
                "n_demos": draw(st.integers(0, 4)),
                "relevant_position": draw(st.none() | st.integers(0, 3)),
                "cached": draw(st.booleans()),
            }
        )
    return pd.DataFrame(rows)


@FAST
@given(frame=icl_frames())
@example(
    frame=pd.DataFrame(
        [{"problem_id": "p1", "true_answer": "nan", "generated_answer": "None", "status": "ok"}]
    )
)
def test_icl_results_read_back_as_the_run_scored_them(tmp_path: Path, frame: pd.DataFrame) -> None:
    write_csv(tmp_path / "results.csv", frame)
    back = read_results(tmp_path / "results.csv")
    for column in RESULT_TEXT:
        if column in frame:
            assert back[column].tolist() == frame[column].tolist(), column
    expected = score_frame(frame)
    assert score_frame(back) == expected | {"file": str(tmp_path / "results.csv")}


@FAST
@given(ids=st.lists(replies, min_size=1, max_size=5, unique=True), data=st.data())
def test_probe_predictions_read_back_identically(tmp_path: Path, ids: list[str], data: st.DataObject) -> None:
    n = len(ids)
    proba = np.asarray(
        data.draw(st.lists(st.floats(0.01, 1.0), min_size=2 * n, max_size=2 * n)), dtype=np.float64
    ).reshape(n, 2)
    proba /= proba.sum(axis=1, keepdims=True)
    y = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    write_probe_predictions(tmp_path / "p.csv", ids, y, proba, ["benign", "malignant"], split="test")
    back = read_probe_predictions(tmp_path / "p.csv")
    order = sorted(range(n), key=lambda i: ids[i])
    assert back["filename"].tolist() == [ids[i] for i in order]
    assert back["true_label"].tolist() == [y[i] for i in order]
    np.testing.assert_array_equal(
        back[["probability_class_0", "probability_class_1"]].to_numpy(), proba[order]
    )


@FAST
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "id": replies,
                "task": st.sampled_from(["vqa", "region_to_text"]),
                "gold": replies,
                "response": st.none() | replies,
                "status": st.sampled_from(["ok", "failed"]),
                "extracted": replies,
                "attempts": st.integers(1, 3),
                "iou": st.floats(0, 1),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_vqa_predictions_read_back_identically(tmp_path: Path, rows: list[dict]) -> None:
    jsonl, csv = write_predictions(tmp_path, rows)
    assert read_jsonl(jsonl) == rows
    assert read_predictions(jsonl)["id"].tolist() == [row["id"] for row in rows]
    back = read_predictions(csv).to_dict("records")
    assert back == [row | {"response": row["response"] or ""} for row in rows]
