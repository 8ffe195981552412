"""Killed runs resume with ``ckpt_path=auto`` in their own folder and end where the unbroken run ends.

A callback stops training (raises) at the start of a chosen optimiser step, as a preemption would;
the run is then started again into the same folder with ``ckpt_path=auto``. 48 samples in batches
of 8: 6 steps an epoch, 2 epochs; ``step.ckpt`` every 4 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from shared import STOP_AT_STEP, Preempted

from prefalign.core.errors import ConfigError
from prefalign.training.resume import checkpoint_global_step, latest_checkpoint
from prefalign.training.run import run_task, train

COMMON = ["trainer.max_epochs=2", "logger=csv", "callbacks.step_checkpoint.every_n_train_steps=4"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _run(compose_train, output, overrides=(), stop_at=None):
    cfg = compose_train([*COMMON, *overrides], output=output)
    if stop_at is not None:
        with open_dict(cfg):
            cfg.callbacks.stop = {"_target_": STOP_AT_STEP, "step": stop_at}
    return cfg, run_task(train, cfg)


@pytest.mark.slow  # five short trainings (about 20 s unloaded, minutes on a busy machine)
@pytest.mark.parametrize(
    ("stop_at", "resumed_from", "step"),
    [
        (7, "last.ckpt", 6),  # at the epoch boundary: last.ckpt (step 6) is newer than step.ckpt (4)
        (10, "step.ckpt", 8),  # mid-epoch: step.ckpt (step 8, batch 2 of epoch 2) is the newest
    ],
)
def test_a_killed_run_resumes_from_its_own_folder_and_equals_the_unbroken_run(
    compose_train, tmp_path, stop_at, resumed_from, step
):
    _run(compose_train, "unbroken")
    with pytest.raises(Preempted):
        _run(compose_train, "killed", stop_at=stop_at)
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoints / resumed_from
    assert checkpoint_global_step(checkpoints / resumed_from) == step
    cfg, _ = _run(compose_train, "killed", ["ckpt_path=auto"])  # relaunched into the same folder
    assert cfg.ckpt_path == str(checkpoints / resumed_from)

    expected = _weights(tmp_path / "unbroken" / "checkpoints" / "last.ckpt")
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12
    assert final["ChatDataModule"]["train_order"]["epoch"] == 1
    for name, tensor in expected.items():  # bit for bit: same batches in the same order
        torch.testing.assert_close(final["state_dict"][name], tensor, rtol=0, atol=0, msg=name)


def test_auto_without_a_checkpoint_starts_from_scratch(compose_train, tmp_path):
    cfg, _ = _run(compose_train, "fresh", ["ckpt_path=auto", "trainer.max_epochs=1"])
    assert cfg.ckpt_path is None
    assert checkpoint_global_step(tmp_path / "fresh" / "checkpoints" / "last.ckpt") == 6


def test_an_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"last\.ckpt cannot be read"):
        latest_checkpoint(tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_mid_epoch_checkpoint_of_two_ranks_stops_a_one_rank_resume(compose_train, tmp_path):
    """N -> M ranks: a mid-epoch checkpoint needs the same world size; an epoch-end one does not."""
    spawn = ["trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2"]
    spawn += ["trainer.precision=32-true"]
    # 2 ranks x 8 samples a step: 3 steps an epoch; step.ckpt at step 2 is mid-epoch
    _run(
        compose_train,
        "two",
        [*spawn, "trainer.max_epochs=1", "callbacks.step_checkpoint.every_n_train_steps=2"],
    )
    checkpoints = tmp_path / "two" / "checkpoints"
    mid = torch.load(checkpoints / "step.ckpt", map_location="cpu", weights_only=False)
    assert mid["ChatDataModule"]["train_order"] == {
        "epoch": 0,
        "batches_consumed": 2,
        "batches_per_epoch": 3,
        "world_size": 2,
        "batch_size": 8,
    }
    with pytest.raises(ConfigError, match=r"mid-epoch \(epoch 0, batch 2 of 3\) by 2 rank\(s\)"):
        _run(compose_train, "one", [f"ckpt_path={checkpoints / 'step.ckpt'}"])
    _run(compose_train, "one_from_epoch_end", [f"ckpt_path={checkpoints / 'epoch_000.ckpt'}"])
    # epoch 2 on one rank: 6 steps after the 3 of the two-rank epoch
    assert checkpoint_global_step(tmp_path / "one_from_epoch_end" / "checkpoints" / "last.ckpt") == 9


def test_auto_reads_the_step_of_sharded_checkpoint_folders(tmp_path):
    """FSDP / FSDP2 write folders whose meta.pt holds the loop state; a tie prefers last.ckpt."""
    for name, step in (("last.ckpt", 6), ("step.ckpt", 8)):
        (tmp_path / name).mkdir()
        torch.save({"global_step": step}, tmp_path / name / "meta.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "step.ckpt"
    torch.save({"global_step": 8}, tmp_path / "last.ckpt" / "meta.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "step.ckpt" / "meta.pt").unlink()  # unreadable: skipped (set aside), last.ckpt taken
    assert latest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert (tmp_path / "step.ckpt.damaged").is_dir()
    (tmp_path / "last.ckpt" / "meta.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no intact checkpoint .*last\.ckpt/meta\.pt cannot be read"):
        latest_checkpoint(tmp_path)


STOP_MODULE = """
import lightning as L


class StopAtStep(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"preempted at step {self.step}")
"""


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("stop_at", "resumed_from"), [(2, "last.ckpt"), (3, "step.ckpt")])
def test_a_killed_fsdp2_run_resumes_from_its_sharded_checkpoint(tmp_path, run_app, stop_at, resumed_from):
    """Two FSDP2 ranks on CPU; sharded folders; 32 samples / (8 x 2 ranks) = 2 steps an epoch."""
    (tmp_path / "stop_callback.py").write_text(STOP_MODULE)
    common = [
        "trainer=fsdp2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "data.train.limit=32",
        "data.val.limit=8",
        "data.batch_size=8",
        "callbacks.progress_bar=null",
        "logger=csv",
        "callbacks.step_checkpoint.every_n_train_steps=1",
    ]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}:{Path(__file__).parents[2] / 'src'}"}
    unbroken = run_app("prefalign.apps.train", [*common, "hydra.run.dir=unbroken"], tmp_path, **env)
    assert unbroken.returncode == 0, unbroken.stderr[-4000:]
    stop = ["+callbacks.stop._target_=stop_callback.StopAtStep", f"+callbacks.stop.step={stop_at}"]
    killed = run_app("prefalign.apps.train", [*common, *stop, "hydra.run.dir=killed"], tmp_path, **env)
    assert killed.returncode != 0 and f"preempted at step {stop_at}" in killed.stderr
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert checkpoints.joinpath(resumed_from).is_dir()  # a sharded checkpoint folder
    assert checkpoint_global_step(checkpoints / resumed_from) == stop_at
    assert latest_checkpoint(checkpoints) == checkpoints / resumed_from  # step 3: batch 1 of epoch 2
    resumed = run_app(
        "prefalign.apps.train", [*common, "hydra.run.dir=killed", "ckpt_path=auto"], tmp_path, **env
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    meta = torch.load(checkpoints / "last.ckpt" / "meta.pt", map_location="cpu", weights_only=False)
    assert meta["global_step"] == 4
    assert meta["ChatDataModule"]["train_order"] == {
        "epoch": 1,
        "batches_consumed": 2,
        "batches_per_epoch": 2,
        "world_size": 2,
        "batch_size": 8,
    }
    # Bit for bit, as the single-process resumes above. (They once differed by up to 3e-5: a
    # sharded strategy restores after configure_optimizers, whose estimated_stepping_batches had
    # already built the training loader in epoch 0's order; the data module now has it rebuilt.)
    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "unbroken" / "hf" / "model.safetensors"))
    final = load_file(str(tmp_path / "killed" / "hf" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0, msg=name)
