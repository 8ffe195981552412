"""A signal during an SSO stage (issue 23 point 1): the stage is recorded and the rerun resumes it.

Uses the fake sampler and fit of ``test_sso_artefacts.py`` (every stage's bookkeeping in a second);
the real signal sent to a real ``prefalign-sso`` fit is in ``tests/reliability/test_signals.py``.
"""

from __future__ import annotations

import json
import signal

import pytest
from test_sso_artefacts import CALLS, _pipeline, fake_fit

from prefalign.core.signals import Interrupted, raise_on_signals


def _signal_once(fn, signum):
    """``fn`` preceded, on its first call only, by ``signum`` sent to this thread."""
    calls = []

    def wrapped(*args, **kwargs):
        if not calls:
            calls.append(1)
            signal.raise_signal(signum)
        return fn(*args, **kwargs)

    return wrapped


def test_a_signal_during_sampling_is_recorded_and_the_rerun_samples_again(tmp_path, monkeypatch, caplog):
    CALLS.clear()
    pipeline = _pipeline(tmp_path, monkeypatch)
    monkeypatch.setattr(pipeline, "sample", _signal_once(pipeline.sample, signal.SIGTERM))
    with pytest.raises(Interrupted) as err, raise_on_signals():
        pipeline.run()
    assert err.value.code == 143
    iteration = tmp_path / "work" / "iter_1"
    record = json.loads((iteration / "sample.interrupted.json").read_text())
    assert record["stage"] == "sample" and record["signal"] == "SIGTERM" and record["exit_status"] == 143
    assert (iteration / "allocate.done.json").exists() and not (iteration / "sample.done.json").exists()

    with caplog.at_level("WARNING", logger="prefalign.pipelines.sso"):
        _pipeline(tmp_path, monkeypatch).run()
    assert "iteration 1: sample was interrupted by SIGTERM" in caplog.text
    assert "running it from its start" in caplog.text
    assert (iteration / "sample.done.json").exists() and not (iteration / "sample.interrupted.json").exists()


def _recording_fit(seen: list):
    fit = fake_fit()

    def recording(train_cfg):
        seen.append(train_cfg.get("ckpt_path"))
        return fit(train_cfg)

    return recording


@pytest.mark.parametrize(
    ("rerun_overrides", "resumed"),
    [
        ((), "auto"),
        (("objective_overrides=['objective.beta=0.35']",), None),
    ],  # settings changed: from scratch
)
def test_an_interrupted_fit_continues_from_its_checkpoint_only_with_unchanged_settings(
    tmp_path, monkeypatch, rerun_overrides, resumed
):
    CALLS.clear()
    first: list = []
    pipeline = _pipeline(tmp_path, monkeypatch, fit=_signal_once(_recording_fit(first), signal.SIGINT))
    with pytest.raises(Interrupted) as err, raise_on_signals():
        pipeline.run()
    assert err.value.code == 130 and first == []
    record = json.loads((tmp_path / "work" / "iter_1" / "train.interrupted.json").read_text())
    assert record["stage"] == "train" and record["signal"] == "SIGINT"

    rerun: list = []
    _pipeline(tmp_path, monkeypatch, *rerun_overrides, fit=_recording_fit(rerun)).run()
    assert rerun == [resumed, None]  # iteration 1 resumed (or not), iteration 2 fresh
