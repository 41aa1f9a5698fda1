"""Shared fixtures of the reader-study tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from readers.schema import ReaderStudy, load_study


def build_study(
    n_readers: int = 5,
    n_cases: int = 40,
    n_classes: int = 2,
    accuracy: tuple[float, float] = (0.65, 0.85),
    seed: int = 0,
) -> ReaderStudy:
    """A random study (conditions unaided / ai_aided) with response, rating, top_k, confidence, experience."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_classes, n_cases)
    rows = []
    for r in range(n_readers):
        for cond, p in zip(("unaided", "ai_aided"), accuracy, strict=True):
            right = rng.random(n_cases) < p
            response = np.where(right, truth, (truth + rng.integers(1, n_classes, n_cases)) % n_classes)
            for c in range(n_cases):
                others = [k for k in range(max(n_classes, 3)) if k != response[c]]
                top = [int(response[c]), *rng.permutation(others)[:2].tolist()]
                rows.append(
                    {
                        "reader": f"R{r}",
                        "case": f"c{c:03d}",
                        "condition": cond,
                        "truth": int(truth[c]),
                        "response": int(response[c]),
                        "rating": float(truth[c] + rng.normal(0, 1)),
                        "top_k": "|".join(map(str, top)),
                        "confidence": int(rng.integers(1, 6)),
                        "experience": r % 3,
                    }
                )
    return load_study(pd.DataFrame(rows))


@pytest.fixture
def make_study() -> Callable[..., ReaderStudy]:
    """`build_study` as a fixture: ``make_study(n_readers=, n_cases=, n_classes=, accuracy=, seed=)``."""
    return build_study
