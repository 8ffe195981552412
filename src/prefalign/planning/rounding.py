"""The plan's master-weight check: the fraction of AdamW's first-step updates that rounding to the
trainable parameters' dtype would lose, at the schedule's peak learning rate and at its last step.

The weights measured are the run's own initial weights where they can be read (the tiny model's
folder, a local model folder's safetensors: a slice of rows of every tensor, read lazily), and
otherwise a sample of the architecture's initialisation: a one-layer copy of the architecture at a
small width, initialised by transformers (the Llama / Mistral / Qwen2 families draw every matrix
from N(0, ``initializer_range``) whatever its shape, and norm weights are 1), each real
parameter measured on its counterpart. The update is the first step's size, ``lr`` per element
(:func:`prefalign.models.precision.lost_update_fraction`).

A plan fails (exit status 4) when more than
:data:`prefalign.models.precision.MAX_LOST_FRACTION` of the updates at the peak learning rate are
lost, unless the optimizer rounds stochastically (``optimizer=adamw_bf16_sr``: no update is lost in
expectation). The last step's figure is reported, not judged: a schedule that decays to 0 loses
every update at its end in any dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from prefalign.models.precision import (
    MAX_LOST_FRACTION,
    SAMPLE_ELEMENTS,
    effective_trainable_dtype,
    lost_updates_by_dtype,
    low_precision_optimizer,
    schedule_lrs,
)

_LAYER = re.compile(r"layers\.\d+\.")
# Steps of the schedule when the dataset's size is unknown (plan.dataset_samples unset).
DEFAULT_TOTAL_STEPS = 1000


def _local_folder(cfg: DictConfig) -> Path | None:
    """The model's local folder with safetensors files (the tiny model's, made on first use), or None."""
    from prefalign.models.loading import resolve_model_path

    if cfg.model.get("gguf_file"):
        return None
    try:
        path = Path(resolve_model_path(OmegaConf.to_container(cfg.model, resolve=True)))
    except (ValueError, FileNotFoundError):
        return None
    return path if path.is_dir() and any(path.glob("*.safetensors")) else None


def _read_weights(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Rows of each named tensor, enough for :data:`SAMPLE_ELEMENTS` elements, from the folder's
    safetensors files (a name missing there, e.g. a tied head, is left out)."""
    from safetensors import safe_open

    wanted = set(names)
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key not in wanted:
                    continue
                piece = handle.get_slice(key)
                shape = piece.get_shape()
                if len(shape) <= 1:
                    out[key] = piece[:]
                    continue
                columns = math.prod(shape[1:])
                out[key] = piece[: max(1, math.ceil(SAMPLE_ELEMENTS / columns))]
    return out


def _init_copy(cfg: DictConfig, numbers: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Parameters of a one-layer, narrow copy of the architecture, initialised by transformers
    (with the config's LoRA adapters, initialised by peft), keyed by name."""
    from transformers import AutoModelForCausalLM

    from prefalign.models.loading import prepare_causal_lm
    from prefalign.planning.models import build_config

    small = dict(numbers)
    heads, kv = (
        int(numbers["num_attention_heads"]),
        int(numbers.get("num_key_value_heads") or numbers["num_attention_heads"]),
    )
    small.update(
        hidden_size=128,
        intermediate_size=256,
        vocab_size=min(int(numbers["vocab_size"]), 1024),
        num_attention_heads=4,
        num_key_value_heads=4 if kv == heads else 2,
    )
    if "head_dim" in small:
        small["head_dim"] = 32
    config = build_config(small, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = prepare_causal_lm(model, False, cfg.model.get("lora"))
    return {name: p.detach() for name, p in model.named_parameters()}


def master_weight_rounding(
    cfg: DictConfig,
    numbers: Mapping[str, Any],
    trainable: list[tuple[str, torch.dtype, int]],
    total_steps: int | None,
) -> dict[str, Any]:
    """The plan's ``master_weights`` entry (see the module docstring).

    Args:
        trainable: ``(name, dtype, numel)`` of every trainable parameter of the planned model.
        total_steps: optimizer steps of the run (the schedule's length); None: :data:`DEFAULT_TOTAL_STEPS`.
    """
    precision = str(cfg.trainer.get("precision", "32-true"))
    target = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    lr = float(cfg.optimizer.lr)
    steps = int(total_steps or DEFAULT_TOTAL_STEPS)
    rates = schedule_lrs(OmegaConf.to_container(cfg.scheduler, resolve=True), lr, steps)
    folder = _local_folder(cfg)
    values = _read_weights(folder, [n for n, _, _ in trainable]) if folder else {}
    init = None
    samples = []
    for name, dtype, numel in trainable:
        tensor = values.get(name)
        if tensor is None:
            if init is None:
                init = _init_copy(cfg, numbers)
            tensor = init.get(_LAYER.sub("layers.0.", name))
            if tensor is None:
                raise KeyError(f"the planner found no initial values for parameter {name}")
        samples.append((tensor, effective_trainable_dtype(precision, dtype), numel))
    at_peak = lost_updates_by_dtype(samples, rates["peak"])
    at_last = lost_updates_by_dtype(samples, rates["last"])
    by_dtype = {
        name: {
            "parameters": entry["parameters"],
            "lost_at_peak": round(entry["lost_fraction"], 6),
            "lost_at_last": round(at_last[name]["lost_fraction"], 6),
        }
        for name, entry in at_peak.items()
    }
    stochastic = low_precision_optimizer(target)
    worst = max((e["lost_at_peak"] for e in by_dtype.values()), default=0.0)
    if folder and values:
        source = f"the initial weights in {folder}" + ("" if init is None else " (and the init for the rest)")
    else:
        source = "a sample of the architecture's initialisation (one narrow layer, same initializer_range)"
    return {
        "optimizer": target,
        "stochastic_rounding": stochastic,
        "lr_peak": rates["peak"],
        "lr_last": rates["last"],
        "schedule_steps": steps,
        "by_dtype": by_dtype,
        "source": source,
        "threshold": MAX_LOST_FRACTION,
        "ok": stochastic or worst <= MAX_LOST_FRACTION,
    }
