"""MCQA variant: option construction, the query text and reading the chosen letter from replies."""

from __future__ import annotations

import pytest

from panderm.errors import DataError
from panderm.mllm.icl.mcqa import MCQAOptions, build_options, extract_choice, mcqa_question

DEMOS = ["melanoma", " nevus", "melanoma", "basal cell carcinoma "]


@pytest.fixture
def opts() -> MCQAOptions:
    """A = melanoma, B = nevus, C = basal cell carcinoma; the query's answer is nevus."""
    return build_options(DEMOS, "nevus", key="p1")


def test_options_in_order_of_first_appearance_bound_before_shuffling(opts):
    assert opts.options == ("melanoma", "nevus", "basal cell carcinoma")
    assert opts.correct == "B" and opts.letters == "ABC"
    assert sorted(opts.display) == ["A", "B", "C"]
    assert opts.letter("  nevus ") == "B" and opts.letter("Nevus") is None  # exact after strip only
    assert opts.text("C") == "basal cell carcinoma"
    with pytest.raises(DataError, match="'D'"):
        opts.text("D")
    # the query's answer counts as an option too, after the demos' answers
    new = build_options(["a1", "a2"], "a3", key="p1")
    assert new.options == ("a1", "a2", "a3") and new.correct == "C"
    # case and punctuation make different options
    assert build_options(["Nevus", "nevus."], "nevus", key="k").options == ("Nevus", "nevus.", "nevus")


def test_display_is_seeded_per_problem_and_letters_stay_bound():
    answers = [f"diagnosis {i}" for i in range(10)]
    first = build_options(answers, "diagnosis 3", key="p7")
    again = build_options(answers, "diagnosis 3", key="p7")
    assert first == again  # deterministic for seed and key
    assert build_options(answers, "diagnosis 3", key="p7", seed=42) == first  # 42 is the default
    displays = {build_options(answers, "diagnosis 3", key=f"p{i}").display for i in range(8)}
    assert len(displays) > 1  # other keys shuffle differently
    assert len({build_options(answers, "diagnosis 3", key="p7", seed=s).display for s in range(8)}) > 1
    for key in ("p0", "p1", "p2"):
        shown = build_options(answers, "diagnosis 3", key=key)
        assert shown.options == tuple(answers) and shown.correct == "D"  # only the display moves


def test_option_errors_name_the_problem():
    with pytest.raises(DataError, match=r"problem 'big'.*27 unique answers"):
        build_options([f"d{i}" for i in range(26)], "query", key="big")
    assert len(build_options([f"d{i}" for i in range(25)], "query", key="ok").options) == 26
    with pytest.raises(DataError, match=r"problem 'e'.*demo 1 answer '  ' is empty"):
        build_options(["x", "  "], "y", key="e")
    with pytest.raises(DataError, match="display"):
        MCQAOptions(("a", "b"), ("A", "A"), "A")


def test_query_text_lists_options_in_display_order(opts):
    text = mcqa_question("What is the diagnosis? ", opts)
    assert text.startswith("What is the diagnosis?\n\nOptions:\n")
    lines = [f"{letter}. {opts.text(letter)}" for letter in opts.display]
    assert "\n".join(lines) in text
    assert "<answer>" in text and "</answer>" in text and "letter" in text


@pytest.mark.parametrize(
    "reply, expected",
    [
        # 1. tag
        ("<answer>B</answer>", ("B", "tag")),
        ("Reasoning... <answer> (c) </answer>", ("C", "tag")),
        ("<answer>C.</answer>", ("C", "tag")),
        ("<answer>A. melanoma</answer>", ("A", "tag")),
        ("<answer>Nevus</answer>", ("B", "tag")),
        ("<ANSWER>basal cell carcinoma</ANSWER>", ("C", "tag")),
        ("<answer>B", ("B", "tag")),  # cut off before the closing tag
        ("The answer is C. <answer>A</answer>", ("A", "tag")),  # tag before pattern
        ("<answer>E</answer> so the answer is B", ("B", "pattern")),  # E is no option: next method
        ("<answer>A</answer> then <answer>C</answer>", ("C", "tag")),  # the last readable tag
        # 2. pattern
        ("The answer is B.", ("B", "pattern")),
        ("answer: c", ("C", "pattern")),
        ("Answer - (A)", ("A", "pattern")),
        ("The correct option is C because it is pearly.", ("C", "pattern")),
        ("I choose B", ("B", "pattern")),
        ("I would select option (C).", ("C", "pattern")),
        ("Option B is correct.", ("B", "pattern")),
        ("The final answer is: **A**", ("A", "pattern")),
        ("The answer is a nevus.", ("B", "pattern")),  # article, then an option text
        ("The answer is basal cell carcinoma, not melanoma.", ("C", "pattern")),
        ("The answer is not A; the answer is B.", ("B", "pattern")),
        ("I choose B. Melanoma is unlikely.", ("B", "pattern")),  # pattern before text
        # 3. letter
        ("B", ("B", "letter")),
        ("(c).", ("C", "letter")),
        ("**A**", ("A", "letter")),
        ("Option C", ("C", "letter")),
        ("[B]", ("B", "letter")),
        ("C. Basal cell carcinoma", ("C", "letter")),
        ("B) nevus", ("B", "letter")),
        # 4. text
        ("Nevus.", ("B", "text")),
        ("a nevus", ("B", "text")),  # "a" is an article, not option A
        ("This looks like a benign nevus to me.", ("B", "text")),
        ("Basal cell carcinoma", ("C", "text")),
        # failures
        ("I am not sure.", (None, "failed")),
        ("E", (None, "failed")),
        ("The answer is E.", (None, "failed")),
        ("<answer>F</answer>", (None, "failed")),
        ("Either melanoma or nevus.", (None, "failed")),
        ("A. nevus: unlikely. B. melanoma: likely.", (None, "failed")),  # a list, not a choice
        ("", (None, "failed")),
        (None, (None, "failed")),
    ],
)
def test_extract_choice(opts, reply, expected):
    assert extract_choice(reply, opts) == expected


def test_text_matching_prefers_exact_and_longest_unambiguous():
    opts = build_options(["melanoma", "melanoma in situ", "nevus"], "nevus", key="t")
    assert extract_choice("Melanoma in situ.", opts) == ("B", "text")
    assert extract_choice("Probably melanoma in situ here", opts) == ("B", "text")  # nested in the longer
    assert extract_choice("melanoma", opts) == ("A", "text")
    assert extract_choice("melanoma in situ or nevus", opts) == (None, "failed")
    same = build_options(["Nevus", "nevus."], "x", key="t")  # two options alike after normalisation
    assert extract_choice("nevus.", same) == ("B", "text")  # the exact one wins
    assert extract_choice("a NEVUS!", same) == (None, "failed")


def test_article_a_is_never_a_lone_letter():
    opts = build_options(["melanoma", "nevus"], "nevus", key="a")  # A = melanoma
    assert extract_choice("a nevus", opts) == ("B", "text")
    assert extract_choice("A nevus", opts) == ("B", "text")
    assert extract_choice("a seborrheic keratosis", opts) == (None, "failed")
    assert extract_choice("The answer is a seborrheic keratosis", opts) == (None, "failed")
    assert extract_choice("A.", opts) == ("A", "letter")
