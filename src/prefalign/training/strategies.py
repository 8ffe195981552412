"""Distributed strategies that depend on the model (which decoder layers to wrap)."""

from __future__ import annotations

from typing import Any

from torch import nn

from prefalign.models.layers import decoder_layer_classes, decoder_layers

__all__ = ["decoder_layer_classes", "decoder_layers", "fsdp_strategy"]


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
