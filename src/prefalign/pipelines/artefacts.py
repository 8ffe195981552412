"""Stage artefacts of a multi-stage run: done markers, the settings that shaped a stage, records of
the files it wrote, and checking a rerun against them.

A finished stage writes ``<stage>.done.json`` in its folder: its statistics, and under
:data:`ARTEFACTS` the settings that shaped its output (:func:`shaping`, with paths inside the run
folder made relative to it by :func:`portable`, so that a copied or renamed run folder resumes),
their :func:`fingerprint`, and the size, SHA-256 and row count of every file it wrote
(:func:`file_record`, paths relative to the stage's folder). A rerun reads the marker
(:func:`read_marker`) and checks it (:func:`verify_marker`): every recorded file as recorded and
every setting equal, else a message naming each file or setting that differs
(:func:`prefalign.core.differences.differences`).
Readers of a run's files outside the pipeline (``prefalign-build-offline``) check them with
:func:`check_recorded_outputs`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prefalign.core.differences import differences
from prefalign.core.jsonl import write_json

ARTEFACTS = "artefacts"  # the marker key holding settings and file records (not a statistic)
# Config keys that do not shape a stage's output (where logs and caches go), left out of its settings.
NOT_SHAPING = frozenset({"logger", "paths", "cache_dir", "hydra"})


class ResumeError(RuntimeError):
    """A finished stage's marker, files or settings differ from what a rerun would produce."""


def shaping(value: Any) -> Any:
    """``value`` without the :data:`NOT_SHAPING` keys, at any depth."""
    if isinstance(value, Mapping):
        return {k: shaping(v) for k, v in value.items() if k not in NOT_SHAPING}
    if isinstance(value, list):
        return [shaping(v) for v in value]
    return value


def portable(value: Any, run_dir: str | Path) -> Any:
    """``value`` with every path inside ``run_dir`` (in any string, at any depth) made relative to it
    (``run_dir`` itself becomes ``.``): the settings of a run folder that was copied or renamed
    equal those recorded before."""
    root = str(Path(run_dir).resolve())
    if isinstance(value, Mapping):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, root) for v in value]
    if isinstance(value, str):
        return "." if value == root else value.replace(root + os.sep, "")
    return value


def fingerprint(value: Any) -> str:
    """SHA-256 of a JSON-able value (keys sorted): equal settings, equal fingerprint."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """Size, SHA-256 and (for JSON lines) row count of a written file."""
    digest, size, rows = hashlib.sha256(), 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
            size += len(chunk)
            rows += chunk.count(b"\n")
    record: dict[str, Any] = {"bytes": size, "sha256": digest.hexdigest()}
    if path.suffix == ".jsonl":
        record["rows"] = rows  # the writer ends every record with "\n", and only records
    return record


def check_files(folder: Path, recorded: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``None`` when every file in ``recorded`` (paths relative to ``folder``) is as recorded, else
    what differs, naming the file."""
    for name, want in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (its stage finished with {want.get('rows', want['bytes'])} " + (
                "rows)" if "rows" in want else "bytes)"
            )
        have = file_record(path)
        if have != dict(want):
            if "rows" in want and have["rows"] != want["rows"]:
                what = f"has {have['rows']} rows, the stage wrote {want['rows']}"
            elif have["bytes"] != want["bytes"]:
                what = f"has {have['bytes']} bytes, the stage wrote {want['bytes']}"
            else:
                what = "has the recorded size but different content (SHA-256)"
            return f"{path} {what}: it was changed after its stage finished"
    return None


def check_recorded_outputs(folder: str | Path, pattern: str = "*") -> list[str]:
    """Check the files matching ``pattern`` that the finished stages in ``folder`` (an ``iter_<i>/``
    folder) recorded in their markers: one message per missing, cut or changed file, or garbled
    marker (empty: all as recorded). For readers of a run's artefacts (``prefalign-build-offline``)."""
    problems = []
    for marker in sorted(Path(folder).glob("*.done.json")):
        try:
            files = json.loads(marker.read_text(encoding="utf-8")).get(ARTEFACTS, {}).get("files", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            problems.append(f"{marker}: the stage marker is not a valid JSON object ({err})")
            continue
        wanted = {name: record for name, record in files.items() if fnmatch.fnmatch(name, pattern)}
        problem = check_files(Path(folder), wanted)
        if problem:
            problems.append(problem)
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def read_marker(path: Path, how_to_proceed: str) -> dict | None:
    """A stage's marker (``None`` if the stage has not finished).

    Raises:
        ResumeError: the marker is not a JSON object (naming it, then ``how_to_proceed``).
    """
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResumeError(f"{path}: the stage marker is not valid JSON ({err}); {how_to_proceed}") from err
    if not isinstance(value, dict):
        raise ResumeError(f"{path}: the stage marker is not a JSON object; {how_to_proceed}")
    return value


def write_marker(
    path: Path, folder: Path, stats: Mapping[str, Any], settings: Mapping[str, Any], files: Iterable[str]
) -> None:
    """Write a stage's marker: its statistics, the settings that shaped it (already
    :func:`portable`), and the records of ``files`` (paths relative to ``folder``)."""
    records = {name: file_record(folder / name) for name in files}
    artefacts = {"settings": settings, "fingerprint": fingerprint(settings), "files": records}
    write_json(path, {**stats, ARTEFACTS: artefacts})


def verify_marker(
    path: Path,
    folder: Path,
    marker: Mapping[str, Any],
    settings: Mapping[str, Any],
    run_dir: str | Path | None = None,
) -> str | None:
    """``None`` when a finished stage's files (relative to ``folder``) and settings are as its
    marker at ``path`` records, else what differs: the first changed file, or every changed setting.
    With ``run_dir``, recorded absolute paths inside it (markers of older versions) compare as the
    :func:`portable` settings do."""
    recorded = marker.get(ARTEFACTS)
    if not isinstance(recorded, Mapping) or not {"settings", "files"} <= set(recorded):
        return f"{path} records no settings and files (written by an older prefalign?)"
    problem = check_files(folder, recorded["files"])
    if problem:
        return problem
    before = recorded["settings"] if run_dir is None else portable(recorded["settings"], run_dir)
    # a setting added since the stage ran, left at None, is no change
    found = differences(before, settings, absent=None)
    if not found:
        return None
    named = "; ".join(
        f"setting `{key}` was {_short(before)} when the stage ran, now {_short(now)}"
        for key, before, now in found
    )
    return f"{path}: {named}"
