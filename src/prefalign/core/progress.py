"""Progress bars for long work outside the Lightning Trainer (generation, judging, answer export).

Every bar of the project comes from :func:`progress_bar`, a ``tqdm`` bar on stderr: tqdm, not
rich, because it is what Lightning's default ``TQDMProgressBar`` (the scoring engine's bar), vLLM
and datasets draw with, and because tqdm bars nest where a rich live display refuses to open
inside another (e.g. inside training's ``RichProgressBar``).

A bar is shown only when :func:`progress_enabled` says so:

- only on the process of global rank 0 (``torch.distributed``'s rank when a group is up, else the
  ``RANK`` / ``LOCAL_RANK`` / ``NODE_RANK`` / ``SLURM_PROCID`` variables: any non-zero one hides it);
- the environment variable ``PREFALIGN_PROGRESS``: ``0`` / ``false`` / ``off`` / ``no`` hides every
  bar, ``1`` / ``true`` / ``on`` / ``yes`` shows them even when stderr is not a terminal,
  unset / ``auto`` shows them when stderr is a terminal only.

So output redirected to a file (a batch job, ``experiments/cpu_studies/run.py``'s per-app logs)
never fills with redrawn bars, and bars never reach the log files: tqdm writes to the stream
itself, not through ``logging``. Lightning's own training / scoring bars are switched by the apps'
configs (``callbacks.progress_bar=null``, ``trainer.enable_progress_bar=false``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from prefalign.core.errors import ConfigError
from prefalign.core.ranks import is_rank_zero

ENV = "PREFALIGN_PROGRESS"
_ON, _OFF, _AUTO = ("1", "true", "on", "yes"), ("0", "false", "off", "no"), ("", "auto")


def progress_setting() -> bool | None:
    """``PREFALIGN_PROGRESS`` read: True (force on), False (off) or None (auto: on a terminal).

    Raises:
        ConfigError: naming the variable and the accepted values, for any other value.
    """
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value in _AUTO:
        return None
    raise ConfigError(
        f"environment variable {ENV}={os.environ[ENV]!r}: expected one of {', '.join(_ON + _OFF)} or auto"
    )


def progress_enabled(stream: IO[str] | None = None) -> bool:
    """Whether a bar drawn on ``stream`` (default: stderr) should show: rank 0 only, then
    ``PREFALIGN_PROGRESS``, then whether the stream is a terminal."""
    if not is_rank_zero():
        return False
    setting = progress_setting()
    if setting is not None:
        return setting
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    file: IO[str] | None = None,
    disable: bool = False,
) -> Any:
    """A ``tqdm`` bar (iterate it, or call ``update(n)`` and ``close()``; a context manager too),
    disabled (it draws nothing, iteration passes through) where :func:`progress_enabled` says no.

    Args:
        iterable: what to iterate (or None and ``total`` with manual ``update``).
        total: the number of units (default: ``len(iterable)`` when it has one).
        desc: the bar's label, e.g. ``"iteration 2: sample y+"``.
        unit: what one unit is (``"prompt"``, ``"pair"``...).
        file: the stream to draw on (default: stderr).
        disable: never draw this bar (e.g. work run inside the Trainer, whose own bar is showing).
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=disable or not progress_enabled(stream),
        dynamic_ncols=True,
        mininterval=0.5,
    )
