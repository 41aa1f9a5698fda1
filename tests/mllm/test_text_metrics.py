import json
import math
import warnings
from types import SimpleNamespace

import pytest
from torchmetrics.functional.text.rouge import rouge_score

from panderm.mllm import text_metrics
from panderm.mllm.text_metrics import report_text_sample_scores, report_text_scores


class _FakeWordnet:
    """Stands in for nltk's wordnet reader: ``synsets(word)`` yields synsets whose lemmas are the synonyms."""

    def __init__(self, synonyms: dict[str, list[str]]) -> None:
        self.synonyms = synonyms

    def synsets(self, word: str) -> list:
        names = self.synonyms.get(word, [])
        return [SimpleNamespace(lemmas=lambda: [SimpleNamespace(name=lambda n=n: n) for n in names])]


@pytest.fixture
def no_wordnet(monkeypatch):
    monkeypatch.setattr(text_metrics, "_load_wordnet", lambda: None)


@pytest.fixture
def fake_wordnet(monkeypatch):
    monkeypatch.setattr(text_metrics, "_load_wordnet", lambda: _FakeWordnet({"dark": ["black"]}))


def test_bleu1_clipping_and_brevity_penalty(no_wordnet):
    # pair 1: pred [the the the cat] (4), ref [the cat sat on the mat] (6):
    #   'the' clipped to min(3, 2) = 2, 'cat' 1 -> 3 matches of 4
    # pair 2: pred [a dog barked] (3), ref [the dog barked loudly] (4): dog, barked -> 2 matches of 3
    # corpus p1 = (3 + 2) / (4 + 3) = 5/7; c = 7, r = 10 -> BP = exp(1 - 10/7) = exp(-3/7)
    out = report_text_scores(
        ["The the the cat.", "A dog barked"], ["The cat sat on the mat", "the dog barked loudly"]
    )
    assert out["bleu1"] == pytest.approx(5 / 7 * math.exp(-3 / 7))
    assert out["n"] == 2 and out["n_empty"] == 0 and out["bleu_smoothing"] == "none"


def test_bleu4_hand_counted_ngrams(no_wordnet):
    # pair 1: pred "the lesion is a brown macule" (6), ref "the lesion is a dark brown macule" (7)
    #   1-grams 6/6; 2-grams: the lesion, lesion is, is a, brown macule match, a brown not -> 4/5
    #   3-grams: the lesion is, lesion is a match; is a brown, a brown macule not -> 2/4
    #   4-grams: the lesion is a matches; lesion is a brown, is a brown macule not -> 1/3
    # pair 2: identical 4 tokens -> 4/4, 3/3, 2/2, 1/1
    # corpus sums: p1 = 10/10, p2 = 7/8, p3 = 4/6, p4 = 2/4; c = 10, r = 11 -> BP = exp(1 - 11/10)
    out = report_text_scores(
        ["the lesion is a brown macule", "no ulceration seen here"],
        ["the lesion is a dark brown macule", "No ulceration seen here."],
    )
    expected = math.exp(-0.1) * (1 * 7 / 8 * 4 / 6 * 2 / 4) ** 0.25
    assert out["bleu4"] == pytest.approx(expected)
    assert out["bleu1"] == pytest.approx(math.exp(-0.1))  # p1 = 1, same BP


def test_bleu4_without_any_4gram_match_is_exactly_zero_and_silent(no_wordnet):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = report_text_scores(["a b c d"], ["a b x y"])
    assert out["bleu4"] == 0.0  # unsmoothed: p3 = p4 = 0 -> geometric mean 0 (not nltk's ~1e-77)
    assert out["bleu1"] == pytest.approx(0.5)


def test_rouge_l_from_hand_lcs(no_wordnet):
    # pred [brown macule on the lesion] (5), ref [the lesion is a dark brown macule] (7)
    # LCS = 2 ("brown macule" or "the lesion"); P = 2/5, R = 2/7, F = 2PR/(P+R) = (8/35)/(24/35) = 1/3
    out = report_text_scores(["Brown macule on the lesion."], ["the lesion is a dark brown macule"])
    assert out["rouge_l"] == pytest.approx(1 / 3)
    assert report_text_sample_scores("Brown macule on the lesion.", "the lesion is a dark brown macule")[
        "rouge_l"
    ] == pytest.approx(1 / 3)


def test_chinese_report_scored_per_character(no_wordnet):
    pred, ref = "皮损呈黑色。", "皮损为黑色斑片"
    # torchmetrics' (and rouge-score's) default normaliser drops the Chinese text entirely
    assert float(rouge_score(pred, ref, rouge_keys="rougeL")["rougeL_fmeasure"]) == 0.0
    # per character: pred 皮损呈黑色 (5, "。" dropped), ref 皮损为黑色斑片 (7); LCS 皮损黑色 = 4
    # P = 4/5, R = 4/7, F = (32/35)/(48/35) = 2/3; BLEU-1 = 4/5 * exp(1 - 7/5)
    out = report_text_scores([pred], [ref])
    assert out["rouge_l"] == pytest.approx(2 / 3)
    assert out["bleu1"] == pytest.approx(0.8 * math.exp(-0.4))


def test_empty_predictions_score_zero_and_are_counted(no_wordnet):
    # pair 1 empty: ROUGE-L 0, BLEU adds 0 matches, length 0 and (nltk) 1 to the unigram denominator
    # pair 2 exact: 2/2. p1 = 2/3; c = 2, r = 4 -> BP = exp(1 - 4/2); ROUGE-L mean = (0 + 1) / 2
    out = report_text_scores(["", "a b"], ["x y", "a b"])
    assert out["n_empty"] == 1
    assert out["rouge_l"] == pytest.approx(0.5)
    assert out["bleu1"] == pytest.approx(2 / 3 * math.exp(-1))
    none_pred = report_text_scores([None, "。"], ["x", "y"])
    assert none_pred["n_empty"] == 2 and none_pred["bleu1"] == 0.0 and none_pred["rouge_l"] == 0.0
    sample = report_text_sample_scores(None, "x y")
    assert sample["empty"] is True and sample["bleu1"] == sample["bleu4"] == sample["rouge_l"] == 0.0


def test_meteor_unavailable_without_wordnet(no_wordnet):
    out = report_text_scores(["benign mole"], ["benign nevus"])
    assert out["meteor"] is None
    assert any("wordnet" in note for note in out["notes"])
    assert report_text_sample_scores("benign mole", "benign nevus")["meteor"] is None
    json.dumps(out)


def test_real_wordnet_lookup_never_raises():
    # whatever is installed here: the reader, or None (no download is attempted)
    assert text_metrics._load_wordnet() is None or hasattr(text_metrics._load_wordnet(), "synsets")


def test_meteor_with_wordnet(fake_wordnet):
    # "dark spot" vs "black spot": exact 'spot' + synonym dark~black -> P = R = 1, Fmean = 1,
    #   one chunk over 2 matches: penalty = 0.5 * (1/2)^3 = 0.0625 -> 0.9375
    # "the lesion is brown" vs "the lesion is a brown": 4 matches, P = 1, R = 4/5,
    #   Fmean = P*R / (0.9 P + 0.1 R) = 0.8 / 0.98; chunks (the lesion is)(brown) = 2 -> 0.5 * (2/4)^3
    first = 0.9375
    second = 0.8 / 0.98 * (1 - 0.5 * 0.5**3)
    assert report_text_sample_scores("Dark spot", "black spot")["meteor"] == pytest.approx(first)
    out = report_text_scores(["Dark spot", "the lesion is brown"], ["black spot", "the lesion is a brown"])
    assert out["meteor"] == pytest.approx((first + second) / 2)
    assert out["notes"] == []
    # without the synonym only 'spot' matches: P = R = 1/2, Fmean = 1/2, penalty 0.5 * (1/1)^3 -> 0.25
    assert report_text_sample_scores("grey spot", "black spot")["meteor"] == pytest.approx(0.25)


def test_sample_bleu_uses_method1_smoothing(no_wordnet):
    # pred [a b c d], ref [a b x y]: p1 = 2/4, p2 = 1/3, p3 = 0/2 -> 0.1/2, p4 = 0/1 -> 0.1/1; BP = 1
    out = report_text_sample_scores("a b c d", "a b x y")
    assert out["bleu4"] == pytest.approx((0.5 * (1 / 3) * 0.05 * 0.1) ** 0.25)
    assert out["bleu_smoothing"] == "method1"


def test_lengths_and_empty_corpus(no_wordnet):
    with pytest.raises(ValueError, match="predictions has 1"):
        report_text_scores(["a"], ["a", "b"])
    out = report_text_scores([], [])
    assert out["n"] == 0 and out["bleu1"] is None and out["rouge_l"] is None
    json.dumps(out)
