"""Scores for region grounding (Text-to-Region) and region description (Region-to-Text).

Pure numpy/scipy. Every function returns a dict of plain ``float``/``int`` values (JSON-able). Boxes are
``[x1, y1, x2, y2]``; matching uses :func:`panderm.mllm.regions.match_boxes` (Hungarian, inclusive threshold).
Ratios whose denominator is zero are reported as ``0.0``.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from panderm.mllm.regions import box_iou, match_boxes

__all__ = ["multi_box_scores", "phrase_aware_scores", "single_box_scores", "token_scores", "tokenize"]

_CHINESE_PUNCTUATION = "，。！？；：、“”‘’（）《》〈〉【】「」『』〔〕…—–·～﹏"
# ASCII and common Chinese punctuation: what every text score in panderm.mllm strips
PUNCTUATION = re.compile("[" + re.escape(string.punctuation + _CHINESE_PUNCTUATION) + "]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def _valid_box(box: object) -> list[float] | None:
    """The box as 4 floats, or ``None`` when it is not 4 finite numbers."""
    try:
        vals = [float(v) for v in box]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    return vals


def _check_lengths(pred: Sequence, gold: Sequence) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"pred has {len(pred)} samples but gold has {len(gold)}")


def single_box_scores(
    pred_boxes: Sequence[Sequence[Sequence[float]] | None],
    gold_boxes: Sequence[Sequence[Sequence[float]]],
    thresholds: Sequence[float] = (0.25, 0.5, 0.75),
) -> dict:
    """Single-box grounding: one predicted box per sample against one gold box.

    Per sample the prediction is the *first* entry of ``pred_boxes[i]``; if the list is empty/``None`` or
    that box is not 4 finite numbers, the sample is a miss with IoU 0 and counts in ``n_missing``. The gold
    box is the first entry of ``gold_boxes[i]`` (``ValueError`` if absent or malformed).

    Returns ``acc@t`` for each ``t`` = share of samples with IoU **strictly greater** than ``t`` (an IoU
    exactly equal to ``t`` does not count), ``mean_iou`` over all samples (misses as 0), ``n`` and
    ``n_missing``.
    """
    _check_lengths(pred_boxes, gold_boxes)
    ious: list[float] = []
    n_missing = 0
    for i, (preds, golds) in enumerate(zip(pred_boxes, gold_boxes, strict=True)):
        gold = _valid_box(golds[0]) if golds else None
        if gold is None:
            raise ValueError(f"sample {i}: no valid gold box")
        pred = _valid_box(preds[0]) if preds else None
        if pred is None:
            n_missing += 1
            ious.append(0.0)
            continue
        ious.append(float(box_iou([pred], [gold])[0, 0]))
    arr = np.asarray(ious, dtype=float)
    out: dict = {f"acc@{t:g}": float((arr > t).mean()) if arr.size else 0.0 for t in thresholds}
    out["mean_iou"] = float(arr.mean()) if arr.size else 0.0
    out["n"] = len(ious)
    out["n_missing"] = n_missing
    return out


def _totals(n_matched: int, n_pred: int, n_gold: int, n_invalid: int, threshold: float) -> dict:
    precision = _ratio(n_matched, n_pred)
    recall = _ratio(n_matched, n_gold)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "n_matched": n_matched,
        "n_pred": n_pred,
        "n_gold": n_gold,
        "n_invalid_pred": n_invalid,
        "threshold": float(threshold),
        "medrega_compat": {
            "precision": recall,
            "recall": precision,
            "note": (
                "MedRegA's evaluation swaps the names: its 'precision' is matched/gold (our recall) and its "
                "'recall' is matched/predicted (our precision)."
            ),
        },
    }


def _clean(boxes: Sequence | None) -> tuple[list[list[float]], int]:
    valid, invalid = [], 0
    for b in boxes or []:
        v = _valid_box(b)
        if v is None:
            invalid += 1
        else:
            valid.append(v)
    return valid, invalid


def multi_box_scores(
    pred_boxes: Sequence[Sequence[Sequence[float]] | None],
    gold_boxes: Sequence[Sequence[Sequence[float]]],
    threshold: float = 0.5,
) -> dict:
    """Multi-box grounding: Hungarian one-to-one matching per sample (``match_boxes``, pairs with
    ``IoU >= threshold``), counts summed over samples.

    ``precision`` = matched / predicted boxes, ``recall`` = matched / gold boxes, ``f1`` = their harmonic
    mean (all micro-averaged over samples). Malformed predicted boxes are dropped before matching and counted
    in ``n_invalid_pred`` (not in ``n_pred``). ``medrega_compat`` repeats the two ratios under MedRegA's
    swapped names (its ``precision`` = our recall, its ``recall`` = our precision) with a ``note``.
    """
    _check_lengths(pred_boxes, gold_boxes)
    # every box under one phrase: phrase-aware matching then is plain matching
    return phrase_aware_scores(
        [[(None, preds or [])] for preds in pred_boxes], [[(None, golds)] for golds in gold_boxes], threshold
    )


def _norm_phrase(phrase: str | None) -> str:
    return " ".join((phrase or "").lower().split())


def _group(regions: Sequence | None) -> tuple[dict[str, list[list[float]]], int]:
    groups: dict[str, list[list[float]]] = {}
    invalid = 0
    for phrase, boxes in regions or []:
        valid, bad = _clean(boxes)
        invalid += bad
        groups.setdefault(_norm_phrase(phrase), []).extend(valid)
    return groups, invalid


def phrase_aware_scores(
    pred_regions: Sequence[Sequence[tuple[str | None, Sequence[Sequence[float]]]] | None],
    gold_regions: Sequence[Sequence[tuple[str | None, Sequence[Sequence[float]]]]],
    threshold: float = 0.5,
) -> dict:
    """As :func:`multi_box_scores`, but a predicted box may only match a gold box of the same phrase.

    Regions are ``(phrase, boxes)`` pairs (e.g. a ``RegionParse``). Phrases are compared after lower-casing
    and collapsing whitespace (``None`` counts as the empty phrase); boxes are pooled per phrase and
    Hungarian-matched within each phrase separately. Same keys and definitions as ``multi_box_scores``.
    """
    _check_lengths(pred_regions, gold_regions)
    n_matched = n_pred = n_gold = n_invalid = 0
    for preds, golds in zip(pred_regions, gold_regions, strict=True):
        p_groups, bad = _group(preds)
        g_groups, _ = _group(golds)
        n_invalid += bad
        n_pred += sum(len(v) for v in p_groups.values())
        n_gold += sum(len(v) for v in g_groups.values())
        for phrase, p in p_groups.items():
            g = g_groups.get(phrase, [])
            if p and g:
                n_matched += len(match_boxes(p, g, threshold))
    return _totals(n_matched, n_pred, n_gold, n_invalid, threshold)


def tokenize(text: str | None) -> list[str]:
    """Lower-case, replace ASCII and common Chinese punctuation by spaces, then split on whitespace; if the
    text contains any CJK character, every non-whitespace character is a token instead."""
    norm = PUNCTUATION.sub(" ", (text or "").lower())
    if _CJK.search(norm):
        return [c for c in norm if not c.isspace()]
    return norm.split()


def token_scores(
    pred_texts: Sequence[str | None], gold_texts: Sequence[str], recall_threshold: float = 0.75
) -> dict:
    """Region-to-Text token overlap (see :func:`tokenize`).

    Per sample, ``overlap`` = size of the multiset intersection of predicted and gold tokens
    (``collections.Counter``); precision = overlap / #pred tokens, recall = overlap / #gold tokens,
    F1 = harmonic mean (0 when a denominator is 0; a sample whose pred and gold are both empty scores 1).
    Returns the means over samples (``precision``, ``recall``, ``f1``), ``accuracy`` = share of samples with
    ``recall >= recall_threshold``, and ``n``.
    """
    _check_lengths(pred_texts, gold_texts)
    ps, rs, fs = [], [], []
    for pred, gold in zip(pred_texts, gold_texts, strict=True):
        pt, gt = Counter(tokenize(pred)), Counter(tokenize(gold))
        n_p, n_g = sum(pt.values()), sum(gt.values())
        if n_p == 0 and n_g == 0:
            p = r = f = 1.0
        else:
            overlap = sum((pt & gt).values())
            p, r = _ratio(overlap, n_p), _ratio(overlap, n_g)
            f = _f1(p, r)
        ps.append(p)
        rs.append(r)
        fs.append(f)
    n = len(ps)
    return {
        "precision": float(np.mean(ps)) if n else 0.0,
        "recall": float(np.mean(rs)) if n else 0.0,
        "f1": float(np.mean(fs)) if n else 0.0,
        "accuracy": float(np.mean([r >= recall_threshold for r in rs])) if n else 0.0,
        "recall_threshold": float(recall_threshold),
        "n": n,
    }
