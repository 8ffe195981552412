"""Distributed strategies that depend on the model (which decoder layers to wrap).

Mixed precision under FSDP (Lightning's FSDPStrategy) and FSDP2 (``fully_shard`` in
:meth:`prefalign.modules.base.AlignmentModule.configure_model`): the module is sharded in the
dtype it was loaded in (fp32 for every paper config: the master weights and AdamW state), each
unit's shards are cast to bf16 when gathered for compute (``param_dtype``), and gradients are
reduced in fp32 (``reduce_dtype``): summing 8 ranks' bf16 gradients in bf16 would round away the
small ones, which is what torchtitan's and DeepSpeed's defaults avoid. Lightning's own FSDP
precision plugin reduces in bf16, so the strategy is given this policy explicitly (the one rule,
:func:`prefalign.models.precision.sharded_mixed_precision`, shared with FSDP2 and the planner).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prefalign.models.layers import decoder_layer_classes, decoder_layers
from prefalign.models.precision import sharded_mixed_precision

__all__ = ["decoder_layer_classes", "decoder_layers", "fsdp_strategy", "sharded_mixed_precision"]


def fsdp_strategy(
    model: nn.Module,
    activation_checkpointing: bool = True,
    precision: str = "32-true",
    reduce_dtype: str = "float32",
    **kwargs: Any,
):
    """Lightning's ``FSDPStrategy`` wrapping (and optionally checkpointing) each decoder layer.

    Args:
        model: the model to be wrapped; its decoder-layer classes drive the auto-wrap policy.
        activation_checkpointing: recompute each decoder layer's activations in the backward pass.
        precision: ``trainer.precision``; under ``bf16-mixed`` the flat parameters stay in the
            loaded dtype and are cast to bf16 for compute, gradients reduced in ``reduce_dtype``
            (:func:`sharded_mixed_precision`; buffers in bf16, as Lightning's plugin keeps them).
        reduce_dtype: dtype of the gradient reduce-scatter (``float32``: no gradient lost in the sum).
        **kwargs: passed to ``FSDPStrategy`` (``sharding_strategy``, ``state_dict_type``, ``cpu_offload``...).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    layers = decoder_layer_classes(model)
    policy = sharded_mixed_precision(precision, reduce_dtype)
    if policy is not None and "mixed_precision" not in kwargs:
        from torch.distributed.fsdp import MixedPrecision

        param_dtype, reduce = policy
        kwargs["mixed_precision"] = MixedPrecision(
            param_dtype=param_dtype, reduce_dtype=reduce, buffer_dtype=param_dtype
        )
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        **kwargs,
    )
