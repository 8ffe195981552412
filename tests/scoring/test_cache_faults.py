"""Faults injected into the score cache: each is recovered from (re-scored) or a clear error naming the file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import lightning as L
import pyarrow.parquet as pq
import pytest
from shared import CPU

from prefalign.scoring.engine import ScoreCacheError, load_score_table, score_conversations


class _Count(L.Callback):
    def __init__(self):
        self.samples = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.samples += len(batch["id"])


class _KillAfterFirstShard(L.Callback):
    def __init__(self, cache):
        self.cache = cache

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if list(Path(self.cache).glob("*/shards/shard-*.parquet")):
            raise RuntimeError("killed")


def _score(conversations, cfg, cache, callbacks=(), **kwargs):
    return score_conversations(
        conversations,
        cfg,
        max_length=256,
        cache_dir=cache,
        batch_size=5,
        trainer_kwargs={**CPU, "callbacks": list(callbacks)},
        **kwargs,
    )


def _killed_run(conversations, cfg, cache, shard_size=10) -> Path:
    with pytest.raises(RuntimeError, match="killed"):
        _score(conversations, cfg, cache, [_KillAfterFirstShard(cache)], shard_size=shard_size)
    (shard,) = list(Path(cache).glob("*/shards/shard-*.parquet"))
    return shard


@pytest.fixture
def cfg(members):
    return members["zephyr_bytes"]


@pytest.fixture
def reference(conversations, cfg, tmp_path):
    return _score(conversations, cfg, tmp_path / "reference").mean_by_id()


def _assert_clean(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "table"]


def test_a_changed_shard_size_reuses_the_valid_shards(conversations, cfg, tmp_path, reference):
    """Killed with shard_size=10, rerun with the default 1024: only the 30 unscored samples are scored."""
    cache = tmp_path / "cache"
    _killed_run(conversations, cfg, cache, shard_size=10)
    counter = _Count()
    table = _score(conversations, cfg, cache, [counter])
    assert counter.samples == 30
    assert table.mean_by_id() == pytest.approx(reference, rel=1e-6)
    _assert_clean(table.path)


def _rewrite_shard(shard: Path, column: str, value) -> None:
    table = pq.read_table(shard)
    values = table.column(column).to_pylist()
    values[0] = value
    table = table.set_column(table.schema.get_field_index(column), column, [values])
    pq.write_table(table, shard, write_page_checksum=True)  # keeps the recorded row count


SHARD_FAULTS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random_bytes": lambda p: _overwrite_middle(p, os.urandom(64)),
    "zero_tokens": lambda p: _rewrite_shard(p, "num_tokens", 0),
    "positive_sum": lambda p: _rewrite_shard(p, "logp_sum", 50.0),
    "foreign_id": lambda p: _rewrite_shard(p, "id", "not-in-this-data"),
}


def _overwrite_middle(path: Path, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("fault", sorted(SHARD_FAULTS))
def test_an_invalid_shard_is_scored_again(fault, conversations, cfg, tmp_path, reference, caplog):
    cache = tmp_path / "cache"
    shard = _killed_run(conversations, cfg, cache)
    SHARD_FAULTS[fault](shard)
    counter = _Count()
    table = _score(conversations, cfg, cache, [counter], shard_size=10)
    assert counter.samples == 40  # the invalid shard's 10 samples too
    assert table.mean_by_id() == pytest.approx(reference, rel=1e-6)
    assert any("invalid score shard" in r.message and str(shard) in r.message for r in caplog.records)
    _assert_clean(table.path)


def _rewrite_table(folder: Path, edit) -> None:
    rows = datasets.load_from_disk(str(folder / "table")).to_list()
    edit(rows)
    (folder / "table").rename(folder / "old")
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "table"))


def _arrow_file(folder: Path) -> Path:
    (data,) = list((folder / "table").glob("*.arrow"))
    return data


def _set_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **changes}))


TABLE_FAULTS = {
    # name: (inject(folder), the file the error names, what it says)
    "truncated": (
        lambda f: _arrow_file(f).write_bytes(_arrow_file(f).read_bytes()[:1000]),
        "table",
        "unreadable score table",
    ),
    "random_bytes": (lambda f: _overwrite_middle(_arrow_file(f), os.urandom(64)), "table", "score table"),
    "zero_tokens": (
        lambda f: _rewrite_table(f, lambda rows: rows[2].update(num_tokens=0)),
        "table",
        r"row 2 \(id=.*\): num_tokens=0",
    ),
    "positive_sum": (
        lambda f: _rewrite_table(f, lambda rows: rows[4].update(logp_sum=50.0)),
        "table",
        r"row 4 \(id=.*\): log-prob sum 50.0 > 0",
    ),
    "duplicate_id": (
        lambda f: _rewrite_table(f, lambda rows: rows[1].update(id=rows[0]["id"])),
        "table",
        r"row 1 \(id=.*\): duplicate",
    ),
    "row_count": (lambda f: _set_meta(f, num_scored=41), "table", "40 rows, .* recorded 41"),
    "garbled_meta": (lambda f: (f / "meta.json").write_text('{"num_samples": 4'), "meta.json", "unreadable"),
}


@pytest.mark.parametrize("fault", sorted(TABLE_FAULTS))
def test_a_corrupt_finished_table_is_an_error_naming_the_file(fault, conversations, cfg, tmp_path):
    folder = _score(conversations, cfg, tmp_path).path
    inject, name, message = TABLE_FAULTS[fault]
    inject(folder)
    for read in (lambda: load_score_table(folder), lambda: _score(conversations, cfg, tmp_path)):
        with pytest.raises(ScoreCacheError, match=rf"^{folder / name}: .*{message}") as err:
            read()
        if fault in ("truncated", "random_bytes"):
            assert f"delete {folder}" in str(err.value)


def _lock(folder: Path, pid: int, host: str, age_s: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.write_text(json.dumps({"pid": pid, "host": host, "since": time.time(), "token": "other"}))
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return lock


def _cache_folder(conversations, cfg, cache: Path) -> Path:
    from prefalign.scoring.engine import find_cached_scores

    return find_cached_scores(conversations, cfg, 256, cache)[0]


def test_a_lock_left_by_a_dead_process_is_broken(conversations, cfg, tmp_path, reference, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = _cache_folder(conversations, cfg, tmp_path)
    _lock(folder, dead.pid, socket.gethostname())
    table = _score(conversations, cfg, tmp_path)
    assert table.mean_by_id() == pytest.approx(reference, rel=1e-6)
    assert any("stale score-cache lock" in r.message for r in caplog.records)
    _assert_clean(folder)


def test_a_lock_not_refreshed_for_lock_stale_s_is_broken(conversations, cfg, tmp_path, reference):
    folder = _cache_folder(conversations, cfg, tmp_path)
    _lock(folder, 1, "another-host", age_s=3600)  # a holder on another node that died an hour ago
    table = _score(conversations, cfg, tmp_path, lock_stale_s=120)
    assert table.mean_by_id() == pytest.approx(reference, rel=1e-6)
    _assert_clean(folder)


def test_a_live_writer_makes_another_process_wait_then_fail_naming_the_folder(conversations, cfg, tmp_path):
    folder = _cache_folder(conversations, cfg, tmp_path)
    lock = _lock(folder, os.getpid(), socket.gethostname())  # alive, freshly refreshed
    started = time.monotonic()
    with pytest.raises(
        ScoreCacheError, match=rf"^{folder}: this score cache is being written by pid {os.getpid()}"
    ):
        _score(conversations, cfg, tmp_path, lock_timeout=1.5)
    assert time.monotonic() - started >= 1.5
    assert lock.exists()  # someone else's lock is left alone
    assert not (folder / "table").exists()


def test_a_half_written_shard_is_never_read(conversations, cfg, tmp_path, reference):
    """A writer's temporary file (its rename not done yet) is not a shard; the rerun scores everything."""
    folder = _cache_folder(conversations, cfg, tmp_path)
    shards = folder / "shards"
    shards.mkdir(parents=True)
    (shards / ".shard-0123456789abcdef.parquet.host.1.abcd.tmp").write_bytes(b"PAR1 half")
    counter = _Count()
    table = _score(conversations, cfg, tmp_path, [counter])
    assert counter.samples == 40
    assert table.mean_by_id() == pytest.approx(reference, rel=1e-6)
    _assert_clean(folder)
