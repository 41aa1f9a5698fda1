"""Score a VQA run: per-record rows (gold, raw reply, what was extracted, its score) and metrics per task.

Failed model calls are never scored as wrong answers: they are left out of every metric, counted in
`n_failed` and listed with their error. Region replies are parsed in `region_style` (what the model writes,
or "auto": each reply's own markup decides, see `panderm.mllm.regions.detect_style`); gold answers are
always MedRegA region text (our JSONL format). Free-text replies are read without their region markup
(`panderm.mllm.regions.strip_regions`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from panderm.errors import ConfigError, DataError
from panderm.io import read_csv, read_jsonl, write_csv, write_jsonl
from panderm.mllm.answers import classification_scores, classify_free_text, closed_answer, vqa_scores
from panderm.mllm.cache import CacheResult
from panderm.mllm.evaluate import multi_box_scores, phrase_aware_scores, single_box_scores, token_scores
from panderm.mllm.regions import PARSE_STYLES, box_iou, parse_regions, strip_regions
from panderm.mllm.samples import VQASample
from panderm.mllm.text_metrics import report_text_scores

PREDICTIONS = ("predictions.jsonl", "predictions.csv")
# The text columns of a prediction row (`score_run` and its per-task scorers).
TEXT_COLUMNS = (
    "id",
    "task",
    "language",
    "gold",
    "response",
    "status",
    "error",
    "extracted",
    "parse_problems",
    "report",
)


def report_text(text: str) -> str:
    """A grounded report without its region markup, ref phrases included (and the separators they leave),
    for text metrics."""
    return strip_regions(text, keep_phrases=False).replace(" ,", " ").strip(" \n:：,，")


def _gold_regions(sample: VQASample) -> list:
    return parse_regions(sample.answer, sample.width or 1, sample.height or 1, "medrega")


def check_region_style(region_style: str) -> None:
    """ConfigError unless `region_style` is one of `PARSE_STYLES` (the styles and "auto")."""
    if region_style not in PARSE_STYLES:
        raise ConfigError(f"region_style={region_style!r} is not one of {', '.join(PARSE_STYLES)}")


def score_run(
    samples: Sequence[VQASample], results: Sequence[CacheResult], *, region_style: str = "medrega"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, rows): metrics = {"n", "n_failed", "failures", "tasks": {task: scores}}; one row a sample.
    `ConfigError` for a `region_style` that is not one of `PARSE_STYLES`, whatever the tasks."""
    check_region_style(region_style)
    rows: list[dict[str, Any]] = []
    by_task: dict[str, list[int]] = {}
    failures = []
    for i, (sample, result) in enumerate(zip(samples, results, strict=True)):
        rows.append(
            {
                "id": sample.id,
                "task": sample.task,
                "language": sample.language,
                "gold": sample.answer,
                "response": result.response,
                "status": result.status,
                "error": result.error,
                "attempts": result.attempts,
            }
        )
        if result.status == "ok":
            by_task.setdefault(sample.task, []).append(i)
        else:
            failures.append({"id": sample.id, "error": result.error})
    tasks = {}
    for task, index in by_task.items():
        scorer = SCORERS[task]
        tasks[task] = scorer(
            [samples[i] for i in index],
            [results[i].response or "" for i in index],
            [rows[i] for i in index],
            region_style,
        )
    metrics = {"n": len(samples), "n_failed": len(failures), "failures": failures, "tasks": tasks}
    return metrics, rows


def _text_to_region(samples, replies, rows, style) -> dict[str, Any]:
    golds = [_gold_regions(s) for s in samples]
    preds = [
        parse_regions(r, s.width or 1, s.height or 1, style) for s, r in zip(samples, replies, strict=True)
    ]
    for row, gold, pred in zip(rows, golds, preds, strict=True):
        row["extracted"] = json.dumps([[p, [list(map(float, b)) for b in bs]] for p, bs in pred])
        row["parse_problems"] = "; ".join(pred.problems)
        g, p = gold.boxes(), pred.boxes()
        row["iou"] = float(box_iou(p[:1], g[:1])[0, 0]) if len(g) and len(p) else 0.0
    out: dict[str, Any] = {
        "n": len(samples),
        "n_malformed_boxes": int(sum(p.n_dropped for p in preds)),
        "n_replies_without_box": int(sum(len(p.boxes()) == 0 for p in preds)),
        "multi_box": multi_box_scores(
            [p.boxes().tolist() for p in preds], [g.boxes().tolist() for g in golds]
        ),
        "phrase_aware": phrase_aware_scores(preds, golds),
    }
    single = [i for i, g in enumerate(golds) if len(g.boxes()) == 1]
    if single:
        out["single_box"] = single_box_scores(
            [preds[i].boxes().tolist() for i in single], [golds[i].boxes().tolist() for i in single]
        )
    return out


def _region_to_text(samples, replies, rows, style) -> dict[str, Any]:
    texts = [strip_regions(r) for r in replies]
    for row, text in zip(rows, texts, strict=True):
        row["extracted"] = text
    return token_scores(texts, [strip_regions(s.answer) for s in samples])


def _grounded_report(samples, replies, rows, style) -> dict[str, Any]:
    out = {}
    if any(len(_gold_regions(s)) for s in samples):
        out = _text_to_region(samples, replies, rows, style)
    texts = [report_text(r) for r in replies]
    for row, text in zip(rows, texts, strict=True):
        row["report"] = text
    out["text"] = report_text_scores(texts, [report_text(s.answer) for s in samples])
    out["n"] = len(samples)
    return out


def _vqa(samples, replies, rows, style) -> dict[str, Any]:
    golds = [s.answer for s in samples]
    for row, reply in zip(rows, replies, strict=True):
        row["extracted"] = closed_answer(reply)
    return vqa_scores(replies, golds)


def _classify(samples, replies, rows, style) -> dict[str, Any]:
    """Each reply is mapped to its own sample's class list (meta "classes", else every gold answer), then
    scored over the union of those lists (so English and Chinese names are separate classes)."""
    fallback = list(dict.fromkeys(s.answer for s in samples))
    lists = [list(s.meta.get("classes") or fallback) for s in samples]
    for row, reply, classes in zip(rows, replies, lists, strict=True):
        row["extracted"] = classify_free_text(reply, classes)
        row["correct"] = row["extracted"] == row["gold"]
    union = list(dict.fromkeys(c for classes in lists for c in classes))
    mapped = [row["extracted"] or "" for row in rows]
    return classification_scores(mapped, [s.answer for s in samples], union)


SCORERS = {
    "text_to_region": _text_to_region,
    "region_to_text": _region_to_text,
    "grounded_report": _grounded_report,
    "vqa": _vqa,
    "classify": _classify,
}


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers per task for tables: box acc@0.5 and F1, token F1, ROUGE-L, closed VQA accuracy, accuracy
    (undefined ones left out)."""
    out: dict[str, float] = {}
    for task, m in metrics["tasks"].items():
        if task in ("text_to_region", "grounded_report") and "multi_box" in m:
            if "single_box" in m:
                out[f"{task}/acc@0.5"] = m["single_box"]["acc@0.5"]
            out[f"{task}/box_f1"] = m["multi_box"]["f1"]
        if task == "grounded_report":
            out[f"{task}/rouge_l"] = m["text"].get("rouge_l")
        if task == "region_to_text":
            out[f"{task}/token_f1"] = m["f1"]
        if task == "vqa":
            out[f"{task}/closed_accuracy"] = m.get("closed_accuracy")
        if task == "classify":
            out[f"{task}/accuracy"] = m["accuracy"]
    return {k: v for k, v in out.items() if v is not None}


def write_predictions(run_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write `score_run`'s rows atomically as `predictions.jsonl` and `predictions.csv` in `run_dir`."""
    jsonl, csv = (Path(run_dir) / name for name in PREDICTIONS)
    return [write_jsonl(jsonl, rows), write_csv(csv, pd.DataFrame(list(rows)))]


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A `write_predictions` file back as a DataFrame: the JSONL as written; the CSV with its `TEXT_COLUMNS`
    as written (a missing text, such as the reply of a failed call, reads as ""). `DataError` names the file
    when it cannot be read."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return pd.DataFrame.from_records(read_jsonl(path))
    if path.suffix == ".csv":
        return read_csv(path, text=TEXT_COLUMNS)
    raise DataError(f"{path}: predictions are .jsonl or .csv files, not {path.suffix!r}")
