"""What every prefalign LightningModule shares: optimiser and schedule, FSDP2 sharding, logging.

Subclasses differ only in batch shape: they implement :meth:`AlignmentModule.objective_output`,
which runs the policy over a batch and applies the objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedModel, get_scheduler

from prefalign.core.names import NOISE
from prefalign.models.loading import disable_dropout as disable_model_dropout
from prefalign.objectives.base import ObjectiveOutput

NOISE_COUNT = f"{NOISE}_count"
"""Batch key: the number of noise samples, counted on the host before the batch moves to the GPU."""

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class AlignmentModule(L.LightningModule):
    """Training / validation steps, logging, optimiser and schedule around an objective.

    Args:
        model: the causal LM being trained.
        objective: the loss module.
        optimizer: a partial taking parameters (Hydra ``_partial_: true``), built in
            :meth:`configure_optimizers` from ``self.trainer.model`` so FSDP's sharded
            parameters are the ones optimised.
        scheduler: ``name`` (a transformers scheduler: ``cosine``, ``linear``, ``constant_with_warmup``...),
            ``warmup_ratio`` (fraction of the total optimiser steps) and optional ``kwargs``.
        logprob_chunk_rows: sequences' worth of tokens per chunk of the lean log-prob path (its response
            positions projected to the vocabulary a chunk at a time; bounds memory on large vocabularies).
        disable_dropout: turn off the model's dropout (also LoRA's) so the policy is scored like the
            reference; ``None`` (default): on for every objective that compares log-probs (PoFT,
            bi-PoFT, DPO, IPO, SSO, reward model), off for cross-entropy.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        objective: torch.nn.Module,
        optimizer: OptimizerFactory,
        scheduler: Mapping[str, Any] | None = None,
        logprob_chunk_rows: int | None = None,
        disable_dropout: bool | None = None,
    ) -> None:
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode
        if disable_dropout is None:  # off for objectives that compare log-probs (the objective says)
            disable_dropout = bool(getattr(objective, "compares_logprobs", True))
        if disable_dropout:
            disable_model_dropout(model)
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "cosine", "warmup_ratio": 0.1})
        self.logprob_chunk_rows = logprob_chunk_rows

    def objective_output(self, batch: Mapping[str, Any]) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- sharding ---------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Apply FSDP2 (``fully_shard``) per decoder layer and at the root under ``ModelParallelStrategy``.

        The shards keep the loaded dtype (fp32: the master weights and the optimizer state);
        under ``bf16-mixed`` each layer's parameters are cast to bf16 when gathered for compute and
        gradients reduced in fp32 (:func:`prefalign.models.precision.sharded_mixed_precision`)."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from prefalign.models.layers import decoder_layers
        from prefalign.models.precision import sharded_mixed_precision

        policy = sharded_mixed_precision(str(self.trainer.precision))
        mp_policy = (
            MixedPrecisionPolicy(param_dtype=policy[0], reduce_dtype=policy[1])
            if policy
            else MixedPrecisionPolicy()
        )
        dp_mesh = mesh["data_parallel"]
        for layer in decoder_layers(self.model):
            fully_shard(layer, mesh=dp_mesh, mp_policy=mp_policy)
        fully_shard(self.model, mesh=dp_mesh, mp_policy=mp_policy)

    # -- steps ------------------------------------------------------------------------------------
    def _log_output(
        self, stage: str, output: ObjectiveOutput, loss: torch.Tensor, batch: Mapping[str, Any]
    ) -> None:
        """``train/*`` per step; ``val/*`` as epoch means over all ranks."""
        batch_size = len(batch["id"])
        per_step = stage == "train"
        options = {
            "on_step": per_step,
            "on_epoch": not per_step,
            "sync_dist": not per_step,
            "batch_size": batch_size,
        }
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, **options)
        for name, value in output.metrics.items():
            self.log(f"{stage}/{name}", value.float().mean(), **options)
        for name in getattr(self.objective, "distribution_metrics", ()):
            self.log(f"{stage}/{name}_std", output.metrics[name].float().std(unbiased=False), **options)
        if per_step and isinstance(batch.get(NOISE), torch.Tensor):  # no sync: ranks may differ
            noisy = batch.get(NOISE_COUNT)
            if noisy is None:  # a batch that skipped on_before_batch_transfer: counted here (a host sync)
                noisy = int(batch[NOISE].sum())
            self._log_by_noise(stage, output, batch[NOISE].bool(), noisy, options)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the noise samples (``noise`` column) while the batch is still on the host, so the
        per-subset logging of the step needs no host sync (prefalign-plan's check)."""
        if isinstance(batch, dict) and isinstance(batch.get(NOISE), torch.Tensor):
            batch[NOISE_COUNT] = int(batch[NOISE].sum())
        return batch

    def _log_by_noise(
        self, stage: str, output: ObjectiveOutput, noise: torch.Tensor, noisy: int, options: dict[str, Any]
    ) -> None:
        """With a ``noise`` column (hand-crafted noise mixed in), the distribution metrics (τ, margin)
        also as means over the clean and the noise samples: ``<stage>/<name>_clean``, ``..._noise``.

        ``noisy``: the number of noise samples, counted on the host; the means are masked sums (no
        boolean indexing: its data-dependent shape would make the GPU wait for the host)."""
        for subset, mask, count in (("clean", ~noise, len(noise) - noisy), ("noise", noise, noisy)):
            if count == 0:
                continue
            for name in getattr(self.objective, "distribution_metrics", ()):
                metric = output.metrics[name].float()
                value = torch.where(mask.to(metric.device), metric, 0.0).sum() / count
                self.log(f"{stage}/{name}_{subset}", value, **{**options, "batch_size": count})

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        output = self.objective_output(batch)
        loss = output.loss()
        self._log_output("train", output, loss, batch)
        # the step's detached terms, checked by NonFiniteGuard before the optimiser step
        self.last_train_terms = {"loss": loss.detach(), **output.metrics}
        # callbacks (histograms, sample tables) see the per-example metrics
        return {"loss": loss, "metrics": output.metrics}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        output = self.objective_output(batch)
        loss = output.loss()
        self._log_output("val", output, loss, batch)
        return loss

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        parameters = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup_steps = math.ceil(float(self.scheduler_cfg.get("warmup_ratio", 0.0)) * total_steps)
        scheduler = get_scheduler(
            self.scheduler_cfg.get("name", "cosine"),
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=total_steps,
            scheduler_specific_kwargs=dict(self.scheduler_cfg.get("kwargs") or {}),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }
