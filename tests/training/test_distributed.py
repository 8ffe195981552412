"""Two-process data parallel (DDP, spawned) and FSDP2 (ModelParallelStrategy) on CPU over gloo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefalign.training.run import run_task, train

pytestmark = pytest.mark.distributed


def test_two_process_ddp_spawn_shards_batches_and_returns_metrics(compose_train):
    cfg = compose_train(
        [
            "trainer=ddp",
            "trainer.strategy=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "logger=csv",
        ]
    )
    metrics = run_task(train, cfg)  # comes back from rank 0 through the spawn launcher
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    ckpt = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    # 48 samples, batches of 8 per rank, 2 ranks: 3 optimiser steps (one process would take 6)
    assert ckpt["global_step"] == 3


def test_two_process_fsdp2_trains_saves_sharded_checkpoints_and_resumes(tmp_path, session_cache, run_app):
    common = [
        "trainer=fsdp2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
        "data.train.limit=32",
        "data.val.limit=16",
        "data.batch_size=8",
        "callbacks.progress_bar=null",
        f"paths.cache_dir={session_cache}",
    ]
    first = run_app(
        "prefalign.apps.train",
        [*common, "trainer.max_epochs=1", "hydra.run.dir=run1"],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoint = tmp_path / "run1" / "checkpoints" / "epoch_000.ckpt"
    assert checkpoint.is_dir()  # a distributed (sharded) checkpoint
    assert (checkpoint / "meta.pt").exists()
    assert len(list(checkpoint.glob("*.distcp"))) == 2  # one shard per rank
    resumed = run_app(
        "prefalign.apps.train",
        [*common, "trainer.max_epochs=2", f"ckpt_path={checkpoint}", "hydra.run.dir=run2"],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    meta = torch.load(
        tmp_path / "run2" / "checkpoints" / "last.ckpt" / "meta.pt", map_location="cpu", weights_only=False
    )
    assert meta["global_step"] == 4  # 32 samples / (8 x 2 ranks) = 2 steps an epoch, 2 epochs
    first_meta = torch.load(checkpoint / "meta.pt", map_location="cpu", weights_only=False)
    assert meta["wandb_run_id"] == first_meta["wandb_run_id"]
    assert (tmp_path / "run2" / "hf" / "model.safetensors").exists()  # gathered from the shards
