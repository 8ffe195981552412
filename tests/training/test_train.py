"""End-to-end training: checkpoints every epoch, exact resume, loggers, config errors (a multirun
sweep: tests/training/test_poft_cli.py and, with two ranks a job, test_multirun_ddp.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from prefalign.core.errors import ConfigError
from prefalign.training.callbacks import WANDB_RUN_ID_KEY
from prefalign.training.run import run_task, train


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _column(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


def test_ce_run_writes_epoch_checkpoints_csv_and_offline_wandb(compose_train, tmp_path):
    cfg = compose_train(["trainer.max_epochs=2"])
    metrics = run_task(train, cfg)
    out = Path(cfg.paths.output_dir)
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]
    rows = _read_csv(out / "csv" / "metrics.csv")
    losses = _column(rows, "train/loss")
    assert len(losses) == 2 * 48 // 8
    assert losses[-1] < losses[0]  # it learns
    assert len(_column(rows, "val/loss")) == 2  # one validation per epoch
    assert "train/lr" in rows[0] or any(r.get("train/lr") for r in rows)
    assert "val/loss" in metrics
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert runs[0].name.endswith(ckpt[WANDB_RUN_ID_KEY])
    assert ckpt["global_step"] == 12
    # the Hugging Face export holds the final weights and loads as a model
    from prefalign.models.loading import load_causal_lm

    exported = load_causal_lm(str(out / "hf"))
    torch.testing.assert_close(
        exported.model.embed_tokens.weight, ckpt["state_dict"]["model.model.embed_tokens.weight"]
    )


def test_resume_is_exact_and_continues_the_wandb_run(compose_train, tmp_path):
    """A run stopped after epoch 1 and resumed equals the run that never stopped.

    The checkpoint written at the end of epoch 1 (``epoch_000.ckpt``, which is what ``last.ckpt``
    holds at that moment) is where an interrupted run resumes.
    """
    straight = compose_train(["trainer.max_epochs=2"], output="straight")
    run_task(train, straight)
    checkpoints = Path(straight.paths.output_dir) / "checkpoints"
    resumed = compose_train(
        ["trainer.max_epochs=2", f"ckpt_path={checkpoints / 'epoch_000.ckpt'}"], output="resumed"
    )
    run_task(train, resumed)

    def load(path):
        return torch.load(path, map_location="cpu", weights_only=False)

    one, a = load(checkpoints / "epoch_000.ckpt"), load(checkpoints / "last.ckpt")
    b = load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert one["global_step"] == 6
    assert a["global_step"] == b["global_step"] == 12
    assert a["epoch"] == b["epoch"]
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    assert b[WANDB_RUN_ID_KEY] == one[WANDB_RUN_ID_KEY]
    rows = _read_csv(Path(resumed.paths.output_dir) / "csv" / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert min(steps) >= 6  # the resumed run logs from step 6 on, not from 0


def test_sample_mean_objective_trains(compose_train):
    cfg = compose_train(["objective.reduction=sample_mean", "trainer.max_steps=3", "logger=csv"])
    metrics = run_task(train, cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("data.max_length=0", "data.max_length"),
        ("scheduler.warmup_ratio=1.5", "scheduler.warmup_ratio"),
        ("data.train.path=/nonexistent/train.jsonl", "data.train.path"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
        ("trainer=fsdp", "fsdp2"),
    ],
)
def test_bad_config_values_fail_at_start_up_naming_the_key(compose_train, override, message):
    cfg = compose_train([override])
    if override == "trainer=fsdp":
        with open_dict(cfg):
            cfg.trainer.accelerator = "cpu"
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_default_callbacks_guard_against_non_finite_values_and_write_checkpoints_atomically(compose_train):
    from hydra.utils import instantiate

    from prefalign.training.checkpointing import AtomicCheckpoints
    from prefalign.training.guards import NonFiniteGuard

    cfg = compose_train()
    callbacks = {name: instantiate(c) for name, c in cfg.callbacks.items() if c is not None}
    assert isinstance(callbacks["nonfinite_guard"], NonFiniteGuard)
    assert callbacks["nonfinite_guard"].max_skipped_steps == 0  # the default is to stop
    assert isinstance(callbacks["atomic_checkpoints"], AtomicCheckpoints)
