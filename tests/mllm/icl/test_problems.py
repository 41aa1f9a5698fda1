"""Loading SMMILE-format problems (CSV, JSONL, Parquet with image bytes) and generating SynthDerm ones."""

from __future__ import annotations

import base64
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.errors import DataError, ManifestError
from panderm.mllm.icl.problems import load_problems, write_problems
from panderm.mllm.icl.synth import make_icl_problems


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def smmile_rows(folder: Path) -> pd.DataFrame:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(7):
        (folder / "img" / f"{i}.png").write_bytes(png(i * 30))
    rows = [  # two problems, rows out of order; p2's query image is missing
        ("p1", 3, "Q?", "cat", "img/2.png"),
        ("p1", 1, "Q?", "dog", "img/0.png"),
        ("p1", 2, "Q?", "cat", "img/1.png"),
        ("p2", 1, "Q2?", "yes", "img/3.png"),
        ("p2", 2, "Q2?", "no", "img/missing.png"),
        ("p3", 1, "Q3?", "x", "img/4.png"),
    ]
    frame = pd.DataFrame(rows, columns=["problem_id", "order", "question", "answer", "image"])
    return frame.assign(
        image_url="https://example.org/x.png",
        speciality=["Dermatology"] * 3 + ["Radiology"] * 2 + ["Cardiology"],
        flag_image_type=["dermoscopy"] * 3 + ["x-ray"] * 2 + ["ecg"],
        flag_answer_format=["short"] * 6,
        author="someone",
    )


def test_smmile_csv_groups_sorts_and_excludes(tmp_path: Path) -> None:
    smmile_rows(tmp_path).to_csv(tmp_path / "problems.csv", index=False)
    loaded = load_problems(tmp_path / "problems.csv")
    assert [p.problem_id for p in loaded.problems] == ["p1", "p3"]
    p1 = loaded.problems[0]
    assert [d.answer for d in p1.demos] == ["dog", "cat"]  # sorted by order, the last row is the query
    assert p1.query.answer == "cat" and p1.query.image.path == tmp_path / "img" / "2.png"
    assert (p1.speciality, p1.modality, p1.answer_format) == ("Dermatology", "dermoscopy", "short")
    assert p1.flags == {"flag_image_type": "dermoscopy", "flag_answer_format": "short"}
    assert loaded.problems[1].demos == ()  # a query alone is a 0-shot problem
    assert list(loaded.excluded) == ["p2"] and "missing.png" in loaded.excluded["p2"]


def test_image_bytes_and_data_urls(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "problem_id": ["a", "a"],
            "order": [1, 2],
            "question": ["Q?", "Q?"],
            "answer": ["x", "y"],
            "image": [{"bytes": png(10), "path": None}, None],
            "image_url": [None, "data:image/png;base64," + base64.b64encode(png(20)).decode()],
        }
    )
    frame.to_parquet(tmp_path / "p.parquet")
    (problem,) = load_problems(tmp_path / "p.parquet").problems
    assert problem.demos[0].image.bytes() == png(10)
    assert problem.query.image.bytes() == png(20)


def test_remote_urls_are_not_downloaded(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "problem_id": ["a"],
            "order": [1],
            "question": ["Q"],
            "answer": ["x"],
            "image_url": ["https://x/y.png"],
        }
    ).to_csv(tmp_path / "p.csv", index=False)
    loaded = load_problems(tmp_path / "p.csv")
    assert loaded.problems == () and "not downloaded" in loaded.excluded["a"]


def test_every_row_problem_is_reported(tmp_path: Path) -> None:
    frame = smmile_rows(tmp_path).astype({"order": object})
    frame.loc[0, "answer"] = ""
    frame.loc[1, "order"] = 3  # duplicate order within p1
    frame.loc[5, "order"] = "first"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError) as info:
        load_problems(tmp_path / "bad.csv")
    message = str(info.value)
    assert "bad.csv" in message and "row 1: empty answer" in message
    assert "problem p1: order value(s) [3]" in message and "row 6: order 'first' is not a number" in message
    smmile_rows(tmp_path).drop(columns=["question"]).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ManifestError, match="missing column 'question'"):
        load_problems(tmp_path / "cols.csv")
    with pytest.raises(DataError, match="not found"):
        load_problems(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown problems format"):
        load_problems(tmp_path / "img" / "0.png")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    smmile_rows(tmp_path).to_csv(tmp_path / "problems.csv", index=False)
    loaded = load_problems(tmp_path / "problems.csv")
    out = write_problems(loaded.problems, tmp_path / "ours.jsonl")
    again = load_problems(out)
    assert again.problems == loaded.problems


def test_synthderm_problems(tmp_path: Path) -> None:
    manifest = generate_synthderm(tmp_path / "data", n_patients=24, image_size=32, seed=0)
    path = make_icl_problems(manifest, tmp_path / "problems.jsonl", n_problems=12, seed=0)
    problems = load_problems(path).problems
    assert len(problems) == 12
    assert [len(p.demos) for p in problems] == [2, 3, 4, 5] * 3
    names = {"nevus", "melanoma", "seborrheic keratosis", "basal cell carcinoma"}
    assert all({d.answer for d in p.demos} | {p.query.answer} <= names for p in problems)
    relevant = [sum(d.answer == p.query.answer for d in p.demos) for p in problems]
    assert 6 <= sum(r > 0 for r in relevant) <= 12  # ~75% have the query's class
    for p, r in zip(problems, relevant, strict=True):
        counts = Counter(d.answer for d in p.demos if d.answer != p.query.answer)
        assert max(counts.values()) - min(counts.values()) <= 1  # distractors dealt without replacement
        # the query's class, when present, is never outnumbered: once for 2-4 demos (3 other classes), twice
        # for 5 (one of the 4 distractors must repeat)
        assert r in (0, 1 if len(p.demos) <= 4 else 2) and (r == 0 or r >= max(counts.values()))
    again = make_icl_problems(manifest, tmp_path / "again.jsonl", n_problems=12, seed=0)
    assert load_problems(again).problems == tuple(problems)  # deterministic for a seed
    other = load_problems(make_icl_problems(manifest, tmp_path / "other.jsonl", n_problems=12, seed=1))
    assert other.problems != tuple(problems)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_cells_round_trip_as_written(tmp_path: Path, suffix: str) -> None:
    """Answers, questions and ids such as "None", "NA", "007", a lone \\r or U+2028 come back as written."""
    frame = smmile_rows(tmp_path).iloc[:3]
    frame = frame.assign(problem_id="007", question="None\rof\u2028these?", answer=["NA", "None", "null"])
    frame.to_csv(tmp_path / "problems.csv", index=False, lineterminator="\r\n")
    loaded = load_problems(tmp_path / "problems.csv")
    (problem,) = loaded.problems
    assert problem.problem_id == "007" and problem.query.question == "None\rof\u2028these?"
    assert [e.answer for e in (*problem.demos, problem.query)] == ["None", "null", "NA"]  # by order 1, 2, 3
    again = load_problems(write_problems(loaded.problems, tmp_path / f"ours{suffix}"))
    assert again.problems == loaded.problems
