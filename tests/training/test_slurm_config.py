"""The SLURM launcher config: resources from the trainer config, requeue, ckpt_path=auto."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf.errors import ValidationError

from prefalign.config import config_dir, register_resolvers


def _compose(overrides, config_name="train"):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_nodes_tasks_and_gpus_follow_the_trainer_and_jobs_requeue(monkeypatch):
    monkeypatch.delenv("PREFALIGN_CKPT_PATH", raising=False)
    cfg = _compose(["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher.max_num_timeout == 3
    assert "export PREFALIGN_CKPT_PATH=auto" in launcher.setup
    assert cfg.ckpt_path is None  # on the submitting machine; the SLURM job exports the variable


def test_the_slurm_job_environment_turns_ckpt_path_auto_on(monkeypatch):
    monkeypatch.setenv("PREFALIGN_CKPT_PATH", "auto")  # what the launcher's setup line exports
    assert _compose([]).ckpt_path == "auto"
    assert _compose(["ckpt_path=null"]).ckpt_path is None  # an explicit choice wins


def test_apps_without_a_trainer_get_one_task(monkeypatch):
    cfg = _compose(["hydra/launcher=slurm"], config_name="sso")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (1, 1)


def test_devices_auto_is_refused_naming_the_launcher_key():
    cfg = _compose(["hydra/launcher=slurm", "trainer=fsdp"])  # devices: auto
    with pytest.raises(ValidationError, match="tasks_per_node"):
        _ = cfg.hydra.launcher.tasks_per_node
