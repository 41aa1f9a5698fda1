"""Region text formats (MedRegA, Qwen2-VL, Qwen2.5-VL, normalised) and box matching.

Boxes are ``[x1, y1, x2, y2]`` in pixels of the original image (floats allowed). Parsers never raise on a
malformed box: they drop it and report it, with the offending snippet, in ``RegionParse.problems``.
Written by hand because no well-kept library parses these model-specific text forms.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from panderm.errors import ConfigError

__all__ = [
    "NORMALISED_DECIMALS",
    "STYLES",
    "Region",
    "RegionParse",
    "box_iou",
    "format_regions",
    "match_boxes",
    "parse_regions",
]

Region = tuple[str | None, list[list[float]]]

STYLES = ("medrega", "qwen2", "qwen", "normalised")
NORMALISED_DECIMALS = 4
"""Decimals the "normalised" style writes; its quantisation step is 10**-NORMALISED_DECIMALS."""

# Full-width (Chinese) punctuation -> ASCII. Every mapping is one character to one character, so offsets in
# the translated text are offsets in the original, and phrases and snippets are sliced from the original.
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FULLWIDTH.update({0x3000: 0x20, 0x3010: 0x5B, 0x3011: 0x5D, 0x3014: 0x5B, 0x3015: 0x5D, 0x3001: 0x2C})

# (max value, scale) for the styles whose integers are normalised to a fixed grid.
_GRID = {"medrega": 999, "qwen2": 1000}

_MEDREGA_TAGS = re.compile(r"<ref>(?P<ref>.*?)</ref>|<box>(?P<box>.*?)</box>", re.DOTALL)
_QWEN2_TAGS = re.compile(
    r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>|<\|box_start\|>(?P<box>.*?)<\|box_end\|>",
    re.DOTALL,
)
_INNER_GROUP = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_SEPARATORS = re.compile(r"[\s,;\[\]()]+")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)  # a brace pair with no brace inside
_DECODER = json.JSONDecoder()


class RegionParse(list):
    """A list of ``(phrase, [boxes in pixels])`` with the parse's ``problems`` (one per dropped box or
    unreadable fragment) and ``n_dropped`` (boxes found but dropped as malformed)."""

    def __init__(self, regions: Iterable[Region] = (), problems: Iterable[str] = (), n_dropped: int = 0):
        super().__init__(regions)
        self.problems: list[str] = list(problems)
        self.n_dropped = n_dropped

    @property
    def regions(self) -> list[Region]:
        """The parsed regions as a plain list."""
        return list(self)

    def boxes(self) -> np.ndarray:
        """All boxes of all regions as an ``(N, 4)`` float array, in order."""
        flat = [b for _, bs in self for b in bs]
        return np.asarray(flat, dtype=float).reshape(-1, 4)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ConfigError(f"unknown region style {style!r}; expected one of {', '.join(STYLES)}")


def _snippet(text: str, limit: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate_box(
    raw: str, tokens: Sequence[object], style: str, width: float, height: float
) -> tuple[list[float] | None, str | None]:
    """Turn 4 coordinate tokens of ``style`` into a pixel box, or return the problem with ``raw``."""
    where = f"{style} box {_snippet(raw)!r}"
    if len(tokens) != 4:
        return None, f"{where}: expected 4 coordinates, got {len(tokens)}"
    values = []
    for tok in tokens:
        try:
            if isinstance(tok, bool):
                raise ValueError
            v = float(tok)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None, f"{where}: non-numeric coordinate {tok!r}"
        if not math.isfinite(v):
            return None, f"{where}: non-finite coordinate {tok!r}"
        values.append(v)
    x1, y1, x2, y2 = values
    if style in _GRID:
        hi = _GRID[style]
        limits = (hi, hi)
    elif style == "normalised":
        limits = (1.0, 1.0)
    else:
        limits = (width, height)
    for v, lim in zip(values, limits * 2, strict=True):
        if v < 0 or v > lim:
            return None, f"{where}: coordinate {v:g} outside [0, {lim:g}]"
    if x2 < x1 or y2 < y1:
        return None, f"{where}: x2 < x1 or y2 < y1"
    if style in _GRID:
        hi = _GRID[style]
        return [x1 / hi * width, y1 / hi * height, x2 / hi * width, y2 / hi * height], None
    if style == "normalised":
        return [x1 * width, y1 * height, x2 * width, y2 * height], None
    return [x1, y1, x2, y2], None


def _tokens(content: str) -> list[str]:
    return [t for t in _SEPARATORS.split(content) if t]


def _parse_tagged(text: str, norm: str, style: str, width: float, height: float) -> RegionParse:
    """MedRegA (``<ref>``/``<box>``) and Qwen2-VL (special-token) forms: a box belongs to the ref (or box)
    right before it, with only spaces or punctuation between; any other box gets phrase None; a ref with no
    box gives an empty list."""
    pattern = _MEDREGA_TAGS if style == "medrega" else _QWEN2_TAGS
    out = RegionParse()
    current: Region | None = None
    last_end = 0
    for m in pattern.finditer(norm):
        gap, last_end = norm[last_end : m.start()], m.end()
        if re.search(r"\w", gap):
            current = None
        if m.group("ref") is not None:
            current = (text[m.start("ref") : m.end("ref")].strip(), [])
            out.append(current)
            continue
        start, end = m.start("box"), m.end("box")
        raw, content = text[start:end], norm[start:end]
        if current is None:
            current = (None, [])
            out.append(current)
        if style == "medrega":
            # Each innermost bracket group is one box; anything else left in the tag is reported.
            groups = list(_INNER_GROUP.finditer(content))
            leftover = _INNER_GROUP.sub(" ", content)
            if _tokens(leftover) or not groups:
                out.problems.append(f"{style} box {_snippet(raw)!r}: text outside [x1, y1, x2, y2] lists")
                out.n_dropped += max(len(groups), 1)
                continue
            pieces = [(raw[g.start() : g.end()], _tokens(g.group(1))) for g in groups]
        else:
            pieces = [(raw, _tokens(content))]
        for piece_raw, toks in pieces:
            box, problem = _validate_box(piece_raw, toks, style, width, height)
            if box is None:
                out.problems.append(f"{problem} (in {_snippet(raw)!r})" if piece_raw != raw else problem)
                out.n_dropped += 1
            else:
                current[1].append(box)
    return out


def _holds_object(values: list[object]) -> bool:
    """Whether decoded JSON values hold an object at any depth (walked with a stack, not recursion)."""
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            return True
        if isinstance(value, list):
            stack.extend(value)
    return False


def _decode_at(text: str, norm: str | None, start: int) -> tuple[object, int]:
    """The JSON value at `start`: read from the original text (labels keep their full-width punctuation),
    else from `norm`, the text with full-width punctuation made ASCII (None when that changes nothing)."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        if norm is None:
            raise
        return _DECODER.raw_decode(norm, start)


def _json_objects(text: str, norm: str) -> Iterator[tuple[int, int, object | None, str | None]]:
    """``(start, end, object, problem)`` for each JSON object in the text, left to right.

    Objects are decoded with ``json.JSONDecoder.raw_decode`` from each ``{``, so strings holding braces and
    nested values read whole. A decoded object without ``bbox_2d`` that holds other objects is looked into
    (boxes listed under a key); a brace pair that is not valid JSON is reported; a stray ``{`` is skipped."""
    pos, alternative = 0, (norm if norm != text else None)
    while (start := norm.find("{", pos)) != -1:
        try:
            obj, end = _decode_at(text, alternative, start)
        except json.JSONDecodeError as exc:
            flat = _JSON_OBJECT.match(norm, start)
            if flat:
                yield start, flat.end(), None, f"invalid JSON ({exc.msg})"
            pos = flat.end() if flat else start + 1
            continue
        except RecursionError:  # the stdlib decoder recurses once per nesting level
            yield start, len(norm), None, "JSON nested too deeply; the rest of the text was not read"
            return
        if isinstance(obj, dict) and "bbox_2d" not in obj and _holds_object(list(obj.values())):
            pos = start + 1
            continue
        yield start, end, obj, None
        pos = end


def _parse_qwen_json(text: str, norm: str, width: float, height: float) -> RegionParse:
    """Qwen2.5-VL JSON: objects with ``bbox_2d`` (absolute pixels) and optional ``label``, anywhere in the
    text (a ```json fence, a list, or loose objects; truncated output keeps its complete objects).
    Consecutive objects with the same label form one region."""
    out = RegionParse()
    for start, end, obj, problem in _json_objects(text, norm):
        raw = text[start:end]
        if problem is not None or not isinstance(obj, dict) or "bbox_2d" not in obj:
            reason = problem or "no 'bbox_2d' key"
            out.problems.append(f"qwen object {_snippet(raw)!r}: {reason}")
            out.n_dropped += 1
            continue
        coords = obj["bbox_2d"]
        label = obj.get("label")
        label = None if label is None else str(label)
        box, problem = _validate_box(
            raw, coords if isinstance(coords, list) else [coords], "qwen", width, height
        )
        if box is None:
            out.problems.append(problem)  # type: ignore[arg-type]
            out.n_dropped += 1
            continue
        if out and out[-1][0] == label:
            out[-1][1].append(box)
        else:
            out.append((label, [box]))
    return out


def _top_level_lists(norm: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Spans of balanced top-level ``[...]`` lists, and positions of unbalanced brackets."""
    spans, bad, depth, start = [], [], 0, 0
    for i, c in enumerate(norm):
        if c == "[":
            if depth == 0:
                start = i
            depth += 1
        elif c == "]":
            if depth == 0:
                bad.append(i)
                continue
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    if depth:
        bad.append(start)
    return spans, bad


def _parse_normalised(text: str, norm: str, width: float, height: float) -> RegionParse:
    """``phrase: [x1, y1, x2, y2]`` (or ``[[...], [...]]``) with floats in [0, 1]; the phrase is the text
    before a colon on the line that precedes a list; a list separated from the previous one only by commas,
    semicolons or spaces belongs to the same region."""
    out = RegionParse()
    spans, bad = _top_level_lists(norm)
    for i in bad:
        out.problems.append(
            f"normalised text {_snippet(text[max(0, i - 20) : i + 20])!r}: unbalanced bracket"
        )
        out.n_dropped += 1
    prev_end: int | None = None
    for start, end in spans:
        gap = norm[prev_end if prev_end is not None else 0 : start]
        if prev_end is not None and out and not _tokens(gap) and "\n" not in gap:
            current = out[-1]
        else:
            line_start = gap.rfind("\n") + 1
            head = gap[line_start:].rstrip()
            phrase = None
            if head.endswith(":"):
                offset = (prev_end or 0) + line_start
                phrase = text[offset : offset + len(head) - 1].strip() or None
            current = (phrase, [])
            out.append(current)
        prev_end = end
        raw, content = text[start:end], norm[start:end]
        inner = content[1:-1]
        groups = list(_INNER_GROUP.finditer(inner)) if "[" in inner else []
        pieces = [(raw[g.start() + 1 : g.end() + 1], _tokens(g.group(1))) for g in groups] or [
            (raw, _tokens(inner))
        ]
        if pieces == [(raw, [])]:  # "phrase: []" is a region without boxes, as format_regions writes it
            continue
        for piece_raw, toks in pieces:
            box, problem = _validate_box(piece_raw, toks, "normalised", width, height)
            if box is None:
                out.problems.append(problem)  # type: ignore[arg-type]
                out.n_dropped += 1
            else:
                current[1].append(box)
    return out


def parse_regions(text: str, width: float, height: float, style: str = "medrega") -> RegionParse:
    """Parse regions from model text into ``(phrase, [[x1, y1, x2, y2], ...])`` pairs in original pixels.

    Styles: ``"medrega"`` -- ``<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>``, integers 0-999,
    pixel = v / 999 * width (or height); ``"qwen2"`` -- Qwen2-VL
    ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, integers 0-1000,
    pixel = v / 1000 * size; ``"qwen"`` -- Qwen2.5-VL JSON objects
    ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in absolute pixels (of the image the model saw: rescale
    first if its processor resized it);
    ``"normalised"`` -- ``phrase: [x1, y1, x2, y2]`` with floats in [0, 1]. Full-width (Chinese) punctuation
    and surrounding text are tolerated. Malformed boxes (wrong count, non-numeric, out of range, x2 < x1 or
    y2 < y1) are dropped and reported in ``.problems``; the count is ``.n_dropped``. Raises ``ConfigError``
    for an unknown style only.
    """
    _check_style(style)
    norm = text.translate(_FULLWIDTH)
    if style in _GRID:
        return _parse_tagged(text, norm, style, width, height)
    if style == "qwen":
        return _parse_qwen_json(text, norm, width, height)
    return _parse_normalised(text, norm, width, height)


def _quantise(box: Sequence[float], style: str, width: float, height: float) -> list[float]:
    """The numbers ``style`` writes for a pixel box (clipped to the style's range)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if style in _GRID:
        hi = _GRID[style]
        scaled = (x1 / width * hi, y1 / height * hi, x2 / width * hi, y2 / height * hi)
        return [min(max(round(v), 0), hi) for v in scaled]
    if style == "normalised":
        scaled = (x1 / width, y1 / height, x2 / width, y2 / height)
        return [min(max(round(v, NORMALISED_DECIMALS), 0.0), 1.0) for v in scaled]
    limits = (width, height, width, height)
    return [min(max(round(v), 0), lim) for v, lim in zip((x1, y1, x2, y2), limits, strict=True)]


def format_regions(regions: Iterable[Region], width: float, height: float, style: str = "medrega") -> str:
    """Write ``(phrase, [boxes in pixels])`` pairs in ``style`` (see ``parse_regions``); the inverse of it.

    Boxes are quantised the way the style does (medrega: ``round(x / width * 999)``; qwen2: ``* 1000``; qwen:
    integer pixels; normalised: ``NORMALISED_DECIMALS`` decimals) and clipped to the image, so
    ``parse(format(r))`` returns the quantised boxes and ``format(parse(format(r))) == format(r)``. A phrase
    of None writes no ref/label. In the "qwen" style a region with no boxes cannot be written and is skipped.
    Raises ``ConfigError`` for an unknown style.
    """
    _check_style(style)
    regions = list(regions)
    if style == "qwen":
        objects = []
        for phrase, boxes in regions:
            for box in boxes:
                obj: dict[str, object] = {"bbox_2d": _quantise(box, style, width, height)}
                if phrase is not None:
                    obj["label"] = phrase
                objects.append(json.dumps(obj, ensure_ascii=False))
        return "```json\n[\n" + ",\n".join(f"  {o}" for o in objects) + "\n]\n```"
    parts = []
    for phrase, boxes in regions:
        quantised = [_quantise(b, style, width, height) for b in boxes]
        if style == "medrega":
            ref = "" if phrase is None else f"<ref>{phrase}</ref>"
            inner = ", ".join("[" + ", ".join(str(v) for v in q) + "]" for q in quantised)
            parts.append(ref + (f"<box>[{inner}]</box>" if quantised else ""))
        elif style == "qwen2":
            ref = "" if phrase is None else f"<|object_ref_start|>{phrase}<|object_ref_end|>"
            boxes_text = "".join(
                f"<|box_start|>({q[0]},{q[1]}),({q[2]},{q[3]})<|box_end|>" for q in quantised
            )
            parts.append(ref + boxes_text)
        else:
            inner = ", ".join(
                "[" + ", ".join(f"{v:.{NORMALISED_DECIMALS}f}" for v in q) + "]" for q in quantised
            )
            head = "" if phrase is None else f"{phrase}: "
            parts.append(f"{head}[{inner}]")
    return ("\n" if style == "normalised" else " ").join(parts)


def box_iou(
    a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` ``[x1, y1, x2, y2]`` boxes as an ``(N, M)`` float array.

    Pairs whose union has zero area (zero-area boxes) get 0, never NaN. Raises ``ValueError`` when an input
    is not ``(K, 4)``.
    """
    arrays = []
    for name, x in (("a", a), ("b", b)):
        arr = np.asarray(x, dtype=float)
        if arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"box_iou: {name} must have shape (K, 4), got {arr.shape}")
        arrays.append(arr)
    a_arr, b_arr = arrays
    lt = np.maximum(a_arr[:, None, :2], b_arr[None, :, :2])
    rb = np.minimum(a_arr[:, None, 2:], b_arr[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a_arr[:, 2] - a_arr[:, 0], 0, None) * np.clip(a_arr[:, 3] - a_arr[:, 1], 0, None)
    area_b = np.clip(b_arr[:, 2] - b_arr[:, 0], 0, None) * np.clip(b_arr[:, 3] - b_arr[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(
    pred: np.ndarray | Sequence[Sequence[float]],
    gold: np.ndarray | Sequence[Sequence[float]],
    threshold: float = 0.5,
) -> list[tuple[int, int, float]]:
    """One-to-one match of predicted to gold boxes maximising total IoU (Hungarian algorithm, scipy).

    Only pairs with ``IoU >= threshold`` (inclusive) count: pairs below it are treated as IoU 0 before the
    assignment, so they never steer it, and are left out of the result. Returns ``(pred_index, gold_index,
    iou)`` sorted by ``pred_index``.
    """
    iou = box_iou(pred, gold)
    if iou.size == 0:
        return []
    gain = np.where(iou >= threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [
        (int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= threshold
    ]
