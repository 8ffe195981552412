"""prefalign's side of the start-up timeline (``benchmarks/startup_timeline.py``): runs
``prefalign-train`` as ``python -m prefalign.apps.train`` would, with wall-clock marks around each
stage of the way to the first optimiser step, then ends at that step as ``first_step_probe`` does.

    python prefalign_timeline.py <prefalign-train overrides...>

Needs ``$FIRST_STEP_FILE`` (where the JSON goes) and this folder on ``PYTHONPATH``; the run's
overrides must add ``+callbacks.first_step._target_=first_step_probe.FirstStepProbe``. Every stage
is timed by wrapping the library function that does it (the functions keep their behaviour); the
stages inside ``Trainer.fit`` are marked by the probe's Lightning hooks. Not part of the library.
"""

from __future__ import annotations

import functools
import sys

from startup_marks import mark

mark("interpreter and site ready")


def timed(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that marks the start and end of every call (``label``)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        mark(f"{label} start")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{label} end")

    setattr(owner, name, wrapper)


def main() -> None:
    import prefalign.apps.train as app

    mark("import prefalign.apps.train (hydra, omegaconf)")
    import prefalign.training.run as run

    mark("import prefalign.training.run (torch, lightning, transformers, datasets)")
    import hydra.utils
    import lightning as L

    from prefalign.data.datamodule import ChatDataModule
    from prefalign.data.preference import PreferenceDataModule

    timed(run, "train", "train()")
    timed(run, "load_model_and_tokenizer", "model and tokenizer")
    timed(run, "objective_wiring", "objective wiring (live reference model)")
    timed(run, "attach_frozen_columns", "frozen columns (reference log-probs)")
    timed(run, "build_loggers", "loggers")
    timed(L.Trainer, "__init__", "Trainer()")
    timed(L.Trainer, "fit", "Trainer.fit")
    timed(ChatDataModule, "setup", "data setup (read, tokenise)")
    timed(PreferenceDataModule, "setup", "data setup (read, tokenise)")
    instantiate = hydra.utils.instantiate

    def instantiate_timed(config, *args, **kwargs):
        target = str(config.get("_target_", "?")) if hasattr(config, "get") else "?"
        mark(f"instantiate {target} start")
        try:
            return instantiate(config, *args, **kwargs)
        finally:
            mark(f"instantiate {target} end")

    run.instantiate = instantiate_timed
    sys.argv = ["prefalign-train", *sys.argv[1:]]
    app.main()


if __name__ == "__main__":
    main()
