"""prefalign.core.differences: the one "what differs" of stage markers and checkpoint model configs."""

from __future__ import annotations

from prefalign.core.differences import ABSENT, differences


def test_every_differing_key_is_named_by_its_dotted_path_in_the_current_order():
    recorded = {"seed": 0, "sampling": {"temperature": 0.7, "top_p": 1.0}, "old": 3}
    current = {"sampling": {"top_p": 0.9, "temperature": 0.7}, "seed": 5, "new": 1}
    assert differences(recorded, current) == [
        ("sampling.top_p", 1.0, 0.9),
        ("seed", 0, 5),
        ("new", ABSENT, 1),
        ("old", 3, ABSENT),
    ]
    assert differences(current, current) == []


def test_a_missing_key_can_count_as_none():
    assert differences({"a": 1}, {"a": 1, "b": None}) == [("b", ABSENT, None)]
    assert differences({"a": 1}, {"a": 1, "b": None}, absent=None) == []
    assert repr(ABSENT) == "<absent>"


def test_values_compare_as_json_and_skipped_names_are_left_out_at_any_depth():
    assert differences({"shape": (2, 3)}, {"shape": [2, 3]}) == []  # a tuple saved, a list read back
    recorded = {"_name": "x", "dtype": "float32", "text": {"dtype": "bf16", "hidden": 8}}
    current = {"_name": "y", "dtype": "bfloat16", "text": {"dtype": "fp32", "hidden": 16}}
    skip = lambda name: name.startswith("_") or name == "dtype"  # noqa: E731
    assert differences(recorded, current, skip=skip) == [("text.hidden", 8, 16)]
    assert differences(1, 2) == [("", 1, 2)]
