"""Patient- or lesion-safe splits for datasets published without one: grouped, stratified, seeded, saved.

`grouped_splits(labels, groups)` deals whole groups (a lesion's or patient's images together) to train, val
and test in the given fractions, stratified by label as far as whole groups allow, with scikit-learn's
`StratifiedGroupKFold` (test = one of round(1 / test) folds; val = one fold of the rest). `saved_splits`
reuses a split written earlier (the same images get the same split whatever the seed or library version),
and `crossing_groups` is the leakage check: every group found in more than one split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from panderm.errors import ConfigError, DataError
from panderm.io import read_csv, write_csv

FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
SPLITS_FILE = "splits.csv"


def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of about `fraction` of the rows, whole groups only, stratified by `labels`."""
    n_splits = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DataError(f"{n_groups} groups cannot be dealt into {n_splits} folds; use fewer, larger splits")
    if n_groups == len(groups):  # one row per group: the same split, without the grouped search's cost
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(folds.split(np.zeros(len(labels)), labels))
    else:
        grouped = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, held = next(grouped.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def grouped_splits(
    labels: Sequence[object],
    groups: Sequence[object],
    *,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """The split ("train", "val" or "test") of every row: whole `groups` per split, stratified by `labels`
    (missing labels count as one more class), in about `fractions` (train, val, test; val may be 0)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ConfigError(f"split fractions must be 3 numbers >= 0 summing to 1, got {list(fractions)}")
    if fractions[2] <= 0:
        raise ConfigError(f"split fractions: the test fraction must be > 0, got {fractions[2]}")
    if len(labels) != len(groups):
        raise DataError(f"{len(labels)} labels but {len(groups)} groups")
    codes = pd.Series(list(labels), dtype=object).fillna("<none>").astype(str).to_numpy()
    group_ids = pd.Series(list(groups), dtype=object).astype(str).to_numpy()
    split = np.full(len(codes), "train", dtype=object)
    test = _one_fold(codes, group_ids, fractions[2], seed)
    split[test] = "test"
    if fractions[1] > 0:
        rest = ~test
        val = _one_fold(codes[rest], group_ids[rest], fractions[1] / (1 - fractions[2]), seed + 1)
        split[np.flatnonzero(rest)[val]] = "val"
    return split


def crossing_groups(table: pd.DataFrame, group: str, split: str = "split") -> list[str]:
    """Groups (values of column `group`) whose rows lie in more than one split: the leakage check."""
    counts = table.groupby(group, dropna=True)[split].nunique()
    return sorted(str(g) for g in counts[counts > 1].index)


def saved_splits(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    labels: str,
    group: str,
    key: str = "image",
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
) -> pd.Series:
    """The split of every row of `table`: read from `path` (columns `key`, `split`) when it exists and names
    every row, else made by `grouped_splits` over columns `labels` and `group` and written there."""
    path = Path(path)
    if path.is_file():
        saved = read_csv(path, text=True)
        missing = [c for c in (key, "split") if c not in saved]
        if missing:
            raise DataError(f"{path}: saved split file lacks column(s) {missing}")
        by_key = dict(zip(saved[key].astype(str), saved["split"].astype(str), strict=True))
        unknown = [k for k in table[key].astype(str) if k not in by_key]
        if not unknown:
            return table[key].astype(str).map(by_key).rename("split")
        raise DataError(
            f"{path}: saved split names no split for {len(unknown)} image(s) (first: {unknown[0]}); "
            "delete the file to make a new split"
        )
    split = pd.Series(
        grouped_splits(table[labels].tolist(), table[group].tolist(), fractions=fractions, seed=seed),
        index=table.index,
        name="split",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, pd.DataFrame({key: table[key].astype(str), "split": split}))
    return split
