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
