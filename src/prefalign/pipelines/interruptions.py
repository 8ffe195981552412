"""Which stage of a multi-stage run a signal interrupted, so that the rerun resumes it.

A stage stopped by SIGTERM / SIGINT (:class:`prefalign.training.signals.Interrupted`) leaves
``<stage>.interrupted.json`` beside the stage markers: the stage, the signal, what was saved and a
fingerprint of the stage's settings. The rerun logs which stage it resumes; a fit interrupted with
its settings unchanged continues from the ``step.ckpt`` it wrote at the signal (``ckpt_path=auto``),
any other stage runs again from its start (each writes its files atomically at its end). The record
is removed when the stage is marked done.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from prefalign.core.jsonl import write_json
from prefalign.core.signals import Interrupted

log = logging.getLogger(__name__)


def interruption_path(folder: str | Path, stage: str) -> Path:
    """``<folder>/<stage>.interrupted.json``."""
    return Path(folder) / f"{stage}.interrupted.json"


def record_interruption(folder: str | Path, stage: str, error: Interrupted, settings: str) -> Path:
    """Write (atomically) that ``stage`` was interrupted by ``error``'s signal; ``settings`` is the
    fingerprint of the stage's settings at the time."""
    path = interruption_path(folder, stage)
    write_json(
        path,
        {
            "stage": stage,
            "signal": error.signal_name,
            "exit_status": error.code,
            "detail": error.detail,
            "settings": settings,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    log.error("%s interrupted: %s (recorded in %s)", stage, error, path)
    return path


def read_interruption(folder: str | Path, stage: str) -> dict[str, Any] | None:
    """The interruption record of ``stage`` (``None``: none, or unreadable, which is logged)."""
    path = interruption_path(folder, stage)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable interruption record (%s); the stage runs from its start", path, err)
        return None
    return record if isinstance(record, dict) else None
