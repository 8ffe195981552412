"""The architectures the planner builds on the meta device: the paper models' published
``config.json`` numbers (``architectures.yaml``) or the project's tiny model spec."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from prefalign.core.errors import ConfigError

ARCHITECTURES = Path(__file__).with_name("architectures.yaml")
GPUS = Path(__file__).with_name("gpus.yaml")


@functools.cache
def architectures() -> dict[str, dict[str, Any]]:
    """Every shipped architecture: ``{key: {"names": [...], "config": {...}}}``."""
    return yaml.safe_load(ARCHITECTURES.read_text(encoding="utf-8"))


@functools.cache
def gpus() -> dict[str, dict[str, Any]]:
    """Every GPU a plan can be checked against (``gpus.yaml``)."""
    return yaml.safe_load(GPUS.read_text(encoding="utf-8"))


def gpu(name: str) -> dict[str, Any]:
    """The ``gpus.yaml`` entry ``name``; a :class:`ConfigError` naming the choices otherwise."""
    table = gpus()
    if name not in table:
        raise ConfigError(f"config key `plan.gpu`: unknown GPU {name!r}; choose one of {sorted(table)}")
    return table[name]


def architecture_config(model_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(key, config.json numbers)`` for a ``model`` config: the tiny spec's Llama, or the shipped
    architecture whose ``names`` holds ``model.name_or_path``.

    Raises:
        ConfigError: the model is neither, naming the known names and ``plan.architecture``.
    """
    tiny = model_cfg.get("tiny")
    if tiny:
        from prefalign.models.loading import TinySpec
        from prefalign.models.tokenizer import build_tokenizer

        spec = TinySpec(**dict(tiny))
        tokenizer = build_tokenizer(
            spec.template, bpe_merges=spec.bpe_merges, model_max_length=spec.max_position_embeddings
        )
        return "tiny", {
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        }
    name = model_cfg.get("name_or_path")
    local = Path(str(name)).expanduser() / "config.json"
    if name and local.is_file():  # a local model folder: its own config.json
        import json

        return str(name), json.loads(local.read_text(encoding="utf-8"))
    for key, entry in architectures().items():
        if name == key or name in entry["names"]:
            return key, dict(entry["config"])
    known = sorted(n for entry in architectures().values() for n in entry["names"])
    raise ConfigError(
        f"config key `model.name_or_path`: no shipped architecture for {name!r}; planning builds the "
        f"model from its config.json numbers, known for {known} (or set plan.architecture to one of "
        f"{sorted(architectures())})"
    )


def build_config(numbers: Mapping[str, Any], num_layers: int | None = None):
    """A transformers config from ``config.json`` numbers, optionally with fewer decoder layers."""
    from transformers import AutoConfig

    values = dict(numbers)
    model_type = values.pop("model_type")
    if num_layers is not None:
        if num_layers < 1:
            raise ConfigError(f"config key `plan.num_layers`: must be >= 1, got {num_layers}")
        values["num_hidden_layers"] = num_layers
    return AutoConfig.for_model(model_type, **values)


def parameter_count(numbers: Mapping[str, Any]) -> dict[str, int]:
    """Parameters of a decoder-only architecture from its numbers: ``total``, ``embedding`` (input
    and, untied, output matrices) and ``non_embedding``, computed on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(numbers))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    if not numbers.get("tie_word_embeddings", False):
        embedding += model.get_output_embeddings().weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
