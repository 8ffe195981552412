"""What identifies the weights a ``model`` config loads, cheaply, for cache keys.

Score caches are keyed by the member's content, not its name (:mod:`prefalign.scoring.engine`):

- a **tiny** model: its spec (the weights are built from it, seeded);
- a **local** folder (or a GGUF file in one): :func:`folder_fingerprint`, from every file's name,
  size and modification time, the full SHA-256 of small files (config, index, tokenizer: up to
  1 MiB) and, of each larger file, its safetensors header (tensor names, shapes, offsets) and
  ``SAMPLES`` blocks of ``SAMPLE_BYTES`` bytes spread evenly over it. Weights replaced in place
  change the sizes, times or sampled bytes; the cost is a few milliseconds whatever the model's
  size (``benchmarks/fault_checks.py``);
- a **hub** model: the commit its revision resolves to (from the local Hugging Face cache, else
  asked of the hub; ``None`` when neither answers, offline and not downloaded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMALL_FILE = 1 << 20  # files up to this size are hashed whole
SAMPLES = 16  # blocks sampled from each larger file
SAMPLE_BYTES = 4096
_SHA = re.compile(r"^[0-9a-f]{40}$")


def _safetensors_header(f: Any, size: int) -> bytes:
    """The JSON header of a safetensors file (empty when the file is not one)."""
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) < 8:
        return b""
    (length,) = struct.unpack("<Q", prefix)
    if length <= 0 or 8 + length > size or length > 100 << 20:
        return b""
    header = f.read(length)
    return header if header.startswith(b"{") else b""


def file_fingerprint(path: Path) -> str:
    """SHA-256 (hex) of a file's size, modification time and content sample (see the module
    docstring): all of a small file, the safetensors header and sampled blocks of a large one."""
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        if stat.st_size <= SMALL_FILE:
            digest.update(f.read())
            return digest.hexdigest()
        digest.update(_safetensors_header(f, stat.st_size))
        last = stat.st_size - SAMPLE_BYTES
        for k in range(SAMPLES):
            f.seek(last * k // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def folder_fingerprint(path: str | os.PathLike) -> str:
    """A content fingerprint of a model folder (or one file): 16 hex digits over every file's
    relative name and :func:`file_fingerprint`. Hidden entries (``.cache``, temporaries) are skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist (naming it).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such model folder or file")
    files = (
        [root]
        if root.is_file()
        else sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    digest = hashlib.sha256()
    for file in files:
        name = file.name if file == root else str(file.relative_to(root))
        digest.update(f"{name}\0{file_fingerprint(file)}\n".encode())
    return digest.hexdigest()[:16]


def resolve_hub_revision(name: str, revision: str | None) -> str | None:
    """The commit a hub model's ``revision`` (``None``: ``main``) resolves to: from the local
    Hugging Face cache when it is there, else asked of the hub; ``None`` when neither answers."""
    if revision and _SHA.match(revision):
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision or "main")
        if isinstance(cached, str):
            commit = Path(cached).parent.name  # .../snapshots/<commit>/config.json
            if _SHA.match(commit):
                return commit
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            return None
        from huggingface_hub import HfApi

        return HfApi().model_info(name, revision=revision).sha
    except Exception as err:  # noqa: BLE001 - offline, private, unknown: identity stays unresolved
        log.warning("could not resolve the revision of %s (%s): cached by name and revision only", name, err)
        return None


def weights_identity(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the weights of a ``model`` config (see the module docstring):
    ``{"kind": "tiny", "spec": ...}``, ``{"kind": "local", "path": ..., "fingerprint": ...}`` or
    ``{"kind": "hub", "name": ..., "revision": ..., "commit": ...}``."""
    tiny = model_cfg.get("tiny")
    if tiny:
        return {"kind": "tiny", "spec": dict(tiny)}
    name = str(model_cfg.get("name_or_path"))
    path = Path(name).expanduser()
    if path.exists():
        target = path / model_cfg["gguf_file"] if model_cfg.get("gguf_file") else path
        return {"kind": "local", "path": str(target.resolve()), "fingerprint": folder_fingerprint(target)}
    revision = model_cfg.get("revision")
    return {"kind": "hub", "name": name, "revision": revision, "commit": resolve_hub_revision(name, revision)}


def describe(identity: Mapping[str, Any] | None) -> str:
    """One line naming a :func:`weights_identity` (for error messages)."""
    if not identity:
        return "no recorded identity"
    if identity.get("kind") == "local":
        return f"local {identity.get('path')} (fingerprint {identity.get('fingerprint')})"
    if identity.get("kind") == "hub":
        return f"hub {identity.get('name')} at {identity.get('commit') or identity.get('revision') or 'main'}"
    return f"tiny {json.dumps(identity.get('spec'), sort_keys=True)}"
