"""Damaged checkpoints and exports, checkpoints of another model shape, and a run killed while it
wrote its final export (issue 23 points 2, 4 and 5)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from shared import app_env

from prefalign.core.checksums import CHECKSUMS, CorruptArtefactError, verify_checksums, write_checksums
from prefalign.core.errors import ConfigError
from prefalign.training.resume import latest_checkpoint
from prefalign.training.verification import verify_checkpoint


def flip_tensor_bytes(path: Path, count: int = 64) -> str:
    """Flip ``count`` bytes in the middle of the largest entry of a checkpoint archive (tensor data);
    returns the entry's name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        f.seek(start)
        data = f.read(count)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    return info.filename


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


# -- point 4: verified checkpoints and exports --------------------------------------------------------


@pytest.mark.slow  # three tiny trainings in this process (about 10 s unloaded)
def test_flipped_bytes_in_a_checkpoint_are_named_and_auto_falls_back_to_the_newest_intact_one(
    tiny_run, caplog
):
    run = tiny_run("trainer.max_epochs=2")
    run.train()
    expected = {k: v.clone() for k, v in _state(run.checkpoints / "last.ckpt").items()}  # before the flips
    entries = {name: flip_tensor_bytes(run.checkpoints / name) for name in ("last.ckpt", "epoch_001.ckpt")}

    explicit = tiny_run("trainer.max_epochs=2", f"ckpt_path={run.checkpoints / 'last.ckpt'}", output="other")
    with pytest.raises(CorruptArtefactError) as err:
        explicit.train()
    assert f"checkpoint {run.checkpoints / 'last.ckpt'}: entry {entries['last.ckpt']} is damaged" in str(
        err.value
    )
    assert "Bad CRC-32" in str(err.value)

    # in place with ckpt_path=auto: both step-4 checkpoints are damaged, epoch_000 (step 2) is intact
    resumed = tiny_run("trainer.max_epochs=2", "ckpt_path=auto")
    with caplog.at_level("INFO", logger="prefalign.training.resume"):
        resumed.train()
    assert resumed.cfg.ckpt_path == str(run.checkpoints / "epoch_000.ckpt")
    assert (run.checkpoints / "last.ckpt.damaged").exists()  # set aside; the resumed fit wrote last.ckpt
    assert f"skipping {run.checkpoints / 'last.ckpt'}: checkpoint" in caplog.text
    assert "(the newest intact checkpoint)" in caplog.text
    final = _state(run.checkpoints / "last.ckpt")  # epoch 2 trained again: the same weights
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0, msg=name)


def test_auto_skips_damaged_checkpoints_and_sets_them_aside(tmp_path, caplog):
    for name, step in (("epoch_000.ckpt", 2), ("epoch_001.ckpt", 4), ("last.ckpt", 4), ("step.ckpt", 3)):
        torch.save({"global_step": step, "w": torch.full((1000,), float(step))}, tmp_path / name)
    flip_tensor_bytes(tmp_path / "last.ckpt")
    flip_tensor_bytes(tmp_path / "epoch_001.ckpt")
    with caplog.at_level("INFO", logger="prefalign.training.resume"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step.ckpt"  # step 3 beats epoch_000 (step 2)
    assert f"skipping {tmp_path / 'last.ckpt'}: checkpoint {tmp_path / 'last.ckpt'}: entry" in caplog.text
    assert "(global step 3) (the newest intact checkpoint)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_000.ckpt",
        "epoch_001.ckpt.damaged",
        "last.ckpt.damaged",
        "step.ckpt",
    ]


def test_no_intact_checkpoint_names_each_one(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"global_step": 3, "w": torch.ones(1000)}, tmp_path / "step.ckpt")
    entry = flip_tensor_bytes(tmp_path / "step.ckpt")
    with pytest.raises(ValueError) as err:
        latest_checkpoint(tmp_path)
    message = str(err.value)
    assert "no intact checkpoint" in message and "last.ckpt cannot be read" in message
    assert f"step.ckpt: entry {entry} is damaged" in message


def test_a_truncated_or_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "w": torch.ones(1000)}, path)
    verify_checkpoint(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(
        CorruptArtefactError, match=rf"checkpoint {path} is not a readable checkpoint archive"
    ):
        verify_checkpoint(path)
    if os.geteuid() != 0:  # root reads any file
        path.chmod(0)
        with pytest.raises(
            CorruptArtefactError, match=rf"checkpoint {path} cannot be read \(PermissionError"
        ):
            verify_checkpoint(path)


def test_a_damaged_export_is_refused_naming_the_file(tmp_path, tiny_model_and_tokenizer):
    from prefalign.models.loading import load_causal_lm

    model, tokenizer = tiny_model_and_tokenizer
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_checksums(folder)
    assert verify_checksums(folder)
    load_causal_lm(str(folder))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtefactError, match=rf"{folder}: file model.safetensors is corrupt: SHA-256"):
        load_causal_lm(str(folder))
    weights.unlink()
    with pytest.raises(
        CorruptArtefactError, match=rf"file model.safetensors is recorded in {CHECKSUMS} but missing"
    ):
        verify_checksums(folder)


# -- point 5: a checkpoint of another model shape -----------------------------------------------------


def test_a_checkpoint_of_another_model_shape_names_the_file_and_the_config_keys(tiny_run):
    run = tiny_run("trainer.max_epochs=1")
    run.train()
    ckpt = run.checkpoints / "last.ckpt"
    assert torch.load(ckpt, weights_only=False, mmap=True)["model_config"]["hidden_size"] == 64
    other = tiny_run(
        "trainer.max_epochs=2",
        f"ckpt_path={ckpt}",
        "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=96",
        output="wider",
    )
    with pytest.raises(ConfigError) as err:
        other.train()
    message = str(err.value)
    assert f"checkpoint {ckpt} was saved from a model of another shape" in message
    assert "hidden_size: 64 in the checkpoint, 32 now" in message
    assert "intermediate_size: 128 in the checkpoint, 96 now" in message
    assert "size mismatch" not in message


# -- point 2: a run killed while writing its final export ---------------------------------------------

KILLER = """
import os
import signal

import lightning as L

import prefalign.training.checkpointing as checkpointing


class KillDuringExport(L.Callback):
    \"\"\"Kills this process (SIGKILL) after the export's files are written, before the rename.\"\"\"

    def __init__(self):
        write = checkpointing.write_hf_export

        def write_then_die(*args, **kwargs):
            write(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        checkpointing.write_hf_export = write_then_die
"""


def test_a_finished_checkpoint_without_its_export_is_exported_by_the_rerun(tiny_run):
    """In process: the export removed and a stray temporary folder left, as a kill during the
    export leaves them (the real kill: the slow test below)."""
    run = tiny_run("trainer.max_epochs=1")
    run.train()
    exported = (run.out / "hf" / "model.safetensors").read_bytes()
    (run.out / "hf").rename(run.out / ".hf.abc123.tmp")
    tiny_run("trainer.max_epochs=1", "ckpt_path=auto").train()
    assert (run.out / "hf" / "config.json").is_file()
    assert not list(run.out.glob(".hf.*"))
    assert verify_checksums(run.out / "hf")
    assert (run.out / "hf" / "model.safetensors").read_bytes() == exported  # from the same weights


@pytest.mark.slow  # two tiny trainings in subprocesses (about 15 s unloaded)
def test_a_run_killed_during_its_final_export_is_completed_by_the_rerun(tmp_path, session_cache):
    (tmp_path / "killer.py").write_text(KILLER)
    env = app_env(tmp_path, session_cache, python_path=tmp_path)
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "prefalign.apps.train",
        "experiment=tiny_ce",
        "data.train.limit=16",
        "data.val.limit=4",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run}",
    ]
    killed = subprocess.run(
        [*command, "+callbacks.kill={_target_: killer.KillDuringExport}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run / "hf").exists()
    (stray,) = run.glob(".hf.*.tmp")
    assert (stray / "config.json").exists()  # killed after writing, before the rename

    rerun = subprocess.run(
        [*command, "ckpt_path=auto"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert "training had already finished (global step 2) but the export" in out and "exporting now" in out
    assert f"removing {stray}" in out
    assert not list(run.glob(".hf.*"))
    assert verify_checksums(run / "hf")
    from safetensors.torch import load_file

    exported = load_file(run / "hf" / "model.safetensors")
    trained = _state(run / "checkpoints" / "last.ckpt")
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, trained[f"model.{name}"], rtol=0, atol=0, msg=name)
