"""Grouped, stratified, seeded, saved splits for datasets without an official one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from panderm.data.readers.public.splits import crossing_groups, grouped_splits, saved_splits
from panderm.errors import ConfigError, DataError


def data(n: int = 1200, n_groups: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n)
    labels = np.where(rng.random(n_groups) < 0.2, "melanoma", "nevus")[groups]  # one label per lesion
    return pd.DataFrame({"image": [f"img_{i}.jpg" for i in range(n)], "lesion": groups, "label": labels})


def test_whole_groups_in_the_asked_fractions_stratified_and_seeded():
    table = data()
    table["split"] = grouped_splits(table["label"], table["lesion"], seed=3)
    assert crossing_groups(table, "lesion") == []
    shares = table["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["val"] - 0.1) < 0.03
    assert abs(shares["test"] - 0.2) < 0.03
    melanoma = table.groupby("split")["label"].apply(lambda s: (s == "melanoma").mean())
    assert melanoma.max() - melanoma.min() < 0.05  # stratified: each split has about the same share
    again = grouped_splits(table["label"], table["lesion"], seed=3)
    assert (again == table["split"]).all()
    assert (grouped_splits(table["label"], table["lesion"], seed=4) != table["split"]).any()
    no_val = grouped_splits(table["label"], table["lesion"], fractions=(0.8, 0, 0.2))
    assert set(no_val) == {"train", "test"}


def test_the_leakage_check_names_a_group_in_two_splits():
    table = pd.DataFrame({"lesion": ["a", "a", "b", "c"], "split": ["train", "test", "train", "val"]})
    assert crossing_groups(table, "lesion") == ["a"]


def test_a_saved_split_is_reused_and_must_name_every_image(tmp_path):
    table = data(300, 100)
    path = tmp_path / "splits.csv"
    first = saved_splits(table, path, labels="label", group="lesion", seed=0)
    assert path.is_file()
    assert (saved_splits(table, path, labels="label", group="lesion", seed=9) == first).all()  # seed ignored
    more = pd.concat([table, pd.DataFrame({"image": ["new.jpg"], "lesion": [5], "label": ["nevus"]})])
    with pytest.raises(DataError, match=r"splits\.csv.*1 image\(s\) \(first: new\.jpg\)"):
        saved_splits(more, path, labels="label", group="lesion")


def test_bad_fractions_and_too_few_groups_are_refused():
    with pytest.raises(ConfigError, match="summing to 1"):
        grouped_splits(["a"] * 4, [1, 2, 3, 4], fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="3 groups cannot be dealt into 5 folds"):
        grouped_splits(["a"] * 6, [1, 1, 2, 2, 3, 3])
