"""PerSampleMetrics: every training sample's per-example metrics, one row per sample and epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prefalign.core.jsonl import read_jsonl, write_jsonl
from prefalign.pipelines.sso import distribution_summary
from prefalign.training.callbacks import PerSampleMetrics


class Objective:
    distribution_metrics = ("weight",)


def _trainer(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, is_global_zero=True, world_size=1)


def _batch(callback, trainer, module, ids, weight, extra=None):
    metrics = {"weight": torch.tensor(weight), "loss_scalar": torch.tensor(1.0), **(extra or {})}
    callback.on_train_batch_end(trainer, module, {"loss": None, "metrics": metrics}, {"id": ids}, 0)


def test_rows_per_sample_and_epoch_rewritten_at_every_epoch_end(tmp_path):
    path = tmp_path / "run" / "per_sample_metrics.jsonl"
    callback, module = PerSampleMetrics(str(path)), SimpleNamespace(objective=Objective())
    trainer = _trainer(0)
    callback.on_train_start(trainer, module)
    _batch(callback, trainer, module, ["a", "b"], [0.25, 0.5])
    _batch(callback, trainer, module, ["c"], [0.75])
    callback.on_train_epoch_end(trainer, module)
    assert read_jsonl(path) == [
        {"epoch": 0, "id": "a", "weight": 0.25},
        {"epoch": 0, "id": "b", "weight": 0.5},
        {"epoch": 0, "id": "c", "weight": 0.75},
    ]
    trainer.current_epoch = 1
    _batch(callback, trainer, module, ["b"], [0.125])
    callback.on_train_epoch_end(trainer, module)
    rows = read_jsonl(path)
    assert len(rows) == 4 and rows[-1] == {"epoch": 1, "id": "b", "weight": 0.125}


def test_a_resumed_fit_keeps_the_finished_epochs_only(tmp_path):
    path = tmp_path / "per_sample_metrics.jsonl"
    write_jsonl(path, [{"epoch": 0, "id": "a", "weight": 0.1}, {"epoch": 1, "id": "a", "weight": 0.2}])
    callback, module, trainer = (
        PerSampleMetrics(str(path)),
        SimpleNamespace(objective=Objective()),
        _trainer(1),
    )
    callback.on_train_start(trainer, module)  # resumes epoch 1: its partial rows are redone
    _batch(callback, trainer, module, ["a"], [0.375])
    callback.on_train_epoch_end(trainer, module)
    assert read_jsonl(path) == [
        {"epoch": 0, "id": "a", "weight": 0.1},
        {"epoch": 1, "id": "a", "weight": 0.375},
    ]


def test_named_metrics_and_a_metric_that_is_not_per_example(tmp_path):
    path = tmp_path / "m.jsonl"
    callback, module, trainer = (
        PerSampleMetrics(str(path), metrics=["g"]),
        SimpleNamespace(objective=Objective()),
        _trainer(0),
    )
    _batch(callback, trainer, module, ["a", "b"], [0.5, 0.5], {"g": torch.tensor([1.0, 2.0])})
    callback.on_train_epoch_end(trainer, module)
    assert read_jsonl(path) == [{"epoch": 0, "id": "a", "g": 1.0}, {"epoch": 0, "id": "b", "g": 2.0}]
    with pytest.raises(ValueError, match=r"per_sample_metrics.metrics.*'loss_scalar'.*\['g', 'weight'\]"):
        bad = PerSampleMetrics(str(path), metrics=["loss_scalar"])
        _batch(bad, trainer, module, ["a", "b"], [0.5, 0.5], {"g": torch.tensor([1.0, 2.0])})


def test_distribution_summary():
    summary = distribution_summary([float(v) for v in range(101)])  # 0..100
    assert summary == pytest.approx(
        {
            "mean": 50.0,
            "std": (sum((v - 50) ** 2 for v in range(101)) / 101) ** 0.5,
            "q05": 5.0,
            "q25": 25.0,
            "q50": 50.0,
            "q75": 75.0,
            "q95": 95.0,
        }
    )
    assert distribution_summary([0.0, 1.0])["q25"] == pytest.approx(0.25)
    assert distribution_summary([3.0])["q95"] == 3.0
    with pytest.raises(ValueError, match="at least one value"):
        distribution_summary([])
