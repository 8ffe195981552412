"""The one generic rule about chat records that every layer shares: what a record's prompt is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefalign.core.errors import DataError


def prompt_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation a model answers: the record's ``messages`` before its last assistant turn.

    A record with a ``prompt`` column and no ``messages`` (a prompt-set record) becomes one user
    turn. A record with ``messages`` but no assistant turn is answered as a whole (all its
    messages are the prompt).

    Raises:
        DataError: the record has neither ``messages`` nor ``prompt`` (names its ``id``).
    """
    messages = record.get("messages")
    if not messages:
        if not record.get("prompt"):
            raise DataError(f"record {record.get('id')!r}: needs `messages` or `prompt`")
        return [{"role": "user", "content": str(record["prompt"])}]
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    last = assistant[-1] if assistant else len(messages)
    return [dict(m) for m in messages[:last]]
