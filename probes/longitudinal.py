"""Longitudinal change probe (PanDerm's early melanoma detection from sequential dermoscopy).

Images of one lesion in one modality, ordered by time point (ordinal numbers or dates, read by
`panderm.data.outcomes.parse_timepoints`), are paired: consecutive time points (t_i, t_i+1) or each later
time point against the baseline (t_0, t_i). A pair's features are combined (`pair_features`: the change
after - before, the two images side by side, or both) and a linear probe (`probes.linear.fit_linear_sweep`)
predicts the pair's target: by default the `changed` flag of the later image (0/1, true/false, yes/no), or
with `positive=` whether a column (e.g. `label`, the lesion's diagnosis) names that value. Pairs never mix
lesions, modalities or splits; with `folds=k` the pairs are scored out of fold by patient-grouped
cross-validation instead of the train/val/test splits (for archives with few follow-ups).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from panderm.data.images import load_image
from panderm.data.outcomes import LESION, TIMEPOINT, parse_events, parse_timepoints
from panderm.errors import ConfigError, ProbeError
from panderm.io import write_csv
from probes.cases import TaskContext, patient_folds, require_columns
from probes.linear import fit_linear_sweep
from probes.metrics import bootstrap_ci, classification_metrics
from probes.plots import new_figure, plot_roc, save_figure

Mode = Literal["consecutive", "baseline"]
Combine = Literal["difference", "concat", "both"]
MODES: tuple[str, ...] = ("consecutive", "baseline")
COMBINES: tuple[str, ...] = ("difference", "concat", "both")
PAIR_COLUMNS = ("before", "after", "lesion", "patient", "split", "t_before", "t_after")
PREDICTIONS = "predictions.csv"
TASK = "the longitudinal probe"


# ------------------------------------------------------------------------------------------------ pairs


def _row_names(table: pd.DataFrame, positions: Sequence[int]) -> str:
    """Rows as the user knows them: the image path when the table has one, else the 0-based position."""
    shown = [str(table["image"].iloc[i]) if "image" in table else str(i) for i in positions[:10]]
    return ", ".join(shown) + (", ..." if len(positions) > 10 else "")


def _has_lesion(table: pd.DataFrame, lesion: str) -> np.ndarray:
    """Rows with a lesion id (not missing or blank)."""
    return table[lesion].notna().to_numpy() & (table[lesion].astype(str).str.strip() != "").to_numpy()


def _lesion_sequences(
    table: pd.DataFrame, lesion: str, timepoint: str, modality: str | None
) -> list[np.ndarray]:
    """Positions of a lesion's images ordered by time, per lesion and modality with >= 2 images."""
    known = _has_lesion(table, lesion)
    keys = [lesion]
    if modality is not None:
        known &= (table["modality"].astype(str) == modality).to_numpy()
    elif "modality" in table:
        keys.append("modality")
    try:
        times = parse_timepoints(table[timepoint])
    except ValueError as err:
        raise ProbeError(f"column {timepoint!r}: {err}") from err
    frame = table[keys].assign(_t=times, _pos=np.arange(len(table)))[known]
    sequences = []
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        if len(group) < 2:
            continue
        name = key[0] if isinstance(key, tuple) else key
        if group["_t"].isna().any() or group["_t"].duplicated().any():
            raise ProbeError(
                f"lesion {name!r}: images without a time point or two at one time point cannot be ordered "
                f"(rows {_row_names(table, group['_pos'].tolist())}); fix column {timepoint!r}"
            )
        sequences.append(group.sort_values("_t")["_pos"].to_numpy())
    return sequences


def _check_one_split(table: pd.DataFrame, lesion: str) -> None:
    """A lesion with images in several splits would let the probe see a test lesion in training."""
    counts = table.groupby(lesion)["split"].nunique()
    for name in counts.index[counts > 1]:
        positions = np.flatnonzero((table[lesion] == name).to_numpy())
        splits = sorted(map(str, table["split"].iloc[positions].unique()))
        raise ProbeError(
            f"lesion {name!r} has images in several splits {splits} (rows {_row_names(table, positions)}); "
            "a lesion's images must all lie in one split"
        )


def build_pairs(
    table: pd.DataFrame,
    *,
    lesion: str = LESION,
    timepoint: str = TIMEPOINT,
    modality: str | None = "dermoscopy",
    mode: Mode = "consecutive",
) -> pd.DataFrame:
    """One row per image pair of a lesion: `before`/`after` (0-based positions of the rows in `table`, so
    also in its feature matrix), `lesion`, `patient` (`patient_id`, or the lesion where the table has none),
    `split`, `t_before`/`t_after` (the time points as written). Images pair only within one lesion and one
    modality: `modality` keeps that modality's images (None: every modality, each paired with itself).
    `mode` "consecutive" pairs (t_i, t_i+1), "baseline" (t_0, t_i). Lesions with one image give no pair;
    images without a lesion id are left out. Raises `ConfigError` for missing columns or a bad `mode`,
    `ProbeError` naming the lesion and rows when a lesion's images lie in several splits or its time points
    cannot be ordered."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not one of {MODES}")
    require_columns(
        table, [lesion, timepoint, "split", *(["modality"] if modality is not None else [])], TASK
    )
    table = table.reset_index(drop=True)
    _check_one_split(table[_has_lesion(table, lesion)], lesion)
    rows = []
    for order in _lesion_sequences(table, lesion, timepoint, modality):
        starts = order[:-1] if mode == "consecutive" else np.repeat(order[0], len(order) - 1)
        rows += [(int(b), int(a)) for b, a in zip(starts, order[1:], strict=True)]
    before = np.array([b for b, _ in rows], dtype=np.int64)
    after = np.array([a for _, a in rows], dtype=np.int64)
    patients = table["patient_id"] if "patient_id" in table else table[lesion]
    return pd.DataFrame(
        {
            "before": before,
            "after": after,
            "lesion": table[lesion].to_numpy()[after],
            "patient": patients.to_numpy()[after],
            "split": table["split"].to_numpy()[after],
            "t_before": table[timepoint].to_numpy()[before],
            "t_after": table[timepoint].to_numpy()[after],
        },
        columns=list(PAIR_COLUMNS),
    )


# ---------------------------------------------------------------------------------------------- targets


def pair_targets(
    table: pd.DataFrame,
    pairs: pd.DataFrame,
    *,
    target: str = "changed",
    positive: str | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """0/1 target per pair from the after-image's `target` cell. Without `positive` the cell must read as
    0/1 (bool, 0/1, true/false, yes/no); with `positive` the target is 1 where the cell names it (for
    `label`, whose cells are class codes, by the class names `classes`). Raises `ConfigError` when
    `positive` is not among the column's values or `label` is given without it, `ProbeError` naming the rows
    whose cell is missing or not 0/1."""
    require_columns(table, [target], TASK)
    cells = table[target].reset_index(drop=True).iloc[pairs["after"].to_numpy()].reset_index(drop=True)
    if target == "label" and classes is not None and pd.api.types.is_numeric_dtype(cells):
        names = list(map(str, classes))  # image_table's labels are class codes (-1 = none)
        cells = cells.map(lambda code: names[int(code)] if 0 <= code < len(names) else None)
    if positive is None:
        if target == "label":
            raise ConfigError("target='label' needs positive=<class name>, e.g. positive=melanoma")
        values = np.array([_binary(cell) for cell in cells])
        _raise_bad(table, pairs, np.flatnonzero(np.isnan(values)), target, "not 0/1 (true/false, yes/no)")
        return values.astype(np.int64)
    _raise_bad(table, pairs, np.flatnonzero(cells.isna().to_numpy()), target, "empty")
    text = cells.astype(str).str.strip()
    if str(positive) not in set(text):
        raise ConfigError(
            f"positive={positive!r} is not a value of column {target!r} in any pair; "
            f"values: {sorted(set(text))[:20]}"
        )
    return (text == str(positive)).to_numpy().astype(np.int64)


def _binary(cell: object) -> float:
    """A 0/1 cell as 1.0/0.0 (`parse_events`' spellings); NaN when missing or anything else."""
    try:
        return float(parse_events([cell])[0])
    except ValueError:
        return math.nan


def _raise_bad(table: pd.DataFrame, pairs: pd.DataFrame, bad: np.ndarray, column: str, what: str) -> None:
    if len(bad):
        positions = pairs["after"].to_numpy()[bad].tolist()
        raise ProbeError(
            f"column {column!r} is {what} on {len(bad)} follow-up image(s) of a pair "
            f"(rows {_row_names(table.reset_index(drop=True), positions)})"
        )


# --------------------------------------------------------------------------------------------- features


def pair_features(features: np.ndarray, pairs: pd.DataFrame, combine: Combine = "difference") -> np.ndarray:
    """Pair features (P, D or 2D or 3D) from image features (N, D): "difference" after - before, "concat"
    [before, after], "both" [after - before, before, after]."""
    if combine not in COMBINES:
        raise ConfigError(f"combine={combine!r} is not one of {COMBINES}")
    x = np.asarray(features, dtype=np.float32)
    before, after = x[pairs["before"].to_numpy()], x[pairs["after"].to_numpy()]
    parts = {
        "difference": [after - before],
        "concat": [before, after],
        "both": [after - before, before, after],
    }[combine]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------------------------ fitting


def _fit_score(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray | None, score: np.ndarray, **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the linear sweep on rows `fit` (C chosen on `val` rows when they hold both classes, else on a
    hold-out of `fit`) and return the positive-class probability of rows `score` and the recipe."""
    device = options.pop("device", "cpu")

    def rows(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(x[mask], device=device), torch.as_tensor(y[mask], device=device)

    fit_y = y[fit]
    if len(np.unique(fit_y)) < 2:
        raise ProbeError(
            f"the probe's fit pairs hold one class only ({int(fit_y.sum())} positive of {len(fit_y)}); "
            "more follow-ups (or folds=k over all pairs) are needed"
        )
    use_val = val is not None and len(np.unique(y[val])) == 2
    probe = fit_linear_sweep(*rows(fit), *(rows(val) if use_val else (None, None)), num_classes=2, **options)
    proba = probe.predict_proba(torch.as_tensor(x[score], device=device))[:, 1]
    return np.asarray(proba, dtype=np.float64), probe.recipe


def _score_splits(
    x: np.ndarray, y: np.ndarray, pairs: pd.DataFrame, **options: Any
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    split = pairs["split"].astype(str).to_numpy()
    if not (split == "test").any():
        raise ProbeError("no test pairs: no lesion of the test split has two images; try folds=k")
    val = split == "val" if (split == "val").any() else None
    scores = np.full(len(y), np.nan)
    scores[split == "test"], recipe = _fit_score(x, y, split == "train", val, split == "test", **options)
    return scores, [recipe]


def _score_folds(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, **options: Any
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    scores, recipes = np.full(len(y), np.nan), []
    for k in range(int(folds.max()) + 1):
        held = folds == k
        scores[held], recipe = _fit_score(x, y, ~held, None, held, **options)
        recipes.append({"fold": k, "C": recipe["C"], "n_fit": recipe["n_fit"]})
    return scores, recipes


# ------------------------------------------------------------------------------------------------ outputs


def _class_names(target: str, positive: str | None) -> list[str]:
    return [f"not {positive}", str(positive)] if positive is not None else [f"not {target}", target]


def _counts(groups: pd.Series, y: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Pairs per split (or fold) and class."""
    frame = pd.crosstab(groups.to_numpy(), np.asarray(names)[y]).reindex(columns=names, fill_value=0)
    frame.columns = [f"pairs {c}" for c in frame.columns]
    return frame.rename_axis(groups.name).reset_index()


def _metric_table(result: dict[str, Any]) -> pd.DataFrame:
    intervals = result.get("ci95", {}).get("intervals", {})
    return pd.DataFrame(
        [
            {
                "metric": k,
                "value": v,
                "95% CI": "[{:.3f}, {:.3f}]".format(*intervals[k]) if k in intervals else "",
            }
            for k, v in result["values"].items()
        ]
    )


def plot_pairs(items: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Image pairs side by side, one pair per row: {"before", "after": (H, W, 3) uint8, "title": str}."""
    fig = new_figure(4.4, 2.3 * max(len(items), 1))
    axes = fig.subplots(max(len(items), 1), 2, squeeze=False)
    for row, item in zip(axes, items, strict=False):
        for ax, key in zip(row, ("before", "after"), strict=True):
            ax.imshow(item[key])
            ax.axis("off")
        row[0].set_title(item["title"], fontsize=7, loc="left")
    return save_figure(fig, path)


def _pairs_figure(
    predictions: pd.DataFrame, context: TaskContext, names: list[str], n_each: int
) -> Path | None:
    """The `n_each` highest- and lowest-scored pairs (each pair once), before -> after."""
    if context.image_path is None or n_each < 1 or predictions.empty:
        return None
    ranked = predictions.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    n_low = min(n_each, max(len(ranked) - n_each, 0))
    shown = [(f"highest #{i + 1}", ranked.iloc[i]) for i in range(min(n_each, len(ranked)))]
    shown += [(f"lowest #{n_low - i}", ranked.iloc[len(ranked) - n_low + i]) for i in range(n_low)]
    items = [
        {
            "before": load_image(context.image_path(row.before_image)),
            "after": load_image(context.image_path(row.after_image)),
            "title": f"{rank}: {row.lesion} t {row.t_before} -> {row.t_after}, score {row.score:.2f}, "
            f"truth {names[int(row.target)]}",
        }
        for rank, row in shown
    ]
    return plot_pairs(items, context.run_dir / "figures" / "pairs.png")


def _predictions(
    table: pd.DataFrame, pairs: pd.DataFrame, y: np.ndarray, scores: np.ndarray, folds: np.ndarray | None
) -> pd.DataFrame:
    images = table["image"].to_numpy() if "image" in table else np.arange(len(table))
    frame = pd.DataFrame(
        {
            "lesion": pairs["lesion"],
            "patient": pairs["patient"],
            "split": pairs["split"],
            **({"fold": folds} if folds is not None else {}),
            "before_image": images[pairs["before"].to_numpy()],
            "after_image": images[pairs["after"].to_numpy()],
            "t_before": pairs["t_before"],
            "t_after": pairs["t_after"],
            "target": y,
            "score": scores,
        }
    )
    return frame[np.isfinite(scores)].reset_index(drop=True)


def run_longitudinal(
    features: np.ndarray,
    table: pd.DataFrame,
    *,
    context: TaskContext,
    target: str = "changed",
    positive: str | None = None,
    combine: Combine = "difference",
    mode: Mode = "consecutive",
    modality: str | None = "dermoscopy",
    folds: int = 0,
    lesion: str = LESION,
    timepoint: str = TIMEPOINT,
    metric: str = "balanced_accuracy",
    figure_pairs: int = 4,
) -> dict[str, Any]:
    """The longitudinal change probe (`panderm probe probe=longitudinal`): pairs (`build_pairs` with
    `lesion`, `timepoint`, `modality`, `mode`), 0/1 targets (`pair_targets` with `target`, `positive`),
    pair features (`pair_features` with `combine`) and the linear sweep (C chosen by `metric`) fitted on
    train pairs and scored on test pairs (C on val pairs when they hold both classes), or with `folds=k`
    out of fold over all pairs by patient-grouped folds stratified by the target. Writes predictions.csv
    (one row per scored pair), figures/roc.png and figures/pairs.png (the `figure_pairs` highest- and
    lowest-scored pairs; only with `context.image_path`) and report sections; returns the metrics (values,
    missing, n, ci95, subgroups, pair counts, recipe, options)."""
    features = np.asarray(features)
    table = table.reset_index(drop=True)
    if len(features) != len(table):
        raise ProbeError(f"{len(features)} feature rows but {len(table)} table rows; they must match")
    pairs = build_pairs(table, lesion=lesion, timepoint=timepoint, modality=modality, mode=mode)
    if pairs.empty:
        raise ProbeError(f"no lesion has two {modality or ''} images at different time points: no pairs")
    y = pair_targets(table, pairs, target=target, positive=positive, classes=context.classes)
    x = pair_features(features, pairs, combine)
    names = _class_names(target, positive)
    options = {"seed": context.seed, "metric": metric, "device": context.device}
    fold_of = None
    if folds:
        fold_of = patient_folds(pairs["patient"].to_numpy(), int(folds), strata=y, seed=context.seed)
        scores, recipes = _score_folds(x, y, fold_of, **options)
    else:
        scores, recipes = _score_splits(x, y, pairs, **options)
    scored = np.isfinite(scores)
    predictions = _predictions(table, pairs, y, scores, fold_of)
    write_csv(context.run_dir / PREDICTIONS, predictions)
    return _evaluate(
        y[scored],
        scores[scored],
        table.iloc[pairs["after"].to_numpy()[scored]].reset_index(drop=True),
        predictions,
        _counts(pd.Series(fold_of, name="fold") if folds else pairs["split"].astype(str), y, names),
        context=context,
        names=names,
        recipes=recipes,
        options={
            "target": target,
            "positive": positive,
            "combine": combine,
            "mode": mode,
            "modality": modality,
            "folds": int(folds),
        },
        figure_pairs=figure_pairs,
    )


def _evaluate(
    y: np.ndarray,
    score: np.ndarray,
    rows: pd.DataFrame,
    predictions: pd.DataFrame,
    counts: pd.DataFrame,
    *,
    context: TaskContext,
    names: list[str],
    recipes: list[dict[str, Any]],
    options: dict[str, Any],
    figure_pairs: int,
) -> dict[str, Any]:
    proba = np.column_stack([1.0 - score, score])
    result: dict[str, Any] = classification_metrics(y, proba, classes=names).to_dict()
    if context.bootstrap:
        result["ci95"] = bootstrap_ci(y, proba, n_resamples=context.bootstrap, seed=context.seed).to_dict()
    result["subgroups"] = context.fairness(y, proba, rows)
    result["pairs"] = counts.to_dict(orient="records")
    result["recipe"] = recipes[0] if len(recipes) == 1 else {"name": "linear_sweep", "folds": recipes}
    result["options"] = options
    where = f"{options['folds']}-fold patient-grouped cross-validation" if options["folds"] else "test split"
    report = context.report
    report.heading("Longitudinal change probe")
    report.text(
        f"{options['mode']} pairs of {options['modality'] or 'any'} images of one lesion; pair features: "
        f"{options['combine']}; target: {names[1]}; scored on the {where} ({len(y)} pairs)."
    )
    report.table(counts, f"Pairs per {counts.columns[0]} and class")
    report.table(_metric_table(result), f"Metrics ({len(y)} pairs)")
    for name, reason in result["missing"].items():
        report.text(f"- `{name}` not computed: {reason}")
    if context.plots:
        figures = context.run_dir / "figures"
        if len(np.unique(y)) == 2:
            path = plot_roc(y, proba, names, figures / "roc.png")
            report.figure(path, f"ROC of the change score ({where})", relative_to=context.run_dir)
        path = _pairs_figure(predictions, context, names, figure_pairs)
        if path is not None:
            report.figure(path, "highest- and lowest-scored pairs", relative_to=context.run_dir)
    return _json_ready(result)


def _json_ready(value: Any) -> Any:
    """numpy scalars and NaN in nested dicts/lists as plain JSON values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
