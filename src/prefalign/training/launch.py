"""Ranks started by Lightning's subprocess launcher run their parent's Hydra job, nothing else.

With ``trainer=ddp|fsdp|fsdp2`` and ``trainer.devices > 1`` on one node (no SLURM or torchrun
around it), Lightning starts ranks 1..N-1 as ``python -m <app> <the parent's sys.argv>`` plus
``hydra.run.dir=<the run dir>``. In a multirun that command still holds ``-m`` and the sweep: each
child would run the whole sweep again, in a sweep folder of its own, and with a sweeper that is not
deterministic across processes (Optuna, random search) train other parameters than its parent.

Here the parent job publishes its own overrides and output folder in the environment
(:func:`parent_job`, around the job), which Lightning copies into every child, and a child rank
rebuilds its command line from them before Hydra starts (:func:`child_rank_argv`): a single run
of exactly the parent's job, writing into the parent's job folder (its log file
``<app>_ddp_process_<rank>.log``, no second ``.hydra/``). One sweep folder per sweep; every rank
trains the parent's parameters.

A ``train()`` called inside another program (an SSO iteration of ``prefalign-sso``) is wrapped in
:func:`train_in_child_ranks` instead: the iteration's resolved ``train`` config is saved and named
in ``PREFALIGN_CHILD_TRAIN_CONFIG``, and the app's entry point makes a child rank train that config
(:func:`child_train_config`) rather than re-run the pipeline.

Under SLURM (``srun``, one task per GPU) or torchrun, the launcher starts every rank itself and
Lightning spawns nothing; each task already runs the same job (the submitit launcher pickles each
job's config), so nothing here applies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefalign.core.errors import ConfigError
from prefalign.core.ranks import launched_local_rank

log = logging.getLogger(__name__)

# Environment variable holding the parent job's overrides and output folder (JSON).
PARENT_JOB_ENV = "PREFALIGN_PARENT_JOB"
# Set by Lightning's subprocess launcher in the parent (and copied to the children); restored
# after each job so that the next job of a multirun launches its own ranks again.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", PARENT_JOB_ENV)
# A saved, resolved ``train`` config that child ranks train (see the module docstring).
CHILD_TRAIN_ENV = "PREFALIGN_CHILD_TRAIN_CONFIG"
# Hydra command-line flags that choose the config (kept for the child; every other flag dropped).
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _quote(value: str) -> str:
    """A Hydra override value in single quotes (paths may hold spaces, ``=`` or commas)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _config_flags(argv: Sequence[str]) -> list[str]:
    """The config-choosing flags of a command line (``-cn name``, ``--config-dir=dir``...)."""
    kept: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        if flag in CONFIG_FLAGS:
            if "=" in arg:
                kept.append(arg)
            elif i + 1 < len(args):
                kept += [arg, args[i + 1]]
                i += 1
        i += 1
    return kept


def child_rank_argv(argv: Sequence[str], environ: dict[str, str] | None = None) -> list[str] | None:
    """The command line a Lightning child rank should run, or ``None`` for any other process.

    A child rank (``LOCAL_RANK`` > 0 with the parent's job in ``PREFALIGN_PARENT_JOB``) gets the
    program name, the config-choosing flags of ``argv``, the parent job's overrides, and
    ``hydra.run.dir`` = the parent job's folder: a single run (no ``-m``) of that one job.
    """
    env = os.environ if environ is None else environ
    local_rank = launched_local_rank(env)
    if local_rank == 0 or PARENT_JOB_ENV not in env:
        return None
    job = json.loads(env[PARENT_JOB_ENV])
    return [
        argv[0],
        *_config_flags(argv[1:]),
        *job["overrides"],
        f"hydra.run.dir={_quote(job['output_dir'])}",
        "hydra.output_subdir=null",  # the parent writes the job's .hydra/
        f"hydra.job.name={job['job_name']}_ddp_process_{local_rank}",
    ]


def parent_pid() -> int | None:
    """In a child rank Lightning started for a parent's job, the parent's process id (rank 0)."""
    if not is_child_rank():
        return None
    pid = json.loads(os.environ[PARENT_JOB_ENV]).get("pid")
    return int(pid) if pid is not None else None


def is_child_rank() -> bool:
    """Whether this process is a child rank started for a parent's job (see :func:`child_rank_argv`)."""
    return launched_local_rank() > 0 and PARENT_JOB_ENV in os.environ


@contextlib.contextmanager
def parent_job() -> Iterator[None]:
    """Publish the running Hydra job to the ranks Lightning will start, and clean up after it.

    Around one job (the app's task function): sets ``PREFALIGN_PARENT_JOB`` to the job's task
    overrides and output folder (Lightning copies the environment into the children). Afterwards the
    variables the launcher set in this process are restored and the process group is destroyed, so
    the next job of a multirun starts its own ranks on a fresh port instead of believing it was
    launched externally (Lightning reads ``LOCAL_RANK`` for that). Outside Hydra it does nothing.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or is_child_rank():
        yield
        return
    hc = HydraConfig.get()
    job = {
        "overrides": list(hc.overrides.task),
        "output_dir": str(hc.runtime.output_dir),
        "job_name": str(hc.job.name),
        "pid": os.getpid(),  # a child rank names its parent when it stops answering
    }
    with _launcher_environment({PARENT_JOB_ENV: json.dumps(job)}):
        yield


@contextlib.contextmanager
def _launcher_environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in the environment; afterwards restore every variable Lightning's launcher
    sets and destroy the process group the fit created (the ranks of this fit are gone). A group
    that existed before (``prefalign-sso`` under torchrun / srun: :func:`prefalign.core.ranks.process_group`)
    is kept: the same ranks run the program's next stages."""
    import torch.distributed as dist

    existing = dist.is_available() and dist.is_initialized()
    saved = {key: os.environ.get(key) for key in (*LAUNCHER_ENV, *values)}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not existing and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def check_train_world(trainer_cfg: Any, world_size: int, where: str) -> None:
    """A :class:`~prefalign.core.errors.ConfigError` when a fit inside a program already running on
    ``world_size`` > 1 ranks (torchrun / srun) would not use exactly those ranks: its
    ``trainer.devices`` x ``trainer.num_nodes`` must equal ``world_size`` (``devices=auto`` / ``-1``
    is left to Lightning) and its strategy must not launch processes of its own (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``). ``where`` names the config keys in the message."""
    if world_size <= 1:
        return
    devices, num_nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    strategy = trainer_cfg.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", strategy))
    env = "WORLD_SIZE" if "WORLD_SIZE" in os.environ else "SLURM_NTASKS"
    if isinstance(name, str) and name.split(".")[-1] in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
        raise ConfigError(
            f"{where}: trainer.strategy={name} starts processes of its own, but this program already "
            f"runs on {env}={world_size} ranks (torchrun / srun); use trainer=ddp, fsdp or fsdp2"
        )
    if str(devices).strip() in ("auto", "-1"):
        return
    if isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif not isinstance(devices, (int, str)):  # a list of device indices
        count = len(devices)
    else:
        count = int(devices)
    if count * num_nodes != world_size:
        raise ConfigError(
            f"{where}: trainer.devices={devices} x trainer.num_nodes={num_nodes} = {count * num_nodes} "
            f"rank(s), but {env}={world_size}: the fit runs on the ranks torchrun / srun started; set "
            f"trainer.devices to the ranks per node and trainer.num_nodes to the nodes (e.g. "
            f"train_overrides=[...,trainer=ddp,trainer.devices={world_size // num_nodes}])"
        )


@contextlib.contextmanager
def train_in_child_ranks(train_cfg: Any, path: str | Path) -> Iterator[None]:
    """Around a ``train(train_cfg)`` call made inside another program: save ``train_cfg``
    (resolved) to ``path`` and name it in ``PREFALIGN_CHILD_TRAIN_CONFIG``, so that the ranks
    Lightning starts for this fit train exactly it (:func:`child_train_config`). Afterwards the
    launcher's variables are restored and the process group destroyed, so the calling program
    continues as one process (and its next fit starts its own ranks)."""
    from omegaconf import OmegaConf

    from prefalign.core.jsonl import atomic_write

    with atomic_write(path) as f:
        f.write(OmegaConf.to_yaml(train_cfg, resolve=True))
    with _launcher_environment({CHILD_TRAIN_ENV: str(Path(path).resolve())}):
        yield


def child_train_config(environ: dict[str, str] | None = None) -> str | None:
    """In a rank Lightning started for a :func:`train_in_child_ranks` fit, the saved config's
    path; ``None`` in any other process."""
    env = os.environ if environ is None else environ
    if launched_local_rank(env) == 0:
        return None
    return env.get(CHILD_TRAIN_ENV)


def log_rank() -> None:
    """Log, in a child rank's own log file, which job it runs and in which world."""
    if is_child_rank():
        job = json.loads(os.environ[PARENT_JOB_ENV])
        log.info(
            "rank %s of world size %s: the parent's job in %s with overrides %s",
            os.environ.get("LOCAL_RANK"),
            os.environ.get("WORLD_SIZE"),
            job["output_dir"],
            job["overrides"],
        )
