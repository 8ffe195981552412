"""Score-cache files: the writer's lock, verified shards and verified finished tables.

A cache folder (``cache_dir/<key>``, see :mod:`prefalign.scoring.engine`) holds, while being
written, ``lock`` and ``shards/shard-<digest>.parquet``; once finished, only ``table/`` (a
``datasets`` folder) and ``meta.json`` (written last, so its presence means "finished").

- **One writer at a time.** :class:`CacheLock` is a lock file created with ``O_CREAT | O_EXCL``
  holding the holder's pid, host and start time; the holder refreshes its modification time every
  ``heartbeat_s`` seconds. Another process waits for it (up to ``timeout_s``, then a
  :class:`~prefalign.scoring.engine.ScoreCacheError` naming the cache folder), and breaks it when it
  is stale: its holder is a dead process on this host, or it was not refreshed for ``stale_s``
  seconds (a holder on another host that died).
- **Shards are written atomically and checked when read.** Each shard is written to a per-process
  temporary file and renamed; its parquet pages carry CRC checksums and its schema records its row
  count. :func:`read_shard` returns ``None`` for a shard that is unreadable, truncated, corrupt, or
  holds values a model cannot give (then it is scored again), never a partial table.
- **Finished tables are checked when read.** ``meta.json`` records the row count and a SHA-256 of the
  table's data files; :func:`check_scores` rejects non-finite values, ``num_tokens <= 0``, log-prob
  sums above 0 and duplicate ids. A finished table that fails is an error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefalign.core.errors import DataError
from prefalign.core.jsonl import naming_path
from prefalign.core.ranks import pid_alive

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("id", pa.string()), ("logp_sum", pa.float64()), ("num_tokens", pa.int64())])


class ScoreCacheError(DataError):
    """Scores are missing, duplicated or invalid for some sample ids, or the cache cannot be used."""


def check_scores(table: pa.Table, where: str) -> None:
    """Raise :class:`ScoreCacheError` (naming ``where`` and the first bad id) unless every row is a possible score.

    A possible score has a unique id, a finite log-prob sum ``<= 0`` (a sum of log-probabilities)
    and ``num_tokens > 0``.
    """
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise ScoreCacheError(f"{where}: missing column(s) {missing}")
    ids = table.column("id").to_pylist()
    sums = table.column("logp_sum").to_pylist()
    counts = table.column("num_tokens").to_pylist()
    seen: set[str] = set()
    for row, (sample_id, logp_sum, n) in enumerate(zip(ids, sums, counts, strict=True)):
        at = f"{where}: row {row} (id={sample_id})"
        if sample_id is None or sample_id in seen:
            raise ScoreCacheError(f"{at}: duplicate or empty id")
        seen.add(sample_id)
        if logp_sum is None or not math.isfinite(logp_sum):
            raise ScoreCacheError(f"{at}: non-finite score ({logp_sum})")
        if logp_sum > 0:
            raise ScoreCacheError(f"{at}: log-prob sum {logp_sum} > 0 (a sum of log-probabilities is <= 0)")
        if n is None or n <= 0:
            raise ScoreCacheError(f"{at}: num_tokens={n} (must be > 0)")


def shard_name(ids: Sequence[str]) -> str:
    """File name of the shard holding ``ids``: a digest of the ids, so it is the same for every shard size."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]
    return f"shard-{digest}.parquet"


def write_shard(folder: Path, columns: Mapping[str, list]) -> Path:
    """Write one shard's scores (``id``, ``logp_sum``, ``num_tokens``) atomically; return its path."""
    table = pa.table(
        {name: pa.array(columns[name], SCHEMA.field(name).type) for name in SCHEMA.names}
    ).replace_schema_metadata({"rows": str(len(columns["id"]))})
    check_scores(table, f"{folder} (shard being written)")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / shard_name(columns["id"])
    tmp = folder / f".{target.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:  # pyarrow's full-disk error names no file
        raise naming_path(err, target) from err
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_shard(path: Path, expected_ids: set[str]) -> pa.Table | None:
    """A shard's verified table, or ``None`` (logged) if it is unreadable, corrupt or not for this data."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        rows = (table.schema.metadata or {}).get(b"rows")
        if rows is None or int(rows) != table.num_rows:
            raise ScoreCacheError(f"{path}: {table.num_rows} rows, the shard recorded {rows!r}")
        table = table.select(SCHEMA.names).cast(SCHEMA)
        check_scores(table, str(path))
        stray = set(table.column("id").to_pylist()) - expected_ids
        if stray:
            raise ScoreCacheError(f"{path}: ids not in this data, e.g. {sorted(stray)[:3]}")
        if path.name != shard_name(table.column("id").to_pylist()):
            raise ScoreCacheError(f"{path}: its ids do not match its name")
    except (OSError, ValueError, KeyError, pa.ArrowException, ScoreCacheError) as err:
        log.warning("ignoring an invalid score shard (it will be scored again): %s", err)
        return None
    return table


def table_digest(table_dir: Path) -> str:
    """SHA-256 over the data files (``*.arrow``) of a saved ``datasets`` table, in name order."""
    h = hashlib.sha256()
    files = sorted(table_dir.glob("*.arrow"))
    if not files:
        raise ScoreCacheError(f"{table_dir}: no data file (*.arrow)")
    for file in files:
        h.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class CacheLock:
    """The single-writer lock of one cache folder (``<folder>/lock``), with a heartbeat and stale-lock detection.

    Args:
        folder: the cache folder.
        timeout_s: how long to wait for another holder; ``None`` waits as long as the holder is alive.
        poll_s: seconds between checks while waiting.
        heartbeat_s: the holder refreshes the lock file's modification time this often.
        stale_s: a lock not refreshed for this long is stale (its holder died, possibly on another host).
    """

    def __init__(
        self,
        folder: Path,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        heartbeat_s: float = 10.0,
        stale_s: float = 120.0,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "lock"
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}  # being written, or garbled: judged by its age only
        holder["mtime"] = mtime
        holder["raw"] = text
        return holder

    def _is_stale(self, holder: Mapping[str, Any]) -> bool:
        if time.time() - holder["mtime"] > self.stale_s:
            return True
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def _break(self, holder: Mapping[str, Any]) -> None:
        aside = self.folder / f"lock.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else broke or released it
        if aside.read_text() != holder["raw"]:
            # a new holder took the lock between our check and the rename: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            log.warning(
                "%s: breaking a stale score-cache lock (pid %s on %s, last refreshed %.0fs ago)",
                self.folder,
                holder.get("pid"),
                holder.get("host"),
                time.time() - holder["mtime"],
            )
        aside.unlink(missing_ok=True)

    def _try_acquire(self) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": self.token}
        )
        tmp = self.folder / f".lock.{self.token}.tmp"
        tmp.write_text(record)
        try:
            os.link(tmp, self.path)  # atomic create-if-absent, with the content already in place
            return True
        except FileExistsError:
            return False
        except OSError as err:  # file systems without hard links
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(record)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self, until: Any = None) -> bool:
        """Take the lock, waiting for another holder; return ``False`` early if ``until()`` becomes true.

        ``until`` (e.g. "the table is finished") lets a waiter stop waiting once the holder's work
        is done. Raises :class:`ScoreCacheError` naming the folder after ``timeout_s``.
        """
        started = time.monotonic()
        announced = False
        while True:
            if self._try_acquire():
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="score-cache-lock")
                self._thread.start()
                return True
            if until is not None and until():
                return False
            holder = self._holder()
            if holder is not None and self._is_stale(holder):
                self._break(holder)
                continue
            waited = time.monotonic() - started
            if self.timeout_s is not None and waited > self.timeout_s:
                who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
                raise ScoreCacheError(
                    f"{self.folder}: this score cache is being written by {who} (lock file {self.path}); "
                    f"waited {waited:.0f}s (timeout {self.timeout_s}s). Wait for that process to finish, "
                    "or delete the lock file if it is gone"
                )
            if not announced and holder is not None:
                log.info(
                    "%s: waiting for pid %s on %s, which is writing this score cache",
                    self.folder,
                    holder.get("pid"),
                    holder.get("host"),
                )
                announced = True
            time.sleep(self.poll_s)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        """Remove the lock file if this holder still owns it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self._holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
