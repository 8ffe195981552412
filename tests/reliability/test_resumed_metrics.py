"""Issue 33 point 3: a run resumed in its own folder (``ckpt_path=auto``) continues
``csv/metrics.csv``: every step the first part logged before its checkpoint is kept, the steps it
trained after the checkpoint are logged once, by the resumed fit, and the file equals the file of a
run that never stopped. The run is stopped by an exception at a chosen step, as a kill stops it; the real kill
(SIGKILL) of two DDP ranks is in test_ddp_faults.py."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import open_dict
from shared import STOP_AT_STEP, Preempted

from prefalign.training.loggers import CSVLogger

# 16 samples in batches of 4: 4 steps an epoch, 2 epochs; step.ckpt every 3 steps
PLAN = ["data.batch_size=4", "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_train_steps=3"]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _logged(rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    """Every (step, metric) with a value, in the file's order (not ``epoch``: Lightning adds it to
    each row, a step's train and val rows both hold it)."""
    return [(int(r["step"]), k) for r in rows for k, v in r.items() if k not in ("step", "epoch") and v]


def test_a_resumed_run_keeps_every_earlier_step_and_equals_the_unbroken_file(tiny_run):
    tiny_run(*PLAN, output="unbroken").train()
    killed = tiny_run(*PLAN, output="killed")
    with open_dict(killed.cfg):
        killed.cfg.callbacks.stop = {"_target_": STOP_AT_STEP, "step": 7}
    with pytest.raises(Preempted):
        killed.train()
    first = _rows(killed.out)
    # steps 0-6 trained and logged (and step 7's learning rate, logged before the batch); step.ckpt
    # holds step 6: the resumed fit trains steps 6 and 7 again
    assert max(int(r["step"]) for r in first) == 7

    tiny_run(*PLAN, "ckpt_path=auto", output="killed").train()  # resumes from step.ckpt (step 6)
    whole, unbroken = _rows(killed.out), _rows(killed.out.parent / "unbroken")
    assert whole == unbroken  # the whole run's record: the same steps, metrics and values
    assert set(_logged(first)) <= set(_logged(whole))  # every step of the first part is still there
    logged = _logged(whole)
    assert len(logged) == len(set(logged))  # no (step, metric) written twice
    assert {int(r["step"]) for r in whole} == set(range(8))


def test_a_row_cut_short_by_a_kill_is_replaced_and_a_fresh_run_starts_a_new_file(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text("a,step\n1.0,0\n2.0,1\n3.0,2\n4.")  # killed mid-row
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.resume_at(2)
    logger.log_metrics({"a": 0.5}, step=1)  # logged again by the resumed fit: the earlier row is kept
    logger.log_metrics({"a": 3.5}, step=2)
    logger.save()
    assert (folder / "metrics.csv").read_text() == "a,step\n1.0,0\n2.0,1\n3.5,2\n"

    fresh = CSVLogger(tmp_path, name="csv", version="")  # no checkpoint: a new run in this folder
    fresh.log_metrics({"b": 1.0}, step=0)
    fresh.save()
    assert (folder / "metrics.csv").read_text() == "b,step\n1.0,0\n"
    with pytest.raises(RuntimeError, match="before anything is logged"):
        fresh.resume_at(3)
