"""What the case-level probes (longitudinal, survival, fusion) start from: every split's image features
stacked with one table row per image, and patient-grouped cross-validation folds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from panderm.errors import ConfigError, ProbeError
from panderm.report import Report
from probes.features import FeatureSet

# (test labels (M,), test probabilities (M, C), the M cases' table rows) -> subgroup results per column
Fairness = Callable[[np.ndarray, np.ndarray, pd.DataFrame], dict[str, Any]]


@dataclass
class TaskContext:
    """What `panderm probe` hands a case-level probe (`run_longitudinal`, `run_survival`, `run_fusion`):
    the run folder (write predictions.csv and figures/ there), the report to add sections to, the class
    names, the seed, bootstrap resamples (0 = no intervals), whether to draw figures, `image_path` (manifest
    image path -> file, for figures of images) and `fairness`, which scores test predictions per subgroup
    column the user asked for (`subgroups=`) and returns what goes under metrics["subgroups"]."""

    run_dir: Path
    report: Report
    classes: list[str]
    seed: int = 0
    bootstrap: int = 1000
    plots: bool = True
    device: str = "cpu"
    image_path: Callable[[str], Path] | None = None
    fairness: Fairness = field(default=lambda y, proba, rows: {})


def image_table(sets: Mapping[str, FeatureSet]) -> tuple[np.ndarray, pd.DataFrame]:
    """All splits' features stacked (N, D) float32 and one row per image, in the same order: `image` (the
    manifest path), `split`, `label` (class code, -1 = none) and the manifest's other columns (patient_id,
    lesion_id, timepoint, modality, event, time, metadata ...)."""
    if any(fs.meta is None for fs in sets.values()):
        raise ProbeError(
            "this probe needs the manifest's columns (lesion_id, timepoint, ...); a features .npz has none: "
            "give encoder= and data= instead of features="
        )
    if any(fs.is_multilabel for fs in sets.values()):
        raise ProbeError("longitudinal, survival and fusion probes are for single-label manifests")
    features = np.concatenate([fs.features for fs in sets.values()]).astype(np.float32, copy=False)
    frames = []
    for split, fs in sets.items():
        meta = fs.meta.drop(columns=[c for c in ("split", "image", "label") if c in fs.meta])
        frames.append(
            pd.concat(
                [
                    pd.DataFrame({"image": fs.ids, "split": split, "label": fs.labels}),
                    meta.reset_index(drop=True),
                ],
                axis=1,
            )
        )
    return features, pd.concat(frames, ignore_index=True)


def require_columns(table: pd.DataFrame, columns: Sequence[str], task: str) -> None:
    """A `ConfigError` naming the columns `task` needs that the manifest lacks."""
    absent = [c for c in columns if c not in table]
    if absent:
        raise ConfigError(
            f"{task} needs manifest column(s) {absent}; the manifest has {sorted(map(str, table.columns))}"
        )


def patient_folds(
    groups: Sequence[object], n_folds: int, *, strata: Sequence[object] | None = None, seed: int = 0
) -> np.ndarray:
    """Fold number (0..n_folds-1) per case: cases of one patient (`groups`) share a fold, so no patient is
    both fitted and scored; with `strata` (e.g. the event or label) folds keep its proportions where the
    groups allow (scikit-learn's StratifiedGroupKFold, shuffled by `seed`)."""
    groups = np.asarray(groups, dtype=object)
    n_groups = len(pd.unique(groups))
    if n_folds < 2 or n_groups < n_folds:
        raise ProbeError(
            f"{n_folds}-fold cross-validation needs at least {max(n_folds, 2)} patients; found {n_groups}"
        )
    folds = np.full(len(groups), -1, dtype=np.int64)
    if strata is None:
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        split = splitter.split(np.zeros(len(groups)), groups=groups)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        split = splitter.split(np.zeros(len(groups)), np.asarray(strata), groups=groups)
    for fold, (_, held_out) in enumerate(split):
        folds[held_out] = fold
    return folds
