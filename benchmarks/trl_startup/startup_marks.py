"""Wall-clock marks and the end-of-first-step record shared by the start-up benchmark's probes
(``first_step_probe.py`` for prefalign, ``prefalign_timeline.py``, and ``trl_first_step.py``'s
own copy for TRL's environment). Imports nothing heavy: the timeline launcher imports it first."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

# (name, wall-clock time) of the stages passed so far, in order
MARKS: list[tuple[str, float]] = []


def mark(name: str) -> None:
    """Record that stage ``name`` is reached now."""
    MARKS.append((name, time.time()))


def marked(name: str) -> bool:
    """Whether stage ``name`` was marked already."""
    return any(n == name for n, _ in MARKS)


def record_and_exit() -> None:
    """Write ``{"t_first_step", "cpu_s", "peak_rss_mib", "marks"}`` to ``$FIRST_STEP_FILE`` and end
    the process at once (exit 0): wall-clock time now, CPU time (user + system) used so far, peak
    resident set size (``ru_maxrss``, KiB on Linux) in MiB, and the marks."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "t_first_step": time.time(),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "marks": MARKS,
    }
    with open(os.environ["FIRST_STEP_FILE"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
