"""Region text formats (MedRegA, Qwen2-VL, Qwen2.5-VL, PaliGemma, normalised), box matching, and removal of
region markup from free-text answers.

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
    "PARSE_STYLES",
    "REGION_TOKENS",
    "STYLES",
    "Region",
    "RegionParse",
    "box_iou",
    "detect_style",
    "format_regions",
    "match_boxes",
    "parse_regions",
    "strip_regions",
]

Region = tuple[str | None, list[list[float]]]

STYLES = ("medrega", "qwen2", "qwen", "paligemma", "normalised")
PARSE_STYLES = (*STYLES, "auto")
"""What ``parse_regions`` and ``panderm vqa region_style=`` take: a style, or "auto" (``detect_style``)."""
NORMALISED_DECIMALS = 4
"""Decimals the "normalised" style writes; its quantisation step is 10**-NORMALISED_DECIMALS."""

# Full-width (Chinese) punctuation -> ASCII. Every mapping is one character to one character, so offsets in
# the translated text are offsets in the original, and phrases and snippets are sliced from the original.
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FULLWIDTH.update({0x3000: 0x20, 0x3010: 0x5B, 0x3011: 0x5D, 0x3014: 0x5B, 0x3015: 0x5D, 0x3001: 0x2C})

# (max value, scale) for the styles whose integers are normalised to a fixed grid: pixel = v / scale * size.
# PaliGemma's <locNNNN> tokens are 1024 bins (0..1023) of the image, decoded as v / 1024 (as big_vision does).
_GRID = {"medrega": (999, 999), "qwen2": (1000, 1000), "paligemma": (1023, 1024)}

_MEDREGA_TAGS = re.compile(r"<ref>(?P<ref>.*?)</ref>|<box>(?P<box>.*?)</box>", re.DOTALL)
_QWEN2_TAGS = re.compile(
    r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>|<\|box_start\|>(?P<box>.*?)<\|box_end\|>",
    re.DOTALL,
)
_INNER_GROUP = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_SEPARATORS = re.compile(r"[\s,;\[\]()]+")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)  # a brace pair with no brace inside
_DECODER = json.JSONDecoder()
_LOC = re.compile(r"<loc(\d+)>")
# a run of location tokens, the segment codes after it (not decoded), the label up to ";", "<" or line end
_PALIGEMMA = re.compile(r"(?P<locs>(?:<loc\d+>[ \t]*)+)(?:<seg\d+>[ \t]*)*(?P<label>[^;<\n]*)")
# markup that tells the style apart, tried in this order by detect_style (on full-width-folded text)
_DETECT = (
    ("medrega", re.compile(r"</?ref>|</?box>")),
    ("qwen2", re.compile(r"<\|(?:box|object_ref)_(?:start|end)\|>")),
    ("paligemma", _LOC),
    ("qwen", re.compile(r"bbox_2d")),
)


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


def _check_style(style: str, allowed: Sequence[str] = STYLES) -> None:
    if style not in allowed:
        raise ConfigError(f"unknown region style {style!r}; expected one of {', '.join(allowed)}")


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
        hi, scale = _GRID[style]
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
        return [x1 / scale * width, y1 / scale * height, x2 / scale * width, y2 / scale * height], None
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


def _parse_paligemma(text: str, norm: str, width: float, height: float) -> RegionParse:
    """PaliGemma detections ``<locY1><locX1><locY2><locX2> label ; ...``: each run of location tokens is
    read 4 at a time (y before x) and gets the label after it (and after any ``<segNNN>`` codes, which are
    not decoded); a run whose length is not a multiple of 4 is dropped. Text before a run is ignored.
    Consecutive detections with the same label (or none) form one region."""
    out = RegionParse()
    for m in _PALIGEMMA.finditer(norm):
        raw = text[m.start("locs") : m.end("locs")]
        values = _LOC.findall(m.group("locs"))
        label = text[m.start("label") : m.end("label")].strip() or None
        if len(values) % 4:
            out.problems.append(
                f"paligemma box {_snippet(raw)!r}: expected 4 location tokens per box, got {len(values)}"
            )
            out.n_dropped += -(-len(values) // 4)
            continue
        for k in range(0, len(values), 4):
            y1, x1, y2, x2 = values[k : k + 4]
            box, problem = _validate_box(raw, [x1, y1, x2, y2], "paligemma", width, height)
            if box is None:
                out.problems.append(problem)  # type: ignore[arg-type]
                out.n_dropped += 1
            elif out and out[-1][0] == label:
                out[-1][1].append(box)
            else:
                out.append((label, [box]))
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


def detect_style(text: str) -> str:
    """The region style whose markup ``text`` holds, checked in this order: MedRegA ``<ref>``/``<box>`` tags
    ("medrega"), Qwen2-VL ``<|box_start|>``/``<|object_ref_start|>`` tokens ("qwen2"), PaliGemma
    ``<locNNNN>`` tokens ("paligemma"), a Qwen2.5-VL ``bbox_2d`` key ("qwen"); else "normalised".
    Full-width brackets count as ASCII ones, as in the parsers."""
    norm = text.translate(_FULLWIDTH)
    return next((style for style, pattern in _DETECT if pattern.search(norm)), "normalised")


def parse_regions(text: str, width: float, height: float, style: str = "medrega") -> RegionParse:
    """Parse regions from model text into ``(phrase, [[x1, y1, x2, y2], ...])`` pairs in original pixels.

    Styles: ``"medrega"`` -- ``<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>``, integers 0-999,
    pixel = v / 999 * width (or height); ``"qwen2"`` -- Qwen2-VL
    ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, integers 0-1000,
    pixel = v / 1000 * size; ``"qwen"`` -- Qwen2.5-VL JSON objects
    ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in absolute pixels (of the image the model saw: rescale
    first if its processor resized it); ``"paligemma"`` -- ``<locY1><locX1><locY2><locX2> label ; ...``, four
    location tokens per box, **y before x**, integers 0-1023 on 1024 bins, pixel = v / 1024 * size (so the
    last bin starts at 1023/1024 of the side); ``<segNNN>`` segmentation codes after a box are skipped, not
    decoded; the label runs to the next ``;``, ``<`` or line end;
    ``"normalised"`` -- ``phrase: [x1, y1, x2, y2]`` with floats in [0, 1]; ``"auto"`` -- the style
    ``detect_style`` finds in ``text``. Full-width (Chinese) punctuation and surrounding text are tolerated.
    Malformed boxes (wrong count, non-numeric, out of range, x2 < x1 or y2 < y1) are dropped and reported in
    ``.problems``; the count is ``.n_dropped``. Raises ``ConfigError`` for an unknown style only.
    """
    _check_style(style, PARSE_STYLES)
    if style == "auto":
        style = detect_style(text)
    norm = text.translate(_FULLWIDTH)
    if style in ("medrega", "qwen2"):
        return _parse_tagged(text, norm, style, width, height)
    if style == "paligemma":
        return _parse_paligemma(text, norm, width, height)
    if style == "qwen":
        return _parse_qwen_json(text, norm, width, height)
    return _parse_normalised(text, norm, width, height)


def _quantise(box: Sequence[float], style: str, width: float, height: float) -> list[float]:
    """The numbers ``style`` writes for a pixel box (clipped to the style's range)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if style in _GRID:
        hi, scale = _GRID[style]
        scaled = (x1 / width * scale, y1 / height * scale, x2 / width * scale, y2 / height * scale)
        return [min(max(round(v), 0), hi) for v in scaled]
    if style == "normalised":
        scaled = (x1 / width, y1 / height, x2 / width, y2 / height)
        return [min(max(round(v, NORMALISED_DECIMALS), 0.0), 1.0) for v in scaled]
    limits = (width, height, width, height)
    return [min(max(round(v), 0), lim) for v, lim in zip((x1, y1, x2, y2), limits, strict=True)]


def format_regions(regions: Iterable[Region], width: float, height: float, style: str = "medrega") -> str:
    """Write ``(phrase, [boxes in pixels])`` pairs in ``style`` (see ``parse_regions``); the inverse of it.

    Boxes are quantised the way the style does (medrega: ``round(x / width * 999)``; qwen2: ``* 1000``;
    paligemma: ``round(x / width * 1024)`` capped at 1023, written y1, x1, y2, x2, one detection per box,
    joined by " ; "; qwen: integer pixels; normalised: ``NORMALISED_DECIMALS`` decimals) and clipped to the
    image, so ``parse(format(r))`` returns the quantised boxes and ``format(parse(format(r))) == format(r)``.
    A phrase of None (or "" in the paligemma style) writes no ref/label. In the "qwen" and "paligemma" styles
    a region with no boxes cannot be written and is skipped. Raises ``ConfigError`` for an unknown style
    ("auto" included: it only parses).
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
    if style == "paligemma":
        detections = []
        for phrase, boxes in regions:
            for box in boxes:
                x1, y1, x2, y2 = _quantise(box, style, width, height)
                locs = "".join(f"<loc{v:04d}>" for v in (y1, x1, y2, x2))
                detections.append(f"{locs} {phrase}" if phrase else locs)
        return " ; ".join(detections)
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


# The special tokens of region markup, one token each: Qwen's box/ref/quad markers, PaliGemma's location and
# segmentation codes, InternVL/MedRegA's ref/box/quad tags (the hf backend keeps them in replies for us)
REGION_TOKENS = re.compile(
    r"<\|(?:box|object_ref|quad)_(?:start|end)\|>|<loc\d{4}>|<seg\d{3}>|</?ref>|</?box>|</?quad>"
)


def _block(start: str, end: str) -> str:
    """A regex for ``start ... end`` with no second ``start`` inside (so a stray opener eats no text)."""
    return f"{start}(?:(?!{start}).)*?{end}"


_COORDS = r"(?:[\s\d.,;\[\]()-]*[\d.,\[\])])?"  # the coordinates after an unclosed box opener
# Coordinates and location/segmentation codes: always removed (each alternative before its lone markers).
_COORD_MARKUP = "|".join(
    [
        _block("<box>", "</box>"),
        _block(r"<\|box_start\|>", r"<\|box_end\|>"),
        _block(r"<\|quad_start\|>", r"<\|quad_end\|>"),
        _block("<quad>", "</quad>"),
        r"<loc\d+>",
        r"<seg\d+>",
        rf"(?:<box>|<\|box_start\|>|<\|quad_start\|>|<quad>){_COORDS}",
        r"</box>|<\|box_end\|>|<\|quad_end\|>|</quad>",
    ]
)
_REF_MARKERS = r"</?ref>|<\|object_ref_(?:start|end)\|>"
_REF_BLOCKS = _block("<ref>", "</ref>") + "|" + _block(r"<\|object_ref_start\|>", r"<\|object_ref_end\|>")
_STRIP = {
    True: re.compile(f"{_COORD_MARKUP}|{_REF_MARKERS}", re.DOTALL),
    False: re.compile(f"{_REF_BLOCKS}|{_COORD_MARKUP}|{_REF_MARKERS}", re.DOTALL),
}


def _glue(left: str, right: str) -> str:
    """Join text around removed markup: whitespace on either side becomes one space; two ASCII letters or
    digits meeting get a space; anything else (CJK text, punctuation) is joined as is."""
    head, tail = left.rstrip(" \t"), right.lstrip(" \t")
    spaced = len(head) < len(left) or len(tail) < len(right)
    words = bool(head and tail) and all(c.isascii() and c.isalnum() for c in (head[-1], tail[0]))
    return head + (" " if (spaced or words) and head and tail else "") + tail


def _strip_once(text: str, pattern: re.Pattern[str]) -> str:
    """One left-to-right pass removing `pattern`'s matches (found in the full-width-folded text)."""
    norm, pieces, pos = text.translate(_FULLWIDTH), [], 0
    for m in pattern.finditer(norm):
        pieces.append(text[pos : m.start()])
        pos = m.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    out, pending = pieces[0], ""
    for k, piece in enumerate(pieces[1:], start=2):
        if not piece.strip(" \t") and k < len(pieces):  # only spaces between two removals: one gap
            pending += piece
            continue
        out, pending = _glue(out + pending, piece), ""
    return out


def strip_regions(text: str, *, keep_phrases: bool = True) -> str:
    """``text`` without region markup: MedRegA ``<ref>``/``<box>`` tags, Qwen ``<|object_ref_*|>``,
    ``<|box_*|>`` and ``<|quad_*|>`` tokens, ``<quad>`` tags, PaliGemma ``<locNNNN>``/``<segNNN>`` codes.

    Box and quad contents (the coordinates) go with their tags; the phrase inside a ref pair stays as text,
    or goes too with ``keep_phrases=False``. Full-width brackets count as ASCII ones, as in the parsers.
    Where markup was removed, surrounding spaces become one and the ends are stripped; a text without
    markup comes back unchanged. The one definition of region markup for answer reading and report text.
    """
    if "<" not in text and "＜" not in text:  # every piece of markup starts with one
        return text
    pattern = _STRIP[keep_phrases]
    while True:  # removing markup can complete another piece of it ("<<loc0001>loc0002>")
        stripped = _strip_once(text, pattern)
        if stripped == text:
            return text
        text = stripped.strip()


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
