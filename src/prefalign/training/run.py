"""Running a training task from a composed ``train`` config: loggers, strategy, the objective's
wiring to data and module (the objective names its LightningModule), the frozen-model columns
(:func:`prefalign.scoring.frozen.attach_frozen_columns`, before the fit), the fit, and a wrapper
that always closes the W&B run.

The ``prefalign-train`` app (:mod:`prefalign.apps.train`) and the SSO pipeline's iterations both
train through :func:`train` inside :func:`run_task`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.config import hydra_run_info, validate_train_config
from prefalign.core.errors import ConfigError
from prefalign.data.datamodule import ChatDataModule
from prefalign.data.preference import PreferenceDataModule
from prefalign.models.loading import frozen_model_config, load_model_and_tokenizer
from prefalign.models.precision import check_master_weights
from prefalign.objectives.base import Objective
from prefalign.scoring.frozen import attach_frozen_columns
from prefalign.training.callbacks import wandb_run_id_from_checkpoint
from prefalign.training.resume import checkpoint_global_step, latest_checkpoint
from prefalign.training.signals import Interrupted, StopOnSignal, is_lost_peer, ranks_lost_error
from prefalign.training.verification import check_checkpoint_fits, verify_checkpoint

log = logging.getLogger(__name__)


def wandb_api_key_source() -> tuple[str, str | None]:
    """``(host, where)``: the W&B server wandb would log to and where wandb finds an API key for
    it (``None``: no key), asked of wandb itself, without network.

    The host and an explicit key come from wandb's own settings (``WANDB_BASE_URL``,
    ``WANDB_API_KEY``, the settings file ``wandb login --host`` writes); otherwise the key is
    wandb's netrc entry for that host (``NETRC`` or ``~/.netrc``), so self-hosted servers count.

    Raises:
        ValueError (wandb's ``AuthenticationError`` is one): a key is present but malformed.
    """
    import wandb

    try:
        from wandb.sdk.lib import wbauth  # wandb >= 0.22
    except ImportError:  # older wandb: its apikey module does the same lookup
        from wandb.sdk.lib import apikey

        settings = wandb.Settings()
        key = apikey.api_key(settings=settings)
        return str(settings.base_url), "wandb settings or netrc" if key else None
    settings = wandb.Settings()
    settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    host = str(settings.base_url)
    if settings.api_key:
        return host, "WANDB_API_KEY or wandb settings"
    if wbauth.read_netrc_auth(host=host):
        return host, f"netrc ({os.environ.get('NETRC') or '~/.netrc'})"
    return host, None


def choose_wandb_mode() -> str:
    """Use W&B offline unless a mode is set or wandb finds an API key for its server
    (:func:`wandb_api_key_source`; W&B online fails fast without one). Logs the decision in one line."""
    if os.environ.get("WANDB_MODE"):
        log.info("W&B mode %s (WANDB_MODE)", os.environ["WANDB_MODE"])
        return os.environ["WANDB_MODE"]
    try:
        host, source = wandb_api_key_source()
    except Exception as err:  # noqa: BLE001 - a malformed key: offline, with wandb's reason
        host, source, problem = "W&B", None, f"({err})"
    else:
        problem = ""
    if source is None:
        os.environ["WANDB_MODE"] = "offline"
        log.info(
            "W&B offline: no API key for %s %s(sync later with `wandb sync`)",
            host,
            f"{problem} " if problem else "",
        )
        return "offline"
    log.info("W&B online at %s (API key from %s)", host, source)
    return "online"


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Instantiate the loggers; a W&B logger resumes the run stored in ``ckpt_path``, and the CSV
    logger continues the run's ``metrics.csv`` (:mod:`prefalign.training.loggers`)."""
    from prefalign.training.loggers import CSVLogger

    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:
            continue
        overrides: dict[str, Any] = {}
        if logger_cfg._target_.endswith("WandbLogger"):
            choose_wandb_mode()
            run_id = wandb_run_id_from_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
            if run_id:
                overrides = {"id": run_id, "resume": "allow"}
                log.info("resuming W&B run %s", run_id)
        loggers.append(instantiate(logger_cfg, **overrides))
        log.debug("logger %s ready", name)
    if cfg.get("ckpt_path") and any(isinstance(logger, CSVLogger) for logger in loggers):
        step = checkpoint_global_step(Path(cfg.ckpt_path))
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                logger.resume_at(step)
    return loggers


def build_strategy(trainer_cfg: DictConfig, model: Any) -> Any:
    """The trainer's strategy; a ``_partial_`` strategy config is completed with the model."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        strategy = instantiate(strategy)
        if isinstance(strategy, functools.partial):
            strategy = strategy(model=model)
    return strategy


def objective_wiring(cfg: DictConfig, objective: Objective) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """The LightningModule class the objective names, and what the data module and the module need.

    The objective declares everything (:class:`prefalign.objectives.base.Objective`): its module
    (one per batch shape), its sequences, its batch columns and whether it needs a reference. A
    reference is precomputed by the scoring engine (``reference.mode: precomputed``, its columns
    then required from the data) or, for modules that take one, a live frozen model
    (``reference.mode: live``). A ``module._target_`` set in the config must name the objective's
    module. Returns ``(module class, data kwargs, module kwargs)``.
    """
    module_cls = get_class(objective.module)
    name = type(objective).__name__
    target = OmegaConf.select(cfg, "module._target_", default=None)
    if target is not None and get_class(target) is not module_cls:
        raise ConfigError(
            f"config key `module._target_`: the LightningModule is chosen by the objective now "
            f"({name}.module = {objective.module!r}); remove the override (or set it to that class)"
        )
    data_cls = get_class(cfg.data._target_)
    expected = module_cls.data_module
    if not issubclass(data_cls, expected) or (
        expected is ChatDataModule and issubclass(data_cls, PreferenceDataModule)
    ):
        kind = (
            "preference data (e.g. data=tiny_preference)" if expected is PreferenceDataModule else "chat data"
        )
        raise ConfigError(f"config keys `objective` / `data`: {name} trains on {kind}")
    mode = OmegaConf.select(cfg, "reference.mode", default="precomputed")
    live = objective.needs_reference and mode == "live"
    data_kwargs: dict[str, Any] = {
        "required_columns": objective.required_columns(precomputed_reference=not live)
    }
    if issubclass(data_cls, PreferenceDataModule):
        data_kwargs["sequences"] = list(objective.sequences)
    module_kwargs: dict[str, Any] = {}
    if objective.needs_reference:
        if cfg.get("reference") is None:
            raise ConfigError(f"config key `reference`: {name} needs a reference model")
        if live:
            if "reference_model" not in inspect.signature(module_cls).parameters:
                raise ConfigError(
                    f"config key `reference.mode`: {module_cls.__name__} takes no live reference model; "
                    "use reference.mode=precomputed"
                )
            reference = frozen_model_config(OmegaConf.to_container(cfg.reference.model, resolve=True))
            module_kwargs["reference_model"], _ = load_model_and_tokenizer(reference)
    return module_cls, data_kwargs, module_kwargs


def check_data_keys(cfg: DictConfig) -> None:
    """A :class:`ConfigError` naming every ``data`` key the chosen data module does not take
    (e.g. ``noise`` or ``filter_top_fraction`` with preference data)."""
    data_cls = get_class(cfg.data._target_)
    accepted = set(inspect.signature(data_cls).parameters) - {"tokenizer"}
    unknown = sorted(k for k in cfg.data if not str(k).startswith("_") and k not in accepted)
    if unknown:
        keys = ", ".join(f"`data.{k}`" for k in unknown)
        raise ConfigError(
            f"config key(s) {keys}: not a setting of {data_cls.__name__} (it takes {sorted(accepted)})"
        )


def resolve_ckpt_path(cfg: DictConfig) -> None:
    """``ckpt_path=auto``: replaced by the newest intact checkpoint of this run's own folder
    (:func:`prefalign.training.resume.latest_checkpoint`), or ``None`` when it has none yet. A
    checkpoint named explicitly is verified (:func:`prefalign.training.verification.verify_checkpoint`:
    a damaged one is an error naming the file and the entry)."""
    if cfg.get("ckpt_path") is None:
        return
    if cfg.ckpt_path != "auto":
        if Path(cfg.ckpt_path).exists():  # a missing one: validate_train_config names the key
            verify_checkpoint(cfg.ckpt_path)
        return
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    checkpoint_dir = Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"
    found = latest_checkpoint(checkpoint_dir)  # verified; a damaged one is skipped, saying so
    if found is None:
        log.info("ckpt_path=auto: no checkpoint in %s yet, starting from scratch", checkpoint_dir)
    with open_dict(cfg):
        cfg.ckpt_path = str(found) if found else None


def build_module_and_data(cfg: DictConfig, objective: Any) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The LightningModule and data module of a training config, for ``objective`` (an instance of
    ``cfg.objective``): model and tokenizer loaded, the objective's module and data wiring
    (:func:`objective_wiring`), and the frozen-model columns it needs attached from the score cache
    (:func:`prefalign.scoring.frozen.attach_frozen_columns`)."""
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    check_master_weights(model, cfg)  # low-precision master weights: refused before any data loads
    module_cls, data_kwargs, module_kwargs = objective_wiring(cfg, objective)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, **data_kwargs)
    attach_frozen_columns(
        datamodule,
        aligned=OmegaConf.to_container(cfg.aligned, resolve=True) if cfg.get("aligned") else None,
        reference=OmegaConf.to_container(cfg.reference, resolve=True) if cfg.get("reference") else None,
    )
    return build_module(cfg, module_cls, model, objective, **module_kwargs), datamodule


def build_module(
    cfg: DictConfig, module_cls: type, model: Any, objective: Objective, **module_kwargs: Any
) -> L.LightningModule:
    """The objective's LightningModule around ``model``, with the config's optimizer, scheduler and
    ``module`` settings (the one way training and ``prefalign-plan`` build it)."""
    module_cfg = {
        k: v for k, v in OmegaConf.to_container(cfg.module, resolve=True).items() if k != "_target_"
    }
    return module_cls(
        model=model,
        objective=objective,
        optimizer=instantiate(cfg.optimizer),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        **module_cfg,
        **module_kwargs,
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from the config, attach frozen-model columns, fit, and return the final
    callback metrics.

    Raises:
        Interrupted: the fit was stopped by SIGTERM / SIGINT (a ``SystemExit`` with status 143 /
            130; :mod:`prefalign.training.signals`), after writing ``step.ckpt``.
    """
    resolve_ckpt_path(cfg)
    validate_train_config(cfg)
    check_data_keys(cfg)
    L.seed_everything(cfg.seed, workers=True)
    objective = instantiate(cfg.objective)  # its own argument checks run before the model loads
    module, datamodule = build_module_and_data(cfg, objective)
    if cfg.get("ckpt_path"):
        check_checkpoint_fits(cfg.ckpt_path, module)  # another model shape: named, not torch's error
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    trainer = instantiate(
        cfg.trainer, strategy=build_strategy(cfg.trainer, module.model), logger=loggers, callbacks=callbacks
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    config["_hydra"] = hydra_run_info()  # chosen groups, command-line overrides, sweep (not in cfg)
    for logger in loggers:
        logger.log_hyperparams(config)
    stopper = next((c for c in callbacks if isinstance(c, StopOnSignal)), None)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        after = stopper.agree_after_fit(trainer) if stopper else None  # a signal during the export
    except SIGTERMException as stop:  # a SystemExit without a code: exit status 0 if left alone
        error = stopper.interrupted(trainer) if stopper else Interrupted(signal.SIGTERM, "no checkpoint")
        log.error("%s", error)
        raise error from stop
    except Exception as failure:
        if trainer.world_size > 1 and is_lost_peer(failure):  # name the rank, say how to resume
            error = ranks_lost_error(trainer, failure)
            log.error("%s", error)
            raise error from failure
        raise
    finally:
        if stopper is not None:
            stopper.close()
    if after:
        error = Interrupted(
            after,
            f"after the fit had finished (global step {trainer.global_step}): its checkpoints and export "
            "are written; a rerun with ckpt_path=auto has nothing left to train",
        )
        log.error("%s", error)
        raise error
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def run_task(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """Run ``task`` and always close the W&B run, so one failed job does not poison a multirun.

    A task that never imported wandb (e.g. ``logger=csv``) has no run to close: wandb is not
    imported just to find that out (about a second of start-up, for nothing)."""
    failed = True
    try:
        metrics = task(cfg)
        failed = False
        return metrics
    finally:
        try:
            wandb = sys.modules.get("wandb")
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.finish(exit_code=1 if failed else 0)
        except Exception:  # noqa: BLE001 - closing W&B must never mask the task's own error
            log.exception("could not finish the W&B run")
