"""Distributed strategies that depend on the model (which decoder layers to wrap)."""

from __future__ import annotations

from typing import Any

from torch import nn


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The model's transformer-block classes, from Hugging Face's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    base = getattr(model, "get_base_model", None)  # peft wrappers
    if not names and base is not None:
        names = set(getattr(base(), "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"cannot find the decoder-layer classes of {type(model).__name__} (no _no_split_modules)"
        )
    return classes


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in order."""
    classes = tuple(decoder_layer_classes(model))
    return [m for m in model.modules() if isinstance(m, classes)]


def fsdp_strategy(model: nn.Module, activation_checkpointing: bool = True, **kwargs: Any):
    """Lightning's ``FSDPStrategy`` wrapping (and optionally checkpointing) each decoder layer.

    Args:
        model: the model to be wrapped; its decoder-layer classes drive the auto-wrap policy.
        activation_checkpointing: recompute each decoder layer's activations in the backward pass.
        **kwargs: passed to ``FSDPStrategy`` (``sharding_strategy``, ``state_dict_type``, ``cpu_offload``...).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    layers = decoder_layer_classes(model)
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        **kwargs,
    )
