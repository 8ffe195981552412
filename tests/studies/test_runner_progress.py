"""The study runner's live progress (prefalign.studies.runner): runs done, the current epoch and
metric read from a growing metrics.csv, and the time left, on a fake clock and on a running app."""

from __future__ import annotations

import logging
import os
import time

import pytest

HEADER = "epoch,step,train/loss,val/exact_match\n"


@pytest.fixture(scope="module")
def run():
    from prefalign.studies import runner

    return runner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_left_extrapolates_the_work_done(run):
    clock = FakeClock()
    progress = run.StageProgress("poft", total_runs=4, epochs_per_run=5, clock=clock)
    clock.now += 10
    progress.update(0, epoch=0)
    assert progress.seconds_left() is None
    assert progress.line() == "poft: 0/4 runs done, epoch 1/5 | 10s elapsed, time left unknown yet"
    clock.now += 10  # two of the first run's five epochs in 20 s: 0.4 runs
    progress.update(0, epoch=2, metric=("val/exact_match", 0.25))
    assert progress.seconds_left() == pytest.approx(20 * 3.6 / 0.4)
    assert progress.line() == (
        "poft: 0/4 runs done, epoch 3/5, val/exact_match 0.250 | 20s elapsed, about 3m00s left"
    )
    clock.now += 30  # no new epoch: the estimate counts down
    assert progress.seconds_left() == pytest.approx(180 - 30)
    clock.now = 1100.0  # two runs done in 100 s, between runs: their mean duration
    progress.update(2)
    assert progress.seconds_left() == pytest.approx(100.0)
    assert progress.line() == "poft: 2/4 runs done | 1m40s elapsed, about 1m40s left"
    progress.update(4, epoch=4)
    assert progress.work_done() == 4 and progress.seconds_left() == 0


def test_unknown_epoch_count_counts_finished_runs_only(run):
    clock = FakeClock()
    progress = run.StageProgress("sso", total_runs=3, clock=clock)
    clock.now += 30
    progress.update(1, epoch=1, metric=("train/loss", 4.1234))
    assert progress.seconds_left() == pytest.approx(60.0)
    assert progress.line().startswith("sso: 1/3 runs done, epoch 2, train/loss 4.123 | 30s elapsed")


def test_a_growing_metrics_file_reports_its_epochs(run, tmp_path):
    path = tmp_path / "metrics.csv"
    assert run.metrics_progress(path) == (None, None)  # not written yet
    path.write_text(HEADER + ",9,,\n0,10,2.5,\n")
    assert run.metrics_progress(path) == (0, ("train/loss", 2.5))
    with path.open("a") as f:
        f.write("0,19,,0.30\n1,20,1.5,\n")
    assert run.metrics_progress(path) == (1, ("val/exact_match", 0.3))  # val/ first, when there is one
    with path.open("a") as f:
        f.write("1,29,,0.4")  # a row cut while being written
    epoch, (name, value) = run.metrics_progress(path)
    assert epoch == 1 and name == "val/exact_match" and value in (0.3, 0.4)
    with path.open("a") as f:
        f.write("5\n2,30,1.0,\n")
    assert run.metrics_progress(path) == (2, ("val/exact_match", 0.45))


def test_the_watcher_counts_finished_runs_and_follows_the_newest_metrics(run, tmp_path):
    old = tmp_path / "runs" / "0" / "csv" / "metrics.csv"  # an earlier attempt's file: not this stage's
    old.parent.mkdir(parents=True)
    old.write_text(HEADER + "7,70,0.1,0.9\n")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    log_file = tmp_path / "poft.log"
    log_file.write_text("[2026-11-29 19:37:15,667][HYDRA] Launching 2 jobs locally\n")
    watcher = run.StageWatcher(run.StageProgress("poft", 2, 3), log_file, [tmp_path / "runs"])
    assert watcher.poll() == (0, None, None)
    first = tmp_path / "runs" / "0" / "csv" / "metrics.csv"
    first.write_text(HEADER + "0,10,2.0,\n0,19,,0.1\n1,20,1.8,\n")
    assert watcher.poll() == (0, 1, ("val/exact_match", 0.1))
    with log_file.open("a") as f:  # Lightning's plain line and Hydra's logged copy: one run
        f.write("INFO: `Trainer.fit` stopped: `max_epochs=3` reached.\n")
        f.write("[2026-11-29 19:38:02,535][lightning.pytorch.utilities.rank_zero][INFO] - ")
    assert watcher.poll() == (1, None, None)  # between runs
    with log_file.open("a") as f:
        f.write("`Trainer.fit` stopped: `max_epochs=3` reached.\n")
    assert watcher.poll() == (1, None, None)
    second = tmp_path / "runs" / "1" / "csv" / "metrics.csv"
    second.parent.mkdir(parents=True)
    second.write_text(HEADER + "0,10,2.2,\n")
    assert watcher.poll() == (1, 0, ("train/loss", 2.2))
    assert watcher.progress.line().startswith("poft: 1/2 runs done, epoch 1/3, train/loss 2.200 |")


FAKE_APP = """
import pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
rows = "epoch,step,train/loss,val/exact_match\\n"
for epoch in range(3):
    rows += f"{epoch},{epoch * 10},{2.0 - epoch},\\n{epoch},{epoch * 10 + 9},,{0.2 * (epoch + 1)}\\n"
    (folder / "metrics.csv").write_text(rows)
    time.sleep(1.0)
print("`Trainer.fit` stopped: `max_epochs=3` reached.", flush=True)
"""


@pytest.mark.subprocesses
def test_run_app_streams_the_progress_of_a_running_app(run, tmp_path, monkeypatch, caplog):
    (tmp_path / "fake_app.py").write_text(FAKE_APP)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setattr(run, "POLL_S", 0.2)
    runs = tmp_path / "runs"
    watcher = run.StageWatcher(run.StageProgress("fake", 1, 3), tmp_path / "fake.log", [runs])
    with caplog.at_level(logging.INFO, logger="prefalign.studies"):
        run.run_app("fake_app", [str(runs / "0")], tmp_path / "fake.log", watcher)
    lines = [r.getMessage().strip() for r in caplog.records]
    shown = [line for line in lines if line.startswith("fake: ")]
    for epoch in (1, 2, 3):  # every epoch seen while the app ran, with its metric
        assert any(
            line.startswith(f"fake: 0/1 runs done, epoch {epoch}/3, val/exact_match {0.2 * epoch:.3f}")
            for line in shown
        ), shown
    assert any("about" in line and "left" in line for line in shown)
    assert lines[-1].startswith("done in")
    assert "`Trainer.fit` stopped" in (tmp_path / "fake.log").read_text()  # the app's log is intact
