"""What a Lightning child rank runs: its parent's job, as a single run in the parent's folder."""

from __future__ import annotations

import json

from prefalign.training.launch import PARENT_JOB_ENV, child_rank_argv

JOB = {"overrides": ["optimizer.lr=0.001", "trainer=ddp"], "output_dir": "/runs/it's 0", "job_name": "train"}


def test_a_child_rank_runs_the_parent_job_without_the_sweep():
    argv = ["prog", "-m", "-cn", "train", "optimizer.lr=1e-3,2e-3", "--config-dir=/extra", "trainer=ddp"]
    env = {"LOCAL_RANK": "1", PARENT_JOB_ENV: json.dumps(JOB)}
    assert child_rank_argv(argv, env) == [
        "prog",
        "-cn",
        "train",
        "--config-dir=/extra",
        "optimizer.lr=0.001",
        "trainer=ddp",
        "hydra.run.dir='/runs/it\\'s 0'",
        "hydra.output_subdir=null",
        "hydra.job.name=train_ddp_process_1",
    ]


def test_rank_zero_and_processes_without_a_parent_job_keep_their_command_line():
    argv = ["prog", "-m", "optimizer.lr=1e-3,2e-3"]
    assert child_rank_argv(argv, {"LOCAL_RANK": "0", PARENT_JOB_ENV: json.dumps(JOB)}) is None
    assert child_rank_argv(argv, {"LOCAL_RANK": "1"}) is None  # torchrun / SLURM: no parent job
    assert child_rank_argv(argv, {}) is None


def test_the_quoted_run_dir_parses_back_to_the_folder():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = child_rank_argv(["prog"], {"LOCAL_RANK": "1", PARENT_JOB_ENV: json.dumps(JOB)})
    (run_dir,) = [a for a in argv if a.startswith("hydra.run.dir=")]
    assert OverridesParser.create().parse_overrides([run_dir])[0].value() == "/runs/it's 0"
