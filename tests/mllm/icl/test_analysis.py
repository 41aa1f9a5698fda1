"""ICL analysis: base ids and per-problem spread on the SMMILE++ results, the bootstrap against scipy, strata,
the recency gap and noise effect on crafted frames with known answers, the summary and the plots."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from panderm.errors import ConfigError, DataError
from panderm.mllm.conversation import ImagePart
from panderm.mllm.icl.analysis import (
    base_id,
    bootstrap_ci,
    bootstrap_means,
    correctness,
    expected_accuracy,
    noise_effect,
    per_problem,
    plot_noise_effect,
    plot_permutation_spread,
    plot_relevant_position,
    recency_gap,
    stratify,
    stratify_all,
    summary,
)
from panderm.mllm.icl.problems import Example, ICLProblem
from panderm.mllm.icl.scoring import read_results
from tests.conftest import shared_path

PNG = b"\x89PNG\r\n\x1a\n"


def row(base: str, variant: str, correct: bool, **columns) -> dict:
    """One row of our results layout; the answer is right or wrong as `correct` says."""
    return {
        "problem_id": base if variant == "original" else f"{base}_{variant}",
        "base_problem_id": base,
        "variant": variant,
        "true_answer": "Melanoma",
        "generated_answer": "melanoma." if correct else "naevus",
        "status": "ok",
        "mode": "open",
        **columns,
    }


def frame(rows: list[dict], tmp_path: Path | None = None) -> pd.DataFrame:
    """The rows as read back from a CSV (as the CLI would see them) when `tmp_path` is given."""
    df = pd.DataFrame(rows)
    if tmp_path is None:
        return df
    df.to_csv(tmp_path / "results.csv", index=False)
    return read_results(tmp_path / "results.csv")


@pytest.mark.parametrize(
    ("problem_id", "expected"),
    [
        ("abc_perm_3", "abc"),
        ("a-1_perm_12", "a-1"),
        ("abc", "abc"),
        ("abc_perm_x", "abc_perm_x"),
        ("a_perm_1_b", "a_perm_1_b"),
    ],
)
def test_base_id(problem_id, expected):
    assert base_id(problem_id) == expected


@pytest.mark.shared_data
def test_smmile_pp_problems_and_their_permutation_counts():
    df = read_results(shared_path("smmile_pp_results", "result_qwen72B_ICL_mcqa.csv"))
    table = per_problem(df)
    perm = df["problem_id"].str.extract(r"^(.*)_perm_(\d+)$")  # independent split of the ids
    perm_count = perm[1].astype(int).groupby(perm[0]).max()
    assert len(table) == 86 and table["n"].sum() == 1038
    assert (table.set_index("base_problem_id")["n"] == perm_count).all()  # perm_1..perm_k all present
    assert table["n"].value_counts().to_dict() == {24: 35, 2: 27, 6: 24}  # 4!, 2! and 3! orders of the demos
    # the same statistics by an independent pandas groupby of the published is_correct column
    expected = (df["is_correct"] * 100.0).groupby(perm[0]).agg(["mean", "min", "max"])
    expected["std"] = (df["is_correct"] * 100.0).groupby(perm[0]).std(ddof=0)
    got = table.set_index("base_problem_id")
    for ours, theirs in [("accuracy", "mean"), ("std", "std"), ("min", "min"), ("max", "max")]:
        np.testing.assert_allclose(got[ours], expected.loc[got.index, theirs])
    assert summary(df)["permutation_std"]["n_problems"] == 86


def test_correctness_drops_failed_calls_and_reuses_scoring():
    df = frame(
        [
            row("p1", "original", True),
            row("p2", "original", False, status="failed"),
            row("p3", "original", False),
        ]
    )
    assert correctness(df).to_dict() == {0: True, 2: False}
    strict = frame([row("p1", "original", True)])
    assert correctness(strict, strict=True).to_dict() == {0: False}  # "melanoma." != "Melanoma"


def test_bootstrap_ci_matches_scipy_percentile_and_is_deterministic():
    rng = np.random.default_rng(7)
    # the second sample is resampled in chunks (3000 values x 5000 resamples exceed one chunk)
    for values, n_boot in [((rng.random(150) < 0.3) * 100.0, 20000), (rng.normal(5.0, 2.0, 3000), 5000)]:
        low, high = bootstrap_ci(values, n_boot=n_boot, seed=1)
        ref = stats.bootstrap(
            (values,), np.mean, n_resamples=n_boot, method="percentile", rng=np.random.default_rng(2)
        ).confidence_interval
        width = ref.high - ref.low
        assert abs(low - ref.low) < 0.05 * width and abs(high - ref.high) < 0.05 * width
    values = [0.0, 100.0, 100.0, 0.0, 100.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, level=0.5) != bootstrap_ci(values, level=0.9)
    assert bootstrap_ci([50.0] * 4) == (50.0, 50.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    with pytest.raises(ConfigError, match="level"):
        bootstrap_ci(values, level=1.0)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(values, n_boot=0)


def brute_force_cluster_bootstrap(values, clusters, n_boot, seed):
    """Resample loop: the same draws as `bootstrap_means` (one (n_boot, n_clusters) block), each resample's
    rows gathered explicitly, a cluster drawn twice contributing its rows twice."""
    ids = list(dict.fromkeys(clusters))  # first appearance
    rows = {c: [v for v, k in zip(values, clusters, strict=True) if k == c] for c in ids}
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    return np.array([np.mean([v for j in draw for v in rows[ids[j]]]) for draw in draws])


def test_cluster_bootstrap_against_a_resample_loop_and_exact_enumeration():
    rng = np.random.default_rng(3)
    clusters = [f"p{k}" for k in rng.integers(0, 7, 40)]  # unequal cluster sizes, interleaved
    values = (rng.random(40) < 0.4) * 100.0
    means = bootstrap_means(values, clusters, n_boot=300, seed=5)
    np.testing.assert_allclose(means, brute_force_cluster_bootstrap(values, clusters, 300, 5))
    low, high = bootstrap_ci(values, clusters, n_boot=300, seed=5, level=0.9)
    assert (low, high) == tuple(np.percentile(means, [5, 95]))
    # exact distribution on a tiny case: 3 problems of sizes 1, 2, 3 -> 27 equally likely resamples
    tiny_values, tiny_clusters = [100.0, 0.0, 100.0, 0.0, 0.0, 100.0], ["a", "b", "b", "c", "c", "c"]
    groups = {"a": [100.0], "b": [0.0, 100.0], "c": [0.0, 0.0, 100.0]}
    exact: dict[float, float] = {}
    for draw in itertools.product("abc", repeat=3):
        stat = round(float(np.mean([v for c in draw for v in groups[c]])), 6)
        exact[stat] = exact.get(stat, 0.0) + 1 / 27
    drawn = np.round(bootstrap_means(tiny_values, tiny_clusters, n_boot=40000, seed=0), 6)
    assert set(np.unique(drawn)) <= set(exact)
    for stat, p in exact.items():
        assert abs(np.mean(drawn == stat) - p) < 0.01
    # one row per problem: exactly the row bootstrap (same draws), which test_bootstrap_ci checks with scipy
    single = rng.normal(size=25)
    labels = [f"q{k}" for k in range(25)]
    np.testing.assert_array_equal(
        bootstrap_means(single, labels, seed=2), bootstrap_means(single, None, seed=2)
    )
    assert bootstrap_ci(single, labels, seed=2) == bootstrap_ci(single, seed=2)
    # 12 problems asked in 6 orders each, all right or all wrong: the row bootstrap is far too narrow
    perm_values, perm_clusters = np.repeat((np.arange(12) < 4) * 100.0, 6), np.repeat(np.arange(12), 6)
    row_ci, cluster_ci = bootstrap_ci(perm_values), bootstrap_ci(perm_values, perm_clusters)
    assert cluster_ci[1] - cluster_ci[0] > 1.8 * (row_ci[1] - row_ci[0])
    with pytest.raises(ConfigError, match="cluster labels"):
        bootstrap_ci([1.0, 2.0], ["a"])


def test_every_interval_resamples_problems():
    # p1 asked in 5 orders (all right), p2..p4 once (wrong): rows 5/8 right, yet only 1 of 4 problems
    rows = [row("p1", f"perm_{k}", True, speciality="derm") for k in range(1, 6)]
    rows += [row(f"p{k}", "perm_1", False, speciality="derm") for k in (2, 3, 4)]
    df = frame(rows)
    values, clusters = [100.0] * 5 + [0.0] * 3, ["p1"] * 5 + ["p2", "p3", "p4"]
    expected = bootstrap_ci(values, clusters)
    assert expected != bootstrap_ci(values)
    assert tuple(stratify(df, "speciality").iloc[0][["ci_low", "ci_high"]]) == expected
    result = summary(df)
    assert result["ci"] == [round(v, 2) for v in expected]
    # each problem once: 1 of 4 right, over 4 problems
    assert (result["problems"], result["problem_accuracy"]) == (4, 25.0)
    assert result["problem_ci"] == [round(v, 2) for v in bootstrap_ci([100.0, 0.0, 0.0, 0.0])]


def icl_problem(demos: list[str], query: str) -> ICLProblem:
    example = lambda answer: Example("What is it?", answer, ImagePart(data=answer.encode()))  # noqa: E731
    return ICLProblem("p", tuple(map(example, demos)), example(query))


def test_expected_accuracy_floor_and_ceiling_by_hand():
    problems = [
        icl_problem(["Melanoma", "nevus", "melanoma."], "melanoma"),  # 2 candidates, right one 2 of 3 demos
        icl_problem(["nevus", "BCC", "SK", "Nevus"], "bcc"),  # 3 candidates, right one 1 of 4 demos
        icl_problem(["nevus", "SK"], "melanoma"),  # query's answer absent
        icl_problem(["nevus"], "nevus"),  # 1 candidate
    ]
    result = expected_accuracy(problems)
    assert result == {
        "n_problems": 4,
        "random": round((50 + 100 / 3 + 0 + 100) / 4, 2),  # 45.83
        "random_demo": round((200 / 3 + 25 + 0 + 100) / 4, 2),  # 47.92
        "oracle": 75.0,
    }
    assert expected_accuracy([]) == {"n_problems": 0, "random": None, "random_demo": None, "oracle": None}


def test_per_problem_against_a_groupby():
    rows = [row("a", f"perm_{k}", c) for k, c in enumerate([True, False, False, False], 1)]
    rows += [row("b", f"perm_{k}", True) for k in (1, 2)] + [row("c", "perm_1", False)]
    rows.append(row("a", "perm_5", True, status="failed"))  # left out
    table = per_problem(frame(rows)).set_index("base_problem_id")
    assert table["n"].to_dict() == {"a": 4, "b": 2, "c": 1}
    assert table["accuracy"].to_dict() == {"a": 25.0, "b": 100.0, "c": 0.0}
    assert table.loc["a", "std"] == pytest.approx(np.std([100, 0, 0, 0]))  # ddof=0: 43.30
    assert (table["min"].to_dict(), table["max"].to_dict()) == (
        {"a": 0, "b": 100, "c": 0},
        {"a": 100, "b": 100, "c": 0},
    )


def test_stratify_counts_accuracy_and_intervals():
    rows = [
        row("p1", "original", True, speciality="derm", first_demo_matches=True),
        row("p2", "original", True, speciality="derm", first_demo_matches=False),
        row("p3", "original", False, speciality="derm", first_demo_matches=True),
        row("p4", "original", False, speciality="radiology", first_demo_matches=False),
        row("p5", "original", False, speciality="radiology", first_demo_matches=True),
        row("p6", "original", True, speciality=None, first_demo_matches=True),
        row("p7", "original", True, speciality="radiology", status="failed", first_demo_matches=True),
    ]
    table = stratify(frame(rows), "speciality")
    assert table["speciality"].iloc[:2].tolist() == ["derm", "radiology"] and pd.isna(
        table["speciality"].iloc[2]
    )
    assert table["n"].tolist() == [3, 2, 1] and table["correct"].tolist() == [2, 0, 1]
    np.testing.assert_allclose(table["accuracy"], [200 / 3, 0.0, 100.0])
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    assert table.iloc[1][["ci_low", "ci_high"]].tolist() == [0.0, 0.0]
    assert tuple(table.iloc[0][["ci_low", "ci_high"]]) == bootstrap_ci([100.0, 100.0, 0.0])
    by_match = stratify(frame(rows), "first_demo_matches").set_index("first_demo_matches")
    assert by_match["n"].to_dict() == {False: 2, True: 4} and by_match["accuracy"].to_dict() == {
        False: 50.0,
        True: 50.0,
    }
    assert set(stratify_all(frame(rows))) == {"speciality", "first_demo_matches"}
    with pytest.raises(DataError, match="no column 'modality'"):
        stratify(frame(rows), "modality")


def recency_rows() -> list[dict]:
    # (first, last) per problem: p1 (F, T), p2 (T, T), p3 (F, F), p4 (F, T); p5 has only relevant_first
    outcomes = {"p1": (False, True), "p2": (True, True), "p3": (False, False), "p4": (False, True)}
    rows = [
        row(p, v, c, strategy="recency")
        for p, pair in outcomes.items()
        for v, c in zip(("relevant_first", "relevant_last"), pair, strict=True)
    ]
    return [
        *rows,
        row("p5", "relevant_first", True, strategy="recency"),
        row("p6", "original", True, strategy="original"),
    ]


def test_recency_gap_is_paired_over_problems(tmp_path):
    gap = recency_gap(frame(recency_rows(), tmp_path))
    assert gap is not None
    assert (gap["n_problems"], gap["relevant_first"], gap["relevant_last"], gap["gap"]) == (
        4,
        25.0,
        75.0,
        50.0,
    )
    assert (gap["ci_low"], gap["ci_high"]) == bootstrap_ci([100.0, 0.0, 0.0, 100.0])
    assert recency_gap(frame([row("p1", "original", True)])) is None
    assert recency_gap(frame([row("p1", "relevant_first", True)])) is None  # no problem has both


def noise_rows() -> list[dict]:
    clean = {"p1": True, "p2": True, "p3": True, "p4": False}
    add_0 = {"p1": False, "p2": True, "p3": False, "p4": False}  # clean - noisy: 100, 0, 100, 0 -> 50
    replace_1 = {"p1": True, "p2": True, "p3": True, "p4": True}  # 0, 0, 0, -100 -> -25
    add_specialty = {"p1": False}  # only p1 paired: 100
    rows = [
        row(p, "clean", c, strategy="noise", noise_kind="none", noise_source="", noise_position=None)
        for p, c in clean.items()
    ]
    rows += [
        row(p, "noise_add_0", c, strategy="noise", noise_kind="add", noise_source="random", noise_position=0)
        for p, c in add_0.items()
    ]
    rows += [
        row(
            p,
            "noise_replace_1",
            c,
            strategy="noise",
            noise_kind="replace",
            noise_source="random",
            noise_position=1,
        )
        for p, c in replace_1.items()
    ]
    rows += [
        row(
            p,
            "noise_add_2",
            c,
            strategy="noise",
            noise_kind="add",
            noise_source="specialty",
            noise_position=2,
        )
        for p, c in add_specialty.items()
    ]
    return rows


def test_noise_effect_per_group_paired_over_problems(tmp_path):
    table = noise_effect(frame(noise_rows(), tmp_path))
    assert table is not None
    assert table[["noise_kind", "noise_source", "noise_position"]].values.tolist() == [
        ["add", "random", 0],
        ["add", "specialty", 2],
        ["replace", "random", 1],
    ]
    assert table["n_problems"].tolist() == [4, 1, 4]
    assert table["clean_accuracy"].tolist() == [75.0, 100.0, 75.0]
    assert table["noisy_accuracy"].tolist() == [25.0, 0.0, 100.0]
    assert table["effect"].tolist() == [50.0, 100.0, -25.0]
    assert tuple(table.iloc[2][["ci_low", "ci_high"]]) == bootstrap_ci([0.0, 0.0, 0.0, -100.0])
    assert noise_effect(frame(recency_rows())) is None


def test_summary_combines_everything(tmp_path):
    perms = [
        row("q1", "perm_1", True, strategy="all_permutations"),
        row("q1", "perm_2", False, strategy="all_permutations"),
    ]
    perms += [row("q2", f"perm_{k}", True, strategy="all_permutations") for k in (1, 2, 3, 4)]
    perms += [row("q3", "perm_1", False, strategy="all_permutations")]  # one variant: not in the mean std
    failed = [row("q4", "perm_1", True, strategy="all_permutations", status="failed")]
    rows = perms + failed + recency_rows() + noise_rows()
    for extra in rows:
        extra.setdefault("noise_kind", "none")
    result = summary(frame(rows, tmp_path))
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    n = len(rows) - 1
    correct = sum(r["generated_answer"] == "melanoma." and r["status"] == "ok" for r in rows)
    assert (result["n"], result["correct"], result["failed"], result["metric"]) == (
        n,
        correct,
        1,
        "exact_match",
    )
    assert result["accuracy"] == round(100 * correct / n, 2)
    assert result["ci"][0] < result["accuracy"] < result["ci"][1]
    assert result["permutation_std"] == {"n_problems": 2, "mean_std": 25.0}  # (50 + 0) / 2
    assert result["recency"]["gap"] == 50.0 and result["recency"]["n_problems"] == 4
    assert [g["effect"] for g in result["noise"]] == [50.0, 100.0, -25.0]
    assert (
        result["noise"][0]["noise_position"] == 0.0
    )  # read back from the CSV, where clean rows leave it empty
    plain = summary(frame([row("p1", "original", True), row("p2", "original", False)]))
    assert (
        plain["accuracy"],
        plain["failed"],
        plain["permutation_std"],
        plain["recency"],
        plain["noise"],
    ) == (50.0, 0, None, None, None)


def test_plots_write_pngs_or_return_none(tmp_path):
    rows = [
        row(
            f"p{i}",
            f"perm_{k}",
            (i + k) % 3 == 0,
            strategy="all_permutations",
            n_demos=4,
            relevant_position=pos,
        )
        for i in range(6)
        for k, pos in enumerate([0, 1, 3, None], 1)
    ]
    df = frame(rows + noise_rows(), tmp_path)
    for plot, name in [
        (plot_relevant_position, "relevant.png"),
        (plot_permutation_spread, "spread.png"),
        (plot_noise_effect, "noise.png"),
    ]:
        path = plot(df, tmp_path / "figures" / name)
        assert (
            path == tmp_path / "figures" / name
            and path.read_bytes().startswith(PNG)
            and path.stat().st_size > 1000
        )
    bare = frame([row("p1", "original", True), row("p2", "original", False)])
    assert plot_relevant_position(bare, tmp_path / "r.png") is None
    assert plot_permutation_spread(bare, tmp_path / "s.png") is None
    assert plot_noise_effect(bare, tmp_path / "n.png") is None
    assert not list(tmp_path.glob("*.png"))
