"""Roe & Metz simulator, AI-assisted reader studies and simulated power."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from panderm.errors import ConfigError
from readers.auc import fom_and_jackknife, fom_values, jackknife_cov
from readers.mrmc import mrmc, or_analysis
from readers.power import ANALYSES, or_pvalues, power, power_table
from readers.schema import load_study
from readers.simulate import (
    ReaderLevel,
    RoeMetzComponents,
    roe_metz,
    roe_metz_study,
    simulate_ai_assisted,
    true_auc,
)

HH = RoeMetzComponents.roe_metz_1997("high", "high", 1.5)


def moment_estimates(x: np.ndarray, n0: int, delta: np.ndarray) -> dict[str, float]:
    """Method-of-moments estimates of the six components from one two-condition study, using the known
    class means: each is a mean product of ratings that share exactly the effects named (averaged over the
    negative and positive blocks, whose reader effects are independent)."""
    out = []
    for block, mean in ((x[..., :n0], np.zeros(2)), (x[..., n0:], delta)):
        y = block - mean[:, None, None]
        _, r, k = y.shape
        total = (y**2).mean()
        sk, sj = y.sum(axis=2), y.sum(axis=1)
        cross = y[0] * y[1]
        same_reader = ((sk**2 - (y**2).sum(axis=2)) / (k * (k - 1))).mean()  # R + TR
        reader_only = ((sk[0] * sk[1] - cross.sum(axis=1)) / (k * (k - 1))).mean()  # R
        same_case = ((sj**2 - (y**2).sum(axis=1)) / (r * (r - 1))).mean()  # C + TC
        case_only = ((sj[0] * sj[1] - cross.sum(axis=0)) / (r * (r - 1))).mean()  # C
        reader_case = cross.mean()  # R + C + RC
        var_rc = reader_case - reader_only - case_only
        out.append(
            {
                "var_r": reader_only,
                "var_tr": same_reader - reader_only,
                "var_c": case_only,
                "var_tc": same_case - case_only,
                "var_rc": var_rc,
                "var_e": total - same_reader - same_case - var_rc,
            }
        )
    return {key: (out[0][key] + out[1][key]) / 2 for key in out[0]}


def test_components_are_recovered_from_the_latent_ratings():
    comp = RoeMetzComponents(var_r=0.1, var_tr=0.08, var_c=0.3, var_tc=0.2, var_rc=0.2, var_e=0.25)
    delta = np.array([0.5, 1.0])
    est = moment_estimates(roe_metz(400, 400, 400, delta, comp, seed=0), 400, delta)
    # About 4-5 standard deviations of each estimate over seeds at this size (reader terms rest on 800
    # reader draws, case terms on 800 case draws, the rest on 320k ratings).
    tol = {"var_r": 0.035, "var_tr": 0.015, "var_c": 0.07, "var_tc": 0.035, "var_rc": 0.008, "var_e": 0.004}
    for name, value in est.items():
        assert value == pytest.approx(getattr(comp, name), abs=tol[name]), name


def test_roe_metz_1997_settings():
    low = RoeMetzComponents.roe_metz_1997("low", "low", 0.75)
    assert (low.var_c, low.var_tc, low.var_rc, low.var_e) == (0.1, 0.1, 0.2, 0.6)
    assert low.var_r == low.var_tr == 0.0055
    assert HH.var_r == HH.var_tr == 0.030 and (HH.var_c, HH.var_e) == (0.3, 0.2)
    assert RoeMetzComponents.roe_metz_1997("high", "high", 2.5).var_r == 0.056
    assert RoeMetzComponents() == HH
    for corr in ("low", "high"):
        assert RoeMetzComponents.roe_metz_1997(corr, "low", 1.5).case_level == pytest.approx(1.0)
    # The typical reader's AUC Phi(mu / sqrt 2) for the paper's three separations.
    median = true_auc([0.75, 1.5, 2.5], HH, kind="median")
    np.testing.assert_allclose(median, [0.702, 0.856, 0.961], atol=6e-4)
    mean = true_auc([1.5], HH)
    assert mean[0] == pytest.approx(norm.cdf(1.5 / np.sqrt(2 * (1 + 0.06))))
    assert mean[0] < true_auc([1.5], HH, kind="median")[0]


def test_simulator_recovers_the_true_auc_and_effect():
    delta = np.array([1.0, 1.4])
    n_sims = 300
    x = roe_metz(5, 40, 60, delta, HH, seed=1, n_sims=n_sims)
    assert x.shape == (n_sims, 2, 5, 100)
    study_means = fom_values(x, 40).mean(axis=2)  # (sims, conditions): mean AUC over readers
    mean = study_means.mean(axis=0)
    se = study_means.std(axis=0, ddof=1) / np.sqrt(n_sims)
    expected = true_auc(delta, HH)
    assert np.all(np.abs(mean - expected) < 4 * se)
    diff = study_means[:, 1] - study_means[:, 0]
    se_diff = diff.std(ddof=1) / np.sqrt(n_sims)
    assert abs(diff.mean() - (expected[1] - expected[0])) < 4 * se_diff
    assert diff.mean() > 6 * se_diff  # the effect is really there


def test_reader_auc_spread_grows_with_reader_variability():
    spreads = []
    for var in (0.0, 0.0055, 0.03, 0.1):
        comp = dataclasses.replace(HH, var_r=var, var_tr=var)
        aucs = fom_values(roe_metz(200, 100, 100, [1.5], comp, seed=2), 100)[0]
        spreads.append(aucs.var(ddof=1))
    assert spreads == sorted(spreads)
    assert spreads[-1] > 4 * spreads[0]


def test_determinism():
    a = roe_metz(3, 10, 12, [1.0, 1.2], HH, seed=7)
    np.testing.assert_array_equal(a, roe_metz(3, 10, 12, [1.0, 1.2], HH, seed=7))
    np.testing.assert_array_equal(a, roe_metz(3, 10, 12, [1.0, 1.2], HH, seed=7, n_sims=1)[0])
    assert not np.array_equal(a, roe_metz(3, 10, 12, [1.0, 1.2], HH, seed=8))
    study = roe_metz_study(3, 10, 12, [1.0, 1.2], HH, seed=7)
    pd.testing.assert_frame_equal(study.data, roe_metz_study(3, 10, 12, [1.0, 1.2], HH, seed=7).data)
    np.testing.assert_array_equal(study.data["rating"].to_numpy(), a.reshape(-1))
    truth, score = ai_case_set(0, 2.0)
    s1 = simulate_ai_assisted(truth, score, 4, seed=3)
    pd.testing.assert_frame_equal(s1.data, simulate_ai_assisted(truth, score, 4, seed=3).data)
    assert power(3, 40, delta=[1, 1.5], n_sims=50, seed=4) == power(3, 40, delta=[1, 1.5], n_sims=50, seed=4)


def test_roe_metz_study_is_a_valid_reader_study():
    study = roe_metz_study(6, 20, 30, [1.0, 1.3], seed=0)
    assert study.conditions == ["unaided", "ai_aided"]
    assert len(study.readers) == 6 and len(study.cases) == 50
    assert study.truth.tolist() == [0] * 20 + [1] * 30
    assert sorted(study.reader_attributes["experience"].value_counts().tolist()) == [2, 2, 2]
    reloaded = load_study(study.data)
    pd.testing.assert_frame_equal(reloaded.data, study.data)
    out = mrmc(study)
    assert set(out["condition_means"]) == {"unaided", "ai_aided"}
    three = roe_metz_study(2, 5, 5, [1, 2, 3], conditions=["a", "b", "c"])
    assert three.conditions == ["a", "b", "c"]


def test_or_pvalues_match_or_analysis():
    x = roe_metz(4, 20, 30, [1.0, 1.3, 1.1], HH, seed=5, n_sims=6)
    foms, loo = fom_and_jackknife(x, 20)
    for analysis in ANALYSES:
        batch = or_pvalues(foms, loo, analysis)
        single = [or_analysis(foms[s], jackknife_cov(loo[s]))[analysis]["p"] for s in range(6)]
        np.testing.assert_allclose(batch, single, rtol=1e-10, atol=1e-14)


def test_type_one_error_is_near_alpha():
    # Equal separations: the null. Roe & Metz's high-correlation, low-reader-variability setting at mu = 0.75.
    comp = RoeMetzComponents.roe_metz_1997("high", "low", 0.75)
    n_sims, alpha = 2000, 0.05
    rate = power(5, 100, delta=[0.75, 0.75], components=comp, n_sims=n_sims, alpha=alpha, seed=11)
    tol = 3 * np.sqrt(alpha * (1 - alpha) / n_sims)  # binomial, 3 SDs
    assert abs(rate - alpha) < tol


def test_power_grows_with_readers_cases_and_effect():
    table = power_table([3, 12], [40, 240], delta=[1.0, 1.5], components=HH, n_sims=200, seed=0)
    assert list(table.index) == [3, 12] and list(table.columns) == [40, 240]
    assert table.index.name == "readers" and table.columns.name == "cases"
    values = table.to_numpy()
    assert np.all(np.diff(values, axis=0) > 0) and np.all(np.diff(values, axis=1) > 0)
    assert values[-1, -1] > 0.8 > values[0, 0]
    small = power(5, 100, delta=[1.0, 1.2], components=HH, n_sims=200, seed=1)
    large = power(5, 100, delta=[1.0, 1.6], components=HH, n_sims=200, seed=1)
    assert large > small + 0.2
    assert power(5, n_negative=40, n_positive=60, delta=[1.0, 1.6], n_sims=20) >= 0


def ai_case_set(seed: int, ai_skill: float, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Truth and an AI's probabilities from a binormal model with separation `ai_skill`."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    logit = ai_skill * truth - ai_skill / 2 + rng.standard_normal(n)
    return truth, 1 / (1 + np.exp(-logit))


def gains(study) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Aided minus unaided: AUC and accuracy over all readers, and mean AUC gain per experience level."""
    fom = pd.DataFrame(mrmc(study, dbm=False)["fom"])
    auc_gain = fom["ai_aided"] - fom["unaided"]
    correct = study.data.assign(correct=study.data["response"] == study.data["truth"])
    acc = correct.groupby("condition")["correct"].mean()
    by_level = auc_gain.groupby(study.reader_attributes["experience"]).mean()
    return auc_gain.mean(), acc["ai_aided"] - acc["unaided"], by_level


@pytest.mark.parametrize(("ai_skill", "helps"), [(3.0, True), (0.3, False)])
def test_ai_assistance_follows_the_ai(ai_skill, helps):
    truth, score = ai_case_set(1, ai_skill)
    auc_gain, acc_gain, by_level = gains(simulate_ai_assisted(truth, score, n_readers=9, seed=0))
    if helps:  # a good AI (AUC ~0.98) lifts every experience level, juniors (who rely on it most) most
        assert auc_gain > 0.05 and acc_gain > 0.05
        assert (by_level > 0).all() and by_level["junior"] > by_level["senior"] > by_level["expert"]
    else:  # an AI worse than every reader (AUC ~0.58 against 0.76-0.94) drags every level down
        assert auc_gain < -0.01 and acc_gain < -0.01
        assert (by_level < 0).all()


def test_shared_errors_make_a_mediocre_ai_less_useful():
    truth, score = ai_case_set(3, 1.0)  # AUC ~0.76: as good as a junior, worse than seniors and experts
    gain = {
        rho: gains(simulate_ai_assisted(truth, score, 9, seed=1, ai_error_correlation=rho))[0]
        for rho in (0.0, 0.5, 0.9)
    }
    assert gain[0.0] > gain[0.5] > gain[0.9]


def test_ai_assisted_study_columns():
    truth, score = ai_case_set(2, 2.0, n=60)
    cases = [f"img_{k}" for k in range(60)]
    study = simulate_ai_assisted(truth, score, n_readers=4, seed=1, cases=cases)
    data = study.data
    assert len(data) == 4 * 60 * 2 and study.conditions == ["unaided", "ai_aided"]
    assert set(study.cases) == set(cases)
    assert set(data["confidence"]) <= {1, 2, 3, 4, 5} and data["confidence"].nunique() > 2
    assert ((data["rating"] >= 0.5).astype(int) == data["response"]).all()
    assert data["rating"].between(0, 1, inclusive="neither").all()
    assert study.reader_attributes["experience"].tolist() == ["junior", "senior", "expert", "junior"]
    pd.testing.assert_frame_equal(load_study(data).data, data)
    # A raw (non-probability) score works too, and reliance 0 leaves the aided reads near the unaided ones.
    blind = (ReaderLevel("blind", skill=1.5, reliance=0.0),)
    same = simulate_ai_assisted(truth, score * 10 - 3, 3, seed=1, levels=blind, reliance_sd=0, reread_sd=0)
    wide = same.wide("rating")
    np.testing.assert_allclose(wide["ai_aided"].to_numpy(), wide["unaided"].to_numpy())


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: roe_metz(0, 10, 10, 1.0), "n_readers"),
        (lambda: roe_metz(2, 1.5, 10, 1.0), "n_negative"),
        (lambda: roe_metz(2, 10, -1, 1.0), "n_positive"),
        (lambda: roe_metz(2, 10, 10, []), "delta"),
        (lambda: roe_metz(2, 10, 10, [1.0, np.nan]), "delta"),
        (lambda: roe_metz(2, 10, 10, "big"), "delta"),
        (lambda: roe_metz(2, 10, 10, [1.0], {"var_r": 1}), "components"),
        (lambda: roe_metz(2, 10, 10, [1.0], seed="x"), "seed"),
        (lambda: roe_metz(2, 10, 10, [1.0], n_sims=0), "n_sims"),
        (lambda: RoeMetzComponents(var_e=-1.0), "var_e"),
        (lambda: RoeMetzComponents.roe_metz_1997("medium"), "correlation"),
        (lambda: RoeMetzComponents.roe_metz_1997("low", "mid"), "readers"),
        (lambda: RoeMetzComponents.roe_metz_1997("low", "low", 1.0), "mu"),
        (lambda: true_auc([1.0], kind="mode"), "kind"),
        (lambda: roe_metz_study(2, 5, 5, [1, 2], conditions=["a"]), "conditions"),
        (lambda: roe_metz_study(2, 5, 5, [1, 2], experience_levels=["a", "a"]), "experience_levels"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1], 2), "ai_score"),
        (lambda: simulate_ai_assisted([0, 2, 0, 1], [0.2, 0.8, 0.1, 0.5], 2), "truth"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 0), "n_readers"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.2, 0.8], 2), "ai_score"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, cases=[1, 1, 2, 3]), "cases"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [2.0, 8.0, 1.0, 9.0], 2, ai_scale="logit"), "ai_score"),
        (
            lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, case_correlation=1),
            "case_corr",
        ),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, levels=()), "levels"),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, seed="a"), "seed"),
        (
            lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, ai_error_correlation=2),
            "ai_error",
        ),
        (lambda: simulate_ai_assisted([0, 1, 0, 1], [0.2, 0.8, 0.1, 0.9], 2, reread_sd=-1), "reread_sd"),
        (lambda: power(1, 100), "n_readers"),
        (lambda: power(3, 100, n_negative=10, n_positive=10), "n_cases"),
        (lambda: power(3, 100, prevalence=1.5), "prevalence"),
        (lambda: power(3, 100, delta=[1.0]), "delta"),
        (lambda: power(3, 100, alpha=0), "alpha"),
        (lambda: power(3, 100, analysis="dbm"), "analysis"),
        (lambda: power(3, 100, n_sims=0), "n_sims"),
        (lambda: power(3, 100, seed=1.5), "seed"),
        (lambda: power_table([], [100]), "readers"),
    ],
)
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ConfigError, match=name):
        call()
