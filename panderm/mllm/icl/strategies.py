"""Experiment strategies: which demonstration sequences each problem is asked with.

- `original`: the demos as given; `zero_shot`: no demos;
- `smmile_pp` (SMMILE++): n <= 4 demos give all n! orders in `itertools.permutations` order (`perm_1` is the
  original); n >= 5 give `count` (24) distinct orders: `perm_1` the original, then seeded random orders;
- `all_permutations`: every order (refused above `max_orders`);
- `recency`: the most relevant demo moved first vs last, the others keeping their order;
- `noise`: the clean prompt, plus one irrelevant demo from another problem added at, or replacing the demo
  at, each chosen position.

Every draw is seeded by ``f"{seed}:{problem_id}"``, so a problem's variants do not depend on the others.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from panderm.errors import ConfigError
from panderm.mllm.icl.problems import Example, ICLProblem
from panderm.mllm.icl.scoring import smmile_normalise

STRATEGIES = ("original", "zero_shot", "all_permutations", "smmile_pp", "recency", "noise")
POSITIONS = ("first", "middle", "last")
NOISE_SOURCES = ("random", "specialty")


@dataclass(frozen=True)
class Variant:
    """One prompt of an experiment: the base `problem` asked with `demos` (in this order)."""

    problem: ICLProblem
    demos: tuple[Example, ...]
    strategy: str
    name: str = "original"
    relevant_by: str = ""
    noise_kind: str = "none"
    noise_source: str = ""
    noise_position: str = ""

    @property
    def id(self) -> str:
        """`<problem_id>` for the original prompt, else `<problem_id>_<name>` (e.g. `..._perm_3`)."""
        return (
            self.problem.problem_id
            if self.name in ("original", "0-shot")
            else f"{self.problem.problem_id}_{self.name}"
        )


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}:{key}")


def smmile_pp_orders(n: int, *, key: str, seed: int = 0, count: int = 24) -> list[tuple[int, ...]]:
    """Demo orders under the SMMILE++ rule (see the module docstring); `key` is the problem id."""
    if n <= 4:
        return list(itertools.permutations(range(n)))
    orders = [tuple(range(n))]
    seen = set(orders)
    rng = _rng(seed, key)
    while len(orders) < count:
        order = tuple(rng.sample(range(n), n))
        if order not in seen:
            seen.add(order)
            orders.append(order)
    return orders


def all_orders(n: int, *, max_orders: int = 5040) -> list[tuple[int, ...]]:
    """Every order of n demos, in `itertools.permutations` order; ConfigError above `max_orders`."""
    if math.factorial(n) > max_orders:
        raise ConfigError(
            f"strategy=all_permutations: {n} demos give {math.factorial(n)} orders, more than "
            f"max_orders={max_orders}; use strategy=smmile_pp or raise max_orders"
        )
    return list(itertools.permutations(range(n)))


def permuted(problem: ICLProblem, orders: Sequence[tuple[int, ...]], strategy: str) -> list[Variant]:
    return [
        Variant(problem, tuple(problem.demos[i] for i in order), strategy, f"perm_{k}")
        for k, order in enumerate(orders, 1)
    ]


def matches_query(demo: Example, query: Example) -> bool:
    """Whether a demo's answer equals the query's under SMMILE's exact-match normalisation."""
    return smmile_normalise(demo.answer) == smmile_normalise(query.answer)


Similarity = Callable[[Sequence[Example], Example], Sequence[float]]


def most_relevant(problem: ICLProblem, similarity: Similarity | None = None) -> tuple[int, str] | None:
    """(index, how): the first demo with the query's answer ("answer"), else the demo whose image is most
    similar to the query's ("embedding", when `similarity` is given); None when neither applies."""
    for i, demo in enumerate(problem.demos):
        if matches_query(demo, problem.query):
            return i, "answer"
    if similarity is None or not problem.demos:
        return None
    scores = list(similarity(problem.demos, problem.query))
    return max(range(len(scores)), key=scores.__getitem__), "embedding"


def recency_variants(problem: ICLProblem, similarity: Similarity | None = None) -> list[Variant]:
    """`relevant_first` and `relevant_last`; none for problems with fewer than 2 demos or no relevant one."""
    found = most_relevant(problem, similarity) if len(problem.demos) >= 2 else None
    if found is None:
        return []
    index, how = found
    others = problem.demos[:index] + problem.demos[index + 1 :]
    relevant = problem.demos[index]
    return [
        Variant(problem, (relevant, *others), "recency", "relevant_first", relevant_by=how),
        Variant(problem, (*others, relevant), "recency", "relevant_last", relevant_by=how),
    ]


def position_index(position: str | int, size: int) -> int:
    """Slot `first` = 0, `middle` = (size - 1) // 2, `last` = size - 1 (or an explicit index, checked)."""
    if isinstance(position, str) and position in POSITIONS:
        return {"first": 0, "middle": (size - 1) // 2, "last": size - 1}[position]
    try:
        index = int(position)
    except (TypeError, ValueError):
        raise ConfigError(
            f"noise position {position!r} is not one of {', '.join(POSITIONS)} or an index"
        ) from None
    if not -size <= index < size:
        raise ConfigError(f"noise position {index} is out of range for {size} slot(s)")
    return index % size


def noise_demo(
    problem: ICLProblem, others: Sequence[ICLProblem], *, source: str, seed: int
) -> tuple[Example, str] | None:
    """A demo drawn (seeded) from another problem: any (`random`) or, where one exists, one of the same
    speciality (`specialty`; else falls back to random, and says so). None when there is no other problem."""
    if source not in NOISE_SOURCES:
        raise ConfigError(f"noise.source={source!r} is not one of {', '.join(NOISE_SOURCES)}")
    pool = [p for p in others if p.problem_id != problem.problem_id and p.demos]
    used = "random"
    if source == "specialty" and problem.speciality:
        same = [p for p in pool if p.speciality == problem.speciality]
        if same:
            pool, used = same, "specialty"
        else:
            used = "random (no other problem of this speciality)"
    if not pool:
        return None
    rng = _rng(seed, problem.problem_id)
    donor = rng.choice(pool)
    return rng.choice(donor.demos), used


def noise_variants(
    problem: ICLProblem,
    others: Sequence[ICLProblem],
    *,
    source: str = "random",
    positions: Sequence[str | int] = POSITIONS,
    replace: bool = True,
    seed: int = 0,
) -> list[Variant]:
    """`clean`, then per position `noise_add_<position>` (the drawn demo inserted at slot first = 0, middle =
    n // 2 or last = n, i.e. just before the query) and, with `replace`, `noise_replace_<position>` (the demo
    at first = 0, middle = (n - 1) // 2 or last = n - 1 swapped for it); the same drawn demo in every
    variant. `noise_position` holds the position as given, so problems with different n group together."""
    drawn = noise_demo(problem, others, source=source, seed=seed)
    if drawn is None or not problem.demos:
        return []
    demo, used = drawn
    demos, n = problem.demos, len(problem.demos)
    labels = list(dict.fromkeys(str(p) for p in positions))
    variants = [Variant(problem, demos, "noise", "clean")]
    for label in labels:
        i = position_index(label, n + 1)
        variants.append(
            Variant(
                problem,
                (*demos[:i], demo, *demos[i:]),
                "noise",
                f"noise_add_{label}",
                noise_kind="add",
                noise_source=used,
                noise_position=label,
            )
        )
    for label in labels if replace else []:
        i = position_index(label, n)
        variants.append(
            Variant(
                problem,
                (*demos[:i], demo, *demos[i + 1 :]),
                "noise",
                f"noise_replace_{label}",
                noise_kind="replace",
                noise_source=used,
                noise_position=label,
            )
        )
    return variants


# strategies whose variants of a problem differ only in the order of its demos
ORDER_ONLY = frozenset({"smmile_pp", "all_permutations", "recency"})


def one_order_per_problem(variants: Sequence[Variant]) -> list[Variant]:
    """The first variant of each problem (for a backend whose replies do not depend on the demos' order)."""
    first: dict[str, Variant] = {}
    for variant in variants:
        first.setdefault(variant.problem.problem_id, variant)
    return list(first.values())


def make_variants(
    problems: Sequence[ICLProblem],
    strategy: str,
    *,
    seed: int = 0,
    permutations: int = 24,
    max_orders: int = 5040,
    similarity: Similarity | None = None,
    noise_source: str = "random",
    noise_positions: Sequence[str | int] = POSITIONS,
    noise_replace: bool = True,
) -> list[Variant]:
    """Every variant `strategy` asks, problem by problem."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    variants: list[Variant] = []
    for problem in problems:
        n = len(problem.demos)
        if strategy == "original":
            variants.append(Variant(problem, problem.demos, strategy))
        elif strategy == "zero_shot":
            variants.append(Variant(problem, (), strategy, "0-shot"))
        elif strategy == "smmile_pp":
            variants += permuted(
                problem, smmile_pp_orders(n, key=problem.problem_id, seed=seed, count=permutations), strategy
            )
        elif strategy == "all_permutations":
            variants += permuted(problem, all_orders(n, max_orders=max_orders), strategy)
        elif strategy == "recency":
            variants += recency_variants(problem, similarity)
        else:
            variants += noise_variants(
                problem,
                problems,
                source=noise_source,
                positions=noise_positions,
                replace=noise_replace,
                seed=seed,
            )
    return variants
