"""A Lightning callback for the start-up benchmark (``benchmarks/startup_vs_trl.py``): at the end of
the first training batch (after the first optimiser step) it writes the wall-clock time and the
process's peak RSS to ``$FIRST_STEP_FILE`` as JSON, then ends the process at once (``os._exit``),
as the TRL side does, so both measure start-up to the first step and nothing after it.

Added to a run with ``+callbacks.first_step._target_=first_step_probe.FirstStepProbe`` and this
folder on ``PYTHONPATH``; it is not part of the library.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import lightning as L


def peak_rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_and_exit() -> None:
    """Write ``{"t_first_step": <epoch seconds>, "peak_rss_mib": ...}`` to ``$FIRST_STEP_FILE``; exit 0."""
    record = {"t_first_step": time.time(), "peak_rss_mib": peak_rss_mib()}
    with open(os.environ["FIRST_STEP_FILE"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class FirstStepProbe(L.Callback):
    """Records the first optimiser step's time and the peak RSS, then ends the process."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 1:  # the optimiser has stepped once
            record_and_exit()
