"""Shared fixtures: the location of ../shared/data and skipping when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw new examples on every local run; CI (CI=true) replays a fixed, derandomised draw so a
# red build reproduces, and keeps no example database.
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "default")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PANDERM_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, skipping the test (with the reason) when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared data not found at {path} (set PANDERM_SHARED_DATA or place ../shared beside the repo)"
        )
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: slow tests lead, ordered by their `minutes` estimate (`@pytest.mark.slow(minutes=6)`,
    1 by default), so that under `--dist worksteal` the demo starts at once and the other worker steals the
    short tests around it."""

    def minutes(item: pytest.Item) -> float:
        marker = item.get_closest_marker("slow")
        return 0.0 if marker is None else float(marker.kwargs.get("minutes", 1))

    items.sort(key=minutes, reverse=True)  # stable: equal estimates keep the collection order


def pytest_configure(config: pytest.Config) -> None:
    # Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
