"""Issue 33 points 1-3 on two real ranks (gloo on CPU, real subprocesses): a signal to the DDP
parent, to rank 1 or to both, once or twice, during a training step, validation, the checkpoint
barrier or the end of the fit, and to torchrun's agent with or without its workers, ends in a
checkpoint (or the finished export) and status 143 / 130 on every rank, never in a hang; a rank
killed with SIGKILL is named by the survivor, which says how to resume; the resumed run keeps
every logged step of the first part, once.

One trial per case here (each is two app processes, about 40 s on a loaded 2-core machine); the
repeated trials are ``python benchmarks/signal_trials.py --trials 5`` (figures in the README).
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys

import pytest
from ddp_faults import CASES, COMMON, Case, app_environment, metrics_steps, run_trial

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_signal_or_a_killed_rank_ends_cleanly(tmp_path, session_cache, name):
    trial = run_trial(CASES[name], tmp_path, app_environment(tmp_path, session_cache))
    assert trial.passed, f"{trial.problems}\n{trial.output[-4000:]}"


def test_after_a_killed_rank_the_resumed_run_keeps_every_logged_step_and_the_rank_logs(
    tmp_path, session_cache
):
    """kill -9 of rank 1 during step 5 (step.ckpt every 2 steps: the newest is step 4), then the
    same command with ckpt_path=auto: metrics.csv holds steps 0-5 once each, the first part's rows
    before step 4 unchanged, and both ranks' logs still begin with the first part."""
    env = app_environment(tmp_path, session_cache)
    killed = Case(
        "sigkill_rank1", "train_batch", 5, (0, 1), "rank1", (signal.SIGKILL,), 1, expect_step_ckpt=False
    )
    every_2 = "callbacks.step_checkpoint.every_n_train_steps=2"
    trial = run_trial(killed, tmp_path, env, extra=(every_2,))
    assert trial.passed, f"{trial.problems}\n{trial.output[-4000:]}"
    run = trial.run_dir
    first = (run / "csv" / "metrics.csv").read_text()
    first_steps = metrics_steps(run)
    logs = {p.name: p.read_text() for p in run.glob("*.log")}
    assert set(logs) == {"train.log", "train_ddp_process_1.log"}

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefalign.apps.train",
            *COMMON,
            every_2,
            f"hydra.run.dir={run}",
            "ckpt_path=auto",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "step.ckpt (global step 4)" in resumed.stdout + resumed.stderr
    steps = metrics_steps(run)
    assert steps == sorted(set(steps)) == list(range(6))  # every step once, in order
    assert set(first_steps) <= set(steps)
    now = list(csv.DictReader(io.StringIO((run / "csv" / "metrics.csv").read_text())))
    before = [r for r in csv.DictReader(io.StringIO(first)) if int(r["step"]) < 4]
    assert before and now[: len(before)] == before  # the first part's rows before step 4, unchanged
    for name, text in logs.items():  # appended to: the first part's lines are still there
        assert (run / name).read_text().startswith(text), name
