"""Per-epoch Last / Avg / Std against hand computations."""

from __future__ import annotations

import json
import math

import pytest

from prefalign.evaluation.aggregate import aggregate_epochs, write_summary

SCORES = {
    1: {"arc": 50.0, "gsm8k": 70.0},
    2: {"arc": 60.0, "gsm8k": 80.0},
    3: {"arc": 64.0, "gsm8k": 76.0},
}


def test_last_avg_std_leave_out_the_first_epoch():
    summary = aggregate_epochs(SCORES)
    # overall per epoch: (50+70)/2 = 60, (60+80)/2 = 70, (64+76)/2 = 70
    assert summary.epochs[1]["overall"] == 60.0
    assert summary.epochs[2]["overall"] == summary.epochs[3]["overall"] == 70.0
    assert summary.last == {"arc": 64.0, "gsm8k": 76.0, "overall": 70.0}
    # epochs 2 and 3: means (60+64)/2 = 62, (80+76)/2 = 78, 70; population std |a-b|/2 = 2, 2, 0
    assert summary.summary_epochs == [2, 3]
    assert summary.avg == {"arc": 62.0, "gsm8k": 78.0, "overall": 70.0}
    assert summary.std == {"arc": 2.0, "gsm8k": 2.0, "overall": 0.0}


def test_skip_none_and_single_epoch():
    summary = aggregate_epochs(SCORES, skip_first=0)
    assert summary.avg["arc"] == pytest.approx((50 + 60 + 64) / 3)
    mean = (50 + 60 + 64) / 3
    assert summary.std["arc"] == pytest.approx(
        math.sqrt(((50 - mean) ** 2 + (60 - mean) ** 2 + (64 - mean) ** 2) / 3)
    )
    one = aggregate_epochs({1: {"arc": 40.0}})  # nothing left after skipping: Avg over the one epoch
    assert one.summary_epochs == [1] and one.avg["arc"] == 40.0 and one.std["arc"] == 0.0


def test_markdown_table_and_files(tmp_path):
    summary = aggregate_epochs(SCORES)
    table = summary.to_markdown()
    lines = table.splitlines()
    assert lines[0] == "| epoch | arc | gsm8k | overall |"
    assert lines[2:] == [
        "| epoch 1 | 50.00 | 70.00 | 60.00 |",
        "| epoch 2 | 60.00 | 80.00 | 70.00 |",
        "| epoch 3 | 64.00 | 76.00 | 70.00 |",
        "| Last | 64.00 | 76.00 | 70.00 |",
        "| Avg | 62.00 | 78.00 | 70.00 |",
        "| Std | 2.00 | 2.00 | 0.00 |",
    ]
    path = write_summary(summary, tmp_path, {"run_dir": "somewhere"})
    saved = json.loads(path.read_text())
    assert saved["epochs"]["3"]["arc"] == 64.0 and saved["avg"]["gsm8k"] == 78.0
    assert saved["run_dir"] == "somewhere"
    assert (tmp_path / "summary.md").read_text().strip() == table


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ({}, "no epoch scores"),
        ({1: {"arc": 1.0}, 2: {"mmlu": 1.0}}, "epoch 2 scores tasks"),
        ({1: {"overall": 1.0}}, "reserved"),
        ({1: {"arc": float("nan")}}, "non-finite"),
    ],
)
def test_bad_input_is_named(scores, message):
    with pytest.raises(ValueError, match=message):
        aggregate_epochs(scores)
