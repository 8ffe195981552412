"""Every shipped config composes; every experiment runs one fast step; W&B is always closed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from prefalign.config import bundled, config_dir, register_resolvers
from prefalign.training.run import choose_wandb_mode, run_task, train
from prefalign.worlds.verifiable import write_principled, write_world

CONF = config_dir()
GROUPS = [
    "model",
    "data",
    "objective",
    "aligned",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "hparams_search",
]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PRINCIPLES = bundled("principles_correctness.yaml")


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
    if (group, option) == ("model", "hf"):
        overrides.append("model.name_or_path=some/model")
    if (group, option) == ("data", "sharegpt_json"):
        overrides.append(f"data.train.path={tmp_path / 'x.jsonl'}")
    cfg = _compose(overrides)
    if group not in ("debug", "hparams_search"):  # global packages: no node of their own
        assert cfg[group] is not None
    if group == "trainer" and option in ("fsdp", "fsdp2"):
        assert cfg.trainer.strategy._target_


def test_slurm_launcher_config_composes(tmp_path):
    cfg = _compose(["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=8", f"paths.root_dir={tmp_path}"])
    assert cfg.hydra.launcher.gpus_per_node == 8  # one task per GPU, from trainer.devices
    assert "submitit" in cfg.hydra.launcher._target_


def test_tiny_and_local_configs_instantiate(tmp_path):
    cfg = _compose([f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    objective = instantiate(cfg.objective)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert objective.reduction == "token_mean" and len(callbacks) == 15


# GPU-scale experiments run here with tiny stand-ins for the hub models, data and ensemble.
STAND_INS = [
    "model=tiny",
    "data=tiny_chat",
    "aligned=tiny_pair",
    "aligned.score_missing=true",
    "trainer=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "data.batch_size=8",
    "data.max_length=256",
    "data.train.limit=48",
    "data.val.limit=16",
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_fast_step(experiment, compose_train, tmp_path):
    overrides = [f"experiment={experiment}", "debug=fdr", *STAND_INS]
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    if "noise:" in text:
        overrides.append("data.noise.num_samples=8")
    if "override /objective: dpo" in text:  # preference objectives train on preference data
        overrides += ["data=tiny_preference", "data.train.limit=16", "data.val.limit=8"]
    if experiment.startswith("cpu_world"):  # the CPU studies: a small verifiable world under paths.data_dir
        write_world(tmp_path / "data" / "verifiable_world", train=16, val=8, test=8, families=["upper"])
        write_principled(tmp_path / "data" / "verifiable_principled", PRINCIPLES, 16, 8, 8, 8)
        overrides += [
            f"callbacks.{name}.limit=4"
            for name in ("exact_match", "exact_match_good", "exact_match_bad")
            if f"{name}:" in text or name == "exact_match"
        ]
    cfg = compose_train(overrides)
    assert cfg.model.tiny is not None and cfg.trainer.devices == 1
    metrics = run_task(train, cfg)
    assert "train/loss" in metrics


def test_wandb_run_is_finished_even_when_the_task_fails(tmp_path):
    import wandb

    def failing_task(cfg):
        wandb.init(mode="offline", project="prefalign-test", dir=str(cfg["dir"]))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_task(failing_task, {"dir": tmp_path})
    assert wandb.run is None


@pytest.mark.subprocesses
def test_a_task_without_wandb_does_not_import_it(tmp_path):
    # a fresh interpreter: this test process may have imported wandb already
    probe = (
        "import sys\n"
        "from prefalign.training.run import run_task\n"
        "assert run_task(lambda cfg: {'train/loss': 1.0}, {}) == {'train/loss': 1.0}\n"
        "print(sorted(m for m in sys.modules if m == 'wandb' or m.startswith('wandb.')))\n"
    )
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_wandb_goes_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert choose_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == "disabled"
