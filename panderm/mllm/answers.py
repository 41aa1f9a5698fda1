"""Scoring of short free-text answers: VQA (closed yes/no and open questions) and classification replies.

Texts are compared after :func:`normalise_answer`; token sequences come from
:func:`panderm.mllm.evaluate.tokenize` (whitespace words, or single characters when the text has any CJK
character). Every function returns plain ``str``/``float``/``int``/``None`` values (JSON-able); a ratio with
no samples behind it is ``None``.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence

from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

# the punctuation set is shared with tokenize so both strip exactly the same characters
from panderm.mllm.evaluate import PUNCTUATION, tokenize
from panderm.mllm.regions import strip_regions

__all__ = ["classification_scores", "classify_free_text", "closed_answer", "normalise_answer", "vqa_scores"]

_ARTICLES = frozenset({"a", "an", "the"})
_YES_WORDS = ("yes", "yeah", "yep")
_NO_WORDS = ("no", "nope")
# question forms that hold a yes and a no marker at once; they are skipped, not read
_SKIP = ("yes or no", "no or yes", "是否有", "有没有", "是不是", "是否", "有无", "无法", "还是")
_CJK_YES = ("是", "有")
_CJK_NO = ("不是", "没有", "否", "无")
_MARKER = re.compile(
    "|".join(
        [rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])" for w in (*_SKIP[:2], *_YES_WORDS, *_NO_WORDS)]
        + sorted((re.escape(w) for w in (*_SKIP[2:], *_CJK_YES, *_CJK_NO)), key=len, reverse=True)
    )
)
_READ = {**dict.fromkeys((*_YES_WORDS, *_CJK_YES), "yes"), **dict.fromkeys((*_NO_WORDS, *_CJK_NO), "no")}
_CLOSED_GOLD = {"yes": "yes", "no": "no", "是": "yes", "否": "no"}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _check_lengths(predictions: Sequence, golds: Sequence) -> None:
    if len(predictions) != len(golds):
        raise ValueError(f"predictions has {len(predictions)} items but golds has {len(golds)}")


def normalise_answer(text: str | None) -> str:
    """Normalise an answer for comparison, in this order:

    0. region markup removed (:func:`panderm.mllm.regions.strip_regions`: box coordinates and location
       tokens go, a ref's phrase stays as text), so a grounded reply reads like a plain one;
    1. Unicode NFKC (full-width ``Ｙｅｓ！`` becomes ``Yes!``; ``None`` becomes ``""``);
    2. lower-case (``str.lower``);
    3. replace every ASCII punctuation character (``string.punctuation``) and common Chinese punctuation
       (``，。！？；：、“”‘’（）《》〈〉【】「」『』〔〕…—–·～﹏``, the set :func:`tokenize` uses) by a space;
    4. split on whitespace and drop the English articles ``a``, ``an``, ``the`` (whole words only);
    5. join the remaining words with single spaces (no leading/trailing space).
    """
    text = PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", strip_regions(text or "")).lower())
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def closed_answer(text: str | None) -> str | None:
    """Read a yes/no answer from a free-text reply: ``"yes"``, ``"no"`` or ``None``.

    The reply is normalised (:func:`normalise_answer`) and scanned left to right for markers; the **first**
    marker decides. English markers are whole words: ``yes``/``yeah``/``yep`` -> yes, ``no``/``nope`` -> no
    (``not`` is not a marker, so "It is not clear" gives ``None``). Chinese markers are substrings:
    ``是``/``有`` -> yes, ``不是``/``没有``/``否``/``无`` -> no; at one position the longest marker wins, so
    ``不是`` is read as no before its ``是`` and ``没有`` before its ``有``. Question or hedge forms that hold
    both answers (``yes or no``, ``no or yes``, ``是否有``, ``是否``, ``是不是``, ``有没有``, ``有无``,
    ``还是``, ``无法``) are skipped and the scan goes on after them. ``None`` when no marker is found.
    """
    for m in _MARKER.finditer(normalise_answer(text)):
        if m.group() in _READ:
            return _READ[m.group()]
    return None


def _contains(haystack: list[str], needle: list[str]) -> bool:
    k = len(needle)
    return any(haystack[i : i + k] == needle for i in range(len(haystack) - k + 1))


def vqa_scores(predictions: Sequence[str | None], golds: Sequence[str]) -> dict:
    """VQA scores; a question is *closed* when its gold normalises to ``yes``, ``no``, ``是`` or ``否``.

    Closed: the prediction is read with :func:`closed_answer`; ``closed_accuracy`` = share read as the gold
    answer (an unreadable prediction is wrong and counts in ``n_unreadable_closed``). Open: ``open_exact`` =
    share whose normalised prediction equals the normalised gold; ``open_contains`` = share where the gold's
    tokens appear as a contiguous sequence in the prediction's tokens (both normalised, then
    :func:`tokenize`d). ``accuracy`` = (closed correct + open exact) / ``n``. Also ``n``, ``n_closed``,
    ``n_open``. Ratios with a zero denominator are ``None``. ``ValueError`` on different lengths or a gold
    that is empty after normalisation.
    """
    _check_lengths(predictions, golds)
    closed_ok = n_closed = unreadable = exact = contains = n_open = 0
    for i, (pred, gold) in enumerate(zip(predictions, golds, strict=True)):
        g = normalise_answer(gold)
        if not g:
            raise ValueError(f"gold {i} is empty after normalisation: {gold!r}")
        if g in _CLOSED_GOLD:
            n_closed += 1
            read = closed_answer(pred)
            unreadable += read is None
            closed_ok += read == _CLOSED_GOLD[g]
            continue
        n_open += 1
        p = normalise_answer(pred)
        exact += p == g
        contains += _contains(tokenize(p), tokenize(g))
    return {
        "accuracy": _ratio(closed_ok + exact, n_closed + n_open),
        "closed_accuracy": _ratio(closed_ok, n_closed),
        "open_exact": _ratio(exact, n_open),
        "open_contains": _ratio(contains, n_open),
        "n": n_closed + n_open,
        "n_closed": n_closed,
        "n_open": n_open,
        "n_unreadable_closed": unreadable,
    }


def _normalised_classes(classes: Sequence[str]) -> list[str]:
    norm = [normalise_answer(c) for c in classes]
    if not norm or not all(norm):
        raise ValueError(f"classes must be a non-empty list of non-empty names: {list(classes)!r}")
    if len(set(norm)) != len(norm):
        raise ValueError(f"class names collide after normalisation: {list(classes)!r}")
    return norm


def _classify(text: str | None, norm_classes: list[str]) -> int | None:
    reply = normalise_answer(text)
    if reply in norm_classes:
        return norm_classes.index(reply)
    tokens = tokenize(reply)
    mentions = []  # (start, end, class index)
    for idx, name in enumerate(norm_classes):
        name_tokens = tokenize(name)
        k = len(name_tokens)
        mentions += [(s, s + k, idx) for s in range(len(tokens) - k + 1) if tokens[s : s + k] == name_tokens]
    kept = [
        (s, e, idx)
        for s, e, idx in mentions
        if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in mentions)
    ]
    if not kept:
        return None
    return min(kept, key=lambda m: (m[0], -(m[1] - m[0])))[2]


def classify_free_text(text: str | None, classes: Sequence[str]) -> str | None:
    """Map a free-text reply to one of ``classes`` (returned as given), or ``None``.

    Reply and class names are normalised (:func:`normalise_answer`). 1) A reply equal to a class name is that
    class. 2) Otherwise a class is *mentioned* where its name's tokens occur as a contiguous run of the
    reply's tokens (:func:`tokenize`: whole words, or characters for CJK text). A mention lying inside a
    mention of a longer class name does not count (so "basal cell carcinoma" is that class, not
    "carcinoma"); of the remaining mentions the one that **starts first** wins (a tie goes to the longer
    name). ``ValueError`` if ``classes`` is empty, holds an empty name, or two names normalise alike.
    """
    idx = _classify(text, _normalised_classes(classes))
    return None if idx is None else classes[idx]


def classification_scores(
    predictions: Sequence[str | None], golds: Sequence[str], classes: Sequence[str]
) -> dict:
    """Classification from free-text replies, each mapped with :func:`classify_free_text`.

    Golds must normalise to one of ``classes`` (``ValueError`` otherwise). A reply that maps to no class is
    wrong and counts in ``n_unmatched``. From sklearn over the class list: ``accuracy``
    (``accuracy_score``), ``balanced_accuracy`` (``balanced_accuracy_score``: mean recall over the classes
    present in the golds), ``macro_f1`` (``f1_score(labels=all classes, average="macro",
    zero_division=0)``, so a class never in the golds nor predicted adds an F1 of 0) and
    ``per_class_recall`` (class name -> recall, ``None`` for a class absent from the golds). Also ``n``.
    All scores are ``None`` when there are no samples.
    """
    _check_lengths(predictions, golds)
    norm = _normalised_classes(classes)
    y_true = []
    for i, gold in enumerate(golds):
        g = normalise_answer(gold)
        if g not in norm:
            raise ValueError(f"gold {i} ({gold!r}) is not one of the classes {list(classes)!r}")
        y_true.append(norm.index(g))
    y_pred = [_classify(p, norm) for p in predictions]
    n_unmatched = sum(p is None for p in y_pred)
    y_pred = [-1 if p is None else p for p in y_pred]  # -1: outside the class list, always wrong
    out: dict = {"n": len(y_true), "n_unmatched": n_unmatched}
    if not y_true:
        return {**out, "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "per_class_recall": {}}
    labels = list(range(len(classes)))
    with warnings.catch_warnings():  # sklearn notices about the -1 label and single-class inputs
        for message in ("y_pred contains classes not in y_true", "A single label was found"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = set(y_true)
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    out["balanced_accuracy"] = float(balanced)
    out["macro_f1"] = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    out["per_class_recall"] = {c: float(recalls[k]) if k in present else None for k, c in enumerate(classes)}
    return out
