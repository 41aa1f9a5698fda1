"""Simulated reader studies: the Roe & Metz (1997) MRMC rating model, and readers aided by an AI's scores.

Roe & Metz model (Roe CA, Metz CE. Dorfman-Berbaum-Metz method for statistical analysis of multireader,
multimodality receiver operating characteristic data: validation with computer simulation. Acad Radiol
1997;4:298-303). The rating of case k (truth t = 0 or 1) by reader j in condition i is

    X_ijk = t * delta_i + R_jt + (tauR)_ijt + C_k + (tauC)_ik + (RC)_jk + E_ijk

with independent zero-mean normal effects: reader R (variance var_r) and condition x reader tauR (var_tr),
drawn separately for negative and positive cases, so that a reader's separation
``delta_i + R_j1 - R_j0 + tauR_ij1 - tauR_ij0`` (and thus AUC) varies across readers; case C (var_c),
condition x case tauC (var_tc), reader x case RC (var_rc) and the pure error E (var_e). This is the
equal-variance binormal model for each reader; written from the paper's description, no code reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from numbers import Real
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from panderm.errors import ConfigError
from readers.schema import ReaderStudy, load_study

# Roe & Metz (1997), Table 1: case-level structures (each sums to 1) by "data correlation", and the reader
# variance var_r = var_tr by reader variability and mean separation mu (AUC of the typical reader
# Phi(mu / sqrt 2) = 0.702, 0.856, 0.961).
_CASE_LEVEL = {"low": (0.1, 0.1, 0.2, 0.6), "high": (0.3, 0.3, 0.2, 0.2)}  # var_c, var_tc, var_rc, var_e
_READER_LEVEL = {
    "low": {0.75: 0.0055, 1.5: 0.0055, 2.5: 0.0055},
    "high": {0.75: 0.011, 1.5: 0.030, 2.5: 0.056},
}


@dataclass(frozen=True)
class RoeMetzComponents:
    """Variance components of the Roe & Metz model (latent rating units; see the module docstring).

    The defaults are Roe & Metz's (1997, Table 1) high data correlation, high reader variability setting
    for mu = 1.5; `roe_metz_1997` gives every setting of that table.
    """

    var_r: float = 0.030
    var_tr: float = 0.030
    var_c: float = 0.3
    var_tc: float = 0.3
    var_rc: float = 0.2
    var_e: float = 0.2

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        bad = [k for k, v in values.items() if not (isinstance(v, Real) and np.isfinite(v) and v >= 0)]
        if bad:
            raise ConfigError(f"components: variance(s) {', '.join(bad)} must be finite and >= 0")

    @classmethod
    def roe_metz_1997(
        cls,
        correlation: Literal["low", "high"] = "high",
        readers: Literal["low", "high"] = "high",
        mu: float = 1.5,
    ) -> RoeMetzComponents:
        """One of Roe & Metz's (1997, Table 1) twelve settings.

        `correlation` (data correlation) sets the case-level components, each setting summing to 1:
        low = (var_c, var_tc, var_rc, var_e) = (0.1, 0.1, 0.2, 0.6), high = (0.3, 0.3, 0.2, 0.2).
        `readers` (reader variability) sets var_r = var_tr: low = 0.0055 for every mu; high = 0.011, 0.030,
        0.056 for mu = 0.75, 1.5, 2.5 (the paper's separations; pass mu as `delta` to `roe_metz`).
        Raises `ConfigError` for another level or mu.
        """
        if correlation not in _CASE_LEVEL:
            raise ConfigError(f"correlation: expected 'low' or 'high', got {correlation!r}")
        if readers not in _READER_LEVEL:
            raise ConfigError(f"readers: expected 'low' or 'high', got {readers!r}")
        by_mu = _READER_LEVEL[readers]
        if mu not in by_mu:
            raise ConfigError(f"mu: Roe & Metz (1997) used mu in {sorted(by_mu)}, got {mu!r}")
        var_c, var_tc, var_rc, var_e = _CASE_LEVEL[correlation]
        var_r = by_mu[mu]
        return cls(var_r=var_r, var_tr=var_r, var_c=var_c, var_tc=var_tc, var_rc=var_rc, var_e=var_e)

    @property
    def case_level(self) -> float:
        """Variance of one rating given its reader: var_c + var_tc + var_rc + var_e."""
        return self.var_c + self.var_tc + self.var_rc + self.var_e

    @property
    def total(self) -> float:
        """Variance of one rating of a random reader: `case_level` + var_r + var_tr."""
        return self.case_level + self.var_r + self.var_tr


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int, or `ConfigError` naming `name` unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_delta(delta: float | Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        d = np.atleast_1d(np.asarray(delta, dtype=float))
    except (TypeError, ValueError):
        d = np.array([])
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ConfigError(f"delta: need one finite separation per condition, got {delta!r}")
    return d


def _check_components(components: object) -> RoeMetzComponents:
    if not isinstance(components, RoeMetzComponents):
        raise ConfigError(f"components: expected a RoeMetzComponents, got {type(components).__name__}")
    return components


def as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from an int seed (or None), or `seed` itself; `ConfigError` for anything else."""
    if seed is not None and not isinstance(seed, int | np.integer | np.random.Generator):
        raise ConfigError(f"seed: expected an int or a numpy Generator, got {seed!r}")
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _design(
    n_readers: object, n_negative: object, n_positive: object, delta: object, components: object
) -> tuple[int, int, int, np.ndarray, RoeMetzComponents]:
    """The checked arguments of a Roe & Metz study (components default to `RoeMetzComponents()`)."""
    return (
        positive_int("n_readers", n_readers),
        positive_int("n_negative", n_negative),
        positive_int("n_positive", n_positive),
        _check_delta(delta),
        _check_components(RoeMetzComponents() if components is None else components),
    )


def _draw(
    rng: np.random.Generator,
    n_sims: int,
    n_readers: int,
    n_negative: int,
    n_positive: int,
    delta: np.ndarray,
    comp: RoeMetzComponents,
) -> tuple[np.ndarray, np.ndarray]:
    """Ratings (n_sims, conditions, readers, cases), negatives first, and each reader's mean separation
    shift ``R_j1 - R_j0 + mean_i (tauR_ij1 - tauR_ij0)`` (n_sims, readers)."""
    s, t, r, k = n_sims, delta.size, n_readers, n_negative + n_positive
    truth = np.r_[np.zeros(n_negative, dtype=int), np.ones(n_positive, dtype=int)]
    sd = {f.name: np.sqrt(getattr(comp, f.name)) for f in fields(comp)}
    reader = sd["var_r"] * rng.standard_normal((s, 1, r, 2))  # last axis: truth
    cond_reader = sd["var_tr"] * rng.standard_normal((s, t, r, 2))
    case = sd["var_c"] * rng.standard_normal((s, 1, 1, k))
    cond_case = sd["var_tc"] * rng.standard_normal((s, t, 1, k))
    reader_case = sd["var_rc"] * rng.standard_normal((s, 1, r, k))
    x = sd["var_e"] * rng.standard_normal((s, t, r, k))
    x += (reader + cond_reader)[..., truth]
    x += case + cond_case + reader_case
    x[..., n_negative:] += delta[None, :, None, None]
    shift = (reader[..., 1] - reader[..., 0])[:, 0] + (cond_reader[..., 1] - cond_reader[..., 0]).mean(axis=1)
    return x, shift


def roe_metz(
    n_readers: int,
    n_negative: int,
    n_positive: int,
    delta: float | Sequence[float] | np.ndarray,
    components: RoeMetzComponents | None = None,
    seed: int | np.random.Generator | None = 0,
    n_sims: int | None = None,
) -> np.ndarray:
    """Ratings simulated from the Roe & Metz (1997) model (module docstring), vectorised.

    `delta` is the mean separation of positives from negatives per condition (e.g. ``[1.0, 1.2]``) in units
    of the latent rating; `components` defaults to `RoeMetzComponents()`. Returns an array (conditions,
    readers, cases) with the `n_negative` truth-0 cases first, or (n_sims, conditions, readers, cases) when
    `n_sims` is given (many independent studies at once). Raises `ConfigError` naming a bad argument.
    """
    sims = 1 if n_sims is None else positive_int("n_sims", n_sims)
    x, _ = _draw(as_generator(seed), sims, *_design(n_readers, n_negative, n_positive, delta, components))
    return x[0] if n_sims is None else x


def true_auc(
    delta: float | Sequence[float] | np.ndarray,
    components: RoeMetzComponents | None = None,
    kind: Literal["mean", "median"] = "mean",
) -> np.ndarray:
    """Population AUC per condition of the Roe & Metz model, in closed form; shape (conditions,).

    Given reader j in condition i, a random negative's rating is N(m0, V) and a random positive's
    N(m0 + Delta_ij, V) with V = var_c + var_tc + var_rc + var_e (different cases share no effect), so the
    reader's AUC is P(X1 > X0) = Phi(Delta_ij / sqrt(2 V)). Reader effects shared by both classes would
    cancel here; in this model they are drawn per truth state, so Delta_ij = delta_i + R_j1 - R_j0 +
    tauR_ij1 - tauR_ij0 ~ N(delta_i, 2 (var_r + var_tr)), and since E Phi((d + sZ) / a) = Phi(d /
    sqrt(a^2 + s^2)) for Z ~ N(0, 1):

    - ``kind="mean"``: the expected AUC of a random reader (what the mean empirical AUC estimates),
      ``Phi(delta_i / sqrt(2 (V + var_r + var_tr)))``;
    - ``kind="median"``: the AUC of the typical reader (Delta = delta_i), ``Phi(delta_i / sqrt(2 V))``, the
      AUC usually quoted for a Roe & Metz setting (0.702, 0.856, 0.961 for mu = 0.75, 1.5, 2.5; V = 1).
    """
    d = _check_delta(delta)
    comp = _check_components(RoeMetzComponents() if components is None else components)
    if kind not in ("mean", "median"):
        raise ConfigError(f"kind: expected 'mean' or 'median', got {kind!r}")
    var = comp.total if kind == "mean" else comp.case_level
    if var <= 0:
        raise ConfigError(
            f"components: the variances that enter kind={kind!r} sum to 0; the AUC is undefined"
        )
    return norm.cdf(d / np.sqrt(2 * var))


def _condition_names(conditions: Sequence[str] | None, n: int) -> list[str]:
    if conditions is None:
        return ["unaided", "ai_aided"] if n == 2 else [f"condition_{i}" for i in range(n)]
    names = [str(c) for c in conditions]
    if len(names) != n or len(set(names)) != n:
        raise ConfigError(f"conditions: need {n} distinct names (one per delta), got {list(conditions)!r}")
    return names


def _experience(rank_score: np.ndarray, levels: Sequence[str]) -> list[str]:
    """Equal-sized groups of readers by `rank_score`, lowest first, labelled with `levels`."""
    ranks = np.argsort(np.argsort(rank_score, kind="stable"), kind="stable")
    return [str(levels[int(q)]) for q in ranks * len(levels) // len(rank_score)]


def roe_metz_study(
    n_readers: int = 10,
    n_negative: int = 50,
    n_positive: int = 50,
    delta: float | Sequence[float] | np.ndarray = (1.5, 1.7),
    components: RoeMetzComponents | None = None,
    seed: int = 0,
    *,
    conditions: Sequence[str] | None = None,
    experience_levels: Sequence[str] = ("junior", "senior", "expert"),
) -> ReaderStudy:
    """A Roe & Metz reader study as a validated long table (`readers.schema.load_study`).

    Columns: reader ("R01", ...), case ("c0001", ..., negatives first), condition (default "unaided" and
    "ai_aided" for two deltas, else "condition_<i>"), truth (0/1), rating (the latent rating) and the reader
    attribute `experience`: readers split into equal groups by their drawn skill (the mean separation shift
    of their reader effects), the least skilled labelled with the first of `experience_levels`. Same seed,
    same study as `roe_metz(..., seed=seed)`. Raises `ConfigError` naming a bad argument.
    """
    n_readers, n_negative, n_positive, d, comp = _design(n_readers, n_negative, n_positive, delta, components)
    names = _condition_names(conditions, d.size)
    if (
        isinstance(experience_levels, str)
        or not experience_levels
        or len(set(experience_levels)) != len(experience_levels)
    ):
        raise ConfigError(f"experience_levels: need distinct level names, got {experience_levels!r}")
    x, shift = _draw(as_generator(seed), 1, n_readers, n_negative, n_positive, d, comp)
    x, shift = x[0], shift[0]
    readers = [f"R{j + 1:02d}" for j in range(n_readers)]
    n = n_negative + n_positive
    cases = [f"c{k + 1:04d}" for k in range(n)]
    experience = _experience(shift, experience_levels)
    t, r = d.size, n_readers
    frame = pd.DataFrame(
        {
            "reader": np.tile(np.repeat(readers, n), t),
            "case": np.tile(cases, t * r),
            "condition": np.repeat(names, r * n),
            "truth": np.tile(np.r_[np.zeros(n_negative, int), np.ones(n_positive, int)], t * r),
            "rating": x.reshape(-1),
            "experience": np.tile(np.repeat(experience, n), t),
        }
    )
    return replace(load_study(frame), source=f"<roe_metz_study seed={seed}>")


@dataclass(frozen=True)
class ReaderLevel:
    """An experience level: mean binormal separation `skill` (d', AUC = Phi(skill / sqrt 2)) of its readers'
    unaided ratings, and mean `reliance` in [0, 1] (the weight of the AI's score in their aided rating)."""

    name: str
    skill: float
    reliance: float


DEFAULT_LEVELS: tuple[ReaderLevel, ...] = (
    ReaderLevel("junior", skill=1.0, reliance=0.5),  # unaided AUC ~0.76
    ReaderLevel("senior", skill=1.6, reliance=0.35),  # ~0.87
    ReaderLevel("expert", skill=2.2, reliance=0.2),  # ~0.94
)
# Likert confidence 1..5 from the distance of the latent rating to the reader's threshold (in SDs).
_CONFIDENCE_CUTS = np.array([0.3, 0.7, 1.2, 1.8])
# Logistic approximation of Phi (Phi(x) ~ expit(1.702 x)); unlike Phi it does not round to 1.0 before ~21 SDs,
# so strongly AI-driven ratings stay untied.
_LOGISTIC = 1.702


def _ai_on_reader_scale(truth: np.ndarray, ai_score: np.ndarray, ai_scale: str) -> np.ndarray:
    """The AI's score on the readers' binormal scale: logit of a probability (or the score as given),
    shifted and scaled so that negatives have mean 0 and the pooled within-class SD is 1."""
    if ai_scale not in ("auto", "logit", "identity"):
        raise ConfigError(f"ai_scale: expected 'auto', 'logit' or 'identity', got {ai_scale!r}")
    is_prob = bool(np.all((ai_score >= 0) & (ai_score <= 1)))
    if ai_scale == "logit" and not is_prob:
        raise ConfigError("ai_score: ai_scale='logit' needs probabilities in [0, 1]")
    if ai_scale == "logit" or (ai_scale == "auto" and is_prob):
        p = np.clip(ai_score, 1e-6, 1 - 1e-6)
        s = np.log(p) - np.log1p(-p)
    else:
        s = ai_score.astype(float)
    neg, pos = s[truth == 0], s[truth == 1]
    pooled = np.sqrt(((neg.size - 1) * neg.var(ddof=1) + (pos.size - 1) * pos.var(ddof=1)) / (s.size - 2))
    if not pooled > 0:
        raise ConfigError("ai_score: constant within each class; cannot put it on the readers' scale")
    return (s - neg.mean()) / pooled


def simulate_ai_assisted(
    truth: Sequence[int] | np.ndarray,
    ai_score: Sequence[float] | np.ndarray,
    n_readers: int = 9,
    seed: int = 0,
    *,
    cases: Sequence | None = None,
    levels: Sequence[ReaderLevel] = DEFAULT_LEVELS,
    skill_sd: float = 0.2,
    reliance_sd: float = 0.05,
    case_correlation: float = 0.3,
    ai_error_correlation: float = 0.5,
    reread_sd: float = 0.3,
    threshold_sd: float = 0.25,
    ai_scale: Literal["auto", "logit", "identity"] = "auto",
    conditions: tuple[str, str] = ("unaided", "ai_aided"),
) -> ReaderStudy:
    """A reader study in which every reader reads every case unaided, then aided by an AI's scores.

    Reader j gets the experience level ``levels[j % len(levels)]``, a skill d_j ~ N(level.skill, skill_sd^2)
    (clipped at 0) and a reliance w_j ~ N(level.reliance, reliance_sd^2) (clipped to [0, 1]). Unaided latent
    rating: ``u_jk = d_j * truth_k + c_k + e_jk`` with e_jk ~ N(0, 1 - case_correlation) and a case
    difficulty c_k ~ N(0, case_correlation) shared by readers. The AI's score is put on the same scale
    (logit of a probability, or the score as given by `ai_scale`; negatives mean 0, pooled within-class SD
    1), giving z_k; c_k correlates `ai_error_correlation` with the AI's error ``z_k - mean of its class``
    (readers find hard the cases the AI gets wrong). The aided rating moves toward the AI:
    ``a_jk = (1 - w_j) (u_jk + r_jk) + w_j z_k`` with re-read noise r_jk ~ N(0, reread_sd^2). A reader's
    threshold sits at the midpoint of the two class means of the condition, shifted by a reader bias of
    N(0, threshold_sd^2) class SDs.

    Output columns, with D = (latent - threshold) / class SD: `rating` = expit(1.702 D) in (0, 1) (the
    reader's probability of positive, ~Phi(D)), `response` = 1 when rating >= 0.5 (D >= 0), `confidence` =
    Likert 1-5 from |D| (cuts 0.3, 0.7, 1.2, 1.8), and reader attribute `experience`. Combining two
    independent opinions helps, so with `ai_error_correlation` = 0 an AI somewhat weaker than a reader can
    still raise the reader's aided AUC, and only a clearly worse one lowers it; correlated errors make a
    weaker AI hurt sooner, the more so for readers who rely on it.

    `truth` is 0/1 per case, `ai_score` the AI's score or probability of the positive class per case,
    `cases` optional case ids. Raises `ConfigError` naming a bad argument.
    """
    y = np.asarray(truth)
    score = np.asarray(ai_score, dtype=float) if np.ndim(ai_score) == 1 else None
    if y.ndim != 1 or not np.isin(y, (0, 1)).all() or min((y == 0).sum(), (y == 1).sum()) < 2:
        raise ConfigError("truth: need a 1-D array of 0/1 labels with at least 2 cases of each class")
    if score is None or score.shape != y.shape or not np.all(np.isfinite(score)):
        raise ConfigError(
            f"ai_score: need one finite score per case ({y.size}), got shape {np.shape(ai_score)}"
        )
    n_readers = positive_int("n_readers", n_readers)
    case_ids = [f"c{k + 1:04d}" for k in range(y.size)] if cases is None else list(cases)
    if len(case_ids) != y.size or len(set(case_ids)) != y.size:
        raise ConfigError(f"cases: need {y.size} distinct case ids, got {len(case_ids)}")
    if not levels or not all(isinstance(lv, ReaderLevel) for lv in levels):
        raise ConfigError("levels: need at least one ReaderLevel")
    if not all(0 <= lv.reliance <= 1 and lv.skill >= 0 for lv in levels):
        raise ConfigError("levels: each level needs skill >= 0 and reliance in [0, 1]")
    for name, value in (("skill_sd", skill_sd), ("reliance_sd", reliance_sd), ("reread_sd", reread_sd)):
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}: must be finite and >= 0, got {value!r}")
    if not (np.isfinite(threshold_sd) and threshold_sd >= 0):
        raise ConfigError(f"threshold_sd: must be finite and >= 0, got {threshold_sd!r}")
    if not 0 <= case_correlation < 1:
        raise ConfigError(f"case_correlation: must be in [0, 1), got {case_correlation!r}")
    if not -1 <= ai_error_correlation <= 1:
        raise ConfigError(f"ai_error_correlation: must be in [-1, 1], got {ai_error_correlation!r}")
    if len(conditions) != 2 or conditions[0] == conditions[1]:
        raise ConfigError(f"conditions: need two distinct names (unaided, aided), got {conditions!r}")
    z = _ai_on_reader_scale(y, score, ai_scale)
    d_ai = z[y == 1].mean()

    rng = as_generator(seed)
    n, r = y.size, n_readers
    level = [levels[j % len(levels)] for j in range(r)]
    skill = np.maximum(np.array([lv.skill for lv in level]) + skill_sd * rng.standard_normal(r), 0.0)
    reliance = np.clip(np.array([lv.reliance for lv in level]) + reliance_sd * rng.standard_normal(r), 0, 1)
    bias = threshold_sd * rng.standard_normal(r)
    ai_error = z - d_ai * y  # the AI's within-class deviation, unit pooled SD
    rho = ai_error_correlation
    difficulty = np.sqrt(case_correlation) * (rho * ai_error + np.sqrt(1 - rho**2) * rng.standard_normal(n))
    unaided = skill[:, None] * y[None, :] + difficulty[None, :]
    unaided = unaided + np.sqrt(1 - case_correlation) * rng.standard_normal((r, n))
    w = reliance[:, None]
    aided = (1 - w) * (unaided + reread_sd * rng.standard_normal((r, n))) + w * z[None, :]
    # Class means and within-class SD of each reader's ratings, per condition (readers x 1).
    sd_unaided = np.ones((r, 1))
    sd_aided = np.sqrt(
        (1 - w) ** 2 * (1 + reread_sd**2) + w**2 + 2 * w * (1 - w) * np.sqrt(case_correlation) * rho
    )
    sep_aided = (1 - w[:, 0]) * skill + w[:, 0] * d_ai

    rows = []
    for name, latent, sep, sd in (
        (conditions[0], unaided, skill, sd_unaided),
        (conditions[1], aided, sep_aided, sd_aided),
    ):
        threshold = sep[:, None] / 2 + bias[:, None] * sd
        dist = (latent - threshold) / sd
        rows.append(
            pd.DataFrame(
                {
                    "reader": np.repeat([f"R{j + 1:02d}" for j in range(r)], n),
                    "case": np.tile(np.asarray(case_ids, dtype=object), r),
                    "condition": name,
                    "truth": np.tile(y.astype(int), r),
                    "rating": expit(_LOGISTIC * dist).reshape(-1),
                    "response": (latent >= threshold).astype(int).reshape(-1),
                    "confidence": (1 + np.searchsorted(_CONFIDENCE_CUTS, np.abs(dist))).reshape(-1),
                    "experience": np.repeat([lv.name for lv in level], n),
                }
            )
        )
    study = load_study(pd.concat(rows, ignore_index=True))
    return replace(study, source=f"<simulate_ai_assisted seed={seed}>")


__all__: Sequence[str] = (
    "DEFAULT_LEVELS",
    "ReaderLevel",
    "RoeMetzComponents",
    "roe_metz",
    "roe_metz_study",
    "simulate_ai_assisted",
    "true_auc",
)
