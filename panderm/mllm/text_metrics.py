"""Report-generation text metrics: BLEU-1/4, ROUGE-L and (where available) METEOR.

Every text is tokenised with :func:`panderm.mllm.evaluate.tokenize` (lower-case, ASCII and Chinese
punctuation removed, whitespace split; text with any CJK character is split per character), so Chinese
reports are scored per character. Scores come from nltk (BLEU, METEOR) and torchmetrics (ROUGE-L).

METEOR needs nltk's wordnet corpus. Nothing is downloaded: when the corpus is not found in the local
``nltk_data`` search path, METEOR is reported as ``None`` and a line in ``notes`` says why.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from nltk.translate.meteor_score import meteor_score
from torchmetrics.functional.text.rouge import rouge_score

from panderm.mllm.evaluate import tokenize

__all__ = ["report_text_sample_scores", "report_text_scores"]

_BLEU1 = (1.0,)
_BLEU4 = (0.25, 0.25, 0.25, 0.25)
# nltk's unsmoothed BLEU stands in sys.float_info.min for a zero n-gram precision (BLEU <= 1.2e-77 with
# weight 0.25) instead of BLEU's exact 0; scores below this floor are reported as 0.0.
_ZERO_FLOOR = 1e-70
METEOR_UNAVAILABLE_NOTE = (
    "meteor: nltk's wordnet corpus was not found locally (nltk.data.path); not downloaded, reported as null"
)


@functools.cache
def _load_wordnet() -> Any | None:
    """nltk's wordnet reader when the corpus is installed locally, else ``None`` (never downloads)."""
    from nltk.corpus import wordnet

    try:
        wordnet.synsets("skin")  # first access loads the corpus from local nltk_data only
    except LookupError:
        return None
    return wordnet


def _bleu(
    refs: list[list[list[str]]],
    preds: list[list[str]],
    weights: tuple[float, ...],
    smooth: Callable | None = None,
) -> float:
    """nltk ``corpus_bleu`` (one pair = ``sentence_bleu``), its zero-overlap warning silenced (documented)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning
        )
        score = corpus_bleu(refs, preds, weights=weights, smoothing_function=smooth)
    return float(score) if score >= _ZERO_FLOOR else 0.0


def _rouge_l(prediction: str | None, reference: str) -> float:
    """torchmetrics' ROUGE-L F-measure on our tokens (its default tokenizer drops non-ASCII text such as
    Chinese). Google's rouge-score gives the same numbers, but it imports absl, whose import-time log handler
    closes a redirected stderr when logging is reconfigured (Hydra does, per run)."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return 0.0
    score = rouge_score(
        " ".join(pred), " ".join(ref), rouge_keys="rougeL", tokenizer=str.split, normalizer=str
    )
    return float(score["rougeL_fmeasure"])


def _meteor(pred_tokens: list[str], ref_tokens: list[str], wordnet: Any) -> float:
    if not pred_tokens or not ref_tokens:
        return 0.0
    return float(meteor_score([ref_tokens], pred_tokens, wordnet=wordnet))


def _check(predictions: Sequence[str | None], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} items but references has {len(references)}")


def report_text_scores(predictions: Sequence[str | None], references: Sequence[str]) -> dict:
    """Corpus-level report metrics over ``(prediction, reference)`` pairs (one reference each).

    - ``bleu1`` / ``bleu4``: nltk ``corpus_bleu`` with weights ``(1,)`` and ``(0.25,)*4``, **no smoothing**:
      clipped n-gram matches and n-gram counts are summed over the corpus before dividing, and the brevity
      penalty uses the summed lengths; BLEU-4 is 0.0 when any order has no match. As in nltk, each
      prediction adds at least 1 to every order's denominator, so empty/short predictions lower the score.
    - ``rouge_l``: mean over samples of rouge-score's ROUGE-L F-measure (LCS based).
    - ``meteor``: mean over samples of nltk ``meteor_score`` (default parameters, wordnet synonyms), or
      ``None`` with a ``notes`` entry when the wordnet corpus is not installed locally.

    A ``None`` or empty prediction scores 0 for ROUGE-L and METEOR and counts in ``n_empty``. Also returns
    ``n``, ``bleu_smoothing`` (``"none"``) and ``notes`` (list of strings). With no samples every score is
    ``None``. ``ValueError`` if the two sequences differ in length.
    """
    _check(predictions, references)
    preds = [tokenize(p) for p in predictions]
    refs = [tokenize(r) for r in references]
    wordnet = _load_wordnet()
    notes = [] if wordnet is not None else [METEOR_UNAVAILABLE_NOTE]
    out: dict = {"n": len(preds), "n_empty": sum(not p for p in preds), "bleu_smoothing": "none"}
    if not preds:
        return {**out, "bleu1": None, "bleu4": None, "rouge_l": None, "meteor": None, "notes": notes}
    refs_lists = [[r] for r in refs]
    out["bleu1"] = _bleu(refs_lists, preds, _BLEU1)
    out["bleu4"] = _bleu(refs_lists, preds, _BLEU4)
    out["rouge_l"] = float(np.mean([_rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]))
    out["meteor"] = (
        float(np.mean([_meteor(p, r, wordnet) for p, r in zip(preds, refs, strict=True)]))
        if wordnet is not None
        else None
    )
    out["notes"] = notes
    return out


def report_text_sample_scores(prediction: str | None, reference: str) -> dict:
    """Scores of one ``(prediction, reference)``: ``bleu1``, ``bleu4``, ``rouge_l``, ``meteor``, ``empty``.

    BLEU here is nltk's BLEU of this one pair (= ``sentence_bleu``) with ``SmoothingFunction().method1`` (a
    zero n-gram match count becomes 0.1), because unsmoothed sentence BLEU-4 is 0 for most short reports;
    ``bleu_smoothing`` says ``"method1"``. An empty prediction scores 0 and sets ``empty``.
    ROUGE-L F-measure and METEOR (``None`` without local wordnet) as in the corpus function.
    """
    pred, ref = tokenize(prediction), tokenize(reference)
    wordnet = _load_wordnet()
    smooth = SmoothingFunction().method1
    return {
        "bleu1": _bleu([[ref]], [pred], _BLEU1, smooth) if pred else 0.0,
        "bleu4": _bleu([[ref]], [pred], _BLEU4, smooth) if pred else 0.0,
        "rouge_l": _rouge_l(prediction, reference),
        "meteor": _meteor(pred, ref, wordnet) if wordnet is not None else None,
        "empty": not pred,
        "bleu_smoothing": "method1",
        "notes": [] if wordnet is not None else [METEOR_UNAVAILABLE_NOTE],
    }
