"""Raw record loading (`load_raw`), normalisation (`normalise_records`, `ColumnMap`) and `DataError`s."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest

from prefalign.core.errors import DataError, DropReport
from prefalign.data.records import ColumnMap, content_id, load_raw, normalise_records


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' json/parquet builder caches out of the user's home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


HELLO = _conv(("user", "Hi"), ("assistant", "Hello!"))
MATHS = _conv(
    ("system", "Be brief."),
    ("user", "2+2?"),
    ("assistant", "4"),
    ("user", "3+3?"),
    ("assistant", "6"),
)
UNICODE = _conv(("user", "Café? ☕"), ("assistant", "Oui — un café ☕."))

# Two rows with explicit ids and one without (its id must become the content hash).
ROWS = [
    {"id": "a", "messages": HELLO},
    {"id": "b", "messages": MATHS},
    {"id": None, "messages": UNICODE},
]
EXPECTED_IDS = ["a", "b", content_id(UNICODE)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _normalise(path, columns=None, **kwargs):
    return normalise_records(load_raw(str(path)), columns or ColumnMap(), str(path), **kwargs)


# --------------------------------------------------------------------------------------------- formats


def _write(fmt: str, tmp_path, rows) -> tuple[str, str]:
    """Write ``rows`` in format ``fmt``; return (path, split to load)."""
    if fmt == "json":
        path = tmp_path / "chats.json"
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        return str(path), "train"
    if fmt == "jsonl":
        return str(_write_jsonl(tmp_path / "chats.jsonl", rows)), "train"
    if fmt == "parquet":
        path = tmp_path / "chats.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        return str(path), "train"
    if fmt == "save_to_disk":
        path = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return str(path), "train"
    assert fmt == "dataset_dict"
    path = tmp_path / "saved_dict"
    decoy = [{"id": "decoy", "messages": HELLO}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(decoy), "train_sft": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(path))
    return str(path), "train_sft"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "save_to_disk", "dataset_dict"])
def test_every_local_format_gives_the_same_normalised_records(tmp_path, fmt):
    path, split = _write(fmt, tmp_path, ROWS)
    raw = load_raw(path, split=split)
    assert len(raw) == len(ROWS)
    ds, report = normalise_records(raw, ColumnMap(), path)
    assert ds["id"] == EXPECTED_IDS
    assert ds["messages"] == [HELLO, MATHS, UNICODE]
    assert sorted(ds.column_names) == ["id", "messages"]
    assert (report.total, report.dropped) == (3, 0)
    assert report.summary(path) == f"{path}: kept all 3 samples"


def test_dataset_dict_split_selection(tmp_path):
    path, _ = _write("dataset_dict", tmp_path, ROWS)
    assert load_raw(path, split="train")["id"] == ["decoy"]
    assert len(load_raw(path, split="train_sft")) == 3
    with pytest.raises(
        DataError, match=r"split 'test' not found; available: \['train', 'train_sft'\]"
    ) as err:
        load_raw(path, split="test")
    assert path in str(err.value)


def test_non_existent_file_is_named(tmp_path):
    missing = tmp_path / "nothere.jsonl"
    with pytest.raises(DataError, match="file not found") as err:
        load_raw(str(missing))
    assert str(missing) in str(err.value)


def test_non_existent_folder_and_unsupported_format_are_named(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError, match="not an existing file or folder") as err:
        load_raw(str(missing))
    assert str(missing) in str(err.value)
    csv = tmp_path / "chats.csv"
    csv.write_text("id,text\n1,hello\n")
    with pytest.raises(DataError, match=r"not a supported format") as err:
        load_raw(str(csv))
    assert str(csv) in str(err.value)


def test_a_folder_not_written_by_save_to_disk_is_named(tmp_path):
    folder = tmp_path / "random_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="not a folder written by save_to_disk") as err:
        load_raw(str(folder))
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("bad_line", [2, 4])
def test_malformed_jsonl_names_the_file_and_the_bad_line(tmp_path, bad_line):
    lines = [json.dumps(r) for r in ROWS[:2] * 2]
    lines[bad_line - 1] = '{"id": "broken", "messages": [{"role": "user", '  # truncated JSON
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_raw(str(path))
    message = str(err.value)
    assert str(path) in message
    assert "malformed jsonl file" in message
    assert f"(line {bad_line}, row {bad_line - 1}:" in message


def test_malformed_jsonl_row_number_does_not_count_blank_lines(tmp_path):
    """The loader skips blank lines, so the bad line's row is the number of data lines before it."""
    path = tmp_path / "gappy.jsonl"
    good = [json.dumps(r) for r in ROWS[:2]]
    path.write_text(f"{good[0]}\n\n{good[1]}\n   \n{{broken\n")
    with pytest.raises(DataError) as err:
        load_raw(str(path))
    assert "(line 5, row 2:" in str(err.value)
    path.write_text(f"{good[0]}\n\n{good[1]}\n")
    assert load_raw(str(path))["id"] == ["a", "b"]  # blank lines are fine on their own


# ------------------------------------------------------------------------------------------- layouts


def test_sharegpt_layout_is_mapped_to_canonical_roles(tmp_path):
    rows = [
        {
            "id": "sg-1",
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "Bye"},
                {"from": "gpt", "value": "Goodbye"},
            ],
        },
        {"id": "sg-2", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ]
    path = _write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    columns = ColumnMap(messages="conversations", role="from", content="value")
    ds, report = _normalise(path, columns)
    assert report.dropped == 0
    assert ds["id"] == ["sg-1", "sg-2"]
    assert ds[0]["messages"] == _conv(
        ("system", "Be kind."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Bye"),
        ("assistant", "Goodbye"),
    )
    assert ds[1]["messages"] == _conv(("user", "Q"), ("assistant", "A"))
    assert "conversations" not in ds.column_names


def test_sharegpt_without_ids_hashes_the_normalised_conversation():
    """The content id is computed on canonical roles, so both layouts give a conversation one id."""
    sharegpt = datasets.Dataset.from_list(
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
    )
    ds, _ = normalise_records(
        sharegpt, ColumnMap(messages="conversations", role="from", content="value"), "sharegpt.json"
    )
    assert ds["id"] == [content_id(HELLO)]


def test_role_names_can_be_extended_from_config():
    columns = ColumnMap.from_config(
        {"messages": "conversations", "role": "from", "content": "value", "role_names": {"bing": "assistant"}}
    )
    assert columns.role_names["bing"] == "assistant" and columns.role_names["human"] == "user"
    raw = datasets.Dataset.from_list(
        [{"id": "x", "conversations": [{"from": "human", "value": "Q"}, {"from": "bing", "value": "A"}]}]
    )
    ds, _ = normalise_records(raw, columns, "bing.json")
    assert ds[0]["messages"] == _conv(("user", "Q"), ("assistant", "A"))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        ColumnMap.from_config({"colour": "red"})


def test_prompt_response_pairs_become_conversations(tmp_path):
    rows = [
        {"qid": "p1", "q": "Capital of France?", "a": "Paris.", "sys": "Be brief."},
        {"qid": "p2", "q": "Capital of Peru?", "a": "Lima.", "sys": ""},
        {"qid": "p3", "q": "Capital of Chad?", "a": "N'Djamena.", "sys": None},
    ]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    columns = ColumnMap(prompt="q", response="a", system="sys", id="qid")
    ds, report = _normalise(path, columns)
    assert report.dropped == 0
    assert ds["id"] == ["p1", "p2", "p3"]
    assert ds["messages"] == [
        _conv(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris.")),
        _conv(("user", "Capital of Peru?"), ("assistant", "Lima.")),
        _conv(("user", "Capital of Chad?"), ("assistant", "N'Djamena.")),
    ]
    assert sorted(ds.column_names) == ["id", "messages"]  # q, a, sys and qid are consumed


def test_prompt_response_pairs_without_a_system_column_or_ids():
    raw = datasets.Dataset.from_list([{"prompt": "Hi", "response": "Hello!"}])
    ds, _ = normalise_records(raw, ColumnMap(prompt="prompt", response="response", id=None), "pairs")
    assert ds["messages"] == [HELLO]
    assert ds["id"] == [content_id(HELLO)]


def test_prompt_response_with_missing_columns_lists_the_columns_found():
    raw = datasets.Dataset.from_list([{"prompt": "Hi", "answer": "Hello!"}])
    with pytest.raises(DataError, match=r"pairs.jsonl: missing column\(s\) \['response'\]") as err:
        normalise_records(raw, ColumnMap(prompt="prompt", response="response"), "pairs.jsonl")
    assert "['prompt', 'answer']" in str(err.value)


# ----------------------------------------------------------------------------------------------- ids


def test_explicit_ids_are_kept_and_integers_become_strings(tmp_path):
    rows = [{"id": 7, "messages": HELLO}, {"id": 0, "messages": MATHS}, {"id": None, "messages": UNICODE}]
    path = _write_jsonl(tmp_path / "int_ids.jsonl", rows)
    ds, _ = _normalise(path)
    assert ds["id"] == ["7", "0", content_id(UNICODE)]
    assert ds.features["id"] == datasets.Value("string")


def test_blank_ids_and_a_missing_id_column_fall_back_to_content_hashes():
    blank = datasets.Dataset.from_list([{"id": "  ", "messages": HELLO}, {"id": "", "messages": MATHS}])
    ds, _ = normalise_records(blank, ColumnMap(), "blank")
    assert ds["id"] == [content_id(HELLO), content_id(MATHS)]
    no_column = datasets.Dataset.from_list([{"messages": HELLO}])
    ds, _ = normalise_records(no_column, ColumnMap(), "no_column")
    assert ds["id"] == [content_id(HELLO)]


def test_content_id_is_a_fixed_hash_of_the_canonical_conversation():
    # Pinned values: scores cached on disk are joined by these ids, so they must not change between
    # runs, processes or releases (a hash built on ``hash()`` or dict order would).
    assert content_id(HELLO) == "05bb379a3e54d13e"
    assert content_id(UNICODE) == "4f043c637d3add0c"  # hashed as UTF-8, not as \\u escapes
    canonical = json.dumps([["user", "Hi"], ["assistant", "Hello!"]], separators=(",", ":"))
    assert content_id(HELLO) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    # extra keys in a turn do not matter; role, content and order do
    assert content_id([{**m, "weight": 1} for m in HELLO]) == content_id(HELLO)
    assert content_id(HELLO) != content_id(_conv(("user", "Hi"), ("assistant", "Hello")))
    assert content_id(HELLO) != content_id(_conv(("system", "Hi"), ("assistant", "Hello!")))
    assert content_id(HELLO) != content_id(HELLO[::-1])


def test_content_ids_do_not_depend_on_row_order(tmp_path):
    rows = [{"messages": m} for m in (HELLO, MATHS, UNICODE)]
    forward, _ = _normalise(_write_jsonl(tmp_path / "forward.jsonl", rows))
    backward, _ = _normalise(_write_jsonl(tmp_path / "backward.jsonl", rows[::-1]))
    assert forward["id"] == [content_id(m) for m in (HELLO, MATHS, UNICODE)]
    assert backward["id"] == forward["id"][::-1]
    assert len(set(forward["id"])) == 3


# ------------------------------------------------------------------------------------- extra columns


def test_extra_scalar_columns_survive_normalisation(tmp_path):
    rows = [
        {**ROWS[0], "score": 0.25, "noise": False, "source": "alpaca"},
        {**ROWS[1], "score": -1.5, "noise": True, "source": "dolly"},
    ]
    path = _write_jsonl(tmp_path / "scored.jsonl", rows)
    ds, _ = _normalise(path)
    assert ds["score"] == [0.25, -1.5]
    assert ds["noise"] == [False, True]
    assert ds["source"] == ["alpaca", "dolly"]
    assert ds.features["score"].dtype in ("float64", "float32")
    assert ds.features["noise"].dtype == "bool"


def test_extra_columns_stay_aligned_with_their_rows_after_drops():
    good = [{"id": f"g{i}", "messages": HELLO if i % 2 else MATHS, "score": float(i)} for i in range(6)]
    bad = {"id": "bad", "messages": _conv(("user", "only a question")), "score": 99.0}
    rows = good[:3] + [bad] + good[3:]
    ds, report = normalise_records(datasets.Dataset.from_list(rows), ColumnMap(), "x", on_invalid="drop")
    assert report.dropped == 1
    assert ds["id"] == [f"g{i}" for i in range(6)]
    assert ds["score"] == [float(i) for i in range(6)]


# ------------------------------------------------------------------------------------------ bad rows

BAD = {
    "unknown_role": (_conv(("user", "a"), ("bot", "b")), "unknown role 'bot'"),
    "no_assistant_turn": (_conv(("system", "s"), ("user", "a")), "no assistant turn"),
    "empty_response": (
        _conv(("user", "a"), ("assistant", " \n\t ")),
        "assistant turn 1 has an empty response",
    ),
    "empty_later_response": (
        _conv(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "   ")),
        "assistant turn 3 has an empty response",
    ),
    "assistant_before_user": (
        _conv(("system", "s"), ("assistant", "a"), ("user", "b"), ("assistant", "c")),
        "before any user turn",
    ),
    "empty_user_message": (_conv(("user", ""), ("assistant", "b")), "user turn 0 is empty"),
    "empty_later_user_message": (
        _conv(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", " \n"), ("assistant", "c")),
        "user turn 3 is empty",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("with_id", [True, False])
def test_each_bad_row_raises_naming_file_row_and_sample_id(tmp_path, case, with_id):
    messages, detail = BAD[case]
    if with_id:
        sample_id = "bad-1"
    elif case == "unknown_role":  # no canonical conversation to hash: the row stands in for the id
        sample_id = "row-2"
    else:
        sample_id = content_id(messages)
    bad_row = {"id": "bad-1" if with_id else None, "messages": messages}
    path = _write_jsonl(tmp_path / "chats.jsonl", [ROWS[0], ROWS[1], bad_row])
    with pytest.raises(DataError) as err:
        _normalise(path)
    message = str(err.value)
    assert message.startswith(f"{path}: row 2 (id={sample_id}): ")
    assert detail in message


def test_the_first_bad_row_is_reported_with_the_number_of_others(tmp_path):
    rows = [ROWS[0], {"id": "x1", "messages": BAD["unknown_role"][0]}, ROWS[1]]
    rows += [{"id": "x2", "messages": BAD["no_assistant_turn"][0]}]
    path = _write_jsonl(tmp_path / "chats.jsonl", rows)
    with pytest.raises(
        DataError, match=r"row 1 \(id=x1\): turn 1 has unknown role 'bot'.*\(1 more invalid rows\)"
    ):
        _normalise(path)


def test_missing_messages_column_lists_the_columns_found(tmp_path):
    path = _write_jsonl(tmp_path / "texts.jsonl", [{"id": "x", "text": "hello", "score": 1.0}])
    with pytest.raises(DataError) as err:
        _normalise(path)
    assert str(err.value) == (
        f"{path}: missing column(s) ['messages']; the file has columns ['id', 'text', 'score']"
    )


def test_sharegpt_file_read_with_the_default_mapping_names_the_missing_column(tmp_path):
    rows = [{"id": "s", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    path = _write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    with pytest.raises(DataError, match=r"missing column\(s\) \['messages'\].*\['id', 'conversations'\]"):
        _normalise(path)


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = [ROWS[0], ROWS[1], {"id": "c", "messages": UNICODE}, {"id": "b", "messages": HELLO}]
    path = _write_jsonl(tmp_path / "dups.jsonl", rows)
    with pytest.raises(DataError) as err:
        _normalise(path)
    message = str(err.value)
    assert str(path) in message
    assert "row 3 (id=b): duplicate sample id, first seen at row 1" in message


def test_identical_conversations_without_ids_are_duplicates(tmp_path):
    path = _write_jsonl(tmp_path / "same.jsonl", [{"messages": HELLO}, {"messages": HELLO}])
    with pytest.raises(
        DataError, match=rf"row 1 \(id={content_id(HELLO)}\): duplicate sample id, first seen at row 0"
    ):
        _normalise(path)


def test_on_invalid_must_be_raise_or_drop():
    with pytest.raises(ValueError, match="on_invalid"):
        normalise_records(datasets.Dataset.from_list(ROWS[:1]), ColumnMap(), "x", on_invalid="skip")


# -------------------------------------------------------------------------------------------- drop


def test_drop_removes_bad_rows_and_counts_every_reason(tmp_path):
    rows = [
        ROWS[0],  # kept
        {"id": "r-role", "messages": BAD["unknown_role"][0]},
        ROWS[1],  # kept
        {"id": "r-none", "messages": BAD["no_assistant_turn"][0]},
        {"id": "r-empty", "messages": BAD["empty_response"][0]},
        {"id": "r-empty2", "messages": BAD["empty_later_response"][0]},
        {"id": "r-order", "messages": BAD["assistant_before_user"][0]},
        {"id": "a", "messages": UNICODE},  # duplicate of row 0's id
        ROWS[2],  # kept (content id)
        {"id": "b", "messages": HELLO},  # duplicate of row 2's id
        {"id": "r-none2", "messages": _conv(("user", "q"))},
        {"id": "r-user", "messages": BAD["empty_user_message"][0]},
        {"id": "r-user2", "messages": BAD["empty_later_user_message"][0]},
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    ds, report = _normalise(path, on_invalid="drop")
    assert ds["id"] == EXPECTED_IDS
    assert ds["messages"] == [HELLO, MATHS, UNICODE]  # the first of each duplicate pair is kept
    assert dict(report.counts) == {
        "unknown_role": 1,
        "no_assistant_turn": 2,
        "empty_response": 2,
        "assistant_before_user": 1,
        "duplicate_id": 2,
        "empty_user_message": 2,
    }
    assert report.examples["no_assistant_turn"] == ["r-none", "r-none2"]
    assert report.examples["empty_user_message"] == ["r-user", "r-user2"]
    assert report.examples["duplicate_id"] == ["a", "b"]
    assert report.total == len(rows) == 13
    assert report.dropped == 10
    assert len(ds) + report.dropped == report.total  # nothing dropped silently
    summary = report.summary(str(path))
    assert summary.startswith(f"{path}: dropped 10 of 13 samples")
    for reason, n in report.counts.items():
        assert f"{reason}: {n}" in summary


def test_an_invalid_row_does_not_make_a_later_valid_row_with_its_id_a_duplicate():
    rows = [
        {"id": "x", "messages": BAD["no_assistant_turn"][0]},
        {"id": "x", "messages": HELLO},
        {"id": "y", "messages": MATHS},
        {"id": "y", "messages": BAD["unknown_role"][0]},
    ]
    ds, report = normalise_records(datasets.Dataset.from_list(rows), ColumnMap(), "x", on_invalid="drop")
    assert ds["id"] == ["x", "y"] and ds["messages"] == [HELLO, MATHS]
    assert dict(report.counts) == {"no_assistant_turn": 1, "unknown_role": 1}  # each row counted once
    assert len(ds) + report.dropped == report.total == 4


def test_drop_with_nothing_wrong_keeps_everything(tmp_path):
    path = _write_jsonl(tmp_path / "clean.jsonl", ROWS)
    ds, report = _normalise(path, on_invalid="drop")
    assert ds["id"] == EXPECTED_IDS
    assert report.total == 3 and report.dropped == 0 and not report.counts


def test_drop_counts_malformed_turns_and_messages():
    rows = [
        {"id": "ok", "messages": HELLO},
        {"id": "no-list", "messages": []},
        {"id": "bad-turn", "messages": [{"speaker": "user", "text": "x"}]},
    ]
    raw = datasets.Dataset.from_list(rows[:2])
    ds, report = normalise_records(raw, ColumnMap(), "x", on_invalid="drop")
    assert ds["id"] == ["ok"] and dict(report.counts) == {"malformed_messages": 1}
    raw = datasets.Dataset.from_list([{"id": r["id"], "turns": r["messages"]} for r in (rows[0], rows[2])])
    ds, report = normalise_records(
        raw, ColumnMap(messages="turns", role="role", content="content"), "x", on_invalid="drop"
    )
    assert ds["id"] == ["ok"]
    assert report.counts["malformed_turn"] + report.counts["unknown_role"] == 1
    assert len(ds) + report.dropped == report.total == 2


def test_drop_report_examples_are_capped_and_merge_adds_counts():
    report = DropReport(total=20)
    for i in range(8):
        report.add("empty_response", f"e{i}")
    assert report.counts["empty_response"] == 8 and report.examples["empty_response"] == [
        f"e{i}" for i in range(5)
    ]
    other = DropReport(total=3)
    other.add("response_truncated", "t0")
    other.add("empty_response", "x")
    report.merge(other)
    assert dict(report.counts) == {"empty_response": 9, "response_truncated": 1}
    assert report.examples["response_truncated"] == ["t0"]
    assert len(report.examples["empty_response"]) == 5
    assert report.dropped == 10
    assert "dropped 10 of 20 samples" in report.summary("src")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_bytes_name_the_file_and_the_byte_offset(tmp_path, suffix):
    rows = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": "né"}, {"role": "assistant", "content": "ok"}],
        }
        for i in range(4)
    ]
    text = (
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        if suffix == ".jsonl"
        else json.dumps(rows, ensure_ascii=False)
    )
    data = text.encode("utf-8")
    offset = (
        data.index("né".encode(), len(data) // 2) + 1
    )  # inside a later record, after a multi-byte character
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data[:offset] + b"\xff" + data[offset:])
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text: .* byte offset {offset} \(line \d+\)"):
        load_raw(str(path))


def test_first_non_utf8_offset_does_not_depend_on_the_read_chunk(tmp_path):
    from prefalign.data.records import first_non_utf8

    data = "é€☕ab\n".encode() * 3
    path = tmp_path / "x.jsonl"
    path.write_bytes(data + b"\xe2\x82" + b"z\n")  # a cut 3-byte character, then a plain byte
    for chunk_size in range(1, 12):
        assert first_non_utf8(path, chunk_size) == (len(data), 4)
    path.write_bytes(data)
    assert first_non_utf8(path, 5) is None
