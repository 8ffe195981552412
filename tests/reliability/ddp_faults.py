"""Signals and a killed rank in a real two-rank fit (gloo on CPU): one trial of a named case.

A trial starts ``prefalign-train`` on two CPU ranks, under Lightning's DDP launcher (the parent is
rank 0 and starts rank 1) or under torchrun. A callback written beside the run (``pauser.py``, on
``PYTHONPATH``) pauses the named ranks at a named point of the fit and writes
``<rank>.ready``; the trial then sends the case's signals to the case's processes, releases the
ranks (file ``go``) and waits for every process, at most ``TIMEOUT_S``: a hang is a failed trial.

Used by tests/reliability/test_ddp_signals.py (slow: every case, several trials) and
``python benchmarks/fault_checks.py --signals`` (the figures in benchmarks/results/fault_checks.json).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PAUSER = '''
import os
import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """At `point` (train_batch: the start of optimiser step `step + 1`; validation: the first
    validation batch after `step` steps; save_checkpoint: inside the epoch-end checkpoint after `step`
    steps; train_end: the end of the training loop, before the export), the ranks in `ranks` write
    `<dir>/<rank>.ready` and wait until `<dir>/go` exists (at most 120 s)."""

    def __init__(self, point, step, ranks, dir):
        self.point, self.step, self.ranks, self.dir = point, step, list(ranks), Path(dir)
        self.done = False

    def _pause(self, trainer, point):
        if self.done or point != self.point or trainer.global_rank not in self.ranks:
            return
        if trainer.global_step < self.step:
            return
        self.done = True
        (self.dir / f"{trainer.global_rank}.ready").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (self.dir / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._pause(trainer, "train_batch")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._pause(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._pause(trainer, "save_checkpoint")

    def on_train_end(self, trainer, pl_module):
        self._pause(trainer, "train_end")
'''

# 24 samples in batches of 4 on 2 ranks: 3 optimiser steps an epoch, 2 epochs (6 steps)
COMMON = [
    "experiment=tiny_ce",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",  # trainer=ddp computes in bf16 by default (slow on CPUs without bf16 units)
    "trainer.devices=2",
    "data.train.limit=24",
    "data.val.limit=8",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "callbacks.progress_bar=null",
    "hydra.job.chdir=false",
]
TIMEOUT_S = 240  # a trial still running after this is a hang


@dataclass(frozen=True)
class Case:
    """One way a cluster stops a run: where the ranks pause, who gets which signals, what must follow."""

    name: str
    point: str  # train_batch | validation | save_checkpoint | train_end | none
    step: int
    paused: tuple[int, ...]  # the ranks that pause there
    targets: str  # parent | rank1 | both | agent | agent+workers
    signals: tuple[int, ...]  # sent in order to every target
    # the exit status expected of the launched process: the parent's; torchrun's agent exits 1
    # after a signal whatever its workers did (it re-raises its SignalException), theirs is checked
    # in their output
    status: int
    launcher: str = "lightning"  # lightning | torchrun
    expect_step_ckpt: bool = True
    expect_export: bool = False


CASES = {
    c.name: c
    for c in [
        Case("sigterm_parent", "train_batch", 4, (0, 1), "parent", (signal.SIGTERM,), 143),
        Case("sigint_parent", "train_batch", 4, (0, 1), "parent", (signal.SIGINT,), 130),
        Case("sigterm_rank1", "train_batch", 4, (0, 1), "rank1", (signal.SIGTERM,), 143),
        Case("sigterm_both", "train_batch", 4, (0, 1), "both", (signal.SIGTERM,), 143),
        Case("sigterm_both_twice", "train_batch", 4, (0, 1), "both", (signal.SIGTERM, signal.SIGTERM), 143),
        Case("sigterm_both_in_validation", "validation", 3, (0, 1), "both", (signal.SIGTERM,), 143),
        # rank 0 inside the epoch-end checkpoint, rank 1 waiting in its barrier
        Case(
            "sigint_parent_in_checkpoint_barrier", "save_checkpoint", 3, (0,), "parent", (signal.SIGINT,), 130
        ),
        Case(
            "sigterm_both_in_checkpoint_barrier", "save_checkpoint", 3, (0,), "both", (signal.SIGTERM,), 143
        ),
        Case(
            "sigterm_parent_at_fit_end",
            "train_end",
            6,
            (0, 1),
            "parent",
            (signal.SIGTERM,),
            143,
            expect_step_ckpt=False,
            expect_export=True,
        ),
        Case("sigterm_agent", "train_batch", 4, (0, 1), "agent", (signal.SIGTERM,), 1, launcher="torchrun"),
        Case(
            "sigterm_agent_and_workers",
            "train_batch",
            4,
            (0, 1),
            "agent+workers",
            (signal.SIGTERM,),
            1,
            launcher="torchrun",
        ),
        Case(
            "sigkill_rank1", "train_batch", 4, (0, 1), "rank1", (signal.SIGKILL,), 1, expect_step_ckpt=False
        ),
    ]
}


@dataclass
class Trial:
    """What one trial of a case gave."""

    case: str
    status: int | None  # None: still running after TIMEOUT_S (killed: a hang)
    seconds: float  # from the release of the paused ranks to the end of the launched process
    output: str
    run_dir: Path
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _wait_for(paths: list[Path], process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if process.poll() is not None:
            raise RuntimeError(
                f"the run ended (status {process.returncode}) before {[p.name for p in paths]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {[p.name for p in paths]} after {timeout} s")
        time.sleep(0.05)


def _workers(process: subprocess.Popen) -> list[psutil.Process]:
    """The training processes under the launched one, rank order (pid order: started in order)."""
    children = psutil.Process(process.pid).children(recursive=True)
    return sorted(
        (c for c in children if "prefalign.apps.train" in " ".join(c.cmdline())), key=lambda c: c.pid
    )


def run_trial(
    case: Case, work: Path, env: dict[str, str], output: str = "run", extra: tuple[str, ...] = ()
) -> Trial:
    """One trial of ``case`` in ``work / output``, with the overrides ``COMMON`` + ``extra``
    (``env``: :func:`app_environment`, which puts ``work`` on ``PYTHONPATH`` for the pauser)."""
    (work / "pauser.py").write_text(PAUSER)
    signals_dir = work / f"{output}.signals"
    signals_dir.mkdir(parents=True)
    run_dir = work / output
    pause = (
        f"+callbacks.pause={{_target_: pauser.PauseAt, point: {case.point}, step: {case.step}, "
        f"ranks: {list(case.paused)}, dir: '{signals_dir}'}}"
    )
    args = [*COMMON, *extra, f"hydra.run.dir={run_dir}", pause]
    env = dict(env)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PREFALIGN_PARENT_JOB"):
        env.pop(key, None)
    if case.launcher == "torchrun":
        args = [a for a in args if not a.startswith("trainer.devices")] + ["trainer.devices=2"]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        command += ["-m", "prefalign.apps.train", *args]
    else:
        command = [sys.executable, "-m", "prefalign.apps.train", *args]
    process = subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    problems: list[str] = []
    try:
        _wait_for([signals_dir / f"{r}.ready" for r in case.paused], process, timeout=TIMEOUT_S)
        workers = _workers(process)
        # under Lightning's launcher the parent is rank 0, under torchrun both ranks are its workers
        ranks = [psutil.Process(process.pid), *workers] if case.launcher == "lightning" else workers
        targets = {
            "parent": [ranks[0]],
            "rank1": [ranks[1]],
            "both": ranks,
            "agent": [psutil.Process(process.pid)],
            "agent+workers": [psutil.Process(process.pid), *ranks],
        }[case.targets]
        for k, signum in enumerate(case.signals):
            if k:
                time.sleep(0.3)
            for target in targets:
                target.send_signal(signum)
        time.sleep(0.2)
        (signals_dir / "go").write_text("")
        start = time.monotonic()
        try:
            out, _ = process.communicate(timeout=TIMEOUT_S)
            status = process.returncode
        except subprocess.TimeoutExpired:
            for p in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
                p.kill()
            out, _ = process.communicate()
            status = None
            problems.append(f"hang: still running {TIMEOUT_S} s after the signal")
        seconds = time.monotonic() - start
    except Exception as err:  # noqa: BLE001 - the trial failed before its signal
        process.kill()
        out, _ = process.communicate()
        return Trial(case.name, process.returncode, 0.0, out, run_dir, [f"setup: {err}"])
    trial = Trial(case.name, status, seconds, out, run_dir, problems)
    if status is not None:
        check(case, trial)
    return trial


def _rank_logs(run_dir: Path) -> dict[int, str]:
    logs = {}
    for path in run_dir.glob("*.log"):
        rank = int(path.stem.rsplit("_", 1)[1]) if "_ddp_process_" in path.stem else 0
        logs[rank] = path.read_text(errors="replace")
    return logs


def check(case: Case, trial: Trial) -> None:
    """Add to ``trial.problems`` what does not hold: the exit status, every rank's own stop line,
    the checkpoint at the signal (or the export), and for a killed rank an error naming it."""
    out, run_dir = trial.output, trial.run_dir
    if trial.status != case.status:
        trial.problems.append(f"exit status {trial.status}, expected {case.status}")
    if case.signals[0] == signal.SIGKILL:
        if "rank 1" not in out or "ckpt_path=auto" not in out:
            trial.problems.append("the error does not name rank 1 and ckpt_path=auto")
        if trial.seconds > 60:
            trial.problems.append(f"rank 0 took {trial.seconds:.0f} s to stop")
        return
    signum = max(case.signals)
    line = f"stopped by {signal.Signals(signum).name} (exit status {128 + signum})"
    count = out.count(line)
    if count < 2:  # every rank says so (their stdout is the launched process's)
        trial.problems.append(f"{count} of 2 ranks say {line!r}")
    step = run_dir / "checkpoints" / "step.ckpt"
    if case.expect_step_ckpt and not step.exists():
        trial.problems.append("no step.ckpt")
    if case.expect_export and not (run_dir / "hf" / "config.json").exists():
        trial.problems.append("no hf/ export")


def metrics_steps(run_dir: Path) -> list[int]:
    """The steps of the training-loss rows of a run's ``csv/metrics.csv``, in file order."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return [int(r["step"]) for r in csv.DictReader(file) if r.get("train/loss")]


def app_environment(work: Path, cache: str) -> dict[str, str]:
    """The environment of a trial: this one, W&B offline, outputs under ``work``, the pauser on
    ``PYTHONPATH``, one thread per rank."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "PREFALIGN_ROOT": str(work),
        "PREFALIGN_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGKILL``..."""
    return signal.Signals(signum).name
