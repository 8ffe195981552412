"""prefalign.core.names: sequence names and the sequence-major stack / split layout."""

from __future__ import annotations

import pytest
import torch

from prefalign.core.names import (
    CHOSEN,
    REJECTED,
    member_score_column,
    parse_sequence,
    reference_columns,
    required_fields,
    split_sequence_major,
    stack_sequence_major,
)


@pytest.mark.parametrize(
    ("name", "parts"),
    [(CHOSEN, ("x", "y+")), (REJECTED, ("x", "y-")), ("x+|y-", ("x+", "y-")), ("x-|yo", ("x-", "yo"))],
)
def test_parse_sequence(name, parts):
    assert parse_sequence(name) == parts


@pytest.mark.parametrize("bad", ["x|y", "z|y+", "x+", "x|", "|y+", "x|y+|y-", "X|Y+"])
def test_parse_sequence_rejects_unknown_names_listing_the_known_parts(bad):
    with pytest.raises(ValueError, match=r"unknown sequence .*prompts are \['x', 'x\+', 'x-'\], responses"):
        parse_sequence(bad)


def test_required_fields_lists_prompt_first_then_each_field_once():
    assert required_fields([CHOSEN, REJECTED]) == ["prompt", "chosen", "rejected"]
    assert required_fields(["x+|y+", "x-|yo", "x-|y+"]) == [
        "prompt",
        "system_good",
        "chosen",
        "system_bad",
        "original",
    ]


def test_column_names():
    assert member_score_column("judge") == "score_judge"
    assert reference_columns("x+|y-") == ("ref.x+|y-.sum", "ref.x+|y-.count")


def test_stack_then_split_round_trips_lists_and_tensors():
    samples = [{"id": f"s{i}"} for i in range(3)]
    sequences = [CHOSEN, REJECTED, "x+|y+"]
    stacked = stack_sequence_major(samples, sequences)
    assert [name for name, _ in stacked] == [CHOSEN] * 3 + [REJECTED] * 3 + ["x+|y+"] * 3
    assert [s["id"] for _, s in stacked] == ["s0", "s1", "s2"] * 3
    split = split_sequence_major(stacked, sequences)
    assert list(split) == sequences
    for name in sequences:
        assert split[name] == [(name, s) for s in samples]
    rows = torch.arange(9 * 2).reshape(9, 2)
    parts = split_sequence_major(rows, sequences)
    assert torch.equal(torch.cat([parts[n] for n in sequences]), rows)
    assert torch.equal(parts[REJECTED], rows[3:6])


def test_split_refuses_rows_that_do_not_divide():
    with pytest.raises(ValueError, match="7 rows cannot be split into 2 sequences"):
        split_sequence_major(list(range(7)), [CHOSEN, REJECTED])
