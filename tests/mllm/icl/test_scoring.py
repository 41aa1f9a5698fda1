"""ICL scoring: SMMILE's exact-match rule reproduces every published accuracy of model_comparison.txt, MCQA
files are scored by is_correct, panderm's own layout (failed calls, extraction failures, JSONL) is read, and
bad files are refused with the file, row and column named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from panderm.errors import DataError
from panderm.mllm.icl.scoring import (
    exact_match,
    read_results,
    score_command,
    score_file,
    score_frame,
    smmile_normalise,
)
from tests.conftest import shared_path

# model_comparison.txt's model names -> result file, `{mode}` being the table's Mode (0-shot or ICL)
TABLE_FILES = {
    "llavaonevision_7B": "result_llavaonevision_7b_{mode}.csv",
    "llavaonevision_0.5B": "result_llavaonevision_0.5b_{mode}.csv",
    "MedVLM-R1": "result_MedVLM-R1_{mode}_open.csv",
    "llavamed_7B": "result_llavamed_{mode}.csv",
    "llama33textonly (baseline)": "result_llama33textonly_{mode}.csv",
    "llava_7B": "result_llava_7b_{mode}.csv",
    "llava_13B": "result_llava_13b_{mode}.csv",
    "llavanext_7B": "result_llavanext_7b_{mode}.csv",
    "medgemma_4b": "result_medgemma_4b_{mode}_open.csv",
    "qwen3B": "result_qwen3B_{mode}_open.csv",
    "qwen7B": "result_qwen7B_{mode}_open.csv",
    "qwen32B": "result_qwen32B_{mode}_open.csv",
    "qwen72B": "result_qwen72B_{mode}_open.csv",
    "llama32_vision_90b": "result_llama32_vision_90b_{mode}_open.csv",
    "gpt-4o": "result_gpt-4o_{mode}_open.csv",
    "claude-3-7-sonnet": "result_claude-3-7-sonnet_{mode}_open.csv",
    "majority (baseline)": "result_majority_{mode}.csv",
    "random (baseline)": "result_random_{mode}.csv",
}
SUMMARY_ROW = re.compile(r"^(.+?)\s*\|\s*(0-shot|ICL)\s*\|\s*([\d.]+)\s*\|\s*(\d+)/(\d+)\s*\|")


def summary_table(path: Path) -> list[tuple[str, str, float, int]]:
    """(model, mode, accuracy, total) for each row of the MODEL COMPARISON SUMMARY table."""
    text = path.read_text(encoding="utf-8").split("PER-PROBLEM")[0]
    return [
        (m[1], m[2], float(m[3]), int(m[5]))
        for m in map(SUMMARY_ROW.match, text.splitlines())
        if m is not None
    ]


@pytest.mark.shared_data
def test_every_published_exact_match_accuracy_is_reproduced():
    root = shared_path("smmile_results")
    rows = summary_table(root / "model_comparison.txt")
    assert len(rows) == 34  # 16 models at 0-shot, 18 (with the majority and random baselines) with ICL
    assert {model for model, *_ in rows} == set(TABLE_FILES)  # every table row has a file, every file a row
    for model, mode, accuracy, total in rows:
        result = score_file(root / TABLE_FILES[model].format(mode=mode))
        assert result["metric"] == "exact_match"
        assert (result["n"], result["accuracy"]) == (total, accuracy), (model, mode, result)
    spot = {(m, mode): a for m, mode, a, _ in rows}
    assert spot["qwen3B", "ICL"] == 26.13 and spot["random (baseline)", "ICL"] == 23.42
    assert spot["llavamed_7B", "ICL"] == 0.0 and spot["qwen32B", "ICL"] == 31.53


@pytest.mark.shared_data
def test_mcqa_files_are_scored_by_is_correct():
    root = shared_path("smmile_results")
    files = sorted(root.glob("result_*_mcqa.csv"))
    assert len(files) == 34  # 16 models x 2 settings + the majority and random baselines
    for path in files:
        result = score_file(path)
        recount = pd.read_csv(path)["is_correct"]  # an independent recount of the published column
        assert result["metric"] == "is_correct"
        assert result["n"] == 111 and result["correct"] == int(recount.sum()), path.name
        assert result["accuracy"] == round(100 * recount.mean(), 2)
    assert score_file(root / "result_qwen3B_ICL_mcqa.csv")["correct"] == 30  # 27.03 %
    # MedVLM-R1's MCQA files have neither true_answer nor generated_answer, only is_correct
    medvlm = score_file(root / "result_MedVLM-R1_0-shot_mcqa.csv")
    assert (medvlm["correct"], medvlm["accuracy"]) == (40, 36.04)


@pytest.mark.shared_data
def test_smmile_pp_files_score_all_1038_permuted_problems():
    root = shared_path("smmile_pp_results")
    results = score_command(
        [str(root / "result_qwen7B_ICL_open.csv"), str(root / "result_qwen72B_ICL_mcqa.csv")]
    )
    assert [(r["n"], r["correct"], r["accuracy"], r["metric"]) for r in results] == [
        (1038, 367, 35.36, "exact_match"),
        (1038, 656, 63.2, "is_correct"),
    ]
    assert results[0]["file"].endswith("result_qwen7B_ICL_open.csv")
    assert all(json.loads(json.dumps(r)) == r for r in results)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Yes,  Charcot's\tFOOT.\n", "yes charcots foot"),
        ("Left-sided (T2) pneumothorax!", "leftsided t2 pneumothorax"),  # punctuation deleted, not spaced
        ("Charcot´s foot", "charcot´s foot"),  # non-ASCII punctuation is kept
        (float("nan"), "nan"),  # an empty CSV cell
        (None, "none"),
        (3, "3"),
    ],
)
def test_smmile_normalise(text, expected):
    assert smmile_normalise(text) == expected


def test_exact_match_and_strict():
    assert exact_match("Melanoma.", " melanoma ")
    assert exact_match("Hydropneumothorax, LEFT", "hydropneumothorax left")
    assert not exact_match("Hydropneumothorax, right", "Hydropneumothorax, left")
    assert not exact_match("Melanoma.", "melanoma", strict=True)
    assert exact_match("  Melanoma.\n", "Melanoma.", strict=True)
    assert exact_match(float("nan"), "NaN.")  # upstream quirk: an empty answer equals a "nan" answer


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_empty_cells_and_pandas_na_strings_read_as_nan(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text(
        "problem_id,true_answer,generated_answer\n"
        "p1,Nan.,\n"  # empty cell -> NaN -> "nan" == normalised "Nan."
        "p2,none,None\n"  # pandas reads the cell "None" as NaN -> "nan" != "none"
        "p3,Melanoma,melanoma.\n"
        "p4,Melanoma, Melanoma \n",
        encoding="utf-8",
    )
    expected = {"file": str(path), "n": 4, "correct": 3, "accuracy": 75.0, "metric": "exact_match"}
    assert score_file(path) == expected
    assert score_file(path, strict=True)["correct"] == 1  # p4 only: equal once stripped


def ours(**columns) -> dict:
    row = {
        "problem_id": "p1",
        "base_problem_id": "p1",
        "strategy": "original",
        "variant": "original",
        "final_question": "What is shown?",
        "true_answer": "Melanoma",
        "generated_answer": "melanoma",
        "full_response": "melanoma",
        "status": "ok",
        "error": "",
        "mode": "open",
        "correct_option": "",
        "selected_option": "",
        "is_correct": None,
        "extraction": "",
    }
    return row | columns


def test_our_open_file_leaves_failed_calls_out(tmp_path):
    rows = [
        ours(problem_id="p1"),
        ours(problem_id="p2", generated_answer="naevus"),
        ours(problem_id="p3", status="failed", generated_answer=None, error="BackendError: HTTP 503"),
    ]
    path = write_csv(tmp_path / "open.csv", rows)
    assert score_file(path) == {
        "file": str(path),
        "n": 2,
        "correct": 1,
        "accuracy": 50.0,
        "metric": "exact_match",  # is_correct is there but empty: mode says open
        "failed": 1,
    }


def test_our_mcqa_file_counts_extraction_failures(tmp_path):
    rows = [
        ours(problem_id="p1", mode="mcqa", is_correct=True, extraction="tag"),
        ours(problem_id="p2", mode="mcqa", is_correct=False, extraction="failed"),
        ours(problem_id="p3", mode="mcqa", is_correct=False, extraction="letter"),
        ours(problem_id="p4", mode="mcqa", is_correct=None, status="failed", extraction=""),
    ]
    result = score_file(write_csv(tmp_path / "mcqa.csv", rows))
    assert (result["n"], result["correct"], result["accuracy"]) == (3, 1, 33.33)
    assert (result["metric"], result["failed"], result["extraction_failed"]) == ("is_correct", 1, 1)


def test_jsonl_scores_like_csv(tmp_path):
    rows = [
        ours(problem_id=f"p{i}", generated_answer=answer) for i, answer in enumerate(["Melanoma!", "x", "y"])
    ]
    csv = score_file(write_csv(tmp_path / "r.csv", rows))
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    assert {**score_file(jsonl), "file": csv["file"]} == csv
    assert csv["correct"] == 1


def test_all_failed_gives_null_accuracy(tmp_path):
    result = score_frame(pd.DataFrame([ours(status="failed")]))
    assert (result["n"], result["accuracy"], result["failed"]) == (0, None, 1)
    assert result["file"] == "<results frame>"


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: result file not found"):
        read_results(tmp_path / "nope.csv")
    (tmp_path / "r.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match=r"r\.parquet: unsupported result file type '\.parquet'"):
        read_results(tmp_path / "r.parquet")


def test_missing_columns_are_named(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [{"problem_id": "p1", "true_answer": "a"}])
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) 'generated_answer'"):
        read_results(path)
    path = write_csv(tmp_path / "noid.csv", [{"is_correct": True}])
    with pytest.raises(DataError, match=r"noid\.csv: missing column\(s\) 'problem_id'"):
        read_results(path)


def test_bad_values_name_file_row_and_column(tmp_path):
    path = write_csv(
        tmp_path / "m.csv", [ours(mode="mcqa", is_correct=True), ours(mode="mcqa", is_correct="maybe")]
    )
    with pytest.raises(DataError, match=r"m\.csv: row 2, column 'is_correct': 'maybe' is not True or False"):
        score_file(path)
    path = write_csv(tmp_path / "s.csv", [ours(), ours(), ours(status="pending")])
    with pytest.raises(
        DataError, match=r"s\.csv: row 3, column 'status': 'pending' is not one of ok, failed"
    ):
        score_file(path)
    path = write_csv(tmp_path / "x.csv", [ours(mode="mcqa", is_correct=True), ours(mode="open")])
    with pytest.raises(DataError, match=r"x\.csv: column 'mode' mixes open and mcqa"):
        score_file(path)


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(ours()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.jsonl: line 2 is not valid JSON"):
        read_results(path)
