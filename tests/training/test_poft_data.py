"""The PoFT data recipe in the data module: hand-crafted noise and score-based filtering (the aligned
scores attached before setup by prefalign.scoring.frozen, as the training app does)."""

from __future__ import annotations

import pytest

from prefalign.config import bundled
from prefalign.data.datamodule import ChatDataModule
from prefalign.scoring.frozen import attach_frozen_columns

NOISE = {"num_samples": 12, "seed": 3, "insert_rate": 0.05, "delete_rate": 0.05, "modify_rate": 0.05}


@pytest.fixture
def aligned(session_cache, tmp_path):
    member = {"tiny": {"template": "zephyr", "seed": 11}, "cache_dir": f"{session_cache}/models"}
    return {
        "members": {"z": member},
        "aggregation": "avg",
        "max_length": 256,
        "cache_dir": str(tmp_path / "scores"),
        "score_missing": True,
    }


def _datamodule(tokenizer, aligned=None, **kwargs):
    dm = ChatDataModule(
        tokenizer,
        train={"path": bundled("tiny_chat_train.jsonl"), "limit": 40},
        val={"path": bundled("tiny_chat_val.jsonl"), "limit": 8},
        max_length=256,
        batch_size=8,
        **kwargs,
    )
    attach_frozen_columns(dm, aligned=aligned)
    return dm


def test_noise_is_mixed_into_training_only_and_labelled(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = _datamodule(tokenizer, noise=NOISE, required_columns=["noise"])
    dm.setup()
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 52 and sum(train["noise"]) == 12
    assert sum(val["noise"]) == 0 and len(val) == 8
    again = _datamodule(tokenizer, noise=NOISE)
    again.setup()
    assert again.datasets["train"]["id"] == train["id"]  # deterministic


def test_filtering_keeps_the_top_fraction_by_aligned_score_and_counts_the_rest(
    tiny_model_and_tokenizer, aligned
):
    _, tokenizer = tiny_model_and_tokenizer
    full = _datamodule(tokenizer, aligned=aligned, required_columns=["aligned_score"])
    full.setup()
    dm = _datamodule(tokenizer, aligned=aligned, filter_top_fraction=0.25)
    dm.setup()
    kept = dm.datasets["train"]
    assert len(kept) == 10
    assert dm.drop_reports["train"].counts["below_score_threshold"] == 30
    assert dm.drop_counts()["data/train_dropped_below_score_threshold"] == 30
    scores = sorted(full.datasets["train"]["aligned_score"], reverse=True)
    assert sorted(kept["aligned_score"], reverse=True) == scores[:10]
    assert len(dm.datasets["val"]) == 8  # evaluation data is never filtered
