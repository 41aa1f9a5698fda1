"""Mixed-effects logistic model: recovery of a known odds ratio on simulated data, and its plumbing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from panderm.errors import ConfigError, DataError
from readers.mixed import mixed_model, model_frame
from readers.schema import ReaderStudy, load_study

LOG_OR, EXPERIENCE_EFFECT, READER_SD, CASE_SD = 0.8, 0.05, 0.5, 1.0


def simulated_study(n_readers: int = 20, n_cases: int = 200, seed: int = 3) -> ReaderStudy:
    """Logistic correctness with known reader and case random intercepts, experience slope and condition
    log odds ratio; the response is the truth when correct, another class otherwise."""
    rng = np.random.default_rng(seed)
    reader_effect = rng.normal(0, READER_SD, n_readers)
    case_effect = rng.normal(0, CASE_SD, n_cases)
    years = rng.integers(1, 21, n_readers)
    truth = rng.integers(0, 3, n_cases)
    r, c, aided = (a.ravel() for a in np.meshgrid(range(n_readers), range(n_cases), [0, 1], indexing="ij"))
    eta = 0.2 + LOG_OR * aided + EXPERIENCE_EFFECT * (years[r] - 10) + reader_effect[r] + case_effect[c]
    right = rng.random(eta.size) < 1 / (1 + np.exp(-eta))
    frame = pd.DataFrame(
        {
            "reader": r,
            "case": c,
            "condition": np.where(aided == 1, "ai_aided", "unaided"),
            "truth": truth[c],
            "response": np.where(right, truth[c], (truth[c] + 1) % 3),
            "experience": years[r],
        }
    )
    return load_study(frame)


def test_mixed_model_recovers_a_known_odds_ratio():
    study = simulated_study()
    res = mixed_model(study)
    assert res.method == "vb" and (res.n_obs, res.n_readers, res.n_cases) == (8000, 20, 200)
    assert res.formula == "correct ~ aided + experience + (1|reader) + (1|case)"
    assert res.log_or == pytest.approx(LOG_OR, abs=0.12)
    assert res.ci_low < np.exp(LOG_OR) < res.ci_high
    assert res.odds_ratio == pytest.approx(np.exp(res.log_or))
    fixed = res.fixed_effects.set_index("term")
    assert res.converged and res.log_or_sd == fixed.loc["aided", "sd"]
    assert fixed.loc["aided", "sd"] > fixed.loc["aided", "sd_vb"]  # curvature sd vs the mean-field sd
    lo, hi = np.log(fixed.loc["experience", ["ci_low", "ci_high"]].astype(float))
    assert lo < EXPERIENCE_EFFECT < hi
    sds = res.variance_components.set_index("component")["sd"]
    assert 0.25 < sds["reader"] < 0.9 and 0.75 < sds["case"] < 1.3

    # the plain logistic regression: same fixed terms, no random effects (sklearn as the reference fit)
    frame, _ = model_frame(study)
    logit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
        frame[["aided", "experience"]], frame["correct"]
    )
    assert res.glm_odds_ratio == pytest.approx(np.exp(logit.coef_[0][0]), rel=1e-4)
    assert res.glm_ci_low < res.glm_odds_ratio < res.glm_ci_high
    # population-averaged odds ratio: attenuated towards 1 by the reader and case variance
    assert 1 < res.glm_odds_ratio < res.odds_ratio
    json.dumps(res.to_dict())


def test_model_frame_codes_conditions_and_correctness(make_study):
    study = make_study(n_readers=3, n_cases=12, n_classes=3, seed=1)
    frame, formula = model_frame(study)
    data = study.data
    assert formula == "correct ~ aided + experience"
    np.testing.assert_array_equal(frame["aided"], (data["condition"] == "ai_aided").astype(float))
    np.testing.assert_array_equal(frame["correct"], (data["response"] == data["truth"]).astype(float))
    np.testing.assert_array_equal(frame["experience"], data["experience"].astype(float))


def test_categorical_and_absent_experience(make_study):
    study = make_study(n_readers=6, n_cases=40, n_classes=3, accuracy=(0.6, 0.8), seed=2)
    levels = {0: "junior", 1: "registrar", 2: "consultant"}
    categorical = ReaderStudy(study.data.assign(experience=study.data["experience"].map(levels)))
    res = mixed_model(categorical)
    assert res.formula == "correct ~ aided + C(experience) + (1|reader) + (1|case)"
    assert {t for t in res.fixed_effects["term"] if t.startswith("C(experience)")} == {
        "C(experience)[T.junior]",
        "C(experience)[T.registrar]",
    }
    absent = mixed_model(ReaderStudy(study.data.drop(columns="experience")))
    assert absent.formula == "correct ~ aided + (1|reader) + (1|case)"
    assert list(absent.fixed_effects["term"]) == ["Intercept", "aided"]
    unused = mixed_model(study, experience=None)
    assert unused.log_or == pytest.approx(absent.log_or)
    assert res.converged and res.ci_low < res.odds_ratio < res.ci_high


def test_map_fit_that_collapses_a_variance_component_is_flagged(make_study, caplog):
    # responses drawn independently of reader and case: the joint posterior mode drives the sds towards 0
    study = make_study(n_readers=6, n_cases=40, n_classes=3, accuracy=(0.6, 0.8), seed=2)
    with caplog.at_level(logging.WARNING, logger="readers.mixed"):
        res = mixed_model(study, method="map", experience=None)
    assert not res.converged
    assert "did not converge" in caplog.text
    assert np.isnan(res.fixed_effects["sd_vb"]).all()


def test_mixed_model_errors(make_study):
    study = make_study(n_readers=3, n_cases=10)
    with pytest.raises(DataError, match="'years'"):
        mixed_model(study, experience="years")
    with pytest.raises(DataError, match="second_read"):
        mixed_model(study, after="second_read")
    with pytest.raises(DataError, match="'response'"):
        mixed_model(ReaderStudy(study.data.drop(columns="response")))
    with pytest.raises(ConfigError, match="method"):
        mixed_model(study, method="mcmc")
    perfect = ReaderStudy(study.data.assign(response=study.data["truth"]))
    with pytest.raises(DataError, match="both right and wrong"):
        mixed_model(perfect)
