"""The study runner the experiments share (``experiments/<study>/run.py``).

A study calls the project's own Hydra apps as subprocesses and reads their outputs back; this
module holds what every study needs for that:

- :func:`run_app` / :func:`app_stage`: ``python -m <app> <overrides>`` with its output in a log
  file and its live progress logged as it goes (:class:`StageWatcher`, :class:`StageProgress`:
  runs done, the current epoch and metric from the run's ``metrics.csv``, the time left);
- :func:`stage`: a resumable stage, skipped when its marker ``<out>/stages/<name>.json`` exists;
- :func:`start`: logging, the output folder and the W&B / thread settings of a study's process;
- readers and table helpers: :func:`job_overrides`, :func:`mean_sd`, :func:`fmt`, :func:`wandb_runs`,
  and :func:`pyplot` for the plots.

It sits in the top layer with ``worlds`` and ``analysis``: it drives the apps and reads their
artefacts, and nothing in the library imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("prefalign.studies")


def start(out: Path, fresh: bool = False, one_thread: bool = False) -> Path:
    """Prepare a study's process: INFO logging with times, ``out`` created (emptied first when
    ``fresh``), W&B offline unless an API key is set, and with ``one_thread`` one OpenMP thread per
    process, inherited by the apps (on loaded shared cores torch's default thread pool spin-waits:
    the tiny models ran several times faster without it). Returns ``out`` resolved."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(out).resolve()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    if one_thread:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    return out


# -- running the apps ------------------------------------------------------------------------------
def run_app(
    module: str, overrides: list[str], log_file: Path | None, watcher: StageWatcher | None = None
) -> float:
    """``python -m <module> <overrides>``, output to ``log_file`` (``None``: this terminal); its wall
    time. Fails loudly.

    While it runs, ``watcher`` (when given) is polled every ``POLL_S`` seconds and its line
    (runs done / total, epoch, current metric, time left) is logged whenever a run or an epoch
    ends, and at least every ``QUIET_S`` seconds."""
    command = [sys.executable, "-m", module, *overrides]
    log.info("running: %s %s", module, " ".join(overrides))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        output = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            output = stack.enter_context(log_file.open("w"))
        stderr = subprocess.STDOUT if output is not None else None
        process = subprocess.Popen(command, stdout=output, stderr=stderr, stdin=subprocess.DEVNULL)
        shown, shown_at = None, started
        while True:
            try:
                returncode = process.wait(timeout=POLL_S if watcher else None)
                break
            except subprocess.TimeoutExpired:
                seen = watcher.poll()[:2]  # a run or an epoch ended (the metric alone changes often)
                if seen != shown or time.perf_counter() - shown_at >= QUIET_S:
                    log.info("  %s", watcher.progress.line())
                    shown, shown_at = seen, time.perf_counter()
    seconds = time.perf_counter() - started
    if returncode != 0:
        if log_file is None:
            raise SystemExit(f"{module} failed (exit {returncode}); see its output above")
        tail = log_file.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{module} failed (exit {returncode}); log: {log_file}\n{tail}")
    log.info("  done in %.0f s", seconds)
    return seconds


# -- live progress of a stage ----------------------------------------------------------------------
POLL_S = 5.0  # seconds between two looks at a running app's log and metrics files
QUIET_S = 60.0  # the progress line is repeated at least this often, for the elapsed / remaining time
# The metric shown for the current run: the first of these its metrics.csv has a value for.
METRICS = ("val/exact_match", "train/loss")
FIT_END = "`Trainer.fit` stopped"  # Lightning's line at the end of every training run


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class StageProgress:
    """Where a stage of training runs stands: runs done out of ``total_runs``, the current run's
    epoch (0-based, out of ``epochs_per_run`` when known) and metric, and the time left.

    The time left extrapolates the time the work done took: finished runs plus the finished epochs
    of the current run (``epoch / epochs_per_run``), timed when that count last grew, so it is the
    completed runs' mean duration once runs have finished, and an estimate from epochs before that;
    between two such moments it counts down.
    """

    name: str
    total_runs: int
    epochs_per_run: int | None = None
    clock: Any = time.monotonic
    runs_done: int = 0
    epoch: int | None = None
    metric: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        self.started = self.changed_at = self.clock()

    def update(
        self, runs_done: int, epoch: int | None = None, metric: tuple[str, float] | None = None
    ) -> None:
        """Record what the watcher saw (``epoch`` / ``metric``: None between runs)."""
        done = self.work_done()
        self.runs_done, self.epoch, self.metric = min(runs_done, self.total_runs), epoch, metric
        if self.work_done() > done:
            self.changed_at = self.clock()

    def work_done(self) -> float:
        """Runs done, counting the current run's finished epochs as a fraction of a run."""
        partial = 0.0
        if self.epoch is not None and self.epochs_per_run and self.runs_done < self.total_runs:
            partial = min(self.epoch / self.epochs_per_run, 1.0)
        return self.runs_done + partial

    def seconds_left(self) -> float | None:
        """The estimated time left (None until some work is done)."""
        done = self.work_done()
        if done <= 0:
            return None
        per_run = (self.changed_at - self.started) / done
        return max(per_run * (self.total_runs - done) - (self.clock() - self.changed_at), 0.0)

    def line(self) -> str:
        """E.g. ``poft: run 2/3, epoch 4/6, val/exact_match 0.470 | 1m40s elapsed, about 1m10s left``."""
        parts = [f"{self.name}: {self.runs_done}/{self.total_runs} runs done"]
        if self.epoch is not None:
            parts.append(
                f"epoch {self.epoch + 1}" + (f"/{self.epochs_per_run}" if self.epochs_per_run else "")
            )
        if self.metric is not None:
            parts.append(f"{self.metric[0]} {self.metric[1]:.3f}")
        left = self.seconds_left()
        timing = f"{duration(self.clock() - self.started)} elapsed"
        timing += f", about {duration(left)} left" if left is not None else ", time left unknown yet"
        return ", ".join(parts) + " | " + timing


def metrics_progress(
    path: Path, metrics: tuple[str, ...] = METRICS
) -> tuple[int | None, tuple[str, float] | None]:
    """The last epoch and the last value of the first of ``metrics`` with a value in a Lightning CSV
    metrics file that may still be being written (a missing file or a cut last line reads as less)."""
    import csv

    try:
        rows = list(csv.DictReader(path.read_text(errors="replace").splitlines()))
    except (OSError, csv.Error):
        return None, None
    epoch, found = None, {}
    for row in rows:
        epoch = _number(row.get("epoch"), epoch)
        for name in metrics:
            found[name] = _number(row.get(name), found.get(name))
    found = {name: value for name, value in found.items() if value is not None}
    metric = next(((name, found[name]) for name in metrics if name in found), None)
    return (None if epoch is None else int(epoch)), metric


def _number(text: str | None, default: float | None) -> float | None:
    """``float(text)``, or ``default`` for an empty or cut-off value."""
    try:
        return float(text) if text else default
    except ValueError:
        return default


class StageWatcher:
    """Follows a running app: training runs finished (Lightning's ``FIT_END`` lines in its log) and
    the epoch and metric of the newest ``metrics.csv`` under ``folders`` written since it started.

    Args:
        progress: the stage's :class:`StageProgress`, updated by :meth:`poll`.
        log_file: the app's output.
        folders: where the app's runs write ``metrics.csv`` (CSV logger).
    """

    def __init__(self, progress: StageProgress, log_file: Path, folders: list[Path]) -> None:
        self.progress, self.log_file, self.folders = progress, log_file, folders
        self.since = time.time() - 1.0  # metrics files of earlier attempts are not this stage's runs
        self.offset, self.ends_plain, self.ends_logged = 0, 0, 0

    def _count_fit_ends(self) -> int:
        try:
            with self.log_file.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return max(self.ends_plain, self.ends_logged)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written line is read next time
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if FIT_END in line:  # Hydra's log format "[time][name][INFO] - ..." and Lightning's plain one
                if line.startswith("["):
                    self.ends_logged += 1
                else:
                    self.ends_plain += 1
        return max(self.ends_plain, self.ends_logged)

    def poll(self) -> tuple:
        """Update the progress from the log and metrics files; return what it saw (runs done, epoch,
        metric), which changes when there is something new to show."""
        runs_done = self._count_fit_ends()
        files = [p for folder in self.folders if folder.is_dir() for p in folder.rglob("metrics.csv")]
        files = [p for p in files if p.stat().st_mtime >= self.since]
        epoch = metric = None
        if len(files) > runs_done:  # a run is under way: the newest file is its
            epoch, metric = metrics_progress(max(files, key=lambda p: p.stat().st_mtime))
        self.progress.update(runs_done, epoch, metric)
        return runs_done, epoch, metric


def stage(out: Path, name: str, action) -> dict:
    """Run ``action()`` unless ``<out>/stages/<name>.json`` exists; record its result and wall time."""
    marker = out / "stages" / f"{name}.json"
    if marker.exists():
        log.info("stage %s: done before, skipped", name)
        return json.loads(marker.read_text())
    started = time.perf_counter()
    result = action() or {}
    result["seconds"] = round(time.perf_counter() - started, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result, indent=2))
    return result


def common_overrides(out: Path) -> list[str]:
    """Every app writes under ``out``: data, runs, aligned models, caches (built tiny models, scores)."""
    return [f"paths.root_dir={out}", f"paths.cache_dir={out / 'cache'}"]


def joined(values) -> str:
    """``1,2,3``: a Hydra multirun sweep over ``values``."""
    return ",".join(str(v) for v in values)


def app_stage(
    out: Path,
    name: str,
    module: str,
    overrides: list[str],
    multirun: bool = True,
    runs: int = 1,
    epochs: int | None = None,
    metrics_dir: Path | None = None,
) -> dict:
    """Run one app (a multirun with ``-m``) with its Hydra folder(s) in ``runs/<name>`` and its
    output in ``logs/<name>.log``; every app writes under ``out``. Its progress is logged as it
    goes (:class:`StageWatcher`): ``runs`` training runs of ``epochs`` epochs each, whose
    ``metrics.csv`` files are under ``runs/<name>`` (or ``metrics_dir``)."""
    folder = f"hydra.{'sweep' if multirun else 'run'}.dir={out / 'runs' / name}"
    command = ["-m"] * multirun + [*overrides, *common_overrides(out), folder]
    log_file = out / "logs" / f"{name}.log"
    watcher = StageWatcher(StageProgress(name, runs, epochs), log_file, [metrics_dir or out / "runs" / name])
    return {"app_seconds": run_app(module, command, log_file, watcher)}


# -- reading results ---------------------------------------------------------------------------------
def job_overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides of a Hydra job, as ``{key: value}``."""
    import yaml

    items = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return dict(item.split("=", 1) for item in items)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sd`` of ``values`` times ``scale`` with ``digits`` decimals (the mean alone for one
    value; NaN left out; empty for no value): a cell of a study's table."""
    values = [v for v in values if v == v]  # without NaN
    if not values:
        return ""
    mean, sd = mean_sd(values)
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if len(values) > 1 else "")


def wandb_runs(out: Path) -> list[Path]:
    """The W&B offline run folders under ``out``."""
    return sorted(out.glob("**/wandb/offline-run-*"))


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
