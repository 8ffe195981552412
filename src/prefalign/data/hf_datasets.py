"""Data out: preference pairs and scored SFT data as Hugging Face datasets in TRL's conversational
format, so TRL, ``datasets`` and other tools read the project's outputs directly.

Formats (`TRL dataset formats <https://huggingface.co/docs/trl/dataset_formats>`_, conversational):

* **preference** (:func:`to_trl_preference`): ``prompt`` is the message list the model answers
  (a plain-text prompt becomes one user turn; a message list is kept, system turns included);
  ``chosen`` / ``rejected`` are message lists holding the assistant turn. SSO's ``original``
  response (y_o) becomes such a message list too. Every other field of the record (``id``,
  ``feature``, ``system_good`` / ``system_bad``, token counts, scores, W / G, ...) is kept beside
  them as it is.
* **scored SFT** (:func:`to_scored_sft`): ``id``, ``messages`` (the whole conversation), any other
  column of the data (e.g. ``noise``), and the score columns (``score_<member>``,
  ``aligned_score``; :mod:`prefalign.core.names`).

Files (:func:`save`): ``<name>/`` is a ``Dataset.save_to_disk`` folder (``datasets.load_from_disk``)
and ``<name>.jsonl`` the same rows as JSON lines (``load_dataset("json", data_files=...)``); both
written atomically. The project's plain-text preference files (``preferences.jsonl`` of
``prefalign-sso``, the offline builder's output) get both beside them, as
``<stem>.trl.jsonl`` and ``<stem>.hf/`` (:func:`export_preferences`).

``datasets`` is imported only when a dataset is written (the apps' ``--help`` and ``--cfg job``
never load it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefalign.core.errors import DataError
from prefalign.core.jsonl import atomic_folder, write_jsonl
from prefalign.core.names import CHOSEN, ID, MESSAGES, REJECTED, RESPONSES, required_fields

log = logging.getLogger(__name__)

# The fields of a preference record: the prompt and the two responses TRL trains on.
PROMPT, CHOSEN_FIELD, REJECTED_FIELD = required_fields([CHOSEN, REJECTED])
ROLES = ("system", "user", "assistant")
FORMATS = ("hf", "jsonl", "both")


def _where(source: str, row: int, record: Mapping[str, Any]) -> str:
    return f"{source}: row {row} (id={record.get(ID)!r})"


def _check_messages(messages: Any, what: str, where: str) -> list[dict[str, str]]:
    """``messages`` as a list of ``{role, content}`` dicts, or a :class:`DataError`."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: `{what}` must be a non-empty message list, got {type(messages).__name__}")
    checked = []
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: `{what}`[{k}] must be an object with a text `content`")
        if message.get("role") not in ROLES:
            raise DataError(f"{where}: `{what}`[{k}] has role {message.get('role')!r}, not one of {ROLES}")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def _prompt(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty `{PROMPT}`")
        return [{"role": "user", "content": value}]
    messages = _check_messages(value, PROMPT, where)
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: `{PROMPT}` must end with a user turn, ends with {messages[-1]['role']!r}")
    return messages


def _response(value: Any, field: str, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty `{field}` response")
        return [{"role": "assistant", "content": value}]
    messages = _check_messages(value, field, where)
    if any(m["role"] != "assistant" for m in messages):
        raise DataError(f"{where}: `{field}` must hold assistant turns only")
    return messages


def to_trl_preference(records: Iterable[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    """Preference records (``id``, ``prompt``, ``chosen``, ``rejected``, texts or message lists,
    any other fields) in TRL's conversational preference format (see the module docstring).

    Args:
        source: the records' file, named in errors.

    Raises:
        DataError: naming ``source``, the row (0-based) and the id of a record with a missing or
            empty prompt or response, or a malformed message list.
    """
    rows = []
    for row, record in enumerate(records):
        where = _where(source, row, record)
        missing = [f for f in (ID, PROMPT, CHOSEN_FIELD, REJECTED_FIELD) if record.get(f) in (None, "", [])]
        if missing:
            raise DataError(f"{where}: missing or empty {missing}")
        converted = dict(record)
        converted[ID] = str(record[ID])
        converted[PROMPT] = _prompt(record[PROMPT], where)
        for field in RESPONSES.values():  # chosen, rejected and SSO's original
            if record.get(field) is not None:
                converted[field] = _response(record[field], field, where)
        rows.append(converted)
    return rows


def to_scored_sft(
    records: Iterable[Mapping[str, Any]], score_columns: Mapping[str, Sequence[Any]], source: str
) -> list[dict[str, Any]]:
    """Chat records (``id``, ``messages``, other columns) joined by id with score columns, in TRL's
    conversational language-modeling format (``messages``) with the scores beside.

    Args:
        score_columns: ``{"id": [...], "score_<member>": [...], "aligned_score": [...]}`` (as
            :func:`prefalign.scoring.frozen.aligned_score_columns` returns them); records whose id
            has no scores (dropped by the scorer, counted there) are left out and counted here.
        source: the data's name, in errors and in the log line of left-out records.

    Raises:
        DataError: a record without ``id`` or with malformed ``messages`` (naming source, row, id),
            or a score id twice.
    """
    ids = [str(i) for i in score_columns[ID]]
    names = [name for name in score_columns if name != ID]
    for name in names:
        if len(score_columns[name]) != len(ids):
            raise ValueError(
                f"score column {name!r} has {len(score_columns[name])} values for {len(ids)} ids"
            )
    position = {}
    for k, sample_id in enumerate(ids):
        if sample_id in position:
            raise DataError(f"{source}: id {sample_id!r} has two score rows")
        position[sample_id] = k
    rows, unscored = [], []
    for row, record in enumerate(records):
        where = _where(source, row, record)
        if record.get(ID) in (None, ""):
            raise DataError(f"{where}: missing `{ID}`")
        messages = _check_messages(record.get(MESSAGES), MESSAGES, where)
        k = position.get(str(record[ID]))
        if k is None:
            unscored.append(str(record[ID]))
            continue
        converted = {**record, ID: str(record[ID]), MESSAGES: messages}
        converted.update({name: score_columns[name][k] for name in names})
        rows.append(converted)
    if unscored:
        log.warning(
            "%s: %d record(s) have no scores and are not exported (e.g. %s)",
            source,
            len(unscored),
            unscored[:5],
        )
    return rows


def save(
    rows: Sequence[Mapping[str, Any]], path: str | Path, fmt: str = "both", source: str | None = None
) -> dict[str, Path]:
    """Write ``rows`` as a ``save_to_disk`` folder ``path`` (``hf``), as JSON lines
    ``path.jsonl`` (``jsonl``), or both; atomically. Returns ``{"hf": folder, "jsonl": file}``
    for what was written.

    Raises:
        DataError: the rows do not fit one Arrow schema (e.g. a column that is a number in one row
            and a text in another), naming ``source``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    written: dict[str, Path] = {}
    if fmt in ("hf", "both"):
        import datasets
        import pyarrow as pa

        try:
            dataset = datasets.Dataset.from_list([dict(r) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise DataError(f"{source or path}: the rows do not fit one dataset schema ({err})") from err
        with atomic_folder(path) as tmp:
            dataset.save_to_disk(str(tmp))
        written["hf"] = path
    if fmt in ("jsonl", "both"):
        written["jsonl"] = write_jsonl(path.with_name(path.name + ".jsonl"), rows)
    log.info("wrote %d rows to %s", len(rows), ", ".join(str(p) for p in written.values()))
    return written


def preference_export_paths(jsonl_path: str | Path) -> dict[str, Path]:
    """Where :func:`export_preferences` writes the copies of ``<stem>.jsonl``: ``<stem>.hf/`` and
    ``<stem>.trl.jsonl``."""
    path = Path(jsonl_path)
    stem = path.name.removesuffix(".jsonl")
    return {"hf": path.with_name(f"{stem}.hf"), "jsonl": path.with_name(f"{stem}.trl.jsonl")}


def export_preferences(jsonl_path: str | Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write the preference ``records`` of the plain-text file ``jsonl_path`` also in TRL's
    conversational format beside it (:func:`preference_export_paths`); returns the paths."""
    rows = to_trl_preference(records, str(jsonl_path))
    paths = preference_export_paths(jsonl_path)
    save(rows, paths["hf"], "hf", source=str(jsonl_path))
    write_jsonl(paths["jsonl"], rows)
    return paths


__all__ = [
    "FORMATS",
    "export_preferences",
    "preference_export_paths",
    "save",
    "to_scored_sft",
    "to_trl_preference",
]
