"""prefalign.core.errors: DropReport counts every dropped sample by reason, with a few example ids."""

from __future__ import annotations

from prefalign.core.errors import ConfigError, DataError, DropReport


def test_errors_are_value_errors():
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)


def test_counts_by_reason_and_keeps_at_most_five_example_ids():
    report = DropReport(total=20)
    for i in range(7):
        report.add("too_long", f"s{i}")
    report.add("empty", "e0")
    assert report.counts == {"too_long": 7, "empty": 1}
    assert report.dropped == 8
    assert report.examples == {"too_long": ["s0", "s1", "s2", "s3", "s4"], "empty": ["e0"]}


def test_merge_adds_counts_and_tops_up_examples_to_five():
    a, b = DropReport(total=10), DropReport(total=5)
    for i in range(3):
        a.add("too_long", f"a{i}")
    for i in range(4):
        b.add("too_long", f"b{i}")
    b.add("noise", "n0")
    assert a.merge(b) is a
    assert a.counts == {"too_long": 7, "noise": 1}
    assert a.examples["too_long"] == ["a0", "a1", "a2", "b0", "b1"]
    assert a.examples["noise"] == ["n0"]
    assert b.counts == {"too_long": 4, "noise": 1}  # the merged-in report is unchanged


def test_summary_names_the_source_the_totals_and_each_reason():
    report = DropReport(total=4)
    assert report.summary("train.jsonl") == "train.jsonl: kept all 4 samples"
    report.add("too_long", "s1")
    report.add("empty", "s2")
    assert report.summary("train.jsonl") == (
        "train.jsonl: dropped 2 of 4 samples — empty: 1 (e.g. ['s2']), too_long: 1 (e.g. ['s1'])"
    )
