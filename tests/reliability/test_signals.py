"""SIGTERM / SIGINT sent to a real ``prefalign-train`` process: ``step.ckpt`` at the signal, exit
status 128 + signal, and a resume with ``ckpt_path=auto`` that ends bit for bit where an unbroken
run ends; SLURM's requeue signal still reaches Lightning's handler.

The training subprocess gets a callback (written to ``tmp_path``, put on ``PYTHONPATH``) that, at a
chosen optimiser step, writes a ``ready`` file and waits for the signal, so the signal always lands
mid-epoch whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from shared import app_env

from prefalign.core.signals import Interrupted, raise_on_signals

WAITER = '''
import time
from pathlib import Path

import lightning as L


class WaitForSignal(L.Callback):
    """At the start of optimiser step `step + 1`: write `ready`, then wait (at most 120 s) until
    Lightning's stop flag is set; the batch then trains and the fit stops after it."""

    def __init__(self, step, ready):
        self.step, self.ready = step, Path(ready)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step or self.ready.exists():
            return
        self.ready.write_text(str(trainer.global_step))
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


class WaitInValidation(WaitForSignal):
    """The same at the start of the first validation batch after `step` optimiser steps (not in the
    sanity check)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.global_step >= self.step:
            WaitForSignal.on_train_batch_start(self, trainer, pl_module, batch, batch_idx)
'''

# 24 samples in batches of 4: 6 optimiser steps an epoch, 2 epochs
COMMON = [
    "experiment=tiny_ce",
    "data.train.limit=24",
    "data.val.limit=4",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "logger=csv",
    "callbacks.progress_bar=null",
    "hydra.job.chdir=false",
]


def _start(tmp_path: Path, session_cache: str, output: str, *overrides: str, env: dict | None = None):
    """Start ``prefalign-train`` into ``tmp_path/output``, with the waiting callback on PYTHONPATH."""
    (tmp_path / "waiter.py").write_text(WAITER)
    environment = app_env(tmp_path, session_cache, python_path=tmp_path, **(env or {}))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefalign.apps.train",
            *COMMON,
            f"hydra.run.dir={tmp_path / output}",
            *overrides,
        ],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"training ended before {path.name} (status {process.returncode}):\n{process.stdout.read()}"
            )
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _signalled_run(tmp_path, session_cache, output, signum, step, *overrides, env=None):
    """A run stopped by ``signum`` during optimiser step ``step + 1``; returns (status, output)."""
    ready = tmp_path / f"{output}.ready"
    waiter = f"+callbacks.wait={{_target_: waiter.WaitForSignal, step: {step}, ready: '{ready}'}}"
    process = _start(tmp_path, session_cache, output, waiter, *overrides, env=env)
    _wait_for(ready, process)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=300)
    return process.returncode, out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow  # three short trainings in subprocesses (about 40 s unloaded)
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_step_ckpt_exits_non_zero_and_resumes_bit_for_bit(
    tmp_path, session_cache, signum, status
):
    unbroken = _start(tmp_path, session_cache, "unbroken")
    status_signalled, out = _signalled_run(tmp_path, session_cache, "run", signum, step=8)
    assert unbroken.wait(timeout=300) == 0, unbroken.stdout.read()
    assert status_signalled == status, out
    name = signal.Signals(signum).name
    assert f"stopped by {name} (exit status {status})" in out
    checkpoints = tmp_path / "run" / "checkpoints"
    step = torch.load(checkpoints / "step.ckpt", map_location="cpu", weights_only=False)
    assert step["global_step"] == 9  # the step under way at the signal finished, then the fit stopped
    assert step["ChatDataModule"]["train_order"] == {
        "epoch": 1,
        "batches_consumed": 3,
        "batches_per_epoch": 6,
        "world_size": 1,
        "batch_size": 4,
    }
    assert not (tmp_path / "run" / "hf").exists()

    resumed = _start(tmp_path, session_cache, "run", "ckpt_path=auto")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming from" in out and "step.ckpt (global step 9)" in out
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12
    for key, tensor in _weights(tmp_path / "unbroken" / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(final["state_dict"][key], tensor, rtol=0, atol=0, msg=key)
    assert (tmp_path / "run" / "hf" / "config.json").exists()


@pytest.mark.slow  # three short trainings in subprocesses
def test_sigterm_during_validation_resumes_bit_for_bit(tmp_path, session_cache):
    """SIGTERM in the first of two validation batches at the end of epoch 1: Lightning stops inside
    validation, before the epoch-end checkpoints; step.ckpt holds the whole epoch and the resumed
    run ends where the unbroken one does."""
    val = "data.val.limit=8"  # two validation batches of 4
    unbroken = _start(tmp_path, session_cache, "unbroken", val)
    ready = tmp_path / "run.ready"
    waiter = f"+callbacks.wait={{_target_: waiter.WaitInValidation, step: 6, ready: '{ready}'}}"
    process = _start(tmp_path, session_cache, "run", waiter, val)
    _wait_for(ready, process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert unbroken.wait(timeout=300) == 0, unbroken.stdout.read()
    assert process.returncode == 143, out
    checkpoints = tmp_path / "run" / "checkpoints"
    step = torch.load(checkpoints / "step.ckpt", map_location="cpu", weights_only=False)
    assert step["global_step"] == 6 and step["ChatDataModule"]["train_order"]["batches_consumed"] == 6

    resumed = _start(tmp_path, session_cache, "run", val, "ckpt_path=auto")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12
    for key, tensor in _weights(tmp_path / "unbroken" / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(final["state_dict"][key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.subprocesses
def test_sigterm_exits_143_with_a_step_checkpoint_and_slurm_requeue_still_works(tmp_path, session_cache):
    """Under SLURM (variables of a one-task job, a fake ``scontrol`` on PATH): SIGUSR1 makes
    Lightning's SLURM plugin write its HPC checkpoint and requeue the job; the SIGTERM SLURM sends
    next writes step.ckpt and exits 143."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "prefalign",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    ready = tmp_path / "run.ready"
    waiter = f"+callbacks.wait={{_target_: waiter.WaitForSignal, step: 3, ready: '{ready}'}}"
    process = _start(tmp_path, session_cache, "run", waiter, "trainer.max_epochs=1", env=slurm)
    _wait_for(ready, process)
    process.send_signal(signal.SIGUSR1)
    _wait_for(tmp_path / "scontrol.log", process, timeout=60)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 143, out
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert list((tmp_path / "run").glob("**/hpc_ckpt_1.ckpt")), out
    step = torch.load(tmp_path / "run" / "checkpoints" / "step.ckpt", map_location="cpu", weights_only=False)
    assert step["global_step"] == 4


def test_outside_a_fit_a_signal_raises_interrupted_with_status_143_or_130():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with pytest.raises(Interrupted) as err, raise_on_signals():
            signal.raise_signal(signum)  # to this thread: the handler runs at once
            time.sleep(5)  # not reached
        assert err.value.code == status
        assert f"stopped by {signal.Signals(signum).name} (exit status {status})" in str(err.value)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


SSO_TRAIN = (
    '["data=tiny_preference","data.max_length=2048","data.batch_size=2","trainer.max_epochs=1",'
    '"optimizer.lr=1e-4","logger=csv","callbacks.progress_bar=null",'
    '"+callbacks.wait={{_target_: waiter.WaitForSignal, step: 1, ready: {ready}}}"]'
)


@pytest.mark.slow  # two tiny SSO iterations in subprocesses (about 40 s unloaded)
def test_sso_records_the_interrupted_stage_and_the_rerun_continues_its_fit(tmp_path, session_cache):
    """SIGTERM during iteration 1's fit: exit 143, ``train.interrupted.json`` names the stage and the
    signal; the rerun continues the fit from its step.ckpt and finishes the run."""
    (tmp_path / "waiter.py").write_text(WAITER)
    ready = tmp_path / "sso.ready"
    args = [
        "iterations=1",
        "prompts.limit=8",
        "sampling.max_new_tokens=8",
        "sampling.batch_size=8",
        "allocation.max_new_tokens=8",
        f"train_overrides={SSO_TRAIN.format(ready=ready)}",
        "run_name=signalled",
    ]
    env = app_env(tmp_path, session_cache, python_path=tmp_path)
    command = [sys.executable, "-m", "prefalign.apps.sso", *args]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for(ready, process)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 143, out
    (iteration,) = tmp_path.glob("**/signalled/iter_1")
    record = json.loads((iteration / "train.interrupted.json").read_text())
    assert record["stage"] == "train" and record["signal"] == "SIGTERM" and record["exit_status"] == 143
    assert "step.ckpt written at global step 2" in record["detail"]
    assert not (iteration / "train.done.json").exists()

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    assert "train was interrupted by SIGTERM" in out and "continuing its fit from the checkpoint" in out
    assert "step.ckpt (global step 2)" in out
    assert (iteration / "train.done.json").exists() and (iteration / "evaluate.done.json").exists()
    assert not (iteration / "train.interrupted.json").exists()


def test_a_signal_after_the_fits_loop_is_recorded_for_the_fit_not_raised():
    """Between the end of the training loop and the end of ``train()`` (the final export) the
    signal is noted by the fit's StopOnSignal, which raises Interrupted once the export is written."""
    from prefalign.core.signals import deferring_to
    from prefalign.training.signals import StopOnSignal

    stopper = StopOnSignal()
    with raise_on_signals(), deferring_to(stopper):
        signal.raise_signal(signal.SIGTERM)  # no Interrupted here: recorded
        signal.raise_signal(signal.SIGINT)
    assert stopper.signum == signal.SIGTERM  # SIGTERM wins over SIGINT


def test_lost_peers_are_recognised_and_the_timeout_is_checked():
    from prefalign.training.signals import RanksLost, StopOnSignal, is_lost_peer

    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error [127.0.0.1]:1234: Connection reset by peer"
    )
    wrapped = ValueError("while logging")
    wrapped.__cause__ = gloo
    assert is_lost_peer(gloo) and is_lost_peer(wrapped) and is_lost_peer(RanksLost("rank 1 stopped"))
    assert not is_lost_peer(RuntimeError("CUDA out of memory")) and not is_lost_peer(KeyError("x"))
    with pytest.raises(ValueError, match="callbacks.stop_on_signal.timeout_s must be a positive number"):
        StopOnSignal(timeout_s=0)
