"""Master-weight precision: trainable parameters in fp32 under bf16 compute, and the guard that
refuses low-precision master weights before a run spends its budget.

Why: AdamW's first step moves every weight by about ``lr`` (``m / sqrt(v)`` is ±1 for any gradient
well above ``eps``). A bf16 weight ``w`` has 8 significant bits, so ``w + lr`` rounds back to ``w``
whenever ``lr`` is below half of bf16's spacing at ``w`` (between ``|w| * 2**-9`` and ``|w| * 2**-8``):
at ``|w| = 0.02`` that is ``lr < 6.1e-5``, i.e. at every paper learning rate (PoFT 2e-5, SSO 5e-7). fp32's spacing is
65,536 times finer. So the trained parameters and the optimizer state are fp32 ("master
weights"), and the matmuls run in bf16: FSDP / FSDP2 cast each unit's fp32 shards to bf16 for
compute (``param_dtype=bf16``) and reduce gradients in fp32; DDP and one device autocast over fp32
weights (``trainer.precision=bf16-mixed``).

The one way to train bf16 weights is an optimizer that does not lose the updates:
:class:`prefalign.training.optim.StochasticRoundingAdamW` (``optimizer=adamw_bf16_sr``), whose
class attribute ``keeps_low_precision_updates`` the guard reads.

:func:`lost_update_fraction` measures the loss on real weights; the guard and ``prefalign-plan``
both use it; :func:`sharded_mixed_precision` is the one mixed-precision rule of the sharded strategies
(:mod:`prefalign.training.strategies`, FSDP2's ``configure_model``, the planner).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from prefalign.core.errors import ConfigError
from prefalign.models.loading import DTYPES

LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# Fraction of the first step's updates that may be lost to rounding before a plan fails. fp32
# master weights lose none of them at any shipped learning rate (0.000%); bf16 weights lose 29%
# at PoFT's 2e-5 and 99% at SSO's 5e-7 (the measurements in issue 29 and the plan's table). 1% sits
# far from both and still fails a run in which, say, every norm weight (all of them exactly 1.0)
# or the largest weights of every matrix never move.
MAX_LOST_FRACTION = 0.01
# Elements sampled per parameter tensor when measuring (every element of smaller tensors): the
# fraction's standard error is at most 0.5 / sqrt(65536) = 0.2%.
SAMPLE_ELEMENTS = 65_536


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matmul units (AVX512-BF16 or AMX-BF16): there a bf16 matmul takes
    about a third of fp32's time; elsewhere bf16 autocast is emulated, about 30 times slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def half_spacing(value: float, dtype: torch.dtype) -> float:
    """Half the distance between ``value`` and the next larger number of ``dtype``: the smallest
    update that rounding to nearest does not drop (bf16 at 0.02: 6.1e-5; fp32: 9.3e-10)."""
    return 0.5 * torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(abs(value)))


def low_precision_optimizer(optimizer_target: str) -> bool:
    """Whether the optimizer class keeps updates below a low-precision weight's resolution
    (declares ``keeps_low_precision_updates = True``, as stochastic rounding does)."""
    try:
        cls = get_class(optimizer_target)
    except Exception:  # noqa: BLE001 - an unknown class is validate_train_config's error to name
        return False
    return bool(getattr(cls, "keeps_low_precision_updates", False))


def lost_update_fraction(
    weights: torch.Tensor, lr: float, dtype: torch.dtype, seed: int = 0, sample: int = SAMPLE_ELEMENTS
) -> float:
    """Fraction of ``weights``' elements that an update of size ``lr`` leaves unchanged once the
    result is rounded to ``dtype`` (round to nearest, as ``Tensor.to`` and the optimizers do).

    The update is AdamW's first step, ``lr`` with a random sign per element (rounding is not
    symmetric at powers of two). At most ``sample`` elements are drawn (seeded), so the measure
    costs the same on a 7B model's matrices as on a tiny one's.
    """
    if lr <= 0:
        return 1.0
    flat = weights.detach().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    if flat.numel() > sample:
        index = torch.randint(flat.numel(), (sample,), generator=generator, device="cpu")
        flat = flat[index.to(flat.device)]
    if flat.numel() == 0:
        return 0.0
    start = flat.to("cpu", dtype).double()
    sign = torch.randint(0, 2, start.shape, generator=generator).double() * 2 - 1
    moved = (start + lr * sign).to(dtype)
    return float((moved == start.to(dtype)).double().mean())


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, local tensor)`` of every parameter with ``requires_grad`` (LoRA adapters included;
    a DTensor's local shard under FSDP2)."""
    return [
        (name, p.to_local() if hasattr(p, "to_local") else p)
        for name, p in model.named_parameters()
        if p.requires_grad
    ]


def lost_updates_by_dtype(
    parameters: Iterable[tuple[torch.Tensor, torch.dtype, int]], lr: float
) -> dict[str, dict[str, float]]:
    """``{dtype name: {"parameters": n, "lost_fraction": f}}`` over ``(values, dtype, numel)`` per
    parameter: its values (all of them, or a sample), the dtype it trains in (its own, or the one a
    ``*-true`` precision casts it to) and its size, which weights its fraction
    (:func:`lost_update_fraction`, seeded by the parameter's position)."""
    totals: dict[str, list[float]] = {}
    for i, (tensor, target, numel) in enumerate(parameters):
        lost = lost_update_fraction(tensor, lr, target, seed=i)
        entry = totals.setdefault(DTYPE_NAMES.get(target, str(target)), [0.0, 0.0])
        entry[0] += numel
        entry[1] += numel * lost
    return {
        name: {"parameters": int(n), "lost_fraction": (lost / n if n else 0.0)}
        for name, (n, lost) in totals.items()
    }


def effective_trainable_dtype(precision: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the optimizer updates: ``*-true`` precisions cast the whole module (Lightning's
    ``convert_module``), ``*-mixed`` and ``32`` keep the loaded one."""
    if precision.startswith("bf16") and precision.endswith("true"):
        return torch.bfloat16
    if precision.startswith("16") and precision.endswith("true"):
        return torch.float16
    return dtype


def _fix_text(precision: str) -> str:
    mixed = precision if precision.endswith("mixed") else "bf16-mixed"
    return (
        f"load the trained weights in fp32 and compute in bf16: model.dtype=float32 trainer.precision={mixed} "
        "(FSDP keeps fp32 shards and casts them to bf16 per layer), or opt in to bf16 master weights with "
        f"an optimizer that keeps the updates: optimizer=adamw_bf16_sr (AdamW with stochastic rounding; "
        f"half the parameter, gradient and optimizer memory)"
    )


def check_master_weights_config(cfg: DictConfig) -> None:
    """Refuse, from the config alone (before any model or data is loaded), a run whose trainable
    parameters would be bf16 / fp16 under an optimizer that rounds updates away. LoRA on a
    low-precision base trains fp32 adapters (peft's default), so only ``*-true`` precisions
    make them low-precision.

    Raises:
        ConfigError: naming ``model.dtype``, ``trainer.precision``, ``optimizer.lr`` and the fix.
    """
    dtype_name = str(OmegaConf.select(cfg, "model.dtype", default="float32"))
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    loaded = DTYPES.get(dtype_name, torch.float32)
    if OmegaConf.select(cfg, "model.lora", default=None):
        loaded = torch.float32  # the adapters: peft keeps them in fp32 on a bf16 / fp16 base
    trained = effective_trainable_dtype(precision, loaded)
    if trained not in LOW_PRECISION:
        return
    target = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    if low_precision_optimizer(target):
        if trained is torch.float16:
            raise ConfigError(
                f"config keys `model.dtype`={dtype_name} / `trainer.precision`={precision}: "
                f"{target} rounds stochastically to bf16 only; fp16 master weights are not supported"
            )
        return
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    raise ConfigError(
        f"config keys `model.dtype`={dtype_name}, `trainer.precision`={precision}: the trainable parameters "
        f"and the optimizer state would be {DTYPE_NAMES[trained]}, and {target.rsplit('.', 1)[-1] or 'the optimizer'} "
        f"at `optimizer.lr`={lr} loses every update below half of {DTYPE_NAMES[trained]}'s spacing at the weight "
        f"({half_spacing(0.02, trained):.2g} at |w| = 0.02). Fix: {_fix_text(precision)}"
    )


def check_master_weights(model: torch.nn.Module, cfg: DictConfig) -> None:
    """The same refusal on the loaded model's trainable parameters (before data is loaded), with
    the measured fraction of the first step's updates that rounding would lose.

    Raises:
        ConfigError: some trainable parameters would be bf16 / fp16 under a plain optimizer.
    """
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    target = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    named = trainable_parameters(model)
    low = [(name, p) for name, p in named if effective_trainable_dtype(precision, p.dtype) in LOW_PRECISION]
    if not low or low_precision_optimizer(target):
        return
    lr = float(OmegaConf.select(cfg, "optimizer.lr"))
    dtype = effective_trainable_dtype(precision, low[0][1].dtype)
    lost = lost_updates_by_dtype([(p, dtype, p.numel()) for _, p in low], lr)[DTYPE_NAMES[dtype]]
    dtype_name = str(OmegaConf.select(cfg, "model.dtype", default="float32"))
    shown = ", ".join(name for name, _ in low[:3]) + (f" (+{len(low) - 3} more)" if len(low) > 3 else "")
    raise ConfigError(
        f"config keys `model.dtype`={dtype_name}, `trainer.precision`={precision}: {len(low)} trainable "
        f"parameter tensors ({lost['parameters']:,} weights: {shown}) would train in {DTYPE_NAMES[dtype]}, "
        f"and at `optimizer.lr`={lr} rounding loses {100 * lost['lost_fraction']:.1f}% of the first step's "
        f"updates (measured on these weights). Fix: {_fix_text(precision)}"
    )


def schedule_lrs(scheduler: Mapping[str, Any], lr: float, total_steps: int) -> dict[str, float]:
    """The learning rate at the schedule's peak (after warm-up) and at its last optimizer step,
    from the same transformers scheduler training builds (``scheduler.name``, ``warmup_ratio``)."""
    from transformers import get_scheduler

    total_steps = max(1, int(total_steps))
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=lr)
    warmup = math.ceil(float(scheduler.get("warmup_ratio", 0.0)) * total_steps)
    schedule = get_scheduler(
        scheduler.get("name", "cosine"),
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(scheduler.get("kwargs") or {}),
    )
    rates = [schedule.get_last_lr()[0]]
    for _ in range(total_steps - 1):
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    return {"peak": max(rates), "last": rates[-1]}


def sharded_mixed_precision(
    precision: str, reduce_dtype: str = "float32"
) -> tuple[torch.dtype, torch.dtype] | None:
    """``(param_dtype, reduce_dtype)`` of a sharded strategy under ``trainer.precision``:
    ``bf16-mixed`` / ``16-mixed`` compute in bf16 / fp16 over the loaded (fp32) shards and reduce
    in ``reduce_dtype``; ``None`` for ``32-true`` and the ``*-true`` precisions (the module itself is
    in that dtype: nothing to cast)."""
    if reduce_dtype not in DTYPES:
        raise ValueError(
            f"trainer.strategy.reduce_dtype must be one of {sorted(DTYPES)}, got {reduce_dtype!r}"
        )
    if precision == "bf16-mixed":
        return torch.bfloat16, DTYPES[reduce_dtype]
    if precision == "16-mixed":
        return torch.float16, DTYPES[reduce_dtype]
    return None
