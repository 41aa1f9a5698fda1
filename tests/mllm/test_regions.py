"""Region text formats and box matching: hand-computed cases, round trips, brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from panderm.errors import ConfigError
from panderm.mllm.regions import (
    PARSE_STYLES,
    STYLES,
    RegionParse,
    box_iou,
    detect_style,
    format_regions,
    match_boxes,
    parse_regions,
    strip_regions,
)


def test_medrega_single_box_scaling() -> None:
    out = parse_regions("<ref>lesion</ref><box>[[0, 0, 999, 999]]</box>", 1000, 500)
    assert isinstance(out, RegionParse) and isinstance(out, list)
    assert out == [("lesion", [[0.0, 0.0, 1000.0, 500.0]])]
    assert out.problems == [] and out.n_dropped == 0
    ((phrase, _boxes),) = out
    assert phrase == "lesion"


def test_medrega_multi_box_and_two_phrases_with_text_around() -> None:
    text = (
        "Findings: <ref>nevus</ref><box>[[0, 0, 333, 999], [666, 0, 999, 333]]</box> and "
        "<ref> scale </ref> <box>[[999, 999, 999, 999]]</box>. Also <box>[[0,0,999,999]]</box>"
    )
    out = parse_regions(text, 999, 1998)
    assert out == [
        ("nevus", [[0, 0, 333, 1998], [666, 0, 999, 666]]),
        ("scale", [[999, 1998, 999, 1998]]),
        (None, [[0, 0, 999, 1998]]),
    ]
    assert out.problems == []
    assert out.boxes().shape == (4, 4)


def test_medrega_chinese_punctuation() -> None:
    text = "图中<ref>红斑，鳞屑</ref><box>［［0， 0， 999， 999］，（999，999，999，999）］</box>。"
    out = parse_regions(text, 999, 999)
    assert out.problems == []
    # The phrase keeps its own punctuation; only the structure is normalised.
    assert out == [("红斑，鳞屑", [[0, 0, 999, 999], [999, 999, 999, 999]])]


def test_medrega_malformed_boxes_reported_counted_and_dropped() -> None:
    text = (
        "<ref>a</ref><box>[[1, 2, 3], [10, 10, 20, 20], [1, x, 3, 4], [50, 0, 40, 10], [0, 0, 1200, 5]]</box>"
    )
    out = parse_regions(text, 999, 999)
    assert out == [("a", [[10, 10, 20, 20]])]
    assert out.n_dropped == 4 and len(out.problems) == 4
    joined = "\n".join(out.problems)
    assert "expected 4 coordinates, got 3" in joined and "[1, 2, 3]" in joined
    assert "non-numeric coordinate 'x'" in joined
    assert "x2 < x1" in joined and "[50, 0, 40, 10]" in joined
    assert "1200" in joined and "outside [0, 999]" in joined


def test_medrega_text_inside_box_tag_is_a_problem() -> None:
    out = parse_regions("<ref>a</ref><box>about here</box><ref>b</ref><box>[[0,0,1,1]]</box>", 999, 999)
    assert out == [("a", []), ("b", [[0, 0, 1, 1]])]
    assert out.n_dropped == 1 and "about here" in out.problems[0]


def test_qwen2_form_scaled_by_1000() -> None:
    text = (
        "<|object_ref_start|>mole<|object_ref_end|><|box_start|>(100,200),(500,1000)<|box_end|>"
        "<|box_start|>(0,0),(1000,1000)<|box_end|> <|box_start|>(5,5),(1,9)<|box_end|>"
    )
    out = parse_regions(text, 2000, 1000, style="qwen2")
    assert out == [("mole", [[200, 200, 1000, 1000], [0, 0, 2000, 1000]])]
    assert out.n_dropped == 1 and "x2 < x1" in out.problems[0]


def test_qwen_json_absolute_pixels() -> None:
    text = (
        "Here you go:\n```json\n[\n"
        '  {"bbox_2d": [10, 20, 30, 40], "label": "nevus"},\n'
        '  {"bbox_2d": [11, 21, 31, 41], "label": "nevus"},\n'
        '  {"bbox_2d": [0, 0, 5, 5]},\n'
        '  {"bbox_2d": [0, 0, 5], "label": "bad"},\n'
        '  {"bbox_2d": [0, 0, 700, 5], "label": "wide"},\n'
        '  {"label": "nobox"}\n'
        "]\n```"
    )
    out = parse_regions(text, 640, 480, style="qwen")
    assert out == [("nevus", [[10, 20, 30, 40], [11, 21, 31, 41]]), (None, [[0, 0, 5, 5]])]
    assert out.n_dropped == 3
    joined = "\n".join(out.problems)
    assert "got 3" in joined and "outside [0, 640]" in joined and "no 'bbox_2d'" in joined


def test_qwen_json_truncated_output_keeps_complete_objects() -> None:
    text = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6'
    out = parse_regions(text, 100, 100, style="qwen")
    assert out == [("a", [[1, 2, 3, 4]])]


def test_normalised_form() -> None:
    text = (
        "lesion: [0.1, 0.2, 0.5, 1.0], [0, 0, 1, 1]\nscale：［0.5，0.5，0.75，0.75］\n[[0.0, 0.0, 0.5, 0.5]]"
    )
    out = parse_regions(text, 200, 100, style="normalised")
    assert out.problems == []
    assert [p for p, _ in out] == ["lesion", "scale", None]
    np.testing.assert_allclose(out[0][1], [[20, 20, 100, 100], [0, 0, 200, 100]])
    np.testing.assert_allclose(out[1][1], [[100, 50, 150, 75]])
    np.testing.assert_allclose(out[2][1], [[0, 0, 100, 50]])
    bad = parse_regions("a: [0.1, 0.2, 1.5, 0.9] [0.1, 0.2]", 10, 10, style="normalised")
    assert bad == [("a", [])] and bad.n_dropped == 2


def test_paligemma_y_before_x_on_1024_bins() -> None:
    text = "<loc0256><loc0128><loc0768><loc0896> melanoma ; <loc0010><loc0020><loc0100><loc0200> nevus"
    out = parse_regions(text, 1024, 512, style="paligemma")
    # melanoma: y1 = 256/1024*512, x1 = 128/1024*1024, y2 = 768/1024*512, x2 = 896/1024*1024
    assert out == [("melanoma", [[128, 128, 896, 384]]), ("nevus", [[20, 5, 200, 50]])]
    assert out.problems == [] and out.n_dropped == 0
    square = parse_regions("<loc0000><loc0000><loc1023><loc0512>", 300, 200, style="paligemma")
    np.testing.assert_allclose(square.boxes(), [[0, 0, 512 / 1024 * 300, 1023 / 1024 * 200]])
    assert square[0][0] is None


def test_paligemma_segmentation_codes_labels_and_surrounding_text() -> None:
    segs = "".join(f"<seg{i:03d}>" for i in range(16))
    text = (
        f"Found: <loc0000><loc0000><loc0512><loc0512> {segs} lesion ; "
        "<loc0512><loc0512><loc1023><loc1023> lesion；<loc0100><loc0100><loc0200><loc0200>\nmore prose"
    )
    out = parse_regions(text, 1024, 1024, style="paligemma")
    assert out.problems == []
    assert out == [("lesion", [[0, 0, 512, 512], [512, 512, 1023, 1023]]), (None, [[100, 100, 200, 200]])]
    # a run of 8 location tokens is two boxes under one label
    two = parse_regions(
        "<loc0000><loc0000><loc0001><loc0001><loc0002><loc0002><loc0003><loc0003> a", 1024, 1024, "paligemma"
    )
    assert two == [("a", [[0, 0, 1, 1], [2, 2, 3, 3]])]


def test_paligemma_malformed_boxes_reported_counted_and_dropped() -> None:
    text = (
        "<loc0001><loc0002><loc0003> short ; <loc0000><loc0000><loc1024><loc0010> big ; "
        "<loc0000><loc0500><loc0100><loc0400> flipped ; <loc0000><loc0000><loc0010><loc0010> good ; "
        "<loc0001><loc0001><loc0002><loc0002><loc0003> five"
    )
    out = parse_regions(text, 1024, 1024, style="paligemma")
    assert out == [("good", [[0, 0, 10, 10]])]
    assert out.n_dropped == 5 and len(out.problems) == 4
    joined = "\n".join(out.problems)
    assert "got 3" in joined and "got 5" in joined
    assert "1024" in joined and "outside [0, 1023]" in joined and "x2 < x1" in joined
    assert parse_regions("<seg001> no box <loc12", 10, 10, "paligemma") == []


def test_paligemma_format_writes_y_first_and_rounds_to_1024_bins() -> None:
    regions = [("melanoma", [[128, 128, 896, 384], [0, 0, 1024, 512]]), (None, [[20, 5, 200, 50]])]
    text = format_regions(regions, 1024, 512, style="paligemma")
    assert text == (
        "<loc0256><loc0128><loc0768><loc0896> melanoma ; <loc0000><loc0000><loc1023><loc1023> melanoma ; "
        "<loc0010><loc0020><loc0100><loc0200>"
    )
    assert format_regions([("empty", [])], 10, 10, style="paligemma") == ""


@pytest.mark.parametrize(
    ("text", "style"),
    [
        ("<ref>lesion</ref><box>[[1, 2, 3, 4]]</box>", "medrega"),
        ("＜box＞［［1，2，3，4］］＜/box＞", "medrega"),
        ("<|object_ref_start|>mole<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", "qwen2"),
        ("<loc0001><loc0002><loc0003><loc0004> nevus", "paligemma"),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', "qwen"),
        ("lesion: [0.1, 0.2, 0.3, 0.4]", "normalised"),
        ("no region at all", "normalised"),
        # both MedRegA and PaliGemma markup: MedRegA comes first in the order
        ("<ref>a</ref><box>[[1, 2, 3, 4]]</box> <loc0001>", "medrega"),
    ],
)
def test_auto_detects_each_style(text: str, style: str) -> None:
    assert detect_style(text) == style
    auto = parse_regions(text, 1000, 1000, style="auto")
    assert auto == parse_regions(text, 1000, 1000, style=style)
    assert auto.problems == parse_regions(text, 1000, 1000, style=style).problems


@pytest.mark.parametrize(
    ("text", "kept", "dropped"),
    [
        ("The lesion <ref>nevus</ref><box>[[1, 2, 3, 4]]</box> is benign.", "The lesion nevus is benign.",
         "The lesion is benign."),
        ("<|object_ref_start|>mole<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> yes", "mole yes",
         "yes"),
        ("<loc0256><loc0128><loc0768><loc0896> melanoma", "melanoma", "melanoma"),
        ("<loc0001><loc0002><loc0003><loc0004><seg001><seg002> nevus ; <loc0010><loc0020><loc0030><loc0040> "
         "cyst", "nevus ; cyst", "nevus ; cyst"),
        ("word<loc0001><loc0002><loc0003><loc0004>next", "word next", "word next"),
        ("图中<ref>红斑</ref><box>[[1,2,3,4]]</box>，正常", "图中红斑，正常", "图中，正常"),
        ("text <|quad_start|>(1,2),(3,4),(5,6),(7,8)<|quad_end|> here", "text here", "text here"),
        ("cut off <box>[[1, 2, 3", "cut off", "cut off"),
        ("stray </ref> and <|box_end|> markers", "stray and markers", "stray and markers"),
        ("＜ref＞痣＜/ref＞＜box＞［［1，2，3，4］］＜/box＞", "痣", ""),
        ("  no markup,  kept as is ", "  no markup,  kept as is ", "  no markup,  kept as is "),
        ("a < b and <answer>C</answer>", "a < b and <answer>C</answer>", "a < b and <answer>C</answer>"),
    ],
)  # fmt: skip
def test_strip_regions(text: str, kept: str, dropped: str) -> None:
    assert strip_regions(text) == kept
    assert strip_regions(text, keep_phrases=False) == dropped


def test_unknown_style_raises() -> None:
    with pytest.raises(ConfigError, match="unknown region style"):
        parse_regions("", 1, 1, style="yolo")
    with pytest.raises(ConfigError):
        format_regions([], 1, 1, style="yolo")
    with pytest.raises(ConfigError, match="unknown region style 'auto'"):
        format_regions([], 1, 1, style="auto")  # auto only parses
    assert "auto" in PARSE_STYLES and "auto" not in STYLES


def _random_regions(rng: np.random.Generator, width: float, height: float) -> list:
    regions = []
    for i in range(rng.integers(1, 5)):
        boxes = []
        for _ in range(rng.integers(1, 4)):
            x = np.sort(rng.uniform(0, width, 2))
            y = np.sort(rng.uniform(0, height, 2))
            boxes.append([x[0], y[0], x[1], y[1]])
        phrase = None if i == 0 and rng.random() < 0.5 else f"finding {i}"
        regions.append((phrase, boxes))
    return regions


def _expected_quantised(box: list[float], style: str, width: float, height: float) -> list[float]:
    sizes = np.array([width, height, width, height])
    b = np.asarray(box)
    if style == "medrega":
        return list(np.round(b / sizes * 999) / 999 * sizes)
    if style == "qwen2":
        return list(np.round(b / sizes * 1000) / 1000 * sizes)
    if style == "qwen":
        return list(np.round(b))
    if style == "paligemma":
        return list(np.minimum(np.round(b / sizes * 1024), 1023) / 1024 * sizes)
    return list(np.round(b / sizes, 4) * sizes)


@pytest.mark.parametrize("style", STYLES)
def test_round_trip_is_quantised_and_stable(style: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        width, height = float(rng.integers(50, 4000)), float(rng.integers(50, 4000))
        regions = _random_regions(rng, width, height)
        text = format_regions(regions, width, height, style)
        parsed = parse_regions(text, width, height, style)
        assert parsed.problems == [], text
        assert [p for p, _ in parsed] == [p for p, _ in regions]
        for (_, got), (_, orig) in zip(parsed, regions, strict=True):
            want = [_expected_quantised(b, style, width, height) for b in orig]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        assert format_regions(parsed, width, height, style) == text


def test_iou_hand_values_and_zero_area() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 5], [5, 5, 5, 5]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 5, 5], [10, 10, 11, 11]], dtype=float)
    iou = box_iou(a, b)
    assert iou.shape == (3, 4)
    assert iou[0, 0] == pytest.approx(1 / 7)
    assert iou[0, 1] == 1.0 and iou[0, 3] == 0.0
    assert not np.isnan(iou).any()
    np.testing.assert_array_equal(iou[1:], 0.0)  # zero-area boxes (even identical ones) give 0
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        box_iou([[0, 0, 1]], b)


def test_iou_matches_brute_force() -> None:
    rng = np.random.default_rng(1)

    def boxes(n: int) -> np.ndarray:
        x, y = np.sort(rng.uniform(0, 10, (n, 2)), axis=1), np.sort(rng.uniform(0, 10, (n, 2)), axis=1)
        return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)

    a, b = boxes(7), boxes(5)
    iou = box_iou(a, b)
    for i, j in itertools.product(range(len(a)), range(len(b))):
        ix = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
        iy = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
        inter = ix * iy
        union = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
        assert iou[i, j] == pytest.approx(inter / union)


def test_hungarian_beats_greedy() -> None:
    # Same y range, so IoU is 1-D interval IoU: P0-G0 0.9 (the single best pair), P0-G1 9/10.25,
    # P1-G0 0.7, P1-G1 6/11.25. Greedy takes P0-G0 then P1-G1 (total 1.433); the optimum swaps (1.578).
    gold = np.array([[0, 0, 10, 1], [1, 0, 11.25, 1]])
    pred = np.array([[1, 0, 10, 1], [0, 0, 7, 1]])
    iou = box_iou(pred, gold)
    assert np.unravel_index(iou.argmax(), iou.shape) == (0, 0)
    matches = match_boxes(pred, gold)
    assert [(p, g) for p, g, _ in matches] == [(0, 1), (1, 0)]
    assert matches[0][2] == pytest.approx(9 / 10.25) and matches[1][2] == pytest.approx(0.7)
    best = max(iou[0, p[0]] + iou[1, p[1]] for p in itertools.permutations(range(2)))
    assert sum(m[2] for m in matches) == pytest.approx(best)


def test_match_threshold_is_inclusive() -> None:
    gold = [[0, 0, 2, 1]]
    pred = [[0, 0, 1, 1]]  # IoU exactly 0.5
    assert match_boxes(pred, gold, threshold=0.5) == [(0, 0, 0.5)]
    assert match_boxes(pred, gold, threshold=0.51) == []
    assert match_boxes([], gold) == []


def test_below_threshold_pairs_do_not_steer_assignment() -> None:
    # P0 overlaps G0 weakly (below threshold) and G1 strongly; P1 only G0 strongly.
    gold = np.array([[0, 0, 10, 1], [20, 0, 30, 1]])
    pred = np.array([[8, 0, 30, 1], [0, 0, 9, 1]])
    matches = match_boxes(pred, gold, threshold=0.4)
    assert [(p, g) for p, g, _ in matches] == [(0, 1), (1, 0)]
