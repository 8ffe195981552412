"""Stopping on SIGTERM / SIGINT: a resumable checkpoint, then a non-zero exit.

SIGTERM is how SLURM (``scancel``, the time limit, preemption with a grace period), Kubernetes and
most schedulers stop a job; SIGINT is Ctrl-C. Lightning notices SIGTERM itself but ends ``fit`` with
a ``SystemExit`` without a code (status 0: a wrapper, a multirun or a pipeline counts the run as
finished) and writes no checkpoint. Here:

- During a fit, :class:`StopOnSignal` (a callback in ``callbacks.stop_on_signal``) turns SIGTERM
  and SIGINT into Lightning's stop flag: the optimiser step under way finishes, ``step.ckpt`` is
  written beside the other checkpoints (weights, optimiser, the position in the epoch's data order),
  and :func:`prefalign.training.run.train` raises :class:`Interrupted`, whose exit status is
  128 + the signal (143 for SIGTERM, 130 for SIGINT). ``ckpt_path=auto`` resumes from that
  checkpoint and ends bit for bit where an unbroken run ends. A second SIGINT stops at once
  (``KeyboardInterrupt``, no checkpoint).
- Outside a fit (a program's other stages, e.g. ``prefalign-sso`` sampling),
  :func:`prefalign.core.signals.raise_on_signals` makes both signals raise :class:`Interrupted` at
  once, so the program can record which stage was interrupted before it exits.
- SLURM's requeue signal (``SIGUSR1`` by default, ``#SBATCH --signal=SIGUSR1@90``) is left to
  Lightning's SLURM environment plugin: it writes its ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol
  requeue``; the SIGTERM that SLURM sends next is handled as above, and the requeued job resumes
  with ``ckpt_path=auto`` (``PREFALIGN_CKPT_PATH=auto``).

The grace period needed is one optimiser step plus writing one checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L

from prefalign.core.signals import HANDLED, Interrupted, deferring_to, raise_on_signals

__all__ = ["STEP_CHECKPOINT", "Interrupted", "StopOnSignal", "raise_on_signals"]

log = logging.getLogger(__name__)

# The file a signalled fit writes, in the checkpoint folder (ckpt_path=auto considers it).
STEP_CHECKPOINT = "step.ckpt"


class StopOnSignal(L.Callback):
    """On SIGTERM or SIGINT during a fit: finish the optimiser step under way, write a resumable
    checkpoint and stop (see the module docstring); :func:`prefalign.training.run.train` then raises
    :class:`Interrupted`.

    Args:
        dirpath: the folder of the checkpoint (``step.ckpt``); ``None``: the folder of the trainer's
            first ``ModelCheckpoint`` (the run's ``checkpoints/``), else
            ``<trainer.default_root_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.signum: int | None = None
        self.saved: Path | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}
        self._deferring: contextlib.ExitStack | None = None

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the checkpoint taken at a signal goes."""
        if self.dirpath is not None:
            return Path(self.dirpath) / STEP_CHECKPOINT
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / STEP_CHECKPOINT

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its own SIGTERM handler when the fit started; ours calls it
        self.signum, self.saved, self._trainer = None, None, trainer
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        self._deferring = contextlib.ExitStack()
        self._deferring.enter_context(deferring_to(self))  # raise_on_signals leaves the fit to us
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        first = self.signum is None
        self.signum = signum
        if first:
            log.warning(
                "received %s: finishing this optimiser step, then writing %s and stopping",
                signal.Signals(signum).name,
                STEP_CHECKPOINT,
            )
        previous = self._previous.get(signal.SIGTERM)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)  # Lightning's: sets its stop flag, stops launched ranks (SLURM too)
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True  # noqa: SLF001 - Lightning's stop flag

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            self._restore()  # a failed fit gets no teardown hook: give the signals back now
            return
        if self.signum is None:  # a SIGTERM that reached Lightning without us (another thread)
            self.signum = signal.SIGTERM
        path = self.checkpoint_path(trainer)
        try:
            trainer.save_checkpoint(path)  # every rank: collective under DDP / FSDP
        finally:
            self._restore()
        self.saved = path
        log.warning(
            "%s: wrote %s at global step %d", signal.Signals(self.signum).name, path, trainer.global_step
        )

    def interrupted(self, trainer: L.Trainer) -> Interrupted:
        """The :class:`Interrupted` error describing this stop (call after the fit stopped)."""
        signum = self.signum or signal.SIGTERM
        if self.saved is None:
            detail = f"at global step {trainer.global_step}; no checkpoint was written at the signal"
        else:
            detail = (
                f"checkpoint {self.saved} written at global step {trainer.global_step}; rerun in the same "
                "folder with ckpt_path=auto to resume"
            )
        return Interrupted(signum, detail)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        """The previous signal handlers back, and :func:`raise_on_signals` no longer deferring to us."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._trainer = None
        if self._deferring is not None:
            self._deferring.close()
            self._deferring = None
