"""What a Lightning child rank runs: its parent's job, as a single run in the parent's folder."""

from __future__ import annotations

import json

import pytest

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


def test_a_fit_keeps_a_group_that_existed_before_it_and_ends_one_it_started(tmp_path, monkeypatch):
    """``prefalign-sso`` under torchrun: the group of the launched ranks outlives each fit (the
    next stages use it); a group that appeared during the fit (Lightning's own) is destroyed."""
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from prefalign.training.launch import CHILD_TRAIN_ENV, train_in_child_ranks

    monkeypatch.delenv(CHILD_TRAIN_ENV, raising=False)
    cfg = OmegaConf.create({"seed": 1})
    with train_in_child_ranks(cfg, tmp_path / "a.yaml"):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg1'}", rank=0, world_size=1)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg2'}", rank=0, world_size=1)
    with train_in_child_ranks(cfg, tmp_path / "b.yaml"):
        pass
    assert dist.is_initialized()


def test_without_a_launcher_no_group_is_started(monkeypatch):
    import torch.distributed as dist

    from prefalign.core.ranks import process_group

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    with process_group("auto") as ranks:
        assert ranks.world == 1 and not dist.is_initialized()
    monkeypatch.setenv("RANK", "0")  # torchrun --nproc_per_node 1: one rank, nothing to share
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with process_group("auto") as ranks:
        assert ranks.world == 1 and not dist.is_initialized()


@pytest.mark.parametrize(
    ("trainer", "world_size"),
    [
        ({"devices": 2, "strategy": "ddp"}, 2),
        ({"devices": 1, "num_nodes": 2, "strategy": "ddp"}, 2),
        ({"devices": "0,1", "strategy": "ddp"}, 2),
        (
            {
                "devices": [0, 1, 2, 3],
                "strategy": {"_target_": "lightning.pytorch.strategies.ModelParallelStrategy"},
            },
            4,
        ),
        ({"devices": "auto", "strategy": "ddp"}, 8),
        ({"devices": 1, "strategy": "auto"}, 1),  # one process: Lightning launches what it needs
    ],
)
def test_a_fit_on_the_launched_ranks_passes(trainer, world_size):
    from omegaconf import OmegaConf

    from prefalign.training.launch import check_train_world

    check_train_world(OmegaConf.create(trainer), world_size, "config key `train_overrides`")


@pytest.mark.parametrize(
    ("trainer", "named"),
    [
        (
            {"devices": 1, "strategy": "auto"},
            "trainer.devices=1 x trainer.num_nodes=1 = 1 rank(s), but WORLD_SIZE=2",
        ),
        (
            {"devices": 4, "strategy": "ddp"},
            "trainer.devices=4 x trainer.num_nodes=1 = 4 rank(s), but WORLD_SIZE=2",
        ),
        ({"devices": 2, "strategy": "ddp_spawn"}, "trainer.strategy=ddp_spawn starts processes of its own"),
    ],
)
def test_a_fit_on_other_ranks_than_launched_is_a_config_error_naming_the_keys(trainer, named, monkeypatch):
    from omegaconf import OmegaConf

    from prefalign.core.errors import ConfigError
    from prefalign.training.launch import check_train_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="config key `train_overrides`") as err:
        check_train_world(OmegaConf.create(trainer), 2, "config key `train_overrides`")
    assert named in str(err.value)
