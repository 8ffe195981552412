"""Atomic checkpoints and exports: everything is written under a temporary name beside its final
name, synced, and renamed, so a failed write (a full disk, a killed process) never leaves a
truncated file or half a folder under the final name, and leaves no temporary behind.

Lightning's own writer serialises the whole checkpoint into memory and, through fsspec, writes it
to the system temporary folder before moving it; across file systems that move is a copy into
the final name, which a full disk truncates. Here the temporary file is in the checkpoint's own
folder (same file system: ``os.replace`` is atomic) and ``torch.save`` streams into it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from prefalign.core.jsonl import atomic_write

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes (remote URLs keep Lightning's writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path)
        with atomic_write(Path(path), "wb") as f:
            torch.save(checkpoint, f)
        return None


class AtomicCheckpoints(L.Callback):
    """Makes the trainer write checkpoint files atomically (:class:`AtomicCheckpointIO`).

    Strategies that save a single file through Lightning's default ``TorchCheckpointIO`` (single
    device, DDP, FSDP2 with ``save_distributed_checkpoint: false``) get the atomic writer; a
    custom checkpoint IO plugin is left alone (with a warning). Sharded checkpoint folders
    (FSDP / FSDP2 with distributed checkpoints) are written by ``torch.distributed.checkpoint``
    and are not covered.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        current = strategy.checkpoint_io
        if type(current) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(current, AtomicCheckpointIO):
            log.warning("checkpoint IO %s is custom: checkpoints are written by it, not atomically", current)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; when the block succeeds it replaces ``path``
    (an existing folder is moved aside first and removed after), when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
