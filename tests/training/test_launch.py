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


def test_a_child_rank_of_a_fit_inside_another_program_trains_the_saved_config(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from prefalign.training.launch import CHILD_TRAIN_ENV, child_train_config, train_in_child_ranks

    monkeypatch.delenv(CHILD_TRAIN_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = OmegaConf.create({"seed": 3, "paths": {"out": "${seed}/x"}})
    with train_in_child_ranks(cfg, tmp_path / "train_config.yaml"):
        import os

        os.environ["LOCAL_RANK"] = "1"  # what Lightning's launcher sets before starting the ranks
        path = child_train_config()
        assert path == str((tmp_path / "train_config.yaml").resolve())
        assert OmegaConf.load(path) == {"seed": 3, "paths": {"out": "3/x"}}  # saved resolved
        assert child_train_config({"LOCAL_RANK": "0", CHILD_TRAIN_ENV: path}) is None
    # afterwards the program is one process again: the launcher's variables are gone
    assert "LOCAL_RANK" not in os.environ and CHILD_TRAIN_ENV not in os.environ
    assert child_train_config() is None
