"""Multiple-choice (MCQA) variant of the ICL problems, SMMILE-compatible: options, query text, reply reading.

A problem's options are the unique answers of its demos and its query, in order of first appearance; two
answers are the same option when they are the same string after ``str.strip()`` (case and punctuation
count). Options are bound to the letters A, B, ... in that order; only the order in which they are *shown*
is shuffled, by ``random.Random(f"{seed}:{key}")`` with the problem id as ``key``, so one problem's display
never depends on which other problems are run. Demonstrations stay open-ended; only the query turn gets the
options.

Option texts are compared after :func:`panderm.mllm.answers.normalise_answer` (lower-case, punctuation
removed, articles dropped) and matched as whole-word runs (:func:`panderm.mllm.evaluate.tokenize`).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from panderm.errors import DataError
from panderm.mllm.answers import normalise_answer
from panderm.mllm.evaluate import tokenize
from panderm.mllm.regions import strip_regions

LETTERS = string.ascii_uppercase
METHODS = ("tag", "pattern", "letter", "text", "failed")

_DECOR = " \t\r\n*_`\"'"  # markdown emphasis, quotes and whitespace around a reply or a fragment
_LONE = re.compile(r"(?i:(?:option|choice|letter)\s+)?[(\[]?([A-Za-z])[)\]]?[.:!]?")
# "C. text", "(C) text", "C) text", "C: text", "C - text": the letter carries a mark, so "a nevus" is no label
_LABELLED = re.compile(r"[(\[]?([A-Za-z])(?:[)\]][.:]?\s*|[.:]\s+|\s+[-–]\s+)(\S.*)", re.S)
_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.I | re.S)
_CONNECTOR = r"(?:(?:is|would\s+be|should\s+be|will\s+be)\b\s*[:\-–=]?|[:\-–=])"
# each match ends where the answer starts (or group 1 holds the letter)
_PATTERNS = (
    re.compile(rf"\b(?:answer|option|choice)\s*{_CONNECTOR}\s*", re.I),
    re.compile(r"\bI\s*(?:would\s+|will\s+|'d\s+|'ll\s+)?(?:choose|select|pick|go\s+with)\s+", re.I),
    re.compile(
        r"\b(?:answer|option|choice)\s+\(?([A-Za-z])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)\b", re.I
    ),
)
_LEAD_WORD = re.compile(r"^(?:option|choice|letter)\s+", re.I)
_BARE_LETTER = re.compile(r"([(\[]?)([A-Za-z])([)\]]?)(?![A-Za-z0-9])")


@dataclass(frozen=True)
class MCQAOptions:
    """One problem's options: `options` in letter order (A first), `display` the letters in the order shown,
    `correct` the letter of the query's answer."""

    options: tuple[str, ...]
    display: tuple[str, ...]
    correct: str

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= len(self.options) <= len(LETTERS):
            problems.append(f"{len(self.options)} options (need 1 to {len(LETTERS)})")
        if len({o.strip() for o in self.options}) != len(self.options):
            problems.append(f"options repeat after strip(): {list(self.options)!r}")
        if sorted(self.display) != list(self.letters):
            problems.append(f"display {list(self.display)!r} is not an ordering of {self.letters}")
        if len(self.correct) != 1 or self.correct not in self.letters:
            problems.append(f"correct={self.correct!r} is not one of {self.letters}")
        if problems:
            raise DataError("MCQA options: " + "; ".join(problems))

    @property
    def letters(self) -> str:
        """The option letters in letter order ("ABC" for three options)."""
        return LETTERS[: len(self.options)]

    def letter(self, text: str) -> str | None:
        """The letter of the option equal to `text` after ``strip()``, or None."""
        stripped = text.strip()
        return next((ltr for ltr, opt in self.items() if opt == stripped), None)

    def items(self) -> list[tuple[str, str]]:
        """(letter, option text) pairs in letter order."""
        return list(zip(self.letters, self.options, strict=True))

    def text(self, letter: str) -> str:
        """The option text bound to `letter`; DataError for a letter that is not an option."""
        if len(letter) != 1 or letter not in self.letters:
            raise DataError(f"MCQA letter {letter!r} is not one of the options {self.letters}")
        return self.options[LETTERS.index(letter)]


def build_options(demo_answers: Sequence[str], query_answer: str, *, key: str, seed: int = 42) -> MCQAOptions:
    """The options of problem `key` (see the module docstring); DataError naming the problem for an empty or
    non-text answer or more than 26 unique answers."""
    answers = [*demo_answers, query_answer]
    names = [f"demo {i} answer" for i in range(len(demo_answers))] + ["query answer"]
    problems = [
        f"{name} {a!r} is {'empty' if isinstance(a, str) else 'not text'}"
        for name, a in zip(names, answers, strict=True)
        if not isinstance(a, str) or not a.strip()
    ]
    if problems:
        raise DataError(f"problem {key!r}: " + "; ".join(problems))
    options = tuple(dict.fromkeys(a.strip() for a in answers))
    if len(options) > len(LETTERS):
        raise DataError(
            f"problem {key!r}: {len(options)} unique answers, but MCQA allows at most {len(LETTERS)} (A-Z)"
        )
    display = list(LETTERS[: len(options)])
    random.Random(f"{seed}:{key}").shuffle(display)
    return MCQAOptions(options, tuple(display), LETTERS[options.index(query_answer.strip())])


def mcqa_question(question: str, options: MCQAOptions) -> str:
    """The query text: the question, the options in display order ("C. text"), and the answer instruction."""
    lines = [f"{letter}. {options.text(letter)}" for letter in options.display]
    return (
        f"{question.strip()}\n\nOptions:\n"
        + "\n".join(lines)
        + "\n\nReply with the letter of the one correct option, written between <answer> and </answer>."
    )


def extract_choice(reply: str | None, options: MCQAOptions) -> tuple[str | None, str]:
    """(letter, method) read from a reply; the first method that reads a valid option letter wins:

    1. ``tag``: the last readable ``<answer>X</answer>`` (an unclosed tag runs to the end), X being a letter
       ("C", "C.", "(C)", "C. text") or an option text (equal after strip or after normalisation);
    2. ``pattern``: the last readable "answer is X", "answer: X", "Answer - (X)", "correct option is X",
       "my choice is X", "I choose/select/pick X", "option X is correct" (case-insensitive). A marked letter
       ("(b)", "B.", "B" at the end) wins; else an option text starting X wins (so "the answer is a nevus"
       reads "nevus"); else an upper-case letter followed by more words ("C because ...");
    3. ``letter``: the whole reply is a letter with decoration ("C", "(c).", "**C**", "Option C") or
       "C. text" whose text names option C (or is part of it) and no other option;
    4. ``text``: the reply equals one option text after normalisation, or mentions exactly one option (a
       mention inside a mention of a longer option does not count);

    else ``(None, "failed")``. Letters that are not options are never accepted. Region markup is removed
    first (:func:`panderm.mllm.regions.strip_regions`), so box coordinates and location tokens are never
    read as letters or option texts.
    """
    text = strip_regions(reply or "")
    for method, read in (("tag", _from_tags), ("pattern", _from_patterns), ("letter", _read_label)):
        letter = read(text, options)
        if letter is not None:
            return letter, method
    letter = _read_text(text, options)
    return (letter, "text") if letter is not None else (None, "failed")


def _valid(letter: str, options: MCQAOptions) -> str | None:
    letter = letter.upper()
    return letter if letter in options.letters else None


def _read_label(fragment: str, options: MCQAOptions) -> str | None:
    """A lone decorated letter, or "C. text" whose text is consistent with option C."""
    fragment = fragment.strip(_DECOR)
    lone = _LONE.fullmatch(fragment)
    if lone:
        return _valid(lone.group(1), options)
    labelled = _LABELLED.fullmatch(fragment)
    if not labelled:
        return None
    letter = _valid(labelled.group(1), options)
    if letter is None:
        return None
    rest = labelled.group(2)
    named = _read_text(rest, options)
    if named == letter or (named is None and _starts(_tokens(rest), _tokens(options.text(letter)))):
        return letter
    return None


def _read_text(fragment: str, options: MCQAOptions) -> str | None:
    """The one option `fragment` equals (after strip, then after normalisation) or mentions, else None."""
    equal = _read_text_equal(fragment, options)
    if equal is not None:
        return equal
    tokens = _tokens(fragment)
    spans = []  # (start, end, letter) of every whole-word mention of an option
    for ltr, opt in options.items():
        need = _tokens(opt)
        spans += [(s, s + len(need), ltr) for s in _starts(need, tokens)]
    named = {
        ltr for s, e, ltr in spans if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in spans)
    }
    return named.pop() if len(named) == 1 else None


def _tokens(text: str) -> list[str]:
    return tokenize(normalise_answer(text))


def _starts(needle: list[str], haystack: list[str]) -> list[int]:
    """Where the non-empty word run `needle` occurs in `haystack`."""
    k = len(needle)
    return [i for i in range(len(haystack) - k + 1) if haystack[i : i + k] == needle] if k else []


def _from_tags(reply: str, options: MCQAOptions) -> str | None:
    for content in reversed(_TAG.findall(reply)):
        letter = _read_label(content, options) or _read_text_equal(content, options)
        if letter is not None:
            return letter
    return None


def _read_text_equal(fragment: str, options: MCQAOptions) -> str | None:
    """The option `fragment` equals after strip, or the only one it equals after normalisation."""
    exact = options.letter(fragment)
    if exact is not None:
        return exact
    norm = normalise_answer(fragment)
    equal = [ltr for ltr, opt in options.items() if normalise_answer(opt) == norm]
    return equal[0] if len(equal) == 1 else None


def _from_patterns(reply: str, options: MCQAOptions) -> str | None:
    found = []  # (position, letter)
    for pattern in _PATTERNS:
        for m in pattern.finditer(reply):
            letter = _valid(m.group(1), options) if m.groups() else _read_after(reply[m.end() :], options)
            if letter is not None:
                found.append((m.start(), letter))
    return max(found)[1] if found else None


def _read_after(rest: str, options: MCQAOptions) -> str | None:
    """The answer at the start of the text after a pattern phrase (its first line only)."""
    line = rest.split("\n", 1)[0].strip(_DECOR)
    line = _LEAD_WORD.sub("", line, count=1)
    m = _BARE_LETTER.match(line)
    letter = _valid(m.group(2), options) if m else None
    if letter is not None:
        after = line[m.end() :].strip(_DECOR)
        if m.group(1) or m.group(3) or not after or after[0] in ".:,;!?)":
            return letter
    prefix = _option_prefix(line, options)
    if prefix is not None:
        return prefix
    return letter if letter is not None and m.group(2).isupper() else None


def _option_prefix(line: str, options: MCQAOptions) -> str | None:
    """The option whose words start `line` (the longest such option), or None."""
    tokens = _tokens(line)
    best: tuple[int, str] | None = None
    for ltr, opt in options.items():
        need = _tokens(opt)
        if need and tokens[: len(need)] == need and (best is None or len(need) > best[0]):
            best = (len(need), ltr)
    return best[1] if best else None
