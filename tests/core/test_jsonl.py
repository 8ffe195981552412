"""prefalign.core.jsonl: the one JSON-lines reader and writer (split on \\n only, atomic writes)."""

from __future__ import annotations

import json

import pytest

from prefalign.core.errors import DataError
from prefalign.core.jsonl import atomic_write, iter_jsonl, read_jsonl, write_json, write_jsonl

# characters that str.splitlines() treats as line breaks but JSON keeps inside strings
ODD = ["line\u2028separator", "next\u0085line", "form\x0cfeed", "para\u2029graph", "vt\x0btab", "cr\rhere"]


def test_round_trip_keeps_unicode_line_breaks_inside_strings(tmp_path):
    records = [{"id": str(i), "text": text, "nested": {"list": [text]}} for i, text in enumerate(ODD)]
    path = write_jsonl(tmp_path / "odd.jsonl", records)
    assert read_jsonl(path) == records
    # one physical line per record, separated by \n only
    assert path.read_bytes().count(b"\n") == len(records)
    assert [n for n, _ in iter_jsonl(path)] == list(range(1, len(records) + 1))


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('"text"', "a JSON str, not an object"),
    ],
)
def test_a_bad_line_names_the_file_and_the_line(tmp_path, bad, what):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n' + bad + '\n{"a": 2}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert str(path) in str(err.value)
    assert "line 3" in str(err.value)
    assert what in str(err.value)


def test_not_utf8_names_the_line_and_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = b'{"a": 1}\n'
    second = b'{"a": "caf\xe9"}\n'  # latin-1 é: invalid UTF-8 at byte 10 of line 2
    path.write_bytes(first + second)
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "not UTF-8" in message
    offset = len(first) + second.index(b"\xe9")
    assert f"byte offset {offset}" in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_write_creates_parent_folders_and_returns_the_path(tmp_path):
    path = write_jsonl(tmp_path / "a" / "b" / "out.jsonl", [{"x": 1}])
    assert path == tmp_path / "a" / "b" / "out.jsonl" and read_jsonl(path) == [{"x": 1}]


def _failing_records(n_good):
    for i in range(n_good):
        yield {"i": i}
    raise RuntimeError("generator failed")


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="generator failed"):
        write_jsonl(tmp_path / "out.jsonl", _failing_records(1000))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_complete_file(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"old": i} for i in range(3)])
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_jsonl(path, _failing_records(10_000))
    assert path.read_bytes() == before  # never a truncated final file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_write_hides_the_file_until_the_block_ends(tmp_path):
    path = tmp_path / "doc.txt"
    with atomic_write(path) as f:
        f.write("partial")
        assert not path.exists()
        temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".doc.txt.")]
        assert len(temporaries) == 1
    assert path.read_text(encoding="utf-8") == "partial"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.txt"]


def test_atomic_write_binary_and_failure_inside_the_block(tmp_path):
    path = tmp_path / "blob.bin"
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    with pytest.raises(KeyboardInterrupt), atomic_write(path, "wb") as f:
        f.write(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"\x00\xff"
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]


def test_write_json_round_trips_one_document(tmp_path):
    value = {"text": ODD, "n": 3}
    path = write_json(tmp_path / "doc.json", value)
    assert json.loads(path.read_text(encoding="utf-8")) == value
