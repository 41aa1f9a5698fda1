"""Strategies: permutation counts and orders, seeds, recency and noise insertion positions."""

from __future__ import annotations

import itertools
import math

import pytest

from panderm.errors import ConfigError
from panderm.mllm.conversation import ImagePart
from panderm.mllm.icl.problems import Example, ICLProblem
from panderm.mllm.icl.strategies import (
    all_orders,
    make_variants,
    most_relevant,
    noise_variants,
    position_index,
    recency_variants,
    smmile_pp_orders,
)


def example(answer: str, tag: str = "") -> Example:
    return Example("What is it?", answer, ImagePart(data=f"{answer}{tag}".encode()))


def problem(pid: str, answers: list[str], query: str, speciality: str = "derm") -> ICLProblem:
    demos = tuple(example(a, f"{pid}{i}") for i, a in enumerate(answers))
    return ICLProblem(pid, demos, example(query, pid + "q"), speciality=speciality)


@pytest.mark.parametrize(("n", "expected"), [(0, 1), (1, 1), (2, 2), (3, 6), (4, 24), (5, 24), (8, 24)])
def test_smmile_pp_counts(n: int, expected: int) -> None:
    orders = smmile_pp_orders(n, key="p", seed=0)
    assert len(orders) == expected
    assert len(set(orders)) == expected  # distinct
    assert all(sorted(o) == list(range(n)) for o in orders)  # each a permutation
    assert orders[0] == tuple(range(n))  # perm_1 is the original


def test_small_problems_follow_itertools_order() -> None:
    for n in range(5):
        assert smmile_pp_orders(n, key="x", seed=3) == list(itertools.permutations(range(n)))


def test_random_orders_are_seeded_per_problem() -> None:
    a = smmile_pp_orders(6, key="p1", seed=0)
    assert a == smmile_pp_orders(6, key="p1", seed=0)
    assert a != smmile_pp_orders(6, key="p1", seed=1)
    assert a != smmile_pp_orders(6, key="p2", seed=0)


def test_all_permutations_and_its_cap() -> None:
    assert len(all_orders(5)) == math.factorial(5)
    with pytest.raises(ConfigError, match="5040"):
        all_orders(8)


def test_variant_ids_and_demo_orders() -> None:
    p = problem("pid", ["a", "b", "c"], "a")
    variants = make_variants([p], "smmile_pp")
    assert [v.id for v in variants] == [f"pid_perm_{k}" for k in range(1, 7)]
    assert [tuple(d.answer for d in v.demos) for v in variants] == list(itertools.permutations("abc"))
    assert [v.id for v in make_variants([p], "original")] == ["pid"]
    assert make_variants([p], "zero_shot")[0].demos == ()
    with pytest.raises(ConfigError, match="strategy"):
        make_variants([p], "shuffle")


def test_recency_moves_the_relevant_demo() -> None:
    p = problem("r", ["x", "Melanoma.", "y", "melanoma"], "melanoma")
    assert most_relevant(p) == (1, "answer")  # SMMILE normalisation: "Melanoma." == "melanoma"
    first, last = recency_variants(p)
    assert [d.answer for d in first.demos] == ["Melanoma.", "x", "y", "melanoma"]
    assert [d.answer for d in last.demos] == ["x", "y", "melanoma", "Melanoma."]
    assert (first.name, last.name, first.relevant_by) == ("relevant_first", "relevant_last", "answer")


def test_recency_falls_back_to_similarity_or_skips() -> None:
    p = problem("s", ["x", "y", "z"], "q")
    assert recency_variants(p) == []  # no demo shares the answer and no similarity given
    first, last = recency_variants(p, lambda demos, query: [0.1, 0.9, 0.3])
    assert first.demos[0].answer == "y" and last.demos[-1].answer == "y"
    assert first.relevant_by == "embedding"
    assert recency_variants(problem("one", ["q"], "q")) == []  # one demo: nothing to move


def test_position_index() -> None:
    assert [position_index(p, 5) for p in ("first", "middle", "last")] == [0, 2, 4]
    assert position_index(-1, 5) == 4
    with pytest.raises(ConfigError, match="out of range"):
        position_index(5, 5)
    with pytest.raises(ConfigError, match="not one of"):
        position_index("end", 5)


def test_noise_insertion_positions() -> None:
    p = problem("p", ["a", "b", "c"], "a", speciality="derm")
    donor = problem("d", ["z"], "z", speciality="derm")
    variants = noise_variants(p, [p, donor], positions=["first", "middle", "last"])
    by_name = {v.name: [d.answer for d in v.demos] for v in variants}
    assert by_name == {
        "clean": ["a", "b", "c"],
        "noise_add_first": ["z", "a", "b", "c"],
        "noise_add_middle": ["a", "z", "b", "c"],  # slot n // 2
        "noise_add_last": ["a", "b", "c", "z"],  # just before the query
        "noise_replace_first": ["z", "b", "c"],
        "noise_replace_middle": ["a", "z", "c"],
        "noise_replace_last": ["a", "b", "z"],
    }
    assert [v.noise_position for v in variants if v.noise_kind == "add"] == ["first", "middle", "last"]
    explicit = noise_variants(p, [p, donor], positions=[2, "2"], replace=False)
    assert [(v.name, [d.answer for d in v.demos]) for v in explicit[1:]] == [
        ("noise_add_2", ["a", "b", "z", "c"])
    ]


def test_noise_sources() -> None:
    p = problem("p", ["a", "b"], "a", speciality="derm")
    derm = problem("d", ["derm-demo"], "x", speciality="derm")
    rad = [problem(f"r{i}", [f"rad{i}"], "x", speciality="radiology") for i in range(20)]
    pool = [p, derm, *rad]
    same = noise_variants(p, pool, source="specialty", positions=["first"], replace=False)
    assert same[1].demos[0].answer == "derm-demo" and same[1].noise_source == "specialty"
    drawn = {noise_variants(p, pool, seed=s, positions=["first"])[1].demos[0].answer for s in range(30)}
    assert len(drawn) > 3 and "a" not in drawn and "b" not in drawn  # never the problem's own demo
    lone = problem("l", ["a", "b"], "a", speciality="cardiology")
    fallback = noise_variants(lone, [lone, *rad], source="specialty", positions=["first"])
    assert fallback[1].noise_source.startswith("random")
    assert noise_variants(p, [p]) == []  # no other problem to draw from
    with pytest.raises(ConfigError, match=r"noise\.source"):
        noise_variants(p, pool, source="nearest")


def test_noise_is_deterministic() -> None:
    problems = [problem(f"p{i}", ["a", "b", "c"], "a") for i in range(6)]
    first = make_variants(problems, "noise", seed=7)
    again = make_variants(problems, "noise", seed=7)
    assert [[d.image.sha256() for d in v.demos] for v in first] == [
        [d.image.sha256() for d in v.demos] for v in again
    ]
