"""One exception family for the whole toolkit; messages name the file, row, field or key."""

from __future__ import annotations

from collections.abc import Sequence


class PandermError(Exception):
    """Base class of every error panderm raises on purpose."""


class ConfigError(PandermError):
    """A configuration value is missing, misspelt or inconsistent."""


class DataError(PandermError):
    """A data file (image, mask, array, table) cannot be used."""


class ImageLoadError(DataError):
    """An image or mask file is missing, unreadable or corrupt; `path` names it."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ManifestError(DataError):
    """A manifest has problems; `problems` lists every one of them (row numbers are 1-based data rows)."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        head = f"{source}: {len(self.problems)} problem(s)"
        super().__init__("\n  ".join([head, *self.problems]))


class ProbeError(PandermError):
    """A probe's inputs or outputs (labels, probabilities, features, prediction files) cannot be used."""


class BackendError(PandermError):
    """A model backend (MLLM API, local model, expert head) is misconfigured or misbehaved."""


class CheckpointError(PandermError):
    """A checkpoint file is missing, corrupt, unsafe to unpickle or does not fit the model; `report` holds the
    key lists (a `panderm.models.checkpoints.LoadReport`) when keys did not match."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
