"""One test per injected fault: each asserts the clear error or the correct recovery.

Non-finite training (issue 16 point 1), atomic checkpoints and exports (point 6), config and data
checks before anything heavy (point 7).
"""

from __future__ import annotations

import errno
import json
import re
import tracemalloc

import pytest
import torch

from prefalign.core.errors import ConfigError, DataError
from prefalign.objectives.ce import CrossEntropy
from prefalign.training.guards import NonFiniteError

# -- non-finite training ---------------------------------------------------------------------------


def _poison_ce(monkeypatch, steps: set[int], sample: int = 2) -> list[str]:
    """Make CE's per-example loss (and its ``ce`` term) NaN for one sample of the given training
    batches; returns the ids of the poisoned samples, in order."""
    forward, calls, poisoned = CrossEntropy.forward, {"n": 0}, []

    def poisoned_forward(self, policy, batch):
        output = forward(self, policy, batch)
        if self.training and torch.is_grad_enabled():  # training steps, not the guard's probe
            if calls["n"] in steps:
                nan = torch.zeros_like(output.losses)
                nan[sample] = float("nan")
                output.losses = output.losses + nan
                output.metrics["ce"] = output.metrics["ce"] + nan
                poisoned.append(batch["id"][sample])
            calls["n"] += 1
        return output

    monkeypatch.setattr(CrossEntropy, "forward", poisoned_forward)
    return poisoned


def test_a_huge_learning_rate_stops_at_once_and_saves_nothing(tiny_run):
    """``optimizer.lr=1e30`` used to train on NaN to the end (exit 0, all-NaN checkpoints and export)."""
    run = tiny_run("optimizer.lr=1e30", "trainer.max_epochs=4")
    with pytest.raises(
        NonFiniteError, match=r"non-finite values at training step \d+ .*gradient norm: nan"
    ) as err:
        run.train()
    assert re.search(r"Batch sample ids \(rank 0\): \[syn-\d+-\d+, ", str(err.value))
    step = int(re.search(r"training step (\d+)", str(err.value)).group(1))
    assert step < 8  # stopped at once, not after the 4 epochs
    for name in run.files("checkpoints"):  # only epochs finished before the step were saved
        ckpt = torch.load(run.checkpoints / name, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] <= step
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values()), name
    assert not (run.out / "hf").exists()


def test_a_nan_term_names_the_step_the_sample_and_the_term(tiny_run, monkeypatch):
    poisoned = _poison_ce(monkeypatch, steps={3})
    run = tiny_run("trainer.max_epochs=2")
    with pytest.raises(NonFiniteError) as err:
        run.train()
    message = str(err.value)
    assert "training step 3 (epoch 1, batch 1)" in message
    assert f"ce: 1 of 8 samples: {poisoned[0]}=nan" in message
    assert "loss: [nan]" in message
    assert run.files("checkpoints") == ["epoch_000.ckpt", "last.ckpt"]  # epoch 1 was never saved
    assert torch.load(run.checkpoints / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (run.out / "hf").exists()


def test_non_finite_steps_can_be_skipped_up_to_a_limit_and_are_counted(tiny_run, monkeypatch):
    _poison_ce(monkeypatch, steps={1, 2})
    run = tiny_run("trainer.max_epochs=2", "callbacks.nonfinite_guard.max_skipped_steps=2")
    run.train()
    last = torch.load(run.checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert last["global_step"] == 4  # skipped steps still count as steps of the schedule
    guard_state = next(v for k, v in last["callbacks"].items() if "NonFiniteGuard" in k)
    assert guard_state == {"skipped": 2}
    metrics = (run.out / "csv" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    skipped = [r.split(",")[header.index("train/nonfinite_skipped")] for r in metrics[1:]]
    assert [float(v) for v in skipped if v] == [0.0, 1.0, 2.0, 2.0]


def test_one_more_non_finite_step_than_allowed_stops(tiny_run, monkeypatch):
    _poison_ce(monkeypatch, steps={0, 2})
    run = tiny_run("trainer.max_epochs=2", "callbacks.nonfinite_guard.max_skipped_steps=1")
    with pytest.raises(NonFiniteError, match=r"training step 2 .*1 non-finite steps were skipped already"):
        run.train()


@pytest.mark.parametrize("artefact", ["checkpoint", "export"])
def test_non_finite_weights_are_never_saved(tiny_run, monkeypatch, artefact):
    """Weights turned NaN by the last update of an epoch: neither the epoch's checkpoint nor the
    Hugging Face export is written from them."""
    from prefalign.modules.single_sequence import SingleSequenceModule

    def poison_weights(self):
        with torch.no_grad():
            self.model.model.norm.weight[0] = float("inf")

    monkeypatch.setattr(SingleSequenceModule, "on_train_epoch_end", poison_weights, raising=False)
    overrides = ["trainer.max_epochs=1"] + (
        ["callbacks.model_checkpoint=null"] if artefact == "export" else []
    )
    run = tiny_run(*overrides)
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite weights at training step 2: not writing .*model\.model\.norm\.weight",
    ):
        run.train()
    assert run.files("checkpoints") == []
    assert not (run.out / "hf").exists()


# -- atomic checkpoints and exports --------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_no_truncated_file_and_no_temporary(tiny_run, monkeypatch):
    """The disk fills while the second epoch's checkpoint is written: the write raises after some
    bytes; the final name never appears, last.ckpt keeps epoch 1, no temporary file is left."""
    save, files_saved = torch.save, []

    def disk_full_on_epoch_1(obj, f, *args, **kwargs):
        files_saved.append(f)
        if len(files_saved) == 3:  # epoch_000.ckpt, last.ckpt, then epoch_001.ckpt
            f.write(b"\x80" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_epoch_1)
    run = tiny_run("trainer.max_epochs=2")
    with pytest.raises(OSError, match="No space left on device"):
        run.train()
    assert run.files("checkpoints") == ["epoch_000.ckpt", "last.ckpt"]
    last = torch.load(run.checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2


def test_a_failed_export_leaves_the_previous_export_and_no_temporary(tiny_run, monkeypatch):
    from transformers import PreTrainedModel

    run = tiny_run("trainer.max_epochs=1", "callbacks.model_checkpoint=null")
    previous = run.out / "hf"
    previous.mkdir(parents=True)
    (previous / "config.json").write_text('{"previous": true}')
    save_pretrained = PreTrainedModel.save_pretrained

    def disk_full(self, folder, *args, **kwargs):
        save_pretrained(self, folder, *args, **kwargs)
        (folder / "model.safetensors").write_bytes(b"\x00" * 100)  # cut off mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run.train()
    assert [p.name for p in run.out.iterdir() if p.name.startswith((".hf", "hf"))] == ["hf"]
    assert run.files("hf") == ["config.json"]
    assert json.loads((previous / "config.json").read_text()) == {"previous": True}


# -- config and data checks before anything heavy ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=-1"], r"`trainer.max_epochs`: -1 means 'train until trainer.max_steps'"),
        (["trainer.max_epochs=0"], r"`trainer.max_epochs` must be an integer >= 1"),
        (["trainer.max_epochs=null"], r"`trainer.max_epochs`: None means"),
        (["trainer.max_steps=0"], r"`trainer.max_steps` must be -1 \(no limit\) or an integer >= 1"),
        (
            ["objective=dpo", "data=tiny_preference", "objective.beta=abc"],
            r"`objective.beta` must be a finite number, got 'abc'",
        ),
        (
            ["objective=sso", "data=tiny_preference", "objective.gamma=nan"],
            r"`objective.gamma` must be a finite number",
        ),
        (["optimizer.weight_decay=abc"], r"`optimizer.weight_decay` must be a finite number"),
        (
            ["model=hf", "model.name_or_path=/no/such/model"],
            r"`model.name_or_path`: no such folder /no/such/model",
        ),
        (
            ["model=hf", "model.name_or_path=./models/mine"],
            r"`model.name_or_path`: no such folder models/mine",
        ),
    ],
)
def test_bad_config_stops_before_any_model_is_loaded(tiny_run, no_model_loading, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_run(*overrides).train()


def test_training_until_max_steps_with_max_epochs_minus_one(tiny_run):
    """Lightning's convention is kept where it is well defined: -1 epochs with a step limit."""
    run = tiny_run("trainer.max_epochs=-1", "trainer.max_steps=3", "callbacks.hf_export=null")
    run.train()
    last = torch.load(run.checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3


def test_non_utf8_training_data_names_the_file_and_byte_offset(tiny_run, tmp_path):
    from pathlib import Path

    from prefalign.config import bundled

    data = Path(bundled("tiny_chat_train.jsonl")).read_bytes()
    offset = data.index(b"\n", 2000) + 3
    path = tmp_path / "train.jsonl"
    path.write_bytes(data[:offset] + b"\xc3\x28" + data[offset:])
    with pytest.raises(
        DataError, match=rf"{path}: not UTF-8 text: an invalid byte at byte offset {offset} \(line \d+\)"
    ):
        tiny_run(f"data.train.path={path}", "callbacks.hf_export=null").train()


def test_an_oversized_record_is_truncated_in_memory_bounded_by_max_length(make_tokenizer):
    """A 4 MB response with max_length=256: the Python memory of encoding it stays under 16 MB
    (the old encoder's lists of ids, labels and offsets took several hundred MB)."""
    from prefalign.data.chat import encode_conversation

    tokenizer = make_tokenizer("chatml", 0)
    huge = "x" * 4_000_000
    messages = [{"role": "user", "content": "say x"}, {"role": "assistant", "content": huge}]
    encode_conversation(tokenizer, messages[:1] + [{"role": "assistant", "content": "x"}], 256)  # warm caches
    tracemalloc.start()
    try:
        enc = encode_conversation(tokenizer, messages, 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(enc.input_ids) == 256 and enc.truncated and enc.num_response_tokens > 200
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
