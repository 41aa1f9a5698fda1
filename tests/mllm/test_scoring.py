"""score_run: failures are counted, never scored; each task's metrics come from its evaluator."""

from __future__ import annotations

import pytest

from panderm.errors import ConfigError
from panderm.mllm.cache import CacheResult
from panderm.mllm.conversation import Conversation
from panderm.mllm.samples import VQASample
from panderm.mllm.scoring import headline, report_text, score_run


def sample(i: int, task: str, answer: str, **kw) -> VQASample:
    return VQASample(str(i), Conversation.user(f"question {i}"), answer, task, width=1000, height=1000, **kw)


def ok(text: str) -> CacheResult:
    return CacheResult("ok", text, None, 1, cached=False)


FAILED = CacheResult("failed", None, "BackendError: HTTP 503", 3, cached=False)


def test_failed_calls_are_listed_and_left_out_of_the_scores():
    samples = [sample(0, "vqa", "yes"), sample(1, "vqa", "no"), sample(2, "vqa", "no")]
    metrics, rows = score_run(samples, [ok("Yes, it is."), FAILED, ok("yes")])
    assert metrics["n"] == 3 and metrics["n_failed"] == 1
    assert metrics["failures"] == [{"id": "1", "error": "BackendError: HTTP 503"}]
    vqa = metrics["tasks"]["vqa"]
    assert vqa["n"] == 2 and vqa["closed_accuracy"] == 0.5  # 1 of the 2 answered, not 1 of 3
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"] and rows[1]["response"] is None


def test_text_to_region_counts_malformed_boxes_as_misses():
    gold = "<ref>lesion</ref><box>[[100, 100, 499, 499]]</box>"
    samples = [sample(i, "text_to_region", gold) for i in range(3)]
    replies = [
        "<ref>lesion</ref><box>[[100, 100, 499, 499]]</box>",  # exact: IoU 1
        "<ref>lesion</ref><box>[[100, 100, 1500]]</box>",  # malformed: dropped, a miss
        "I cannot see a lesion.",  # nothing to parse
    ]
    metrics, rows = score_run(samples, [ok(r) for r in replies])
    t2r = metrics["tasks"]["text_to_region"]
    assert t2r["single_box"]["acc@0.5"] == pytest.approx(1 / 3)
    assert t2r["single_box"]["n_missing"] == 2 and t2r["n_malformed_boxes"] == 1
    assert t2r["n_replies_without_box"] == 2
    assert t2r["multi_box"]["precision"] == 1.0 and t2r["multi_box"]["recall"] == pytest.approx(1 / 3)
    assert rows[0]["iou"] == pytest.approx(1.0) and rows[1]["iou"] == 0.0 and rows[1]["parse_problems"]


def test_grounded_report_scores_regions_and_text_separately():
    gold = "<ref>lesion</ref><box>[[0, 0, 499, 499]]</box>: melanoma with blue grey veil."
    reply = "<ref>lesion</ref><box>[[0, 0, 499, 499]]</box>: melanoma with blue grey veil."
    metrics, rows = score_run([sample(0, "grounded_report", gold)], [ok(reply)])
    report = metrics["tasks"]["grounded_report"]
    assert report["single_box"]["acc@0.75"] == 1.0
    assert report["text"]["rouge_l"] == pytest.approx(1.0) and report["text"]["bleu1"] == pytest.approx(1.0)
    assert rows[0]["report"] == "melanoma with blue grey veil."
    assert (
        report_text("<ref>a</ref><box>[[1, 2, 3, 4]]</box>， <ref>b</ref><box>[[1, 2, 3, 4]]</box>：正常")
        == "正常"
    )


def test_classification_maps_replies_within_each_samples_own_class_list():
    en = {"classes": ["nevus", "melanoma"]}
    zh = {"classes": ["痣", "黑色素瘤"]}
    samples = [
        sample(0, "classify", "melanoma", meta=en),
        sample(1, "classify", "nevus", meta=en),
        sample(2, "classify", "黑色素瘤", meta=zh, language="zh"),
    ]
    metrics, rows = score_run(samples, [ok("This is a melanoma."), ok("melanoma"), ok("诊断：黑色素瘤")])
    assert [r["extracted"] for r in rows] == ["melanoma", "melanoma", "黑色素瘤"]
    assert metrics["tasks"]["classify"]["accuracy"] == pytest.approx(2 / 3)
    assert headline(metrics) == {"classify/accuracy": pytest.approx(2 / 3)}


def test_auto_region_style_parses_each_reply_in_its_own_markup():
    gold = "<ref>lesion</ref><box>[[100, 100, 499, 499]]</box>"
    replies = [
        "<ref>lesion</ref><box>[[100, 100, 499, 499]]</box>",  # MedRegA, 0-999
        "<|object_ref_start|>lesion<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>",  # 0-1000
        "<loc0102><loc0102><loc0511><loc0511> lesion",  # PaliGemma: y first, 1024 bins
        '[{"bbox_2d": [100, 100, 500, 500], "label": "lesion"}]',  # Qwen2.5-VL pixels
        "lesion: [0.1, 0.1, 0.5, 0.5]",  # normalised
    ]
    samples = [sample(i, "text_to_region", gold) for i in range(len(replies))]
    metrics, rows = score_run(samples, [ok(r) for r in replies], region_style="auto")
    t2r = metrics["tasks"]["text_to_region"]
    assert t2r["single_box"]["acc@0.75"] == 1.0 and t2r["n_malformed_boxes"] == 0
    assert all(r["iou"] > 0.98 for r in rows)
    medrega_only, _ = score_run(samples, [ok(r) for r in replies])  # the default reads MedRegA tags only
    assert medrega_only["tasks"]["text_to_region"]["n_replies_without_box"] == 4


def test_unknown_region_style_is_a_config_error_whatever_the_tasks():
    with pytest.raises(ConfigError, match="region_style='yolo'"):
        score_run([sample(0, "vqa", "yes")], [ok("yes")], region_style="yolo")


def test_free_text_tasks_read_replies_without_region_markup():
    samples = [sample(0, "region_to_text", "blue grey veil"), sample(1, "grounded_report", "melanoma.")]
    replies = [
        "<|object_ref_start|>blue grey veil<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
        "<loc0001><loc0002><loc0003><loc0004> lesion ; melanoma.",
    ]
    metrics, rows = score_run(samples, [ok(r) for r in replies], region_style="auto")
    assert rows[0]["extracted"] == "blue grey veil" and metrics["tasks"]["region_to_text"]["f1"] == 1.0
    assert rows[1]["report"] == "lesion ; melanoma."  # a PaliGemma label is text, not a ref phrase
    assert report_text("<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>: b") == "b"
