"""A Lightning callback for the start-up benchmark (``benchmarks/startup_vs_trl.py``): at the end of
the first training batch (after the first optimiser step) it writes the wall-clock time, the
process's CPU time and peak RSS to ``$FIRST_STEP_FILE`` as JSON, then ends the process at once
(``os._exit``), as the TRL side does, so both measure start-up to the first step and nothing after it.
Lightning's stages on the way (setup, fit start, sanity check, train start, the first batch) are
recorded as marks for the timeline (``benchmarks/startup_timeline.py``).

Added to a run with ``+callbacks.first_step._target_=first_step_probe.FirstStepProbe`` and this
folder on ``PYTHONPATH``; it is not part of the library.
"""

from __future__ import annotations

import lightning as L
from startup_marks import mark, marked, record_and_exit


class FirstStepProbe(L.Callback):
    """Records Lightning's stages up to the first optimiser step and the peak RSS, then ends the process."""

    def __init__(self) -> None:
        mark("probe callback instantiated")

    def setup(self, trainer, pl_module, stage) -> None:
        mark("callbacks' setup")

    def on_fit_start(self, trainer, pl_module) -> None:
        mark("on_fit_start (strategy and model set up)")

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        mark("sanity check start")

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        mark("sanity check end")

    def on_train_start(self, trainer, pl_module) -> None:
        mark("on_train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not marked("first batch start"):
            mark("first batch start")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if not marked("first backward"):
            mark("first backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not marked("first optimizer step"):
            mark("first optimizer step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 1:  # the optimiser has stepped once
            record_and_exit()
