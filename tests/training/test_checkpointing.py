"""Atomic checkpoint files and export folders: a failed write leaves the final name as it was."""

from __future__ import annotations

import errno

import pytest
import torch

from prefalign.training.checkpointing import AtomicCheckpointIO, atomic_folder


def test_atomic_checkpoint_io_writes_and_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    assert torch.load(path, weights_only=False)["step"] == 1

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_atomic_folder_replaces_an_existing_folder_only_when_complete(tmp_path):
    target = tmp_path / "hf"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
