"""Run folders: one per launch, even for runs started in the same second (issue: runs sharing one)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from shared import app_env

from prefalign.config import unique_run_name

NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[0-9a-f]{6}$")


def test_names_are_time_plus_a_random_suffix(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    names = {unique_run_name() for _ in range(50)}
    assert len(names) == 50
    assert all(NAME.match(n) for n in names)


def test_the_tasks_of_a_multi_task_slurm_step_share_one_name(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert unique_run_name() == unique_run_name() == "slurm-4242.0"
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task (an interactive srun): a unique name
    assert NAME.match(unique_run_name())


def test_the_ranks_of_one_torchrun_launch_share_one_name(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "b1f0c2")  # --standalone / --rdzv-id
    assert unique_run_name() == unique_run_name() == "torchrun-b1f0c2"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # static single-node launch: the agent's pid
    assert unique_run_name() == f"torchrun-{socket.gethostname()}-{os.getppid()}"
    monkeypatch.setenv("WORLD_SIZE", "1")  # one rank: a unique name
    assert NAME.match(unique_run_name())


@pytest.mark.slow
@pytest.mark.distributed
def test_a_torchrun_launch_trains_in_one_run_folder(tmp_path, session_cache):
    env = app_env(tmp_path, session_cache)
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "prefalign.apps.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    command += ["trainer.precision=32-true"]
    command += ["trainer.max_steps=2", "data.train.limit=64", "data.val.limit=8", "logger=csv"]
    command += ["callbacks.progress_bar=null"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert run.name.startswith("torchrun-")
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "hf" / "config.json").is_file()


@pytest.mark.subprocesses
def test_two_runs_launched_together_get_two_folders(tmp_path, session_cache):
    env = app_env(tmp_path, session_cache)
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_NTASKS"):
        env.pop(key, None)
    common = ["trainer.max_steps=1", "data.train.limit=8", "data.val.limit=8", "logger=csv"]
    common += ["callbacks.progress_bar=null", "callbacks.hf_export=null"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "prefalign.apps.train", f"optimizer.lr={lr}", *common],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in ("3e-3", "1e-3")
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 2
    lrs = set()
    for run in runs:
        assert NAME.match(run.name)
        lr = OmegaConf.load(run / ".hydra" / "config.yaml").optimizer.lr
        override = OmegaConf.load(run / ".hydra" / "overrides.yaml")[0]
        assert float(override.removeprefix("optimizer.lr=")) == lr  # config and overrides of one run
        assert (run / "checkpoints" / "last.ckpt").exists()
        assert len(list((run / "checkpoints").glob("last*.ckpt"))) == 1  # no last-v1.ckpt of another run
        lrs.add(lr)
    assert lrs == {3e-3, 1e-3}
