"""prefalign.core.chat.prompt_messages: a record's prompt is its messages before the last answer."""

from __future__ import annotations

import pytest

from prefalign.core.chat import prompt_messages
from prefalign.core.errors import DataError


def test_messages_before_the_last_assistant_turn():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    record = {"id": "r", "messages": messages}
    prompt = prompt_messages(record)
    assert prompt == messages[:4]
    prompt[0]["content"] = "changed"
    assert messages[0]["content"] == "s"  # copies, not the record's own dicts


def test_a_prompt_column_becomes_one_user_turn():
    assert prompt_messages({"prompt": "What is 2 plus 2?"}) == [
        {"role": "user", "content": "What is 2 plus 2?"}
    ]


def test_messages_without_an_answer_are_the_prompt():
    messages = [{"role": "user", "content": "q"}]
    assert prompt_messages({"messages": messages}) == messages


def test_a_record_without_messages_or_prompt_names_its_id():
    with pytest.raises(DataError, match=r"record 'r7': needs `messages` or `prompt`"):
        prompt_messages({"id": "r7", "messages": []})
