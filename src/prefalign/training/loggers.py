"""A CSV logger whose resumed run continues the run's ``csv/metrics.csv``.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run resumed in
its own folder (``ckpt_path=auto``) kept only the steps after the checkpoint. :class:`CSVLogger`
here (``logger=csv``) is told the step a resumed fit starts from (:meth:`CSVLogger.resume_at`,
called by :func:`prefalign.training.run.build_loggers`) and then:

- keeps every row of the earlier part logged before that step, and its header;
- discards the rows logged at or after it (the steps a killed run trained after its last
  checkpoint: the resumed fit trains and logs them again), saying how many;
- ignores what the resumed fit logs again for steps before it (the data counts logged at the start
  of every fit), so no (step, metric) is written twice;
- appends the resumed fit's rows: the file is the whole run's record, as a resumed W&B run is.

A fresh run (no checkpoint) starts a new file, as Lightning's does.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from prefalign.core.jsonl import atomic_write

__all__ = ["CSVLogger"]

log = logging.getLogger(__name__)


def _step(row: dict[str, Any]) -> int | None:
    """A ``metrics.csv`` row's step; ``None`` for a row cut short (a kill during the write)."""
    value = row.get("step")
    return int(value) if isinstance(value, str) and value.isdigit() else None


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer, continuing the rows of ``metrics.csv`` logged before ``resume_step``."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)  # calls _check_log_dir_exists

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.resume_step is None or not path.is_file():
            super()._check_log_dir_exists()  # a fresh run: Lightning's (a stale file is deleted)
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        kept = [row for row in rows if _step(row) is not None and _step(row) < self.resume_step]
        with atomic_write(path) as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = sorted(header)
        log.info(
            "%s: the resumed fit continues at step %d: kept the %d rows logged before it, replaced "
            "%d logged at or after it (trained again) or cut short by the kill",
            path,
            self.resume_step,
            len(kept),
            len(rows) - len(kept),
        )

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        """Record metrics (those of a step before the resumed one are the earlier part's: kept)."""
        if self.resume_step is not None and step is not None and step < self.resume_step:
            return
        super().log_metrics(metrics_dict, step)


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose resumed run appends to ``metrics.csv`` (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step: int | None = None

    def resume_at(self, step: int) -> None:
        """The fit resumes from a checkpoint taken after ``step`` optimiser steps (its
        ``global_step``: Lightning logs the next batch's rows at that step); call before anything
        is logged."""
        if self._experiment is not None:
            raise RuntimeError("CSVLogger.resume_at must be called before anything is logged")
        self.resume_step = int(step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer of ``metrics.csv`` and ``hparams.yaml`` (global rank 0 only)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment
