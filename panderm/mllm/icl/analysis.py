"""Analyses of ICL result frames (`read_results`): spread over demo permutations, accuracy per stratum, the
recency gap and the effect of noisy demos, with percentile-bootstrap intervals, and their plots.

Accuracies are percentages. Failed model calls are left out (see `scoring`). A row's base problem is its
`base_problem_id`, else its `problem_id` without a trailing `_perm_<k>`. Every interval is a cluster bootstrap
over base problems (`bootstrap_ci`): a problem's prompts (its demo orders) are resampled together, never as
independent rows. Paired effects (recency, noise) are differences of per-problem accuracies over the base
problems that have both sides.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from panderm.errors import ConfigError, DataError
from panderm.io import atomic_path
from panderm.mllm.icl.scoring import correctness, metric, ok_mask, smmile_normalise, source

if TYPE_CHECKING:
    from panderm.mllm.icl.problems import ICLProblem

__all__ = [
    "NOISE_KINDS",
    "PERMUTATION_STRATEGIES",
    "STRATA",
    "base_id",
    "bootstrap_ci",
    "bootstrap_means",
    "correctness",
    "expected_accuracy",
    "noise_effect",
    "per_problem",
    "permutation_rows",
    "plot_noise_effect",
    "plot_permutation_spread",
    "plot_relevant_position",
    "recency_gap",
    "scored",
    "stratify",
    "stratify_all",
    "summary",
]

STRATA = ("speciality", "modality", "answer_format", "n_demos", "first_demo_matches", "last_demo_matches")
PERMUTATION_STRATEGIES = ("all_permutations", "smmile_pp")
NOISE_KINDS = ("add", "replace")
NOISE_GROUP = ["noise_kind", "noise_source", "noise_position"]
_PERM = re.compile(r"_perm_\d+$")
_BOOT_CHUNK = 1 << 22  # resampled values held in memory at once


def base_id(problem_id: object) -> str:
    """The base problem of a variant id: `problem_id` without a trailing `_perm_<k>`."""
    return _PERM.sub("", str(problem_id))


def scored(df: pd.DataFrame, *, strict: bool = False) -> pd.DataFrame:
    """The scored rows (failed calls dropped) with `correct` (bool) and `base_problem_id` filled in."""
    correct = correctness(df, strict=strict)
    rows = df.loc[correct.index]
    derived = rows["problem_id"].map(base_id)
    base = rows["base_problem_id"].fillna(derived) if "base_problem_id" in rows else derived
    return rows.assign(base_problem_id=base.astype(str), correct=correct)


def bootstrap_means(values: Any, clusters: Any = None, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The `n_boot` cluster-bootstrap means of `values` (n,): each resample draws the clusters (`clusters`,
    n labels, e.g. base problem ids; None: every row its own cluster) uniformly with replacement, and its
    statistic is the mean over all rows of the drawn clusters, a cluster drawn twice counted twice.

    Prompts of one problem (its demo orders) are not independent, so every interval resamples problems.
    Clusters are numbered in order of first appearance and the draws are `default_rng(seed).integers(0,
    n_clusters, (chunk, n_clusters))` in chunks, so with one row per cluster this is the row bootstrap.
    """
    if int(n_boot) < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return np.full(int(n_boot), math.nan)
    if clusters is None:
        codes = np.arange(x.size)
    else:
        codes = pd.factorize(np.asarray(clusters, dtype=object).ravel(), use_na_sentinel=False)[0]
        if codes.size != x.size:
            raise ConfigError(f"bootstrap: {x.size} values but {codes.size} cluster labels")
    sums, counts = np.bincount(codes, weights=x), np.bincount(codes).astype(np.float64)
    size = sums.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK // size)
    out = []
    for start in range(0, int(n_boot), chunk):
        draw = rng.integers(0, size, size=(min(chunk, int(n_boot) - start), size))
        out.append(sums[draw].sum(axis=1) / counts[draw].sum(axis=1))
    return np.concatenate(out)


def bootstrap_ci(
    values: Any, clusters: Any = None, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the cluster-bootstrap means (`bootstrap_means`) of `values`, clusters (e.g.
    base problem ids) resampled with replacement; rows are their own clusters when `clusters` is None. NaNs
    if empty; same `seed`, same interval. Raises ConfigError for `n_boot` < 1 or `level` outside (0, 1)."""
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"level must lie strictly between 0 and 1, got {level}")
    means = bootstrap_means(values, clusters, n_boot=n_boot, seed=seed)
    if np.isnan(means).all():
        return math.nan, math.nan
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def expected_accuracy(problems: Sequence[ICLProblem]) -> dict[str, Any]:
    """Floor and ceiling of a problem set (%, means over problems, answers compared under SMMILE's
    normalisation, as `exact_match`), for the demos as given (they do not depend on the order):

    - `random`: expected accuracy of answering a label drawn uniformly from the problem's candidate answers,
      its distinct demo answers: 1/k when the query's answer is one of the k candidates, else 0;
    - `random_demo`: expected accuracy of the `random` backend, a uniformly drawn demo's answer (frequent
      answers likelier): the share of the demos whose answer is the query's;
    - `oracle`: share of problems whose query answer appears among the demo answers (a model that copies
      the right demo's answer; no demo-copying method does better);

    with `n_problems`; JSON-ready (rounded to 2 decimals, None when empty). 0-shot problems count as 0."""
    random_, by_demo, oracle = [], [], []
    for problem in problems:
        answers = [smmile_normalise(d.answer) for d in problem.demos]
        truth = smmile_normalise(problem.query.answer)
        present = truth in answers
        random_.append(100.0 / len(set(answers)) if present else 0.0)
        by_demo.append(100.0 * answers.count(truth) / len(answers) if answers else 0.0)
        oracle.append(100.0 if present else 0.0)
    mean = (lambda v: float(np.mean(v))) if problems else (lambda v: math.nan)
    return _to_json(
        {
            "n_problems": len(problems),
            "random": mean(random_),
            "random_demo": mean(by_demo),
            "oracle": mean(oracle),
        }
    )


def per_problem(df: pd.DataFrame, *, strict: bool = False) -> pd.DataFrame:
    """One row per base problem (sorted by id): `n` scored variants, `accuracy` (mean, %), `std` (%), `min`,
    `max`. `std` uses ddof=0: the spread over the variants asked (all of a problem's orders under
    `all_permutations`, a population rather than a sample); a single variant has std 0."""
    rows = scored(df, strict=strict)
    grouped = (rows["correct"] * 100.0).groupby(rows["base_problem_id"])
    table = pd.DataFrame(
        {
            "n": grouped.size(),
            "accuracy": grouped.mean(),
            "std": grouped.std(ddof=0),
            "min": grouped.min(),
            "max": grouped.max(),
        }
    )
    return table.rename_axis("base_problem_id").reset_index()


def stratify(
    df: pd.DataFrame, by: str, *, strict: bool = False, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per value of column `by` (missing values form their own level): `n`, `correct`, `accuracy` (%) and
    its bootstrap interval `ci_low`, `ci_high`."""
    if by not in df:
        raise DataError(f"{source(df)}: no column {by!r} to stratify by")
    rows = scored(df, strict=strict)
    records = []
    for level, group in rows.groupby(by, dropna=False, observed=True, sort=True):
        percent = group["correct"] * 100.0
        low, high = bootstrap_ci(percent, group["base_problem_id"], n_boot=n_boot, seed=seed)
        records.append(
            {
                by: level,
                "n": len(group),
                "correct": int(group["correct"].sum()),
                "accuracy": float(percent.mean()),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(records, columns=[by, "n", "correct", "accuracy", "ci_low", "ci_high"])


def stratify_all(
    df: pd.DataFrame, *, strict: bool = False, n_boot: int = 2000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """`stratify` by each of `STRATA` the frame has."""
    return {by: stratify(df, by, strict=strict, n_boot=n_boot, seed=seed) for by in STRATA if by in df}


def permutation_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of permuted-demo variants: `strategy` in `PERMUTATION_STRATEGIES`, else ids ending `_perm_<k>`."""
    if "strategy" in df:
        return df[df["strategy"].isin(PERMUTATION_STRATEGIES)]
    return df[df["problem_id"].astype(str).str.contains(_PERM)]


def _problem_accuracy(rows: pd.DataFrame) -> pd.Series:
    return (rows["correct"] * 100.0).groupby(rows["base_problem_id"]).mean()


def _paired(a: pd.Series, b: pd.Series, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of per-problem `a - b` (%) over the problems with both, bootstrapped over those problems."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    diff = both["a"] - both["b"]
    low, high = bootstrap_ci(diff, diff.index, n_boot=n_boot, seed=seed)  # one row per problem
    return {
        "n_problems": len(both),
        "a": float(both["a"].mean()),
        "b": float(both["b"].mean()),
        "difference": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
    }


def recency_gap(
    df: pd.DataFrame, *, strict: bool = False, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any] | None:
    """Accuracy with the relevant demo last minus first (`variant` relevant_last / relevant_first), paired
    over base problems: `{n_problems, relevant_first, relevant_last, gap, ci_low, ci_high}`; None if
    absent."""
    if "variant" not in df:
        return None
    rows = scored(df[df["variant"].isin(("relevant_first", "relevant_last"))], strict=strict)
    first = _problem_accuracy(rows[rows["variant"] == "relevant_first"])
    last = _problem_accuracy(rows[rows["variant"] == "relevant_last"])
    paired = _paired(last, first, n_boot=n_boot, seed=seed)
    if not paired["n_problems"]:
        return None
    return {
        "n_problems": paired["n_problems"],
        "relevant_first": paired["b"],
        "relevant_last": paired["a"],
        "gap": paired["difference"],
        "ci_low": paired["ci_low"],
        "ci_high": paired["ci_high"],
    }


def _noise_rows(df: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """Clean (`variant` clean) and noisy (`noise_kind` add/replace) rows; None if one is empty."""
    if not {"variant", *NOISE_GROUP} <= set(df.columns):
        return None
    clean, noisy = df["variant"] == "clean", df["noise_kind"].isin(NOISE_KINDS)
    return (clean, noisy) if clean.any() and noisy.any() else None


def noise_effect(
    df: pd.DataFrame, *, strict: bool = False, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame | None:
    """Clean minus noisy accuracy per (noise_kind, noise_source, noise_position), paired over base problems:
    columns `noise_kind, noise_source, noise_position, n_problems, clean_accuracy, noisy_accuracy, effect,
    ci_low, ci_high` (positive effect: the noise hurts); None without clean and noisy rows."""
    masks = _noise_rows(df)
    if masks is None:
        return None
    clean, noisy = masks
    clean_rows, noisy_rows = scored(df[clean], strict=strict), scored(df[noisy], strict=strict)
    reference = _problem_accuracy(clean_rows)
    records = []
    for key, group in noisy_rows.groupby(NOISE_GROUP, dropna=False, sort=True):
        paired = _paired(reference, _problem_accuracy(group), n_boot=n_boot, seed=seed)
        records.append(
            {
                **dict(zip(NOISE_GROUP, key, strict=True)),
                "n_problems": paired["n_problems"],
                "clean_accuracy": paired["a"],
                "noisy_accuracy": paired["b"],
                "effect": paired["difference"],
                "ci_low": paired["ci_low"],
                "ci_high": paired["ci_high"],
            }
        )
    return pd.DataFrame(records)


def _json_number(value: Any) -> Any:
    """Floats rounded to 2 decimals, NaN as None, numpy scalars as Python ones (for JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 2)
    return value


def summary(df: pd.DataFrame, *, strict: bool = False, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """JSON-ready overview (percentages rounded to 2 decimals): `n`, `correct`, `accuracy`, `ci` [low, high],
    `problems`, `problem_accuracy` (each base problem counted once: the mean of its variants' accuracies, the
    figure to quote for an order-invariant backend such as kNN-ICL, whose permutations only repeat it) with
    `problem_ci`, `failed`, `metric`; `permutation_std` ({n_problems, mean_std}: mean of per-problem std
    over problems with 2+ permuted variants), `recency` (`recency_gap`) and `noise` (`noise_effect`
    records), each None if absent."""
    rows = scored(df, strict=strict)
    percent = rows["correct"] * 100.0
    low, high = bootstrap_ci(percent, rows["base_problem_id"], n_boot=n_boot, seed=seed)
    by_problem = _problem_accuracy(rows)
    problem_ci = bootstrap_ci(by_problem, by_problem.index, n_boot=n_boot, seed=seed)
    spread = per_problem(permutation_rows(df), strict=strict)
    spread = spread[spread["n"] >= 2]
    recency = recency_gap(df, strict=strict, n_boot=n_boot, seed=seed)
    noise = noise_effect(df, strict=strict, n_boot=n_boot, seed=seed)
    result = {
        "n": len(rows),
        "correct": int(rows["correct"].sum()),
        "accuracy": float(percent.mean()) if len(rows) else math.nan,
        "ci": [low, high],
        "problems": len(by_problem),
        "problem_accuracy": float(by_problem.mean()) if len(by_problem) else math.nan,
        "problem_ci": list(problem_ci),
        "failed": int((~ok_mask(df)).sum()),
        "metric": metric(df),
        "permutation_std": (
            {"n_problems": len(spread), "mean_std": float(spread["std"].mean())} if len(spread) else None
        ),
        "recency": recency,
        "noise": None if noise is None else noise.to_dict("records"),
    }
    return _to_json(result)


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return _json_number(value)


# ------------------------------------------------------------------------------------------------ plots


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _accuracy_bars(table: pd.DataFrame, label: str, path: str | os.PathLike[str], *, xlabel: str) -> Path:
    """Bar chart of a `stratify` table: accuracy per level with its bootstrap interval, n under each bar."""
    fig = Figure(figsize=(max(4.0, 0.9 * len(table) + 1.5), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    error = np.vstack([table["accuracy"] - table["ci_low"], table["ci_high"] - table["accuracy"]])
    ax.bar(x, table["accuracy"], yerr=error, capsize=3, color="tab:blue")
    labels = [f"{level} (n={n})" for level, n in zip(table[label], table["n"], strict=True)]
    ax.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor")
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 100))
    return _save(fig, path)


def plot_relevant_position(
    df: pd.DataFrame, path: str | os.PathLike[str], *, strict: bool = False, bins: int = 5
) -> Path | None:
    """Accuracy by relative position of the relevant demo (`relevant_position / (n_demos - 1)`, in `bins`
    equal bins; "none" for prompts without one); None without `relevant_position`, `n_demos` or any
    position."""
    if not {"relevant_position", "n_demos"} <= set(df.columns):
        return None
    position = pd.to_numeric(df["relevant_position"], errors="coerce")
    if position.isna().all():
        return None
    relative = position / (pd.to_numeric(df["n_demos"], errors="coerce") - 1).clip(lower=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    labels = [f"{a:.1f}-{b:.1f}" for a, b in itertools.pairwise(edges)]
    binned = pd.cut(relative, edges, labels=labels, include_lowest=True).cat.add_categories("none")
    table = stratify(df.assign(relative_position=binned.fillna("none")), "relative_position", strict=strict)
    return _accuracy_bars(table, "relative_position", path, xlabel="relative position of the relevant demo")


def plot_permutation_spread(
    df: pd.DataFrame, path: str | os.PathLike[str], *, strict: bool = False
) -> Path | None:
    """Per-problem accuracy over demo permutations, problems sorted by mean: mean ± std with the min-max
    range; None when no problem has 2+ permuted variants."""
    table = per_problem(permutation_rows(df), strict=strict)
    table = table[table["n"] >= 2].sort_values(["accuracy", "base_problem_id"])
    if table.empty:
        return None
    fig = Figure(figsize=(max(5.0, 0.08 * len(table) + 3), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.vlines(x, table["min"], table["max"], color="0.8", linewidth=1, label="min-max")
    ax.errorbar(
        x, table["accuracy"], yerr=table["std"], fmt="o", markersize=3, elinewidth=1, label="mean ± std"
    )
    ax.set(
        xlabel=f"problem ({len(table)}, sorted by mean accuracy)",
        ylabel="accuracy over permutations (%)",
        ylim=(-5, 105),
    )
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_noise_effect(df: pd.DataFrame, path: str | os.PathLike[str], *, strict: bool = False) -> Path | None:
    """Accuracy of the clean prompts and of each noise group (kind source @position) with bootstrap
    intervals; None without clean and noisy rows."""
    masks = _noise_rows(df)
    if masks is None:
        return None
    clean, noisy = masks
    position = df["noise_position"].map(lambda p: "-" if pd.isna(p) or p == "" else str(p))
    group = df["noise_kind"].astype(str) + " " + df["noise_source"].astype(str) + " @" + position
    rows = df[clean | noisy].assign(noise_group=group.where(noisy, "clean"))
    table = stratify(rows, "noise_group", strict=strict)
    table = table.sort_values("noise_group", key=lambda s: s != "clean", kind="stable")
    return _accuracy_bars(table, "noise_group", path, xlabel="demos")
