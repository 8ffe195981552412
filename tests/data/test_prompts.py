"""First-turn prompts from chat data (prefalign.data.prompts), as the SSO pipeline reads them."""

from __future__ import annotations

import json

from prefalign.core.jsonl import read_jsonl, write_jsonl
from prefalign.data.datamodule import DataSource
from prefalign.data.prompts import first_turn_prompts
from prefalign.data.records import ColumnMap
from prefalign.pipelines.sso import load_prompt_splits

SHAREGPT = ColumnMap.from_config(
    {"messages": "conversations", "role": "from", "content": "value", "id": "id"}
)


def _turn(role: str, text: str) -> dict:
    return {"from": role, "value": text}


def _records() -> list[dict]:
    return [
        {
            "id": "a",
            "conversations": [
                _turn("human", "First question?"),
                _turn("gpt", "Answer."),
                _turn("human", "Second question?"),
                _turn("gpt", "More."),
            ],
        },
        {
            "id": "sys",
            "conversations": [
                _turn("system", "Be brief."),
                _turn("human", "Hello there?"),
                _turn("gpt", "Hi."),
            ],
        },
        {
            "id": "cont",
            "conversations": [_turn("gpt", "...continued"), _turn("human", "go on"), _turn("gpt", "ok")],
        },
        {"id": "blank", "conversations": [_turn("human", "   "), _turn("gpt", "Could you say more?")]},
        {"id": "b", "conversations": [_turn("human", "Last question?"), _turn("gpt", "Last answer.")]},
    ]


def test_first_user_turn_without_system_message_every_drop_counted(tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(_records()), encoding="utf-8")
    rows, report = first_turn_prompts(DataSource(path=str(path)), SHAREGPT, on_invalid="drop")
    assert rows == [
        {"id": "a", "prompt": "First question?"},
        {"id": "sys", "prompt": "Hello there?"},
        {"id": "b", "prompt": "Last question?"},
    ]
    assert dict(report.counts) == {"assistant_before_user": 1, "empty_user_message": 1}
    assert report.examples["empty_user_message"] == ["blank"] and report.total == 5


def test_limit_applies_to_conversations_and_the_rows_feed_the_sso_pipeline(tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(_records()), encoding="utf-8")
    rows, _ = first_turn_prompts(DataSource(path=str(path), limit=2), SHAREGPT, on_invalid="drop")
    assert [r["id"] for r in rows] == ["a", "sys"]
    out = tmp_path / "prompts.jsonl"
    write_jsonl(out, rows)
    assert read_jsonl(out) == rows
    splits = load_prompt_splits({"path": str(out)}, iterations=2, seed=0)
    assert sorted(p["id"] for split in splits for p in split) == ["a", "sys"]
