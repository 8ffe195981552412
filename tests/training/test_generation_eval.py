"""GenerationEval: held-out generations scored after every epoch, logged and written per epoch."""

from __future__ import annotations

import json

import pytest

from prefalign.core.errors import DataError
from prefalign.training.callbacks import GenerationEval, _flatten
from prefalign.training.run import run_task, train
from prefalign.worlds.verifiable import write_world


def test_flatten_keeps_numbers_and_joins_nested_keys():
    assert _flatten({"a": 1, "b": {"c": 2.5, "d": "text"}, "e": True}) == {"a": 1.0, "b/c": 2.5}
    assert _flatten(0.25) == {"metric": 0.25}


def test_bad_files_are_refused_with_their_line(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text('{"id": "a", "prompt": "hi", "answer": "x"}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"held_out.jsonl, line 2: a record needs `messages` or `prompt`"):
        GenerationEval(str(path), "prefalign.worlds.verifiable.exact_match")
    path.write_text('{"id": "a", "prompt": "hi"\n')
    with pytest.raises(DataError, match=r"held_out.jsonl, line 1: not JSON"):
        GenerationEval(str(path), "prefalign.worlds.verifiable.exact_match")
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        GenerationEval(str(path), "prefalign.worlds.verifiable.exact_match")


def test_exact_match_is_logged_and_answers_written_every_epoch(compose_train, tmp_path):
    write_world(tmp_path / "data" / "verifiable_world", train=32, val=8, test=12, families=["upper"])
    cfg = compose_train(
        [
            "experiment=cpu_world_ce",
            "trainer.max_epochs=2",
            "data.train.limit=32",
            "data.val.limit=8",
            "logger=csv",
            "callbacks.exact_match.limit=10",
        ]
    )
    run_task(train, cfg)
    rows = [line.split(",") for line in (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    column = header.index("val/exact_match")
    logged = [(r[header.index("epoch")], float(r[column])) for r in body if r[column]]
    assert [epoch for epoch, _ in logged] == ["0", "1"]
    assert all(0.0 <= value <= 1.0 for _, value in logged)
    assert "val/by_family/upper/exact_match" in header
    for epoch in (0, 1):
        answers = [
            json.loads(line)
            for line in (tmp_path / "run" / "generations" / f"epoch_{epoch:03d}.jsonl").open()
        ]
        assert [a["id"] for a in answers] == [f"vw-2-{i}" for i in range(10)]
