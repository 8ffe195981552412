"""The one JSON-lines reader and writer of the project.

Records are separated by ``\\n`` only: a JSON string may hold U+2028, U+0085 or a form feed (which
``str.splitlines`` would split on) and still be read back. Writes are atomic: a temporary file in
the same folder, then a rename, so a killed writer never leaves a truncated file under the final
name. Folders (model exports, ``save_to_disk`` datasets) are written the same way
(:func:`atomic_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from prefalign.core.errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line of a JSON-lines file.

    Raises:
        DataError: naming the file and the line when a line is not JSON or not an object, or the
            file is not UTF-8 (with the byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    offset = 0
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, 1):  # binary lines end at b"\n" only
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {line_number}: not UTF-8 text (byte offset {start + err.start})"
                ) from err
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_number}: not JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line_number}: a JSON {type(record).__name__}, not an object")
            yield line_number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file, in order (see :func:`iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path)]


def dumps_line(record: Any) -> str:
    """One record as one line of JSON (UTF-8 text kept as is; ``\\n`` inside strings is escaped)."""
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is synced and renamed to
    ``path``, on any error it is removed (``path`` is never left half-written). An ``OSError`` that
    names no file (a full disk: ``[Errno 28] No space left on device``) is raised again naming
    ``path`` (:func:`naming_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise naming_path(err, path) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def naming_path(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` itself when it names a file, else the same error (same errno and class, e.g.
    ``OSError(ENOSPC)``) naming ``path``: ``[Errno 28] No space left on device while writing <path>``."""
    if err.filename is not None or err.errno is None:
        return err
    return OSError(err.errno, f"{err.strerror or err} while writing {path}", str(path))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` to ``path`` as JSON lines, atomically (:func:`atomic_write`).

    Returns:
        ``path`` (its parent folders are created).
    """
    with atomic_write(path) as f:
        for record in records:
            f.write(dumps_line(record))
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Write one JSON document atomically (markers, reports, summaries)."""
    with atomic_write(path) as f:
        json.dump(value, f, indent=indent, default=str, ensure_ascii=False)
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; when the block succeeds it replaces ``path``
    (an existing folder is moved aside first and removed after), when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
        except OSError as err:  # a full disk inside a library's writer names no file
            raise naming_path(err, path) from err
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
