"""Length-grouped batch sampler (coverage, sharding, determinism, padding) and collation."""

from __future__ import annotations

import random

import pytest
import torch

from prefalign.config import bundled
from prefalign.data.batching import LengthGroupedBatchSampler, pad_collate
from prefalign.data.datamodule import ChatDataModule
from prefalign.data.records import DataError

_rng = random.Random(0)
LENGTHS = [_rng.randrange(5, 500) for _ in range(203)]


def test_every_sample_once_per_epoch_on_one_rank():
    sampler = LengthGroupedBatchSampler(LENGTHS, 8, shuffle=True, seed=1, mega_batch_mult=4)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))


def test_ranks_get_disjoint_batches_and_the_same_number():
    samplers = [
        LengthGroupedBatchSampler(LENGTHS, 8, seed=1, rank=r, world_size=2, mega_batch_mult=4)
        for r in range(2)
    ]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == len(samplers[0])
    seen = [set(i for b in rank for i in b) for rank in batches]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) >= len(LENGTHS) - 2 * 8  # at most one batch per rank left out


def test_evaluation_covers_every_sample_across_ranks():
    samplers = [LengthGroupedBatchSampler(LENGTHS, 8, shuffle=False, rank=r, world_size=2) for r in range(2)]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1])
    assert set(i for rank in batches for b in rank for i in b) == set(range(len(LENGTHS)))


def test_order_depends_on_seed_and_epoch_only():
    a, b = (LengthGroupedBatchSampler(LENGTHS, 8, seed=5) for _ in range(2))
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def _padding(batches):
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_length_grouping_cuts_padding():
    grouped = _padding(LengthGroupedBatchSampler(LENGTHS, 8, seed=2, mega_batch_mult=25))
    random_batches = _padding(LengthGroupedBatchSampler(LENGTHS, 8, seed=2, mega_batch_mult=1))
    assert grouped * 4 < random_batches


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError, match="rank"):
        LengthGroupedBatchSampler(LENGTHS, 4, rank=2, world_size=2)


def test_pad_collate_pads_right_and_passes_scalar_columns():
    samples = [
        {
            "id": "a",
            "input_ids": [1, 2, 3],
            "labels": [-100, 2, 3],
            "length": 3,
            "aligned_score": -1.5,
            "noise": False,
        },
        {"id": "b", "input_ids": [4], "labels": [4], "length": 1, "aligned_score": -0.5, "noise": True},
    ]
    batch = pad_collate(samples, pad_token_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [4, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["id"] == ["a", "b"]
    assert torch.equal(batch["aligned_score"], torch.tensor([-1.5, -0.5]))
    assert batch["noise"].tolist() == [False, True]
    assert "length" not in batch


def test_datamodule_builds_batches_with_response_labels_and_checks_required_columns(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    dm = ChatDataModule(
        tokenizer,
        train={"path": bundled("tiny_chat_train.jsonl"), "limit": 32},
        val=bundled("tiny_chat_val.jsonl"),
        max_length=256,
        batch_size=8,
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    assert (batch["labels"] != -100).sum(1).min() > 0
    assert dm.drop_counts() == {"data/train_samples": 32, "data/val_samples": 64}
    missing = ChatDataModule(
        tokenizer, train=bundled("tiny_chat_val.jsonl"), required_columns=["missing_col"]
    )
    with pytest.raises(DataError, match=r"needs column\(s\) \['missing_col'\]"):
        missing.setup()
