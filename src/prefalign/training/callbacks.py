"""Callbacks: W&B run id in checkpoints, data drop counts in the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

WANDB_RUN_ID_KEY = "wandb_run_id"


class WandbRunIdInCheckpoint(L.Callback):
    """Stores the W&B run id in every checkpoint, so resuming continues the same W&B run."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[WANDB_RUN_ID_KEY] = logger.version


def wandb_run_id_from_checkpoint(ckpt_path: str | Path) -> str | None:
    """The W&B run id stored in a checkpoint file (or a sharded checkpoint folder's ``meta.pt``)."""
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "meta.pt"
        if not path.exists():
            return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return checkpoint.get(WANDB_RUN_ID_KEY)


class LogDataDrops(L.Callback):
    """Logs how many samples each split kept and dropped (by reason) at the start of training."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "drop_counts"):
            return
        counts = datamodule.drop_counts()
        for logger in trainer.loggers:
            logger.log_metrics(counts, step=trainer.global_step)
        log.info("data: %s", counts)


class MetricHistograms(L.Callback):
    """Sends the per-example values of the objective's ``distribution_metrics`` (PoFT: τ, margin)
    to W&B as histograms every ``every_n_steps`` training batches (values pooled over the interval)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self.buffers: dict[str, list[torch.Tensor]] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        names = getattr(getattr(pl_module, "objective", None), "distribution_metrics", ())
        if not names or not isinstance(outputs, dict) or "metrics" not in outputs:
            return
        for name in names:
            self.buffers.setdefault(name, []).append(outputs["metrics"][name].detach().float().cpu())
        if (batch_idx + 1) % self.every_n_steps:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers and trainer.is_global_zero:
            import wandb

            payload = {
                f"train/{n}_hist": wandb.Histogram(torch.cat(v).numpy()) for n, v in self.buffers.items()
            }
            payload["trainer/global_step"] = trainer.global_step
            for logger in loggers:
                logger.experiment.log(payload)
        self.buffers = {}


class ExportHF(L.Callback):
    """Writes the trained model (and the data module's tokenizer) in Hugging Face format at the end of fit.

    The folder loads with ``model=hf model.name_or_path=<dirpath>``: the next stage of a pipeline
    (the next SSO iteration's policy and reference, PoFT -> DPO) starts from it. Sharded models
    (FSDP, FSDP2) are gathered into a full state dict first, on CPU.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        state_dict = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if trainer.is_global_zero:
            model.save_pretrained(self.dirpath, state_dict=state_dict)
            tokenizer = getattr(trainer.datamodule, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.dirpath)
            log.info("exported the trained model to %s", self.dirpath)
        trainer.strategy.barrier()
