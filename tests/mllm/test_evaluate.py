import json

import pytest

from panderm.mllm.evaluate import (
    multi_box_scores,
    phrase_aware_scores,
    single_box_scores,
    token_scores,
    tokenize,
)

GOLD = [0, 0, 10, 10]


def test_single_box_thresholds_are_strict():
    preds = [[[0, 0, 10, 10]], [[0, 0, 10, 5]], [[0, 0, 10, 3]], []]  # IoU 1.0, 0.5, 0.3, missing
    out = single_box_scores(preds, [[GOLD]] * 4)
    assert out["acc@0.25"] == pytest.approx(3 / 4)
    assert out["acc@0.5"] == pytest.approx(1 / 4)  # IoU exactly 0.5 does not count
    assert out["acc@0.75"] == pytest.approx(1 / 4)
    assert out["mean_iou"] == pytest.approx(1.8 / 4)
    assert out["n"] == 4 and out["n_missing"] == 1
    json.dumps(out)


def test_single_box_exact_threshold_and_first_box_only():
    out = single_box_scores([[[0, 0, 10, 2.5], [0, 0, 10, 10]]], [[GOLD]], thresholds=(0.25,))
    assert out == {"acc@0.25": 0.0, "mean_iou": pytest.approx(0.25), "n": 1, "n_missing": 0}


def test_single_box_missing_and_malformed():
    out = single_box_scores([None, [[1, 2, 3]], [["a", 0, 1, 1]]], [[GOLD]] * 3)
    assert out["n_missing"] == 3
    assert out["mean_iou"] == 0.0
    assert out["acc@0.25"] == 0.0


def test_single_box_length_mismatch():
    with pytest.raises(ValueError):
        single_box_scores([[GOLD]], [[GOLD], [GOLD]])


def test_multi_box_precision_recall_and_compat_swap():
    gold = [[0, 0, 10, 10], [20, 20, 30, 30]]
    pred = [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 4]]  # only pred 0 matches (pred 2 has IoU 0.4)
    out = multi_box_scores([pred], [gold])
    assert out["n_matched"] == 1 and out["n_pred"] == 3 and out["n_gold"] == 2
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(0.4)
    compat = out["medrega_compat"]
    assert compat["precision"] == pytest.approx(1 / 2)
    assert compat["recall"] == pytest.approx(1 / 3)
    assert "swap" in compat["note"]
    json.dumps(out)


def test_multi_box_sums_over_samples_and_empty():
    out = multi_box_scores([[[0, 0, 10, 10]], []], [[GOLD], [GOLD]])
    assert out["precision"] == 1.0 and out["recall"] == 0.5
    empty = multi_box_scores([[]], [[]])
    assert empty["precision"] == 0.0 and empty["recall"] == 0.0 and empty["f1"] == 0.0


def test_phrase_aware_rejects_wrong_phrase():
    gold = [("mole", [[0, 0, 10, 10]]), ("scar", [[20, 20, 30, 30]])]
    pred = [
        ("SCAR", [[0, 0, 10, 10]]),
        ("  Scar ", [[20, 20, 30, 30]]),
    ]  # first box: right place, wrong phrase
    out = phrase_aware_scores([pred], [gold])
    assert out["n_matched"] == 1
    assert out["precision"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(1 / 2)
    geometric = multi_box_scores([[b for _, bs in pred for b in bs]], [[b for _, bs in gold for b in bs]])
    assert geometric["n_matched"] == 2


def test_tokenize():
    assert tokenize("The mole, on the LEFT arm.") == ["the", "mole", "on", "the", "left", "arm"]
    assert tokenize("左臂有痣。") == ["左", "臂", "有", "痣"]


def test_token_scores_english_and_chinese():
    en = token_scores(["The mole, on the left arm."], ["A mole on the LEFT arm!"])
    # pred: the mole on the left arm; gold: a mole on the left arm; overlap 5 ("the" once)
    assert en["precision"] == pytest.approx(5 / 6)
    assert en["recall"] == pytest.approx(5 / 6)
    assert en["f1"] == pytest.approx(5 / 6)
    assert en["accuracy"] == 1.0

    zh = token_scores(["左臂有痣。"], ["左臂有一颗痣，"])
    # 4 pred chars all in the 6 gold chars
    assert zh["precision"] == pytest.approx(1.0)
    assert zh["recall"] == pytest.approx(4 / 6)
    assert zh["f1"] == pytest.approx(0.8)
    assert zh["accuracy"] == 0.0  # recall 0.667 < 0.75

    both = token_scores(
        ["The mole, on the left arm.", "左臂有痣。"], ["A mole on the LEFT arm!", "左臂有一颗痣，"]
    )
    assert both["precision"] == pytest.approx((5 / 6 + 1) / 2)
    assert both["accuracy"] == 0.5 and both["n"] == 2
    json.dumps(both)


def test_token_scores_empty_prediction():
    out = token_scores([""], ["a mole"])
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["accuracy"] == 0.0
