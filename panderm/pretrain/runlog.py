"""Training logs that survive a resume: `logs/metrics.csv` keeps what was logged up to the checkpoint a run
resumes from, and the training losses' epoch means are carried in the checkpoint.

Lightning alone deletes `metrics.csv` when a run resumes, and its epoch accumulators
(`self.log(..., on_epoch=True)`) are not saved in checkpoints, so an epoch interrupted and resumed reports
the mean of its second part only. Here `LogPosition` records in every checkpoint how far the log had got,
`RunLog` trims the file back to there on resume (the stopped run's later rows are logged again by the
resumed run, so none appears twice) and appends, and `EpochMeanModule` accumulates the epoch means itself and
saves them in the checkpoint.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from panderm.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

LOG_POSITION = "panderm_log_position"
"""Checkpoint key: {"rows": data rows of `metrics.csv` written, "step": the logger step of the batch}."""
EPOCH_MEANS = "panderm_epoch_means"
"""Checkpoint key: {"epoch": int, "sums": {name: tensor}, "weights": {name: float}} of the epoch so far."""
TRAIN = "train/"


def trim_log(path: str | os.PathLike[str], rows: int | None, step: int | None = None) -> int:
    """Keep the header and the first `rows` data rows (None: all) of the CSV at `path`, then the rows right
    after them logged at logger step `step`; returns how many data rows it kept. The file is rewritten
    atomically.

    The rows at `step` are the rest of the checkpointed batch: Lightning checkpoints a batch before it logs
    the batch's own row (and, at an epoch's last batch, its validation and epoch means), and a run resumed
    there goes on with the next batch without logging them again.
    """
    path = Path(path)
    # Raw lines rather than a CSV round trip: kept values stay byte for byte as written, and a killed run's
    # half-written last line (no newline) is dropped.
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)  # line ends untranslated
    lines = [line for line in lines if line.endswith("\n")]
    rest = lines[rows + 1 :] if rows is not None else []
    kept = lines[: len(lines) - len(rest)]
    header = next(csv.reader(lines[:1]), [])
    if step is not None and "step" in header:
        column = header.index("step")
        for row, line in zip(csv.reader(rest), rest, strict=True):
            if row[column] != str(step):
                break
            kept.append(line)
    atomic_write_text(path, "".join(kept))
    return max(0, len(kept) - 1)


class _KeptWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing `metrics.csv` is trimmed to `position` (see
    `trim_log`) and appended to; with `position=None` (a fresh run) it is deleted, as Lightning does.
    `rows` counts the file's data rows."""

    def __init__(self, log_dir: str, position: dict[str, int] | None) -> None:
        self._position = position
        self.rows = 0
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # the base __init__ calls this to delete an old metrics.csv
        path = Path(self.metrics_file_path)
        if not path.is_file():
            if self._position is not None:
                log.warning("%s is missing: the resumed run's log starts at its checkpoint", path)
            return
        if self._position is None:
            path.unlink()
            return
        rows = self._position.get("rows")
        self.rows = trim_log(path, rows, self._position.get("step"))
        if rows is not None and self.rows < rows:
            log.warning("%s holds %d of the %d rows its checkpoint saw", path, self.rows, rows)
        with path.open(encoding="utf-8", newline="") as file:
            self.metrics_keys = next(csv.reader(file), [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.rows += 1

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new column appears; a kill then would lose the log.
        with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.metrics_file_path, write)


class RunLog(CSVLogger):
    """`<run_dir>/logs/metrics.csv`, written through after every row (a killed run loses none), kept across
    resumes: call `resume_from` with the checkpoint before fitting."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        super().__init__(run_dir, name="logs", version="", flush_logs_every_n_steps=1)
        self._position: dict[str, int] | None = None

    def resume_from(self, checkpoint: dict[str, Any] | None) -> None:
        """Keep the log up to where `checkpoint` (a Lightning checkpoint dict; None: a fresh run) saw it.
        A checkpoint without a `LogPosition` (an older one) keeps the whole log, warning that rows past it
        may appear twice."""
        if self._experiment is not None:
            raise RuntimeError("RunLog.resume_from must be called before the log file is opened (before fit)")
        if checkpoint is None:
            self._position = None
            return
        position = checkpoint.get(LOG_POSITION)
        if position is None:
            log.warning("the checkpoint does not say where its log ends: rows past it may appear twice")
        self._position = dict(position or {})

    @property
    def experiment(self) -> Any:
        if self._experiment is None:
            if rank_zero_only.rank > 0:  # as Lightning's own: only global rank zero writes the file
                return super().experiment
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptWriter(self.log_dir, self._position)
        return self._experiment


class LogPosition(L.Callback):
    """Stores in every checkpoint how far the run's `RunLog` had got: its rows and the batch's logger step."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, RunLog) and isinstance(logger.experiment, _KeptWriter):
                checkpoint[LOG_POSITION] = {
                    "rows": logger.experiment.rows,
                    # the step Lightning's logger connector gives this batch's rows (no public accessor)
                    "step": trainer.fit_loop.epoch_loop._batches_that_stepped,
                }


class EpochMeanModule(L.LightningModule):
    """A LightningModule whose training values (`log_train`) are logged per step as `train/<name>_step` and
    at the end of each epoch as `train/<name>_epoch`, the mean over the epoch's samples on every process.
    The sums are saved in checkpoints, so a resumed epoch reports the same mean as an uninterrupted one."""

    def __init__(self) -> None:
        super().__init__()
        self._epoch = -1
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}

    def log_train(self, name: str, value: torch.Tensor, batch_size: int, *, prog_bar: bool = False) -> None:
        """Log `value` (a scalar for `batch_size` samples) for this step and add it to the epoch's mean."""
        value = value.detach().float()
        self.log(
            f"{TRAIN}{name}_step",
            value,
            prog_bar=prog_bar,
            on_step=True,
            on_epoch=False,
            sync_dist=True,
            batch_size=batch_size,
        )
        if self._epoch != self.current_epoch:
            # A new epoch; or sums restored from a checkpoint taken at an epoch's last batch, an epoch
            # whose end a resumed run does not replay.
            self._epoch = self.current_epoch
            self._sums.clear()
            self._weights.clear()
        total = self._sums.get(name)
        self._sums[name] = value * batch_size if total is None else total + value * batch_size
        self._weights[name] = self._weights.get(name, 0.0) + batch_size

    def on_train_epoch_end(self) -> None:
        if self._epoch != self.current_epoch:
            return
        # Sums and weights are added over processes: the mean over every sample of the epoch, as Lightning's.
        for name in sorted(self._sums):
            total = self.trainer.strategy.reduce(self._sums[name], reduce_op="sum")
            weight = torch.tensor(self._weights[name], device=total.device)
            weight = self.trainer.strategy.reduce(weight, reduce_op="sum")
            # already reduced; sync_dist only tells Lightning so (the mean of equal values is the value)
            self.log(f"{TRAIN}{name}_epoch", total / weight, on_step=False, on_epoch=True, sync_dist=True)
        self._sums.clear()
        self._weights.clear()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[EPOCH_MEANS] = {
            "epoch": self._epoch,
            "sums": {name: total.detach().cpu() for name, total in self._sums.items()},
            "weights": dict(self._weights),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(EPOCH_MEANS)
        if state is None:  # an older checkpoint: the resumed epoch's means cover its second part only
            return
        self._epoch = int(state["epoch"])
        self._sums = {name: total.to(self.device) for name, total in state["sums"].items()}
        self._weights = {name: float(weight) for name, weight in state["weights"].items()}
