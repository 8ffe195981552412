"""Signals as errors: :class:`Interrupted` (exit status 128 + signal) and :func:`raise_on_signals`.

A fit handles SIGTERM / SIGINT itself, stopping at the end of its optimiser step after writing a
checkpoint (:class:`prefalign.training.signals.StopOnSignal`, which registers itself here with
:func:`deferring_to`); anywhere else inside :func:`raise_on_signals` both signals raise
:class:`Interrupted` at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)

# The handler of a running fit, if any (StopOnSignal): raise_on_signals defers to it.
_running_fit: Any = None


class Interrupted(SystemExit):
    """A run stopped by a signal. Its exit status is 128 + the signal number (143 for SIGTERM, 130
    for SIGINT); ``str()`` says which signal and what was saved."""

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.detail = detail

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT``..."""
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} (exit status {self.code}): {self.detail}"


@contextlib.contextmanager
def deferring_to(owner: Any) -> Iterator[None]:
    """While inside, :func:`raise_on_signals` leaves SIGTERM / SIGINT to ``owner`` (a fit that stops
    at the end of its step)."""
    global _running_fit
    previous, _running_fit = _running_fit, owner
    try:
        yield
    finally:
        _running_fit = previous


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Around a program's stages: SIGTERM and SIGINT raise :class:`Interrupted` at once, except
    during a fit, where :class:`StopOnSignal` stops at the end of the optimiser step. The previous
    handlers are restored afterwards. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if _running_fit is not None:
            _running_fit.record(signum)  # the fit stops at its step's end, or after it (its export)
            return
        raise Interrupted(signum, "while no training step was running; nothing was saved at the signal")

    previous = {signum: signal.signal(signum, handle) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
