"""Property-based tests (hypothesis) of the text parsers users feed model replies to: region strings, MCQA
letter extraction and free-text answer reading."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from panderm.mllm.answers import classify_free_text, closed_answer, normalise_answer, vqa_scores
from panderm.mllm.icl.mcqa import MCQAOptions, build_options, extract_choice
from panderm.mllm.regions import (
    PARSE_STYLES,
    STYLES,
    RegionParse,
    detect_style,
    format_regions,
    parse_regions,
    strip_regions,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------- regions

# Integer grid each style writes (None: absolute pixels, "normalised": 4 decimals of [0, 1]); paligemma's
# values are 0..1023 on 1024 bins (pixel = v / 1024 * size).
GRID = {"medrega": 999, "qwen2": 1000, "qwen": None, "paligemma": 1024, "normalised": 10_000}
TOP = {"paligemma": 1023}  # the largest value a style writes, where it is not its grid
# Characters a phrase cannot hold in each style's text form (tags, list brackets, line breaks, PaliGemma's
# detection separator); full-width forms too, since the parsers read full-width punctuation as ASCII. The
# JSON form escapes everything.
_FULLWIDTH = {"<": "＜", ">": "＞", "[": "［】〔", "]": "］】〕", ":": "：", "|": "｜", ";": "；"}
NOT_IN_PHRASE = {"medrega": "<>", "qwen2": "<|", "qwen": "", "paligemma": "<;\n", "normalised": "[]:\n"}

SPECIAL = '{}"\\,:;[]()<>|/ \t，：；（）【】＂｛｝中'
styles = st.sampled_from(STYLES)
sizes = st.integers(min_value=1, max_value=5000).map(float) | st.floats(min_value=0.5, max_value=5000.0)


def phrases(style: str) -> st.SearchStrategy[str]:
    banned = "".join(c + _FULLWIDTH.get(c, "") for c in NOT_IN_PHRASE[style]) + "【"
    syntax = st.sampled_from([c for c in SPECIAL if c not in banned])  # drawn often, unlike in st.characters
    text = st.text(
        syntax | st.characters(blacklist_characters=banned, blacklist_categories=["Cs"]), max_size=20
    )
    return text if style == "qwen" else text.map(str.strip).filter(bool)


@st.composite
def grid_boxes(draw: st.DrawFn, style: str, width: float, height: float) -> list[float]:
    """A box whose pixel coordinates are exactly what parsing the style's numbers gives."""
    grid = GRID[style]
    if grid is None:  # qwen: integer pixels inside the image
        xs = sorted(draw(st.integers(0, int(width))) for _ in range(2))
        ys = sorted(draw(st.integers(0, int(height))) for _ in range(2))
        return [float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])]
    top = TOP.get(style, grid)
    xs = sorted(draw(st.integers(0, top)) for _ in range(2))
    ys = sorted(draw(st.integers(0, top)) for _ in range(2))
    if style == "normalised":  # the parser reads the 4-decimal text: the box is float(text) * size
        xs, ys = ([float(f"{v / grid:.4f}") for v in vs] for vs in (xs, ys))
        return [xs[0] * width, ys[0] * height, xs[1] * width, ys[1] * height]
    return [xs[0] / grid * width, ys[0] / grid * height, xs[1] / grid * width, ys[1] / grid * height]


@st.composite
def region_lists(draw: st.DrawFn) -> tuple[str, float, float, list]:
    """(style, width, height, regions): distinct phrases, each with at least one box. (A phrase-less region
    after another one, or the same label twice in a row in the JSON form, reads back merged into the region
    before it, as parse_regions documents, so those are not drawn.)"""
    style = draw(styles)
    width = float(draw(st.integers(1, 4000))) if style == "qwen" else draw(sizes)
    height = float(draw(st.integers(1, 4000))) if style == "qwen" else draw(sizes)
    names = draw(st.lists(phrases(style), min_size=1, max_size=4, unique=True))
    regions = [
        (name, draw(st.lists(grid_boxes(style, width, height), min_size=1, max_size=3))) for name in names
    ]
    return style, width, height, regions


@FAST
@given(case=region_lists())
def test_parse_inverts_format_on_grid_boxes(case: tuple) -> None:
    style, width, height, regions = case
    text = format_regions(regions, width, height, style)
    parsed = parse_regions(text, width, height, style)
    assert parsed.problems == [] and parsed.n_dropped == 0
    assert parsed.regions == regions


@FAST
@given(style=styles, width=sizes, height=sizes, corners=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
def test_any_box_round_trips_within_half_a_quantisation_step(
    style: str, width: float, height: float, corners: list[float]
) -> None:
    if style == "qwen":
        width, height = float(round(width) or 1), float(round(height) or 1)
    x1, x2, y1, y2 = corners
    box = [min(x1, x2) * width, min(y1, y2) * height, max(x1, x2) * width, max(y1, y2) * height]
    text = format_regions([("lesion", [box])], width, height, style)
    parsed = parse_regions(text, width, height, style)
    assert parsed.problems == []
    ((_, (got,)),) = parsed
    grid = GRID[style]
    steps = (1.0, 1.0) if grid is None else (width / grid, height / grid)
    for v, g, step, size in zip(box, got, steps * 2, (width, height) * 2, strict=True):
        # paligemma's last bin (1023) starts a bin before the far edge: coordinates past its middle lose up
        # to a whole step
        edge = style == "paligemma" and v > (TOP["paligemma"] + 0.5) / grid * size
        assert abs(v - g) <= (step if edge else step / 2) + 1e-9 * max(width, height)
    assert format_regions(parsed, width, height, style) == text


regions_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200)
# Fragments of every style's syntax, so random text often comes close to a real region string.
SYNTAX = [
    "<ref>", "</ref>", "<box>", "</box>", "[[", "]]", "[", "]", "(", ")", ",", " ", "\n", "：", "［", "］",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", '{"bbox_2d": ', "{", "}",
    '"label": "a"', "1", "999", "-3", "1e999", "nan", "0.5", "x", "lesion", ": ",
    "<loc0256>", "<loc1023>", "<loc1024>", "<loc12>", "<seg012>", " ; ", "；",
]  # fmt: skip
near_syntax = st.lists(st.sampled_from(SYNTAX) | st.text(max_size=3), max_size=40).map("".join)


@FAST
@given(style=st.sampled_from(PARSE_STYLES), text=regions_text | near_syntax, width=sizes, height=sizes)
@example(style="qwen", text='{"bbox_2d": ' + "[" * 5000 + "]" * 5000 + "}", width=10.0, height=10.0)
@example(style="normalised", text="[" * 5000 + "]" * 5000, width=10.0, height=10.0)
def test_any_text_parses_without_raising(style: str, text: str, width: float, height: float) -> None:
    parsed = parse_regions(text, width, height, style)
    assert isinstance(parsed, RegionParse)
    assert parsed.n_dropped >= 0 and bool(parsed.problems) == bool(parsed.n_dropped)
    for _, boxes in parsed:
        for x1, y1, x2, y2 in boxes:  # every kept box lies inside the image, corners in order
            assert 0 <= x1 <= x2 <= width * (1 + 1e-12) and 0 <= y1 <= y2 <= height * (1 + 1e-12)


prose = st.text(st.characters(blacklist_characters='<>[](){}:"|\n', blacklist_categories=["Cs"]), max_size=40)


@FAST
@given(case=region_lists(), before=prose, after=prose)
def test_regions_are_found_inside_surrounding_text(case: tuple, before: str, after: str) -> None:
    style, width, height, regions = case
    body = format_regions(regions, width, height, style)
    # the normalised style takes a phrase from its own line, so the prose around it has its own lines; a
    # paligemma label runs to the line end, so prose after it starts a new line
    if style == "normalised":
        text = f"{before}\n{body}\n{after}"
    elif style == "paligemma":
        text = f"{before} {body}\n{after}"
    else:
        text = f"{before} {body} {after}"
    parsed = parse_regions(text, width, height, style)
    assert parsed.problems == []
    assert parsed.regions == regions


@FAST
@given(case=region_lists())
def test_auto_finds_the_style_a_region_string_is_written_in(case: tuple) -> None:
    style, width, height, regions = case
    text = format_regions(regions, width, height, style)
    # a qwen JSON label or a normalised phrase may itself hold another style's markup
    assume(style not in ("qwen", "normalised") or detect_style(text) == style)
    assert detect_style(text) == style
    assert parse_regions(text, width, height, "auto").regions == regions


@FAST
@given(case=region_lists())
def test_stripping_a_tagged_region_string_leaves_its_phrases(case: tuple) -> None:
    style, width, height, regions = case
    assume(style in ("medrega", "qwen2", "paligemma"))
    # phrases that hold markup-like text ("<" is banned from these phrases, so none) stay whole
    text = format_regions(regions, width, height, style)
    stripped = strip_regions(text)
    assert not any(tok in stripped for tok in ("<ref>", "<box>", "<|box_start|>", "<loc", "<|object_ref"))
    for phrase, _ in regions:
        assert phrase in stripped
    assert strip_regions(text, keep_phrases=False) == ("" if style != "paligemma" else strip_regions(text))


@FAST
@given(text=regions_text | near_syntax, keep=st.booleans())
def test_strip_regions_is_idempotent_and_leaves_plain_text_alone(text: str, keep: bool) -> None:
    once = strip_regions(text, keep_phrases=keep)
    assert strip_regions(once, keep_phrases=keep) == once
    if "<" not in text and "＜" not in text:
        assert once == text


def test_qwen_json_labels_keep_braces_and_full_width_punctuation() -> None:
    text = (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "a {b} }", "meta": {"score": 0.9}}, {"bbox_2d": [0, 0, 1, 1], '
    )
    text += '"label": "红斑，鳞屑"}]'
    parsed = parse_regions(text, 10, 10, "qwen")
    assert parsed.problems == []
    assert parsed.regions == [("a {b} }", [[1.0, 2.0, 3.0, 4.0]]), ("红斑，鳞屑", [[0.0, 0.0, 1.0, 1.0]])]
    listed = parse_regions('{"objects": [{"bbox_2d": [1, 2, 3, 4]}]} and {b}', 10, 10, "qwen")
    assert listed.regions == [(None, [[1.0, 2.0, 3.0, 4.0]])] and "invalid JSON" in listed.problems[0]
    full_width = parse_regions("｛＂bbox_2d＂：［1，2，3，4］｝", 10, 10, "qwen")
    assert full_width.regions == [(None, [[1.0, 2.0, 3.0, 4.0]])]


def test_normalised_empty_list_is_a_region_without_boxes() -> None:
    text = format_regions([("lesion", [])], 10, 10, "normalised")
    parsed = parse_regions(text, 10, 10, "normalised")
    assert parsed.regions == [("lesion", [])] and parsed.problems == []


# ------------------------------------------------------------------------------------------------ MCQA

option_texts = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=25).filter(
    lambda s: s.strip() != ""
)


@st.composite
def mcqa_options(draw: st.DrawFn) -> MCQAOptions:
    answers = draw(st.lists(option_texts, min_size=1, max_size=8, unique_by=str.strip))
    query = draw(st.sampled_from(answers))
    return build_options(answers, query, key=draw(st.text(max_size=5)), seed=draw(st.integers(0, 99)))


REPLY_SYNTAX = [
    "<answer>", "</answer>", "answer is ", "Answer: ", "option ", "I choose ", "(", ")", "A", "b", "C.", " ",
    "\n", "**",
]  # fmt: skip
any_reply = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200) | st.lists(
    st.sampled_from(REPLY_SYNTAX) | st.text(max_size=4), max_size=30
).map("".join)


@FAST
@given(options=mcqa_options(), reply=any_reply | st.none())
def test_any_reply_reads_as_an_option_letter_or_fails(options: MCQAOptions, reply: str | None) -> None:
    letter, method = extract_choice(reply, options)
    assert (letter is None) == (method == "failed")
    assert letter is None or letter in options.letters


# prose that holds none of the phrases the reader looks for (tags, "answer", "option", "I choose", ...)
safe_prose = st.text(
    st.characters(whitelist_categories=["Ll", "Zs", "Nd"], max_codepoint=0x7F), max_size=60
).filter(
    lambda s: not any(w in s.lower() for w in ("answer", "option", "choice", "choose", "select", "pick"))
)
LETTER_FORMS = ["{}", "({})", "{}.", "**{}**", "Option {}", "[{}]", "{})"]


@FAST
@given(options=mcqa_options(), data=st.data(), before=st.text(max_size=80), after=st.text(max_size=80))
def test_tagged_letter_is_read_whatever_surrounds_it(
    options: MCQAOptions, data: st.DataObject, before: str, after: str
) -> None:
    assume("<answer>" not in (before + after).lower())
    letter = data.draw(st.sampled_from(options.letters))
    form = data.draw(st.sampled_from(LETTER_FORMS)).format(
        data.draw(st.sampled_from([letter, letter.lower()]))
    )
    assert extract_choice(f"{before}<answer>{form}</answer>{after}", options) == (letter, "tag")


@FAST
@given(options=mcqa_options(), data=st.data(), before=safe_prose)
def test_stated_letter_is_read_after_plain_prose(
    options: MCQAOptions, data: st.DataObject, before: str
) -> None:
    letter = data.draw(st.sampled_from(options.letters))
    statement = data.draw(
        st.sampled_from(
            ["The answer is {}.", "Answer: ({})", "answer: {}", "I choose {}.", "The correct option is {}",
             "My choice is **{}**.", "Option {} is correct."]
        )
    )  # fmt: skip
    assert extract_choice(f"{before} {statement.format(letter)}", options) == (letter, "pattern")


@FAST
@given(options=mcqa_options(), data=st.data())
def test_bare_decorated_letter_is_read(options: MCQAOptions, data: st.DataObject) -> None:
    letter = data.draw(st.sampled_from(options.letters))
    form = data.draw(st.sampled_from(LETTER_FORMS))
    pad = data.draw(st.sampled_from(["", " ", "\n", "  \r\n"]))
    assert extract_choice(pad + form.format(letter) + pad, options) == (letter, "letter")


# --------------------------------------------------------------------------------------- free-text answers

classes_lists = st.lists(
    st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=20),
    min_size=1,
    max_size=6,
    unique_by=normalise_answer,
).filter(lambda cs: all(normalise_answer(c) for c in cs))


@FAST
@given(reply=st.text(max_size=200) | st.none(), classes=classes_lists)
def test_free_text_readers_never_raise(reply: str | None, classes: list[str]) -> None:
    assert closed_answer(reply) in ("yes", "no", None)
    assert classify_free_text(reply, classes) in (*classes, None)
    scores = vqa_scores([reply], [classes[0]])
    assert scores["n"] == 1


@FAST
@given(classes=classes_lists, data=st.data())
def test_a_reply_naming_a_class_is_that_class(classes: list[str], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(classes))
    assert classify_free_text(name, classes) == name
    assert classify_free_text(f"  {name}. ", classes) == name


@FAST
@given(
    word=st.sampled_from(["Yes", "yes", "YES", "Yeah", "No", "no", "Nope", "是", "不是", "没有", "否"]),
    tail=safe_prose,
)
def test_leading_yes_or_no_decides(word: str, tail: str) -> None:
    expected = "no" if word.lower() in ("no", "nope") or word in ("不是", "没有", "否") else "yes"
    assume(not any(w in tail.split() for w in ("yes", "yeah", "yep", "no", "nope")))
    assert closed_answer(f"{word}, {tail}") == expected
