"""Wall-clock marks and the end-of-first-step record shared by the start-up benchmark's probes
(``first_step_probe.py`` for prefalign, ``prefalign_timeline.py``, and ``trl_first_step.py``'s
own copy for TRL's environment). Imports nothing heavy: the timeline launcher imports it first."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

# (name, wall-clock time, CPU seconds used so far, peak RSS so far in MiB) of the stages passed so
# far, in order
MARKS: list[tuple[str, float, float, float]] = []


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: on Linux it keeps, across ``exec``, the peak of the forked copy of the parent
    (here the benchmark, with torch imported), so it never reads below the parent's RSS. Elsewhere
    (no ``/proc``) ``ru_maxrss`` (KiB on Linux, bytes on macOS) is the fallback.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def mark(name: str) -> None:
    """Record that stage ``name`` is reached now."""
    MARKS.append((name, time.time(), cpu_seconds(), peak_rss_mib()))


def marked(name: str) -> bool:
    """Whether stage ``name`` was marked already."""
    return any(m[0] == name for m in MARKS)


def record_and_exit() -> None:
    """Write ``{"t_first_step", "cpu_s", "peak_rss_mib", "marks"}`` to ``$FIRST_STEP_FILE`` and end
    the process at once (exit 0): wall-clock time now, CPU time (user + system) used so far, peak
    RSS in MiB, and the marks."""
    record = {
        "t_first_step": time.time(),
        "cpu_s": cpu_seconds(),
        "peak_rss_mib": peak_rss_mib(),
        "marks": MARKS,
    }
    with open(os.environ["FIRST_STEP_FILE"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
