"""Issue 23 point 7: an empty data file, a full disk, an unreadable checkpoint, and transformers'
"sequence length is longer than the specified maximum" warning where the cut is ours."""

from __future__ import annotations

import copy
import errno
import logging
import zipfile

import pytest
import torch

from prefalign.core.checksums import CorruptArtefactError
from prefalign.core.errors import DataError
from prefalign.core.jsonl import atomic_folder, write_json
from prefalign.data.chat import encode_conversation
from prefalign.data.records import load_raw
from prefalign.training.checkpointing import AtomicCheckpointIO
from prefalign.training.verification import verify_checkpoint


@pytest.mark.parametrize(
    ("content", "what"), [(b"", "is empty \\(0 bytes\\)"), (b"\n  \n", "holds only blank lines")]
)
def test_an_empty_jsonl_file_says_it_is_empty(tmp_path, content, what):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{path}: the file {what}: no records$"):
        load_raw(str(path))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.raises(OSError, match=rf"No space left on device while writing {checkpoint}") as err:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, checkpoint)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(checkpoint)
    assert list(checkpoint.parent.iterdir()) == []  # no temporary left

    monkeypatch.setattr("json.dump", _disk_full)
    with pytest.raises(OSError, match=rf"while writing {tmp_path / 'report.json'}"):
        write_json(tmp_path / "report.json", {"a": 1})
    with pytest.raises(OSError, match=rf"while writing {tmp_path / 'hf'}"), atomic_folder(tmp_path / "hf"):
        _disk_full()

    import pyarrow.parquet as pq

    from prefalign.scoring.cache import write_shard

    monkeypatch.setattr(pq, "write_table", _disk_full)
    with pytest.raises(OSError, match=rf"while writing {tmp_path / 'shards'}/shard-"):
        write_shard(tmp_path / "shards", {"id": ["a"], "logp_sum": [-1.0], "num_tokens": [2]})


def test_an_unreadable_checkpoint_is_named(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, path)

    def denied(source, *args, **kwargs):  # as chmod 0 would for a user other than root
        raise PermissionError(errno.EACCES, "Permission denied", str(source))

    monkeypatch.setattr(zipfile, "ZipFile", denied)
    with pytest.raises(
        CorruptArtefactError,
        match=rf"^checkpoint {path} cannot be read \(PermissionError: Permission denied\)",
    ):
        verify_checkpoint(path)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(
    ("model_max_length", "max_length", "warned"), [(4096, 4096, False), (32, 64, True), (4096, 64, False)]
)
def test_the_too_long_warning_only_when_max_length_exceeds_the_model(
    make_tokenizer, model_max_length, max_length, warned
):
    """A conversation longer than the model's 4096 tokens, cut to max_length by us: no "indexing
    errors" warning, unless max_length itself exceeds the model's maximum, when the warning is true."""
    from transformers.utils import logging as hf_logging

    tokenizer = copy.deepcopy(make_tokenizer("chatml"))
    tokenizer.model_max_length = model_max_length
    tokenizer.deprecation_warnings = {}  # transformers warns once per tokenizer: not already
    messages = [{"role": "user", "content": "x" * 9000}, {"role": "assistant", "content": "y" * 10}]
    handler, logger = _Records(), logging.getLogger("transformers")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # whatever an earlier test of the session set
    logger.addHandler(handler)
    try:
        encoded = encode_conversation(tokenizer, messages, max_length=max_length)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert len(encoded.input_ids) == max_length and encoded.truncated
    assert any("will result in indexing errors" in m for m in handler.messages) == warned
