"""A model's transformer blocks: what FSDP / FSDP2 wrap (:mod:`prefalign.training.strategies`,
:meth:`prefalign.modules.base.AlignmentModule.configure_model`)."""

from __future__ import annotations

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
