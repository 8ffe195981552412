"""Models to evaluate: a Hugging Face model (hub name or folder), or the per-epoch checkpoints of a
``prefalign-train`` run.

A run directory holds the run's Hydra config (``.hydra/config.yaml``) and a Lightning checkpoint
per epoch (``checkpoints/epoch_XXX.ckpt``, ``XXX`` the 0-based epoch index; a file, or a folder for
sharded FSDP / FSDP2 checkpoints). The model is built once from the run's ``model`` config and
each checkpoint's weights -- the LightningModule's ``model.*`` entries, with the prefix stripped --
are loaded into it in turn. ``last.ckpt`` repeats the final epoch and is not listed separately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from prefalign.evaluation.harness import EvalConfigError

EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)\.ckpt$")
MODEL_PREFIX = "model."
# Wrapper names that activation checkpointing and torch.compile insert into parameter names.
WRAPPER_FRAGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class EpochCheckpoint:
    """One epoch's checkpoint of a run.

    Attributes:
        epoch: epochs trained when it was written (1 for ``epoch_000.ckpt``).
        path: the checkpoint file (or sharded-checkpoint folder).
    """

    epoch: int
    path: Path


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The Hydra config a ``prefalign-train`` run was launched with (``<run_dir>/.hydra/config.yaml``).

    Raises:
        EvalConfigError: the folder does not exist or is not a run directory.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise EvalConfigError(f"config key `run_dir`: {run} is not a folder")
    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        raise EvalConfigError(
            f"config key `run_dir`: {run} is not a prefalign-train run directory (no .hydra/config.yaml)"
        )
    return OmegaConf.load(path)


def epoch_checkpoints(run_dir: str | Path, epochs: list[int] | None = None) -> list[EpochCheckpoint]:
    """The run's per-epoch checkpoints, by epoch; ``epochs`` (1-based) keeps only those.

    Raises:
        EvalConfigError: no ``checkpoints/epoch_XXX.ckpt`` in the run, or a requested epoch is missing.
    """
    folder = Path(run_dir).expanduser() / "checkpoints"
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = EPOCH_CHECKPOINT.match(path.name)
            if match:
                found.append(EpochCheckpoint(int(match.group(1)) + 1, path))
    found.sort(key=lambda c: c.epoch)
    if not found:
        listing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no checkpoints/ folder"
        raise EvalConfigError(
            f"config key `run_dir`: no per-epoch checkpoints (epoch_XXX.ckpt) in {folder} ({listing})"
        )
    if epochs:
        available = {c.epoch for c in found}
        missing = sorted(set(epochs) - available)
        if missing:
            raise EvalConfigError(
                f"config key `epochs`: no checkpoint for epoch(s) {missing} in {folder}; available: {sorted(available)}"
            )
        found = [c for c in found if c.epoch in set(epochs)]
    return found


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The LightningModule state dict stored in a checkpoint file or sharded-checkpoint folder."""
    if path.is_dir():  # torch.distributed.checkpoint shards: FSDP stores "model", FSDP2 "state_dict"
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        loaded: dict[str, Any] = {}
        _load_state_dict(
            loaded,
            storage_reader=FileSystemReader(path),
            planner=_EmptyStateDictLoadPlanner(keys={"state_dict", "model"}),  # weights only
            no_dist=True,
        )
        state = loaded.get("state_dict", loaded.get("model"))
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise EvalConfigError(f"checkpoint {path} holds no Lightning state dict")
    return dict(state)


def model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The causal LM's weights in a Lightning checkpoint: its ``model.*`` entries, prefix stripped.

    Other entries of the LightningModule (a live reference model, objective buffers) are left out.

    Raises:
        EvalConfigError: the checkpoint holds no state dict or no ``model.*`` weights.
    """
    path = Path(path)
    weights = {}
    for key, value in _read_weights(path).items():
        if key.startswith(MODEL_PREFIX):
            name = key[len(MODEL_PREFIX) :]
            for fragment in WRAPPER_FRAGMENTS:
                name = name.replace(fragment, "")
            weights[name] = value
    if not weights:
        raise EvalConfigError(
            f"checkpoint {path} has no `model.*` weights (not a prefalign-train checkpoint?)"
        )
    return weights


def load_checkpoint_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a run checkpoint's model weights into ``model`` in place (every weight must match).

    Raises:
        EvalConfigError: the checkpoint's weights do not fit the model built from the run's config.
    """
    weights = model_weights(path)
    reference = next(model.parameters())
    weights = {k: v.to(device=reference.device, dtype=reference.dtype) for k, v in weights.items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise EvalConfigError(
            f"checkpoint {path} does not fit the model built from the run's config: {error}"
        ) from error


def evaluation_model_config(model_cfg: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """A ``model`` config for evaluation: weights in ``dtype``, no gradient checkpointing, a causal LM head.

    Raises:
        EvalConfigError: the model has a reward head (lm-eval and answer generation need a causal LM).
    """
    cfg = dict(model_cfg)
    if cfg.get("head", "causal_lm") != "causal_lm":
        raise EvalConfigError(
            f"model.head={cfg['head']}: evaluation needs a causal language model, not a reward model"
        )
    cfg["dtype"] = dtype
    cfg["gradient_checkpointing"] = False
    return cfg


def run_model_config(run_cfg: DictConfig, dtype: str) -> dict[str, Any]:
    """The evaluation ``model`` config of a run, interpolations resolved (cache folders from this environment)."""
    if OmegaConf.select(run_cfg, "model") is None:
        raise EvalConfigError("config key `run_dir`: the run's .hydra/config.yaml has no `model` section")
    return evaluation_model_config(OmegaConf.to_container(run_cfg.model, resolve=True), dtype)


@dataclass(frozen=True)
class ModelSource:
    """What an evaluation app evaluates: one model, or each epoch checkpoint of a training run.

    Attributes:
        model_config: the ``model`` config to build the model from (the run's own for a run).
        checkpoints: the run's epoch checkpoints to load in turn; empty for a plain model.
        name: a short name: the model folder's (or hub name's last part), or the run folder's.
        description: what was evaluated, for result files.
    """

    model_config: dict[str, Any]
    checkpoints: list[EpochCheckpoint]
    name: str
    description: dict[str, Any]


def model_source(cfg: DictConfig) -> ModelSource:
    """The model or run named by an evaluation config (keys ``run_dir``, ``epochs``, ``model``, ``dtype``).

    Everything is checked (run folder, its config, its checkpoints) before any weights are loaded.
    """
    if cfg.get("run_dir"):
        run = Path(str(cfg.run_dir)).expanduser().resolve()
        run_cfg = load_run_config(run)
        checkpoints = epoch_checkpoints(run, list(cfg.epochs) if cfg.get("epochs") else None)
        description = {"run_dir": str(run), "checkpoints": {str(c.epoch): str(c.path) for c in checkpoints}}
        return ModelSource(run_model_config(run_cfg, cfg.dtype), checkpoints, run.name, description)
    model_cfg = evaluation_model_config(OmegaConf.to_container(cfg.model, resolve=True), cfg.dtype)
    path = model_cfg.get("name_or_path")
    description = {"model": path if path else {"tiny": model_cfg.get("tiny")}}
    return ModelSource(model_cfg, [], Path(str(path)).name if path else "tiny", description)
