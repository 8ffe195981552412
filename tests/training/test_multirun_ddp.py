"""Multiruns with Lightning's subprocess launcher (``trainer=ddp``, 2 CPU processes over gloo).

Every job of the sweep is trained by two ranks, the child rank runs only its parent's job and writes
into that job's folder, and there is one sweep folder. The ``pid`` sweeper below draws the learning
rates from the process id, like a sampler that is not deterministic across processes (Optuna): a
child rank that re-ran the sweep itself would train other values than its parent.
"""

from __future__ import annotations

import os
import re
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

pytestmark = pytest.mark.distributed

PID_SWEEPER = textwrap.dedent(
    '''
    import os
    from dataclasses import dataclass
    from typing import Any, Optional

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.config_store import ConfigStore


    @dataclass
    class PidSweeperConf:
        _target_: str = "hydra_plugins.pid_sweeper.PidSweeper"
        max_batch_size: Optional[int] = None
        params: Optional[Any] = None


    class PidSweeper(BasicSweeper):
        """Sweeps two learning rates drawn from this process's id."""

        def sweep(self, arguments):
            lr = (os.getpid() % 1000 + 1) * 1e-6
            return super().sweep([*arguments, f"optimizer.lr={lr:.6g},{2 * lr:.6g}"])


    ConfigStore.instance().store(group="hydra/sweeper", name="pid", node=PidSweeperConf)
    '''
)

TINY = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.devices=2",
    "data.train.limit=32",
    "data.val.limit=8",
    "data.batch_size=8",
    "callbacks.progress_bar=null",
    "logger=csv",
]


@pytest.mark.parametrize(
    "sweep",
    [
        pytest.param(["hydra/sweeper=pid"], id="per-process-sweeper"),
        pytest.param(["optimizer.lr=1e-3,2e-3"], id="grid", marks=pytest.mark.slow),
    ],
)
def test_each_job_of_a_sweep_is_trained_by_two_ranks_in_one_sweep_folder(tmp_path, run_app, sweep):
    plugins = tmp_path / "plugins" / "hydra_plugins" / "pid_sweeper"
    plugins.mkdir(parents=True)
    (plugins / "__init__.py").write_text(PID_SWEEPER)
    pythonpath = os.pathsep.join(p for p in (str(tmp_path / "plugins"), os.environ.get("PYTHONPATH")) if p)
    result = run_app(
        "prefalign.apps.train", ["-m", *sweep, *TINY], tmp_path, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1"
    )
    assert result.returncode == 0, result.stderr[-4000:]

    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # the child ranks opened no sweep folder of their own
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        lrs.append(config.optimizer.lr)
        # two ranks trained it: 32 samples / (8 per rank x 2 ranks) = 2 steps (1 rank would take 4)
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 2
        # rank 1 ran this job, in this folder, with the parent's overrides
        child_log = (job / "train_ddp_process_1.log").read_text()
        match = re.search(
            r"rank 1 of world size 2: the parent's job in (\S+) with overrides (\[.*\])", child_log
        )
        assert match, child_log[:2000]
        assert match.group(1) == str(job)
        assert eval(match.group(2)) == overrides  # noqa: S307 - a list literal the app logged
        (lr_override,) = [o for o in overrides if o.startswith("optimizer.lr=")]
        assert float(lr_override.split("=", 1)[1]) == config.optimizer.lr
    assert len(set(lrs)) == 2
