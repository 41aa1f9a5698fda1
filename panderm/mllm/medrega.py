"""MedRegA conversation JSONL <-> `VQASample`: read with task inference and full validation, write back.

A record is ``{"id", "image", "conversations": [{"from": "human" | "gpt", "value"}, ...]}`` plus ``width`` and
``height`` (pixels) on region rows. The ``<image>`` placeholder in a human value marks where the image goes;
the last gpt value is the gold answer and earlier turns are history. What export needs to give the record
back unchanged (the original id and image string, the placeholder layout) is kept in ``meta["medrega"]``;
any other field of the record is kept in ``meta`` under its own name and written back as a field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from panderm.errors import ConfigError, DataError, ManifestError
from panderm.io import atomic_write_text, jsonl_line
from panderm.mllm.conversation import Conversation, ImagePart, Part, TextPart, Turn
from panderm.mllm.regions import parse_regions
from panderm.mllm.samples import TASKS, VQASample
from panderm.paths import resolve_under

__all__ = [
    "IMAGE_TOKEN",
    "MEDREGA_META",
    "REGION_TASKS",
    "infer_language",
    "infer_task",
    "read_medrega",
    "write_medrega",
]

IMAGE_TOKEN = "<image>"
MEDREGA_META = "medrega"
"""`meta` key holding the export layout: ``id`` and ``image`` as in the file, ``bare`` (human-turn ordinals
whose placeholder had no newline after it) and ``implicit_image`` (no placeholder at all)."""
REGION_TASKS: tuple[str, ...] = ("text_to_region", "region_to_text")
"""Tasks whose records must carry ``width`` and ``height`` (grounded reports may lack them, as in MedRegA's
own report-grounding rows; their boxes then stay on the 0-999 grid)."""

_CORE_FIELDS = ("id", "image", "width", "height", "conversations")
_ROLE_OF = {"human": "user", "gpt": "assistant"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Task inference, checked in this order on the question (the last human value).
_NUMERIC_BOX = re.compile(r"<box>\s*[\[(]\s*[\[(]?\s*\d")
_RECOGNISE = re.compile(r"recogni[sz]e the (object|structure|region)|object recognition|识别", re.I)
_LOCATE = re.compile(r"\blocate\b|\blocali[sz]e\b|object detection|find all (the )?regions|定位|框出", re.I)
_DESCRIBE = re.compile(r"\bdescrib|\breport\b|描述|报告", re.I)
_REPORT = re.compile(r"report generation|(generate|write) (a|the)( \w+)? report|诊断报告|报告", re.I)
_CLASSIFY = re.compile(r"possible diagnos|诊断", re.I)


def infer_task(question: str) -> str:
    """The task a MedRegA-style prompt asks for (English or Chinese keywords).

    A box with numbers in the question, or "recognise the object", gives region_to_text; "locate"/"find all
    regions"/定位 gives text_to_region, or grounded_report when it also asks to describe/report; report
    generation/诊断报告 gives grounded_report (a report that may have no boxes); "possible diagnoses"/诊断
    gives classify; anything else is vqa.
    """
    if _NUMERIC_BOX.search(question) or _RECOGNISE.search(question):
        return "region_to_text"
    if _LOCATE.search(question):
        return "grounded_report" if _DESCRIBE.search(question) else "text_to_region"
    if _REPORT.search(question):
        return "grounded_report"
    if _CLASSIFY.search(question):
        return "classify"
    return "vqa"


def infer_language(text: str) -> str:
    """ "zh" when `text` contains CJK ideographs, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _human_parts(value: str, image: ImagePart, ordinal: int, layout: dict[str, Any]) -> tuple[Part, ...]:
    """Split a human value at the placeholder: text before, the image, text after (one newline dropped)."""
    if IMAGE_TOKEN not in value:
        return (TextPart(value),) if value else ()
    before, after = value.split(IMAGE_TOKEN, 1)
    if after.startswith("\n"):
        after = after[1:]
    else:
        layout.setdefault("bare", []).append(ordinal)
    return tuple(
        p for p in (TextPart(before) if before else None, image, TextPart(after) if after else None) if p
    )


def _check_record(obj: object, forced_task: str | None) -> list[str]:
    """Every problem of one parsed record (without the line prefix)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = []
    if "id" not in obj:
        problems.append("missing 'id'")
    elif not (isinstance(obj["id"], str) and obj["id"]) and not (
        isinstance(obj["id"], int) and not isinstance(obj["id"], bool)
    ):
        problems.append(f"'id' must be an integer or a non-empty string, got {obj['id']!r}")
    if "image" not in obj:
        problems.append("missing 'image'")
    elif not isinstance(obj["image"], str) or not obj["image"].strip():
        problems.append(f"'image' must be a non-empty string (one image per record), got {obj['image']!r}")
    for key, other in (("width", "height"), ("height", "width")):
        if key in obj and not _is_count(obj[key]):
            problems.append(f"'{key}' must be a positive integer, got {obj[key]!r}")
        if key in obj and other not in obj:
            problems.append(f"'{key}' given without '{other}'")
    if "task" in obj and obj["task"] not in TASKS:
        problems.append(f"'task' {obj['task']!r} is not one of {', '.join(TASKS)}")
    if "language" in obj and not (isinstance(obj["language"], str) and obj["language"]):
        problems.append(f"'language' must be a non-empty string, got {obj['language']!r}")
    if MEDREGA_META in obj:
        problems.append(f"field {MEDREGA_META!r} is reserved")
    if "conversations" not in obj:
        return [*problems, "missing 'conversations'"]
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        return [*problems, "'conversations' must be a non-empty list of {from, value} objects"]
    roles_ok, n_images = True, 0
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            problems.append(f"turn {i}: expected an object with 'from' and 'value'")
            roles_ok = False
            continue
        if turn.get("from") not in _ROLE_OF:
            problems.append(f"turn {i}: 'from' must be 'human' or 'gpt', got {turn.get('from')!r}")
            roles_ok = False
        value = turn.get("value")
        if not isinstance(value, str):
            problems.append(f"turn {i}: 'value' must be a string, got {value!r}")
        elif not value.strip():
            problems.append(f"turn {i}: empty 'value'")
        elif turn.get("from") == "human":
            n_images += value.count(IMAGE_TOKEN)
    if n_images > 1:
        problems.append(f"'{IMAGE_TOKEN}' appears {n_images} times; a record has one image")
    if not roles_ok:
        return problems
    roles = [t["from"] for t in turns]
    if "gpt" not in roles:
        return [*problems, "no 'gpt' turn (the last gpt turn is the gold answer)"]
    for i, role in enumerate(roles):
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            return [
                *problems,
                f"turn {i + 1}: expected '{expected}' (turns alternate human, gpt), got '{role}'",
            ]
    if roles[-1] != "gpt":
        return [*problems, f"the last turn is '{roles[-1]}'; it must be the gpt gold answer"]
    if problems or not all(isinstance(t["value"], str) for t in turns):
        return problems
    task = forced_task or obj.get("task") or infer_task(turns[-2]["value"].replace(IMAGE_TOKEN, ""))
    has_size = "width" in obj and "height" in obj
    if task in REGION_TASKS and not has_size:
        problems.append(f"task {task} needs 'width' and 'height' (region text is scaled against them)")
    width, height = (obj["width"], obj["height"]) if has_size else (999, 999)
    if task in ("text_to_region", "grounded_report"):
        found = parse_regions(turns[-1]["value"], width, height)
        problems += [f"answer: {p}" for p in found.problems]
        if task == "text_to_region" and not found.boxes().size and not found.problems:
            problems.append("answer: a text_to_region answer needs at least one <box>")
    elif task == "region_to_text":
        found = parse_regions(turns[-2]["value"], width, height)
        problems += [f"question: {p}" for p in found.problems]
        if not found.boxes().size and not found.problems and not _RECOGNISE.search(turns[-2]["value"]):
            problems.append("question: a region_to_text question needs a <box>")
    return problems


def _to_sample(obj: dict[str, Any], image_path: Path, forced_task: str | None, source: str) -> VQASample:
    """Build the sample of a record that passed `_check_record`, its image at `image_path`."""
    turns = obj["conversations"]
    image = ImagePart(path=image_path, source=source)
    layout: dict[str, Any] = {"id": obj["id"], "image": obj["image"]}
    implicit = not any(IMAGE_TOKEN in t["value"] for t in turns if t["from"] == "human")
    if implicit:
        layout["implicit_image"] = True
    built: list[Turn] = []
    for i, turn in enumerate(turns[:-1]):
        if turn["from"] == "gpt":
            built.append(Turn("assistant", (turn["value"],)))
            continue
        parts = _human_parts(turn["value"], image, i // 2, layout)
        if implicit and i == 0:
            parts = (image, *parts)
        built.append(Turn("user", parts))
    question = turns[-2]["value"].replace(IMAGE_TOKEN, "")
    extras = {k: v for k, v in obj.items() if k not in _CORE_FIELDS}
    task = forced_task or extras.get("task") or infer_task(question)
    human = "".join(t["value"] for t in turns if t["from"] == "human")
    language = extras.get("language") or infer_language(human)
    return VQASample(
        id=str(obj["id"]),
        conversation=Conversation(tuple(built)),
        answer=turns[-1]["value"],
        task=task,
        image=image_path,
        width=obj.get("width"),
        height=obj.get("height"),
        language=language,
        meta={**extras, MEDREGA_META: layout},
    )


def read_medrega(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    task: str | None = None,
    *,
    allow_outside_root: bool = False,
) -> list[VQASample]:
    """One `VQASample` per record of a MedRegA JSONL file; images are resolved, never read.

    `image_root` (default: the file's folder) is what relative image paths are resolved against; an image
    path that leads outside it (``../``, an absolute path elsewhere) is a problem of its line unless
    `allow_outside_root` (`panderm.paths.resolve_under`). `task`
    forces every sample's task; None takes a record's own ``task`` field, else infers it from the question
    (`infer_task`); ``language`` is likewise the record's field or "zh" when a human value has CJK. Raises
    `ConfigError` for an unknown `task`, `DataError` when the file cannot be read, and one `ManifestError`
    (a `DataError`) naming the file and listing every problem with its line number.
    """
    if task is not None and task not in TASKS:
        raise ConfigError(f"task={task!r} is not one of {', '.join(TASKS)}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # U+2028 & co. may sit inside JSON strings
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read MedRegA JSONL ({exc})") from exc
    root = Path(image_root) if image_root is not None else path.parent
    samples, problems = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        found = _check_record(obj, task)
        if found:
            problems += [f"line {lineno}: {p}" for p in found]
            continue
        try:
            image = resolve_under(
                root, obj["image"], allow_outside=allow_outside_root, option="allow_outside_root=true"
            )
        except DataError as exc:
            problems.append(f"line {lineno}: image {exc}")
            continue
        try:
            samples.append(_to_sample(obj, image, task, f"{path} line {lineno}"))
        except ConfigError as exc:  # a turn the checks above let through; still reported with its line
            problems.append(f"line {lineno}: {exc}")
    if not samples and not problems:
        problems.append("no records")
    if problems:
        raise ManifestError(str(path), problems)
    return samples


def _image_name(sample: VQASample, image: Path, root: Path) -> str:
    """The image string to write: the original when it still names the same file, else a relative path
    under `root`, else an absolute one."""
    target = Path(os.path.normpath(os.path.abspath(image)))
    original = sample.meta.get(MEDREGA_META, {}).get("image")
    if isinstance(original, str) and resolve_under(root, original, allow_outside=True) == target:
        return original
    try:
        return target.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return target.as_posix()


def _human_value(parts: Iterable[Part], bare: bool, implicit: bool) -> str:
    out: list[str] = []
    previous_text = False
    for part in parts:
        if isinstance(part, ImagePart):
            if not implicit:
                out.append(IMAGE_TOKEN if bare else IMAGE_TOKEN + "\n")
            previous_text = False
        else:
            out.append(("\n" if previous_text else "") + part.text)
            previous_text = True
    return "".join(out)


def _to_record(sample: VQASample, root: Path) -> dict[str, Any]:
    layout = sample.meta.get(MEDREGA_META, {})
    paths = {p.path for p in sample.conversation.images() if p.path is not None}
    if any(p.path is None for p in sample.conversation.images()):
        raise ConfigError(f"sample {sample.id}: MedRegA records need image files, not in-memory images")
    image = sample.image if sample.image is not None else next(iter(paths), None)
    if image is None or len(paths | {Path(image)}) > 1:
        raise ConfigError(f"sample {sample.id}: a MedRegA record needs exactly one image file")
    turns: list[dict[str, str]] = []
    system = ""
    ordinal = 0
    for turn in sample.conversation.turns:
        if turn.role == "system":  # MedRegA has no system role: it leads the first human value
            system = turn.text + "\n"
        elif turn.role == "user":
            value = _human_value(
                turn.parts,
                ordinal in layout.get("bare", ()),
                bool(layout.get("implicit_image")) and not turns,
            )
            turns.append({"from": "human", "value": (system if not turns else "") + value})
            ordinal += 1
        else:
            turns.append({"from": "gpt", "value": turn.text})
    turns.append({"from": "gpt", "value": sample.answer})
    original_id = layout.get("id")
    record: dict[str, Any] = {
        "id": original_id if original_id is not None and str(original_id) == sample.id else sample.id,
        "image": _image_name(sample, Path(image), root),
    }
    if sample.width is not None and sample.height is not None:
        record.update(width=sample.width, height=sample.height)
    record["conversations"] = turns
    for key, value in sample.meta.items():
        if key == MEDREGA_META:
            continue
        if key in _CORE_FIELDS:
            raise ConfigError(f"sample {sample.id}: meta key {key!r} clashes with a MedRegA record field")
        record[key] = value
    question = turns[-2]["value"].replace(IMAGE_TOKEN, "")
    if "task" in sample.meta or infer_task(question) != sample.task:
        record["task"] = sample.task
    human = "".join(t["value"] for t in turns if t["from"] == "human")
    if "language" in sample.meta or infer_language(human) != sample.language:
        record["language"] = sample.language
    return record


def write_medrega(
    samples: Iterable[VQASample],
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write samples as MedRegA JSONL (atomically); the inverse of `read_medrega`.

    Image paths are written relative to `image_root` (default: the output file's folder) when under it,
    else absolute; a sample read by `read_medrega` keeps its original image string while it still names the
    same file. `meta` entries become record fields; ``task``/``language`` fields are added when the prompt
    alone would not give them back. A system turn is put at the start of the first human value. Raises
    `ConfigError` for a sample MedRegA cannot hold (no image file, several images, a meta key clashing with a
    record field, a meta value that is not JSON).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    lines = []
    for sample in samples:
        record = _to_record(sample, root)
        try:
            lines.append(jsonl_line(record))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sample {sample.id}: meta is not JSON-serialisable ({exc})") from exc
    return atomic_write_text(path, "".join(lines))
