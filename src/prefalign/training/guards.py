"""The non-finite guard: a NaN or infinite loss, objective term or gradient norm stops training at
once, before the optimiser step, naming the step, the batch's sample ids and the non-finite terms;
no checkpoint and no export is ever written from non-finite weights.

Checks, in order of the training loop:

* before every optimiser step (``on_before_optimizer_step``, after backward and before gradient
  clipping): the batch loss, every per-example term of the objective (``ObjectiveOutput.metrics``:
  CE, τ, r_agg, margin, W, G, base loss...) and the gradient norm;
* at the end of every epoch, before its checkpoint: the loss and terms of the final weights on
  the epoch's last batch (one forward pass; an update can leave finite weights that give NaN);
* whenever a checkpoint is saved (``on_save_checkpoint``) and before the Hugging Face export
  (:class:`prefalign.training.callbacks.ExportHF`): every parameter.

The decision is reduced over ranks, so every process stops (or skips) together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

# Names shown per non-finite term (and per non-finite parameter) in an error message.
_MAX_LISTED = 8


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite value; the message names the step, samples and terms."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def nonfinite_parameters(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the parameters (local shards) holding a NaN or an infinity."""
    return [name for name, p in named_parameters if not bool(torch.isfinite(_local(p.detach())).all())]


def gradient_norm(parameters: Iterable[torch.Tensor]) -> float:
    """The 2-norm of the (local) gradients; ``nan``/``inf`` when a gradient is non-finite."""
    grads = [_local(p.grad.detach()) for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def _any_rank(trainer: L.Trainer, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (every rank calls this at the same point)."""
    value = torch.tensor(float(flag), device=device)
    if trainer.world_size > 1:
        value = trainer.strategy.reduce(value, reduce_op="sum")
    return bool(value > 0)


def nonfinite_terms(terms: Mapping[str, Any], ids: list[str]) -> dict[str, str]:
    """``{term: description}`` for every non-finite term; per-example terms name their samples.

    Called every step: all terms are checked in one reduction (one host sync); they are looked at
    one by one only when something is non-finite.
    """
    tensors = {
        name: value.detach().float()
        for name, value in terms.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }
    if not tensors:
        return {}
    device = next(iter(tensors.values())).device
    if bool(torch.stack([torch.isfinite(v).all().to(device) for v in tensors.values()]).all()):
        return {}
    found: dict[str, str] = {}
    for name, value in tensors.items():
        bad = ~torch.isfinite(value)
        if not bool(bad.any()):
            continue
        if value.dim() == 1 and len(value) == len(ids) and len(ids) > 0:
            rows = bad.nonzero().flatten().tolist()
            listed = ", ".join(f"{ids[i]}={value[i].item()}" for i in rows[:_MAX_LISTED])
            more = f" (+{len(rows) - _MAX_LISTED} more)" if len(rows) > _MAX_LISTED else ""
            found[name] = f"{len(rows)} of {len(ids)} samples: {listed}{more}"
        else:
            found[name] = str(value.flatten()[bad.flatten()][:_MAX_LISTED].tolist())
    return found


class NonFiniteGuard(L.Callback):
    """Stops training on the first non-finite loss, objective term or gradient norm (the default),
    or skips up to ``max_skipped_steps`` such optimiser steps.

    A skipped step applies no update (every gradient is dropped, so the optimiser leaves the
    weights and its moments as they were; the learning-rate schedule still advances). Skipped
    steps are counted in ``train/nonfinite_skipped`` (logged when skipping is allowed) and in the
    checkpoints, so a resumed run keeps counting. One more non-finite step than allowed stops.

    Args:
        max_skipped_steps: non-finite optimiser steps to skip before stopping (0: stop at the
            first one).
        check_terms: also check the objective's per-example terms (``ObjectiveOutput.metrics``),
            which catches e.g. an infinite aligned score whose loss is a finite 0.

    The LightningModule exposes the step's terms as ``last_train_terms`` (loss and per-example
    metrics); the batch's sample ids are its ``id`` entry.
    """

    def __init__(self, max_skipped_steps: int = 0, check_terms: bool = True) -> None:
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f"max_skipped_steps must be a non-negative integer, got {max_skipped_steps!r}")
        self.max_skipped_steps = max_skipped_steps
        self.check_terms = check_terms
        self.skipped = 0
        self._ids: list[str] = []
        self._batch_ids: list[str] = []
        self._last_batch: Any = None
        self._loss_problem: dict[str, str] = {}

    # -- state carried in checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # -- per step ----------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # with gradient accumulation, the ids of every micro-batch since the last optimiser step
        self._batch_ids = [str(i) for i in (batch.get("id", []) if isinstance(batch, Mapping) else [])]
        self._ids.extend(self._batch_ids)
        self._last_batch = batch

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        terms = dict(getattr(pl_module, "last_train_terms", None) or {})
        terms.setdefault("loss", loss.detach())
        if not self.check_terms:
            terms = {"loss": terms["loss"]}
        self._loss_problem.update(nonfinite_terms(terms, self._batch_ids))

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        norm = gradient_norm(parameters)
        problems = dict(self._loss_problem)
        if not math.isfinite(norm):
            problems["gradient norm"] = str(norm)
        ids, self._ids, self._loss_problem = self._ids, [], {}
        if not _any_rank(trainer, bool(problems), pl_module.device):
            return
        where = (
            f"training step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1})"
        )
        detail = "; ".join(f"{name}: {text}" for name, text in problems.items()) or "on another rank"
        shown = ", ".join(ids[:32]) + (f" (+{len(ids) - 32} more)" if len(ids) > 32 else "")
        message = f"non-finite values at {where}: {detail}. Batch sample ids (rank {trainer.global_rank}): [{shown}]."
        if self.skipped < self.max_skipped_steps:
            self.skipped += 1
            for p in parameters:
                p.grad = None  # the optimiser skips parameters without a gradient
            log.warning("%s Step skipped (%d of at most %d).", message, self.skipped, self.max_skipped_steps)
            return
        allowed = (
            f" {self.skipped} non-finite steps were skipped already (max_skipped_steps={self.max_skipped_steps})."
            if self.max_skipped_steps
            else ""
        )
        raise NonFiniteError(
            f"{message}{allowed} Training stopped before this optimiser step; no checkpoint or export "
            "was written from it. Lower optimizer.lr, check these samples' data and scores, or allow "
            "skipping with callbacks.nonfinite_guard.max_skipped_steps=<K>."
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.max_skipped_steps:
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Probe the weights left by the epoch's last update on its last batch, before the epoch's
        checkpoint and the export: a last step can leave finite weights that only give NaN (one
        huge update), which no training step of this epoch would see."""
        batch, self._last_batch = self._last_batch, None
        if batch is None or not hasattr(pl_module, "objective_output"):
            return
        with torch.no_grad():
            output = pl_module.objective_output(batch)
            terms = {"loss": output.loss(), **(output.metrics if self.check_terms else {})}
        problems = nonfinite_terms(terms, self._batch_ids)
        if not _any_rank(trainer, bool(problems), pl_module.device):
            return
        detail = "; ".join(f"{name}: {text}" for name, text in problems.items()) or "on another rank"
        message = (
            f"the weights after training step {trainer.global_step} (end of epoch {trainer.current_epoch}) "
            f"give non-finite values on the epoch's last batch: {detail}"
        )
        if self.max_skipped_steps:
            log.warning("%s (max_skipped_steps=%d: training continues)", message, self.max_skipped_steps)
            return
        raise NonFiniteError(
            f"{message}. Training stopped; no checkpoint or export was written from these weights. "
            "Lower optimizer.lr."
        )

    # -- before anything is saved ------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        check_finite_weights(trainer, pl_module.named_parameters(), "a checkpoint")


def check_finite_weights(
    trainer: L.Trainer, named_parameters: Iterable[tuple[str, torch.Tensor]], what: str
) -> None:
    """Raise :class:`NonFiniteError` (on every rank) when a parameter holds a NaN or an infinity,
    before ``what`` (a checkpoint, the export) is written."""
    named = list(named_parameters)
    bad = nonfinite_parameters(named)
    device = named[0][1].device if named else torch.device("cpu")
    if _any_rank(trainer, bool(bad), device):
        listed = ", ".join(bad[:_MAX_LISTED]) + (
            f" (+{len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
        )
        raise NonFiniteError(
            f"non-finite weights at training step {trainer.global_step}: not writing {what}. "
            f"Parameters with NaN/inf (rank {trainer.global_rank}): {listed or 'on another rank'}"
        )
