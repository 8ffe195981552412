"""Stopping on SIGTERM / SIGINT: a resumable checkpoint, then a non-zero exit, on one process or
many; and a fit whose peer rank died says which.

SIGTERM is how SLURM (``scancel``, the time limit, preemption with a grace period), Kubernetes and
most schedulers stop a job; SIGINT is Ctrl-C. Lightning notices SIGTERM itself but ends ``fit`` with
a ``SystemExit`` without a code (status 0) and writes no checkpoint; under DDP its handler also runs
a broadcast inside the signal handler, which a second signal, a checkpoint barrier or the export's
collectives on another rank turn into a hang. Here :class:`StopOnSignal` (``callbacks.stop_on_signal``)
replaces Lightning's handler for the fit:

- The handler only records the signal: it never runs a collective, so a second signal, or a signal
  during a barrier, cannot nest one.
- One process: Lightning's stop flag is set at once; the optimiser step under way finishes (or the
  validation batch), ``step.ckpt`` is written and :func:`prefalign.training.run.train` raises
  :class:`Interrupted` (exit status 128 + the signal: 143 for SIGTERM, 130 for SIGINT).
- Several ranks (Lightning's DDP / FSDP launcher, torchrun, srun): after every optimiser step and at
  the end of every validation, all ranks exchange what they received in one ``all_reduce`` on a gloo
  group of their own (:meth:`StopOnSignal.agree`), outside any signal handler. When any rank got a
  signal, every rank sets the stop flag at the same point, so they stop at the same step, write
  ``step.ckpt`` together and each raises :class:`Interrupted` with the same status (SIGTERM wins over
  SIGINT). A signal to one rank, to the parent alone or to all of them, once or twice, ends the same
  way. A rank that cannot complete the exchange within ``timeout_s`` (a peer died or hangs) raises
  :class:`RanksLost`, naming the rank(s) that stopped answering when it can, and exits non-zero.
- A signal after the last exchange (the end of the fit, the final export) is recorded and the export
  completes; then :meth:`StopOnSignal.agree_after_fit` lets every rank raise :class:`Interrupted`
  (the fit is complete: ``last.ckpt`` and ``hf/`` are written, a rerun has nothing to train).
- Ctrl-C twice stops at once (``KeyboardInterrupt``, no checkpoint; Lightning exits 1).
- Outside a fit :func:`prefalign.core.signals.raise_on_signals` makes both signals raise
  :class:`Interrupted` at once.
- SLURM's requeue signal (``SIGUSR1`` by default, ``#SBATCH --signal=SIGUSR1@90``) goes to
  Lightning's SLURM environment plugin, which writes ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol
  requeue``; under several ranks it is exchanged like a stop and the plugin's handler runs on every
  rank at the agreed step (its checkpoint is collective), never inside the signal handler. The SIGTERM
  SLURM sends next stops as above; the requeued job resumes with ``ckpt_path=auto``.

The grace period needed is one optimiser step (or the rest of a validation) plus writing one
checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch

from prefalign.core.ranks import pid_alive
from prefalign.core.signals import HANDLED, Interrupted, deferring_to, raise_on_signals

__all__ = ["STEP_CHECKPOINT", "Interrupted", "RanksLost", "StopOnSignal", "is_lost_peer", "raise_on_signals"]

log = logging.getLogger(__name__)

# The file a signalled fit writes, in the checkpoint folder (ckpt_path=auto considers it).
STEP_CHECKPOINT = "step.ckpt"
# How a rank learns that a peer stopped answering (gloo, NCCL and the TCP store's wording).
LOST_PEER_MARKERS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "timed out",
    "Timed out",
    "NCCL communicator was aborted",
)


class RanksLost(RuntimeError):
    """A rank of a multi-process fit stopped answering; the message names it when it is known and
    says how to resume (``ckpt_path=auto``)."""


def is_lost_peer(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a collective failing because a peer
    rank died or stopped answering."""
    while error is not None:
        if isinstance(error, RanksLost):
            return True
        if isinstance(error, (RuntimeError, OSError)) and any(m in str(error) for m in LOST_PEER_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def lost_ranks(trainer: L.Trainer) -> str:
    """Which peers are gone, as far as this rank can see: the ranks Lightning's launcher started
    (known to the parent, rank 0) that have exited, or the parent of a child rank that has gone."""
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    gone = []
    for rank, proc in enumerate(procs, start=1):
        status = proc.poll()
        if status is not None:
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
            gone.append(f"rank {rank} (pid {proc.pid}, {how})")
    if gone:
        return ", ".join(gone) + " stopped"
    from prefalign.training.launch import parent_pid

    parent = parent_pid()
    if trainer.global_rank > 0 and parent is not None and not pid_alive(parent):
        return f"rank 0 (the parent, pid {parent}) stopped"
    return "a peer rank stopped answering (its own log or the launcher names it)"


def ranks_lost_error(trainer: L.Trainer, error: BaseException) -> RanksLost:
    """The :class:`RanksLost` error for a collective of the fit that failed with ``error``."""
    if isinstance(error, RanksLost):
        return error
    first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return RanksLost(
        f"rank {trainer.global_rank} of {trainer.world_size}: {lost_ranks(trainer)} at global step "
        f"{trainer.global_step} ({type(error).__name__}: {first_line}); the run cannot go on without it. "
        "Rerun the same command in the same folder with ckpt_path=auto to resume from the newest "
        "checkpoint (checkpoints/last.ckpt or step.ckpt)"
    )


class RankObserver(threading.Thread):
    """In the parent of Lightning's DDP launcher, in place of Lightning's child-process observer
    (which SIGKILLs the parent and every rank, 5 s at most after any rank exits non-zero, a rank
    stopped by a signal with status 143 included, before the parent has said anything): when a
    child rank exits non-zero, it logs which rank and how, then leaves the parent ``grace_s`` to
    stop by itself (naming the rank, :class:`RanksLost`, or with the agreed signal), and only then
    kills what is left, so that no rank outlives a hung parent."""

    def __init__(self, procs: list[Any], grace_s: float, period_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="prefalign-rank-observer")  # ends with the parent
        self.procs, self.grace_s, self.period_s = procs, grace_s, period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        """Watch the child ranks until all ended with status 0 or :meth:`stop` is called."""
        while not self.stopped.wait(self.period_s):
            codes = [proc.poll() for proc in self.procs]
            if all(code == 0 for code in codes):
                return
            failed = [(rank, proc) for rank, proc in enumerate(self.procs, start=1) if proc.returncode]
            if failed:
                rank, proc = failed[0]
                how = (
                    signal.Signals(-proc.returncode).name
                    if proc.returncode < 0
                    else f"status {proc.returncode}"
                )
                log.warning(
                    "rank %d (pid %d) ended (%s); the parent stops within %g s or is killed with the other ranks",
                    rank,
                    proc.pid,
                    how,
                    self.grace_s,
                )
                if self.stopped.wait(self.grace_s):
                    return
                log.error(
                    "the parent did not stop within %g s after rank %d ended: killing every rank",
                    self.grace_s,
                    rank,
                )
                for other in self.procs:
                    if other.poll() is None:
                        other.kill()
                os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        """Stop watching (the fit ended)."""
        self.stopped.set()


def _replace_lightnings_observer(trainer: L.Trainer, grace_s: float) -> RankObserver | None:
    """In the parent of Lightning's subprocess launcher: Lightning's child-process observer made
    harmless and a :class:`RankObserver` started over the same child ranks."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None)
    if not procs:
        return None
    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._run = lambda: True  # noqa: SLF001 - its next look ends it without killing anything
    observer = RankObserver(procs, grace_s)
    observer.start()
    return observer


class StopOnSignal(L.Callback):
    """On SIGTERM or SIGINT during a fit: stop at the end of the optimiser step under way (on every
    rank at the same step), write a resumable checkpoint and stop (see the module docstring);
    :func:`prefalign.training.run.train` then raises :class:`Interrupted`.

    Args:
        dirpath: the folder of the checkpoint (``step.ckpt``); ``None``: the folder of the trainer's
            first ``ModelCheckpoint`` (the run's ``checkpoints/``), else
            ``<trainer.default_root_dir>/checkpoints``.
        timeout_s: with several ranks, how long one exchange of the signals received may wait for
            the other ranks before this rank stops with :class:`RanksLost`.
    """

    def __init__(self, dirpath: str | None = None, timeout_s: float = 300.0) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(
                f"callbacks.stop_on_signal.timeout_s must be a positive number of seconds, got {timeout_s!r}"
            )
        self.dirpath = dirpath
        self.timeout_s = float(timeout_s)
        self.signum: int | None = None
        self.saved: Path | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}
        self._deferring: contextlib.ExitStack | None = None
        self._group: Any = None
        self._requeue_handler: Any = None
        self._requeue_asked = False
        self._agreed_step = -1
        self._observer: RankObserver | None = None

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the checkpoint taken at a signal goes."""
        if self.dirpath is not None:
            return Path(self.dirpath) / STEP_CHECKPOINT
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / STEP_CHECKPOINT

    @property
    def _several(self) -> bool:
        return self._group is not None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its own handlers when the fit started; ours replace them for the fit
        self.signum, self.saved, self._trainer, self._requeue_asked = None, None, trainer, False
        self._agreed_step = -1
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            # every rank calls this hook: the group is made collectively, gloo so that CPU tensors do
            self._group = torch.distributed.new_group(
                backend="gloo", timeout=datetime.timedelta(seconds=self.timeout_s)
            )
            if self._observer is None:
                self._observer = _replace_lightnings_observer(trainer, grace_s=self.timeout_s)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        self._deferring = contextlib.ExitStack()
        self._deferring.enter_context(deferring_to(self))  # raise_on_signals leaves the fit to us
        # given back afterwards: the handlers from before the fit, never Lightning's (its SIGTERM
        # handler broadcasts: left behind after the fit, a signal during the export would hang)
        before = trainer._signal_connector._original_handlers  # noqa: SLF001
        for signum in HANDLED:
            current = signal.signal(signum, self._handle)
            self._previous[signum] = before.get(signum, current)
        requeue = getattr(signal, "SIGUSR1", None)
        current = signal.getsignal(requeue) if requeue is not None else None
        if callable(current) and type(current).__name__ == "_HandlersCompose":  # Lightning's SLURM plugin
            self._requeue_handler = current
            signal.signal(requeue, self._handle_requeue)
            self._previous[requeue] = before.get(requeue, signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        self.record(signum)

    def record(self, signum: int) -> None:
        """Note a stop signal (from this module's handler, or from
        :func:`prefalign.core.signals.raise_on_signals` once the fit's loop has ended); no
        collective runs here."""
        first = self.signum is None
        self.signum = max(self.signum or 0, signum)  # SIGTERM (15) wins over SIGINT (2)
        if first:
            log.warning(
                "received %s: finishing this optimiser step, then writing %s and stopping%s",
                signal.Signals(signum).name,
                STEP_CHECKPOINT,
                " (agreed with the other ranks at the step's end)" if self._several else "",
            )
        if self._trainer is not None and not self._several:
            self._trainer._signal_connector.received_sigterm = True  # noqa: SLF001 - Lightning's stop flag

    def _handle_requeue(self, signum: int, frame: Any) -> None:
        if not self._several:
            self._requeue_handler(signum, frame)  # one process: Lightning's SLURM plugin at once
            return
        log.warning(
            "received %s: the requeue checkpoint is written at this step's end", signal.Signals(signum).name
        )
        self._requeue_asked = True

    def agree(self, trainer: L.Trainer) -> None:
        """With several ranks: exchange the signals every rank received (one ``all_reduce`` on this
        callback's gloo group, at most ``timeout_s``); when any rank got one, every rank sets
        Lightning's stop flag now, and a requeue request runs Lightning's SLURM handler on every
        rank. Raises :class:`RanksLost` when the exchange fails."""
        if not self._several:
            return
        flags = torch.tensor([self.signum or 0, int(self._requeue_asked)], dtype=torch.int64)
        try:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self._group)
        except Exception as err:  # noqa: BLE001 - a dead or hung peer, re-raised naming it
            raise RanksLost(
                f"{ranks_lost_error(trainer, err)} (no answer within callbacks.stop_on_signal."
                f"timeout_s={self.timeout_s:g} s while the ranks agreed whether to stop)"
            ) from err
        agreed, requeue = int(flags[0]), bool(flags[1])
        self._agreed_step = trainer.global_step
        if requeue:
            self._requeue_asked = False
            self._requeue_handler(signal.SIGUSR1, None)  # every rank: its checkpoint is collective
        if agreed and not trainer.received_sigterm:
            if self.signum is None:
                log.warning(
                    "another rank received %s: stopping at global step %d with it",
                    signal.Signals(agreed).name,
                    trainer.global_step,
                )
            self.signum = agreed
            trainer._signal_connector.received_sigterm = True  # noqa: SLF001 - on every rank, here

    def agree_after_fit(self, trainer: L.Trainer) -> int | None:
        """After ``trainer.fit`` returned: the signal any rank received after the last exchange
        (the end of the fit, the final export), agreed by every rank; ``None`` when there was none."""
        self.agree(trainer)
        return self.signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._several and trainer.global_step != self._agreed_step:  # an optimiser step ended
            self.agree(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._several and not trainer.sanity_checking:
            self.agree(trainer)

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
            trainer.save_checkpoint(path)  # every rank, at the same step: collective under DDP / FSDP
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
        self._restore(keep_deferring=True)  # train() reads what arrived after the loop, then closes

    def close(self) -> None:
        """Stop receiving signals from :func:`raise_on_signals`, free the exchange's group and stop
        watching the child ranks."""
        self._restore()
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        if self._group is not None and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):  # local; a lost peer must not hide the first error
                torch.distributed.destroy_process_group(self._group)
        self._group = None

    def _restore(self, keep_deferring: bool = False) -> None:
        """The previous signal handlers back; unless ``keep_deferring``, :func:`raise_on_signals`
        no longer defers to us."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if not keep_deferring:
            self._trainer = None
            if self._deferring is not None:
                self._deferring.close()
                self._deferring = None
