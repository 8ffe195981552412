"""Loading and validating records: formats, column layouts, ids, and every bad input."""

from __future__ import annotations

import json

import datasets
import pytest

from prefalign.data.records import ColumnMap, DataError, content_id, load_raw, normalise_records

CONVERSATIONS = [
    {"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {
        "id": "b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
        ],
    },
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "save_to_disk", "dataset_dict"])
def test_every_local_format_gives_the_same_records(tmp_path, fmt):
    if fmt == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(CONVERSATIONS))
    elif fmt == "jsonl":
        path = _write_jsonl(tmp_path / "data.jsonl", CONVERSATIONS)
    elif fmt == "parquet":
        path = tmp_path / "data.parquet"
        datasets.Dataset.from_list(CONVERSATIONS).to_parquet(str(path))
    elif fmt == "save_to_disk":
        path = tmp_path / "saved"
        datasets.Dataset.from_list(CONVERSATIONS).save_to_disk(str(path))
    else:
        path = tmp_path / "saved_dict"
        datasets.DatasetDict({"train_sft": datasets.Dataset.from_list(CONVERSATIONS)}).save_to_disk(str(path))
    raw = load_raw(str(path), split="train_sft")
    ds, report = normalise_records(raw, ColumnMap(), str(path))
    assert ds["id"] == ["a", "b"]
    assert ds["messages"] == [c["messages"] for c in CONVERSATIONS]
    assert report.dropped == 0


def test_missing_split_of_a_saved_dataset_dict_is_named(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict({"train_sft": datasets.Dataset.from_list(CONVERSATIONS)}).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"split 'test' not found; available: \['train_sft'\]"):
        load_raw(str(path), split="test")


def test_sharegpt_layout_is_mapped_to_roles():
    raw = datasets.Dataset.from_list(
        [
            {
                "id": "sg1",
                "conversations": [
                    {"from": "system", "value": "Be kind."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                ],
            }
        ]
    )
    ds, _ = normalise_records(
        raw, ColumnMap(messages="conversations", role="from", content="value"), "sharegpt.json"
    )
    assert [m["role"] for m in ds[0]["messages"]] == ["system", "user", "assistant"]


def test_prompt_response_pairs_become_conversations_with_optional_system():
    raw = datasets.Dataset.from_list([{"q": "Capital of France?", "a": "Paris.", "sys": "Be brief."}])
    ds, _ = normalise_records(raw, ColumnMap(prompt="q", response="a", system="sys", id=None), "pairs.jsonl")
    assert ds[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]


def test_ids_are_kept_or_content_hashes_stable_under_reordering():
    rows = [{"messages": c["messages"]} for c in CONVERSATIONS]
    forward, _ = normalise_records(datasets.Dataset.from_list(rows), ColumnMap(), "x")
    backward, _ = normalise_records(datasets.Dataset.from_list(rows[::-1]), ColumnMap(), "x")
    assert forward["id"] == backward["id"][::-1]
    assert forward["id"][0] == content_id(CONVERSATIONS[0]["messages"])
    numbered = datasets.Dataset.from_list([{"id": 7, "messages": CONVERSATIONS[0]["messages"]}])
    ds, _ = normalise_records(numbered, ColumnMap(), "x")
    assert ds["id"] == ["7"]


def test_extra_scalar_columns_survive():
    rows = [{**c, "score": 0.5, "noise": True} for c in CONVERSATIONS]
    ds, _ = normalise_records(datasets.Dataset.from_list(rows), ColumnMap(), "x")
    assert ds["score"] == [0.5, 0.5] and ds["noise"] == [True, True]


BAD_ROWS = {
    "unknown_role": (
        {"id": "r1", "messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
        "unknown role 'bot'",
    ),
    "no_assistant_turn": ({"id": "r1", "messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    "empty_response": (
        {"id": "r1", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
        "empty response",
    ),
    "assistant_before_user": (
        {"id": "r1", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
        "before any user turn",
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_records_name_file_row_and_id(tmp_path, reason):
    bad, message = BAD_ROWS[reason]
    path = _write_jsonl(tmp_path / "chats.jsonl", [CONVERSATIONS[0], bad])
    with pytest.raises(DataError, match=rf"chats.jsonl: row 1 \(id=r1\): .*{message}"):
        normalise_records(load_raw(str(path)), ColumnMap(), str(path))


def test_bad_records_are_dropped_and_counted_on_request(tmp_path):
    rows = [CONVERSATIONS[0], CONVERSATIONS[1]] + [
        {**bad, "id": f"bad-{r}"} for r, (bad, _) in BAD_ROWS.items()
    ]
    rows.append({**CONVERSATIONS[1]})  # duplicate id "b"
    path = _write_jsonl(tmp_path / "chats.jsonl", rows)
    ds, report = normalise_records(load_raw(str(path)), ColumnMap(), str(path), on_invalid="drop")
    assert ds["id"] == ["a", "b"]
    assert report.total == len(rows) and report.dropped == len(rows) - 2
    assert dict(report.counts) == {**{r: 1 for r in BAD_ROWS}, "duplicate_id": 1}
    assert report.examples["unknown_role"] == ["bad-unknown_role"]
    assert "dropped 5 of 7" in report.summary("chats.jsonl")


def test_missing_messages_column_lists_the_columns_found(tmp_path):
    path = _write_jsonl(tmp_path / "chats.jsonl", [{"id": "x", "text": "hello"}])
    with pytest.raises(
        DataError,
        match=r"chats.jsonl: missing column\(s\) \['messages'\]; the file has columns \['id', 'text'\]",
    ):
        normalise_records(load_raw(str(path)), ColumnMap(), str(path))


def test_duplicate_ids_name_both_rows(tmp_path):
    path = _write_jsonl(tmp_path / "chats.jsonl", [CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[0]])
    with pytest.raises(DataError, match=r"row 2 \(id=a\): duplicate sample id, first seen at row 0"):
        normalise_records(load_raw(str(path)), ColumnMap(), str(path))


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(CONVERSATIONS[0]) + "\n" + '{"id": "b", "messages": [\n')
    with pytest.raises(DataError, match=r"broken.jsonl: malformed jsonl file \(line 2, row 1"):
        load_raw(str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nothere.jsonl: file not found"):
        load_raw(str(tmp_path / "nothere.jsonl"))
