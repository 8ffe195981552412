"""Finding the checkpoint a requeued or re-launched run resumes from (``ckpt_path=auto``).

A run folder's ``checkpoints/`` holds ``last.ckpt`` (written at every epoch end by the
``model_checkpoint`` callback) and, with ``callbacks.step_checkpoint.every_n_train_steps=K``,
``step.ckpt`` (rewritten every K optimiser steps). Each is a file, or a folder for sharded
FSDP / FSDP2 checkpoints (``meta.pt`` holds the loop state). ``auto`` takes the one with the higher
global step (``last.ckpt`` on a tie: it also closed the epoch), or none: a fresh start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Checkpoint names ckpt_path=auto considers, preferred in this order on equal global steps.
RESUMABLE_NAMES = ("last.ckpt", "step.ckpt")


def checkpoint_global_step(path: Path) -> int:
    """The optimiser steps a Lightning checkpoint (file or sharded folder) was taken after.

    A file is memory-mapped, so its tensors are not read.

    Raises:
        ValueError: the checkpoint cannot be read or holds no ``global_step`` (naming the path).
    """
    source = path / "meta.pt" if path.is_dir() else path
    try:
        state = torch.load(source, map_location="cpu", weights_only=False, mmap=path.is_file())
    except Exception as error:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"checkpoint {source} cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "global_step" not in state:
        raise ValueError(f"checkpoint {source} holds no global_step: not a Lightning checkpoint")
    return int(state["global_step"])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest resumable checkpoint in ``checkpoint_dir`` (see the module docstring), or ``None``."""
    found = [checkpoint_dir / name for name in RESUMABLE_NAMES if (checkpoint_dir / name).exists()]
    if not found:
        return None
    steps = {path: checkpoint_global_step(path) for path in found}
    best = max(found, key=lambda path: (steps[path], -found.index(path)))
    log.info("ckpt_path=auto: resuming from %s (global step %d)", best, steps[best])
    return best
