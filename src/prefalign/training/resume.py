"""Finding the checkpoint a requeued or re-launched run resumes from (``ckpt_path=auto``).

A run folder's ``checkpoints/`` holds ``last.ckpt`` (written at every epoch end by the
``model_checkpoint`` callback) and, with ``callbacks.step_checkpoint.every_n_train_steps=K``,
``step.ckpt`` (rewritten every K optimiser steps). Each is a file, or a folder for sharded
FSDP / FSDP2 checkpoints (``meta.pt`` holds the loop state). ``auto`` takes the one with the higher
global step (``last.ckpt`` on a tie: it also closed the epoch), or none: a fresh start.

Each candidate is verified first (:func:`prefalign.training.verification.verify_checkpoint`): a
damaged or unreadable one is skipped with a warning naming it and the damaged entry, and the
newest intact checkpoint is taken instead, the epoch checkpoints (``epoch_<e>.ckpt``) included. The
damaged ones are renamed ``<name>.damaged`` (kept for inspection; under their own names the resumed
fit's checkpoints would go to ``last-v1.ckpt``...). When no checkpoint is intact the error names
each one and what is wrong with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Checkpoint names ckpt_path=auto considers, preferred in this order on equal global steps.
RESUMABLE_NAMES = ("last.ckpt", "step.ckpt")


def checkpoint_state(path: str | Path) -> dict:
    """The loop state of a Lightning checkpoint (a file, memory-mapped so that its tensors are not
    read, or a sharded folder's ``meta.pt``).

    Raises:
        ValueError: the checkpoint cannot be read or holds no ``global_step`` (naming the path).
    """
    path = Path(path)
    source = path / "meta.pt" if path.is_dir() else path
    try:
        state = torch.load(source, map_location="cpu", weights_only=False, mmap=path.is_file())
    except Exception as error:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"checkpoint {source} cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "global_step" not in state:
        raise ValueError(f"checkpoint {source} holds no global_step: not a Lightning checkpoint")
    return state


def checkpoint_global_step(path: Path) -> int:
    """The optimiser steps a Lightning checkpoint (file or sharded folder) was taken after
    (:func:`checkpoint_state`)."""
    return int(checkpoint_state(path)["global_step"])


def set_aside(path: Path) -> None:
    """Rename a damaged checkpoint to ``<name>.damaged`` (another rank may have done it already)."""
    try:
        os.replace(path, path.with_name(path.name + ".damaged"))
    except OSError as err:
        if path.exists():
            log.warning("could not rename the damaged %s aside (%s)", path, err)
    else:
        log.warning("renamed the damaged %s to %s.damaged", path, path.name)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest intact resumable checkpoint in ``checkpoint_dir`` (see the module docstring), or
    ``None`` when there is none.

    Raises:
        ValueError: checkpoints exist but none is intact (naming each and its problem).
    """
    from prefalign.training.verification import verify_checkpoint

    found = [checkpoint_dir / name for name in RESUMABLE_NAMES if (checkpoint_dir / name).exists()]
    if not found:
        return None
    found += sorted(checkpoint_dir.glob("epoch_*.ckpt"), reverse=True)  # fallbacks
    problems: dict[Path, str] = {}
    steps: dict[Path, int] = {}
    for path in found:
        try:
            steps[path] = checkpoint_global_step(path)
        except ValueError as err:
            problems[path] = str(err)
    for path in sorted(steps, key=lambda p: (steps[p], -found.index(p)), reverse=True):
        try:
            verify_checkpoint(path)
        except ValueError as err:  # CorruptArtefactError
            problems[path] = str(err)
            continue
        for bad, problem in problems.items():
            log.warning("ckpt_path=auto: skipping %s: %s", bad, problem)
            set_aside(bad)
        fallback = " (the newest intact checkpoint)" if problems else ""
        log.info("ckpt_path=auto: resuming from %s (global step %d)%s", path, steps[path], fallback)
        return path
    raise ValueError(
        f"ckpt_path=auto: no intact checkpoint in {checkpoint_dir}: "
        + "; ".join(f"{path.name}: {problem}" for path, problem in problems.items())
    )
