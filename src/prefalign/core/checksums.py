"""SHA-256 records of a folder's files, written inside the folder and checked before it is used.

Hugging Face exports (``hf/``, an SSO iteration's ``policy/``) have no checksums of their own
(safetensors files carry none), so the exporter writes ``checksums.sha256.json`` into the export's
temporary folder after the files (:func:`write_checksums`); the folder's atomic rename publishes
both together. Loading a local model folder that holds the record checks every recorded file's
size and SHA-256 first (:func:`verify_checksums`); files added later (the per-epoch exports kept
inside ``hf/``, which carry their own record) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHECKSUMS = "checksums.sha256.json"
_CHUNK = 8 << 20


class CorruptArtefactError(ValueError):
    """A checkpoint or an export whose bytes are not those written; names the file and the entry."""


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths, sorted), the record itself excluded."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS
    )


def write_checksums(folder: str | Path) -> Path:
    """Record the size and SHA-256 of every file under ``folder`` in ``folder/checksums.sha256.json``
    (written atomically); returns the record's path."""
    from prefalign.core.jsonl import write_json

    folder = Path(folder)
    files = {
        name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for name in folder_files(folder)
    }
    return write_json(folder / CHECKSUMS, {"algorithm": "sha256", "files": files})


def verify_checksums(folder: str | Path) -> bool:
    """Check every file ``folder/checksums.sha256.json`` records: present, same size, same SHA-256.

    Returns ``False`` when the folder holds no record (nothing to check), ``True`` when all match.

    Raises:
        CorruptArtefactError: naming the folder, the file and what differs (missing, size, hash), or
            the record when it is not valid JSON.
    """
    folder = Path(folder)
    record_path = folder / CHECKSUMS
    if not record_path.is_file():
        return False
    try:
        record: Any = json.loads(record_path.read_text(encoding="utf-8"))
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError("`files` is not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptArtefactError(f"{record_path}: not a valid checksum record ({err})") from err
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise CorruptArtefactError(f"{folder}: file {name} is recorded in {CHECKSUMS} but missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CorruptArtefactError(
                f"{folder}: file {name} has {size} bytes, {expected['size']} were written ({CHECKSUMS})"
            )
        actual = sha256_file(path)
        if actual != expected["sha256"]:
            raise CorruptArtefactError(
                f"{folder}: file {name} is corrupt: SHA-256 {actual[:16]}..., {expected['sha256'][:16]}... "
                f"was written ({CHECKSUMS})"
            )
    return True
