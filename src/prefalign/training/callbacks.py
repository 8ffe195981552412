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
