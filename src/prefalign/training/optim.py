"""AdamW for bf16 master weights that keeps updates below bf16's resolution: stochastic rounding.

Round-to-nearest drops any update smaller than half a bf16 step of the weight (see
:mod:`prefalign.models.precision`). Stochastic rounding rounds the fp32 result up or down with
probability proportional to its distance from each neighbour, so the rounded weight equals the
fp32 one in expectation and small updates accumulate over steps instead of vanishing (Gupta et al.
2015; Zamirai et al. 2020, "Revisiting BFloat16 Training"). The same is done to the two moments.

Memory per trained parameter: bf16 weight, gradient and two moments, 8 bytes, against 16 for fp32
master weights with fp32 gradients and AdamW state: half, which is what lets a model that does not
fit under fp32 master weights train at all. The price is noise: each step adds a rounding error of
up to one bf16 step per weight, unbiased.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch

_LOW_BITS = 1 << 16
_HIGH_MASK = -_LOW_BITS  # 0xFFFF0000 as int32: keeps the bits that bf16 holds


def _signed(value: int) -> int:
    """A 64-bit constant as torch's int64 holds it (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def random_bits16(shape: torch.Size, key: int, device: torch.device) -> torch.Tensor:
    """16 uniformly random bits per element (int32 in [0, 2**16)), a pure function of ``key`` and the
    element's position: SplitMix64's output function (Steele et al. 2014) over a counter. No
    generator state: the same key gives the same bits on any device (and on the planner's fake
    GPUs), so a resumed run draws exactly the unbroken run's bits."""
    counter = torch.arange(1, math.prod(shape) + 1, dtype=torch.int64, device=device) * _GOLDEN + key
    z = (counter ^ _shift_right(counter, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 48).to(torch.int32).view(shape)


def stochastic_round_bf16(values: torch.Tensor, key: int) -> torch.Tensor:
    """``values`` (fp32) rounded to bf16 stochastically: a uniform random integer below 2**16
    (:func:`random_bits16` of ``key``) is added to the fp32 bit pattern and the 16 low bits are
    dropped, which rounds the magnitude up with probability (distance to the lower neighbour) /
    (bf16 spacing). Infinities stay infinite and NaNs NaN."""
    if values.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 takes fp32 values, got {values.dtype}")
    bits = values.contiguous().view(torch.int32)
    noise = random_bits16(values.shape, key, values.device)
    finite = torch.isfinite(values)
    rounded = torch.where(finite, (bits + noise) & _HIGH_MASK, bits & _HIGH_MASK).view(torch.float32)
    # a NaN whose payload sat in the low bits would become an infinity: keep it NaN
    return torch.where(torch.isnan(values), values, rounded).to(torch.bfloat16)


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, as ``torch.optim.AdamW``) whose step
    is computed in fp32 and written back to bf16 parameters and moments by stochastic rounding.
    fp32 parameters are updated as plain AdamW does (no rounding is needed), so a model with a mix
    of dtypes trains correctly.

    The random bits of each parameter's step are a function of ``seed``, the step number, the
    parameter's position in the optimizer and the process's rank (:func:`random_bits16`): a resumed
    run draws exactly the bits the uninterrupted one would have (its checkpoint holds the step), and
    ranks holding different shards draw different bits.

    Args:
        params: parameters or parameter groups.
        lr / betas / eps / weight_decay: as ``torch.optim.AdamW``.
        seed: the random stream's seed.
    """

    keeps_low_precision_updates = True
    """Read by :func:`prefalign.models.precision.check_master_weights`: bf16 weights may train."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"StochasticRoundingAdamW: need lr > 0, eps > 0, weight_decay >= 0 and betas in [0, 1), "
                f"got lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seed = int(seed)

    def _key(self, step: int, index: int, tensor: int) -> int:
        """The random stream's key of one tensor (weight or moment) of one parameter at one step."""
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        digest = hashlib.sha256(f"{self.seed}:{step}:{index}:{tensor}:{rank}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 2

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for parameter in group["params"]:
                index += 1
                if parameter.grad is None:
                    continue
                weight = parameter.to_local() if hasattr(parameter, "to_local") else parameter
                grad = parameter.grad.to_local() if hasattr(parameter.grad, "to_local") else parameter.grad
                if weight.dtype not in (torch.float32, torch.bfloat16):
                    raise TypeError(
                        f"StochasticRoundingAdamW trains fp32 and bf16 parameters, got {weight.dtype}"
                    )
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(weight)
                    state["exp_avg_sq"] = torch.zeros_like(weight)
                state["step"] += 1
                step = int(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"].float(), state["exp_avg_sq"].float()
                g = grad.float()
                exp_avg.lerp_(g, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1, bias2 = 1 - beta1**step, 1 - beta2**step
                denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
                new = weight.float().mul_(1 - lr * decay).addcdiv_(exp_avg, denom, value=-lr / bias1)
                if weight.dtype == torch.float32:
                    weight.copy_(new)
                    state["exp_avg"].copy_(exp_avg)
                    state["exp_avg_sq"].copy_(exp_avg_sq)
                    continue
                weight.copy_(stochastic_round_bf16(new, self._key(step, index, 0)))
                state["exp_avg"].copy_(stochastic_round_bf16(exp_avg, self._key(step, index, 1)))
                state["exp_avg_sq"].copy_(stochastic_round_bf16(exp_avg_sq, self._key(step, index, 2)))
        return loss
