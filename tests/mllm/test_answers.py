import json
import warnings

import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from panderm.mllm.answers import (
    classification_scores,
    classify_free_text,
    closed_answer,
    normalise_answer,
    vqa_scores,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The Lesion, is BENIGN. ", "lesion is benign"),
        ("An apple a day", "apple day"),
        ("theory of a thesis", "theory of thesis"),  # articles only as whole words
        ("x-ray", "x ray"),  # punctuation becomes a space
        ("是的。", "是的"),
        ("“黑色素瘤”、痣（良性）", "黑色素瘤 痣 良性"),
        ("ＢＣＣ！", "bcc"),  # full-width letters and "！" folded by NFKC
        ("Ｔｈｅ　ｎｅｖｕｓ", "nevus"),  # full-width space too
        (None, ""),
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),
        ("no, it is not", "no"),
        ("It is not clear", None),  # 'not' is no marker
        ("不是", "no"),  # 不是 read before its 是
        ("是的", "yes"),
        ("没有溃疡", "no"),  # 没有 before its 有
        ("无", "no"),
        ("有", "yes"),
        ("Ｙｅｓ！", "yes"),
        ("Nobody knows", None),  # whole words only
        ("Yes or no is hard to say; no.", "no"),  # 'yes or no' skipped
        ("是否有溃疡？无法确定", None),  # question/hedge forms skipped
        ("有没有？没有", "no"),
        ("Yes, but no ulcer", "yes"),  # first marker decides
        ("", None),
        (None, None),
    ],
)
def test_closed_answer(text, expected):
    assert closed_answer(text) == expected


def test_vqa_scores_hand_set():
    preds = [
        "Yes.",  # closed, gold yes: correct
        "No, it is not.",  # closed, gold no: correct
        "不是",  # closed, gold 是: read no -> wrong
        "It is not clear",  # closed, gold 否: unreadable -> wrong
        "Basal cell carcinoma.",  # open: exact and contains
        "It is on the left arm",  # open, gold 'left arm': contains only
        "这是黑色素瘤。",  # open: per-character contains only
        "melanoma",  # open, gold nevus: neither
    ]
    golds = ["Yes", "no", "是", "否", "basal cell carcinoma", "the left arm", "黑色素瘤", "nevus"]
    out = vqa_scores(preds, golds)
    assert out["n_closed"] == 4 and out["n_open"] == 4 and out["n"] == 8
    assert out["n_unreadable_closed"] == 1
    assert out["closed_accuracy"] == pytest.approx(2 / 4)
    assert out["open_exact"] == pytest.approx(1 / 4)
    assert out["open_contains"] == pytest.approx(3 / 4)
    assert out["accuracy"] == pytest.approx((2 + 1) / 8)
    json.dumps(out)


def test_vqa_scores_edges():
    out = vqa_scores(["melanoma"], ["Melanoma."])
    assert out["closed_accuracy"] is None and out["open_exact"] == 1.0
    assert vqa_scores(["yes"], ["yes."])["n_closed"] == 1
    # contains needs whole tokens: 'arm' is not in 'farm'
    assert vqa_scores(["a farm"], ["arm"])["open_contains"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        vqa_scores(["x"], ["。"])
    with pytest.raises(ValueError, match="predictions has 1"):
        vqa_scores(["x"], [])


CLASSES = ["carcinoma", "basal cell carcinoma", "melanoma", "nevus"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Nevus.", "nevus"),  # exact after normalisation
        ("This is a basal cell carcinoma", "basal cell carcinoma"),  # longest name wins
        ("Looks like melanoma, not a nevus", "melanoma"),  # first mention
        ("A nevus rather than melanoma", "nevus"),
        ("carcinoma, specifically basal cell carcinoma", "carcinoma"),  # the first 'carcinoma' stands alone
        ("Melanomas", None),  # whole words only
        ("I cannot tell", None),
        (None, None),
    ],
)
def test_classify_free_text(reply, expected):
    assert classify_free_text(reply, CLASSES) == expected


def test_classify_chinese_and_bad_classes():
    assert classify_free_text("诊断：基底细胞癌。", ["癌", "基底细胞癌", "黑色素瘤"]) == "基底细胞癌"
    assert classify_free_text("ＮＥＶＵＳ", ["Nevus"]) == "Nevus"  # returned as given
    with pytest.raises(ValueError, match="collide"):
        classify_free_text("x", ["Nevus", "nevus."])
    with pytest.raises(ValueError, match="non-empty"):
        classify_free_text("x", [])


def test_classification_scores_hand_and_sklearn():
    classes = ["melanoma", "nevus", "basal cell carcinoma"]
    golds = ["melanoma", "melanoma", "nevus", "nevus", "basal cell carcinoma"]
    preds = ["Melanoma.", "It is a nevus", "nevus", "I cannot tell", "basal cell carcinoma, not melanoma"]
    out = classification_scores(preds, golds, classes)
    # mapped: melanoma, nevus, nevus, (unmatched), bcc -> 3/5 right
    # recall: melanoma 1/2, nevus 1/2, bcc 1/1 -> balanced (0.5 + 0.5 + 1) / 3 = 2/3
    # precision: melanoma 1/1, nevus 1/2, bcc 1/1 -> F1 2/3, 1/2, 1 -> macro 13/18
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["balanced_accuracy"] == pytest.approx(2 / 3)
    assert out["macro_f1"] == pytest.approx(13 / 18)
    assert out["per_class_recall"] == pytest.approx(
        {"melanoma": 0.5, "nevus": 0.5, "basal cell carcinoma": 1.0}
    )
    assert out["n"] == 5 and out["n_unmatched"] == 1
    # independently, with string labels and an explicit unmatched marker
    mapped = [classify_free_text(p, classes) or "<unmatched>" for p in preds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(golds, mapped)
    assert out["accuracy"] == pytest.approx(accuracy_score(golds, mapped))
    assert out["balanced_accuracy"] == pytest.approx(balanced)
    assert out["macro_f1"] == pytest.approx(f1_score(golds, mapped, labels=classes, average="macro"))
    recalls = recall_score(golds, mapped, labels=classes, average=None)
    assert list(out["per_class_recall"].values()) == pytest.approx(list(recalls))
    json.dumps(out)


def test_classification_scores_edges():
    # a class absent from the golds: recall None, F1 0 in the macro mean (documented)
    out = classification_scores(["nevus"], ["Nevus"], ["nevus", "melanoma"])
    assert out["per_class_recall"] == {"nevus": 1.0, "melanoma": None}
    assert out["macro_f1"] == pytest.approx(0.5)
    empty = classification_scores([], [], ["nevus"])
    assert empty["accuracy"] is None and empty["n"] == 0
    with pytest.raises(ValueError, match="not one of the classes"):
        classification_scores(["nevus"], ["psoriasis"], ["nevus"])


def test_region_markup_is_not_part_of_an_answer():
    """Replies that keep region tokens (the hf backend keeps them for the region layer) read as plain ones."""
    paligemma = "<loc0256><loc0128><loc0768><loc0896><seg001><seg002> melanoma"
    assert normalise_answer(paligemma) == "melanoma"
    assert classify_free_text(paligemma, ["nevus", "melanoma"]) == "melanoma"
    # without stripping, "loc0256" and the like would be words of the reply; with it the reply is the label
    assert classification_scores([paligemma], ["melanoma"], ["nevus", "melanoma"])["accuracy"] == 1.0
    medrega = "Yes, <ref>the lesion</ref><box>[[10, 20, 300, 400]]</box> is ulcerated."
    assert normalise_answer(medrega) == "yes lesion is ulcerated"
    assert closed_answer("<|box_start|>(0,0),(999,999)<|box_end|> No ulcer.") == "no"
    qwen2 = "<|object_ref_start|>Basal cell carcinoma<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert vqa_scores([qwen2], ["basal cell carcinoma"])["open_exact"] == 1.0


def test_mcqa_letters_are_read_past_region_markup():
    from panderm.mllm.icl.mcqa import build_options, extract_choice

    options = build_options(["nevus", "melanoma"], "melanoma", key="p1")
    letter = options.letter("melanoma")
    assert extract_choice(f"<loc0001><loc0002><loc0003><loc0004> {letter}", options) == (letter, "letter")
    tagged = f"<answer><ref>{letter}</ref><box>[[1, 2, 3, 4]]</box></answer>"
    assert extract_choice(tagged, options) == (letter, "tag")
    assert extract_choice("<loc0010><loc0020><loc0100><loc0200> melanoma", options) == (letter, "text")
