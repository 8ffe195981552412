"""Record layouts of the papers' datasets: Alpaca/Dolly instruction + input, shareAI exchanges."""

import datasets
import pytest

from prefalign.core.errors import DataError
from prefalign.data.records import ColumnMap, normalise_records


def test_instruction_with_optional_input_becomes_one_user_turn():
    raw = datasets.Dataset.from_list(
        [
            {"instruction": "Add the numbers.", "context": "2 and 3", "response": "5"},
            {"instruction": "Say hi.", "context": "", "response": "Hi!"},
        ]
    )
    columns = ColumnMap(prompt="instruction", input="context", response="response", id=None)
    ds, _ = normalise_records(raw, columns, "dolly.jsonl")
    assert ds[0]["messages"] == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert ds[1]["messages"][0] == {"role": "user", "content": "Say hi."}
    assert "context" not in ds.column_names


def test_exchanges_expand_to_alternating_turns():
    raw = datasets.Dataset.from_list(
        [
            {
                "conversation_id": 7,
                "conversation": [{"human": "a", "assistant": "b"}, {"human": "c", "assistant": "d"}],
            }
        ]
    )
    columns = ColumnMap(
        messages="conversation", pair_user="human", pair_assistant="assistant", id="conversation_id"
    )
    ds, _ = normalise_records(raw, columns, "sharegpt.jsonl")
    assert ds[0]["id"] == "7"
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in ds[0]["messages"]] == ["a", "b", "c", "d"]


def test_a_malformed_exchange_names_the_row_and_id():
    raw = datasets.Dataset.from_list(
        [
            {"conversation_id": "ok", "conversation": [{"human": "a", "assistant": "b"}]},
            {"conversation_id": "bad", "conversation": [{"human": "a", "gpt": "b"}]},
        ]
    )
    columns = ColumnMap(
        messages="conversation", pair_user="human", pair_assistant="assistant", id="conversation_id"
    )
    with pytest.raises(DataError, match=r"sharegpt.jsonl: row 1 \(id=bad\): exchange 0 lacks"):
        normalise_records(raw, columns, "sharegpt.jsonl")
