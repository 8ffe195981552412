"""`LengthGroupedBatchSampler` (coverage, sharding, determinism, padding), `pad_collate`, `ChatDataModule`.

(Named ``test_length_batching.py`` because ``tests/data_pipeline/test_batching.py`` exists and the
test folders are not packages, so basenames must be unique.)
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from types import SimpleNamespace

import datasets
import pytest
import torch

from prefalign.config import bundled
from prefalign.core.errors import ConfigError, DataError
from prefalign.data.batching import LengthGroupedBatchSampler, pad_collate
from prefalign.data.chat import IGNORE_INDEX
from prefalign.data.datamodule import ChatDataModule


def _lognormal_lengths(n: int, seed: int) -> list[int]:
    """Token lengths spread over two orders of magnitude, like real chat data."""
    rng = random.Random(seed)
    return [min(4000, max(1, round(math.exp(rng.gauss(5.0, 1.0))))) for _ in range(n)]


LENGTHS = _lognormal_lengths(1003, seed=0)


def _flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def _padding(batches, lengths=LENGTHS) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


# ------------------------------------------------------------------------------------------ coverage


@pytest.mark.parametrize(
    ("n", "batch_size", "mega"), [(1003, 8, 50), (1003, 8, 4), (1003, 1, 50), (64, 8, 50), (5, 8, 50)]
)
def test_one_rank_sees_every_sample_exactly_once_per_epoch(n, batch_size, mega):
    sampler = LengthGroupedBatchSampler(LENGTHS[:n], batch_size, shuffle=True, seed=3, mega_batch_mult=mega)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(_flat(batches)) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        # only the last batch of each mega-batch can be short
        assert sum(len(b) < batch_size for b in batches) <= math.ceil(n / (batch_size * mega))


def test_drop_last_keeps_only_full_batches():
    sampler = LengthGroupedBatchSampler(LENGTHS, 8, seed=3, mega_batch_mult=10, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum((min(80, 1003 - s)) // 8 for s in range(0, 1003, 80))
    assert all(len(b) == 8 for b in batches)
    flat = _flat(batches)
    assert len(flat) == len(set(flat))
    assert len(flat) >= 1003 - 7 * math.ceil(1003 / 80)  # at most batch_size-1 per mega-batch dropped


def test_len_matches_what_is_yielded_for_every_configuration():
    for n, batch_size, world, shuffle, drop_last, mega in itertools.product(
        [0, 1, 7, 64, 203], [1, 3, 8], [1, 2, 3], [True, False], [True, False], [1, 4, 50]
    ):
        for rank in range(world):
            sampler = LengthGroupedBatchSampler(
                LENGTHS[:n],
                batch_size,
                shuffle=shuffle,
                seed=1,
                rank=rank,
                world_size=world,
                mega_batch_mult=mega,
                drop_last=drop_last,
            )
            config = (n, batch_size, world, rank, shuffle, drop_last, mega)
            assert len(list(sampler)) == len(sampler), config


# ------------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_batches_and_the_same_number(world):
    batch_size = 8
    samplers = [
        LengthGroupedBatchSampler(LENGTHS, batch_size, seed=4, rank=r, world_size=world, mega_batch_mult=10)
        for r in range(world)
    ]
    per_rank = [list(s) for s in samplers]
    counts = {len(b) for b in per_rank} | {len(s) for s in samplers}
    assert len(counts) == 1  # every rank steps the same number of times, as len() promises
    flat = [i for batches in per_rank for i in _flat(batches)]
    assert len(flat) == len(set(flat))  # no sample on two ranks, none twice
    # every global batch is used except fewer than `world` of them (so ranks step together)
    assert len(flat) >= len(LENGTHS) - (world - 1) * batch_size

    # the ranks deal out the one shared global order, round-robin
    everything = list(LengthGroupedBatchSampler(LENGTHS, batch_size, seed=4, mega_batch_mult=10))
    for rank, batches in enumerate(per_rank):
        assert batches == everything[rank::world][: len(batches)]


@pytest.mark.parametrize(("n", "batch_size", "world"), [(1003, 8, 1), (1003, 8, 2), (1003, 16, 3), (3, 4, 2)])
def test_evaluation_covers_every_sample_and_repeats_only_to_equalise(n, batch_size, world):
    lengths = LENGTHS[:n]
    samplers = [
        LengthGroupedBatchSampler(lengths, batch_size, shuffle=False, rank=r, world_size=world)
        for r in range(world)
    ]
    per_rank = [list(s) for s in samplers]
    assert {len(b) for b in per_rank} == {len(samplers[0])}
    all_batches = [tuple(b) for batches in per_rank for b in batches]
    assert set(_flat(all_batches)) == set(range(n))
    global_batches = math.ceil(n / batch_size)
    unique = set(all_batches)
    assert len(unique) == global_batches
    # the only repeats are whole batches, as many as needed to give every rank the same count
    assert len(all_batches) - len(unique) == world * math.ceil(global_batches / world) - global_batches
    flat_unique = _flat(unique)
    assert len(flat_unique) == len(set(flat_unique)) == n


def test_evaluation_order_is_by_decreasing_length_and_ignores_the_seed():
    a = list(LengthGroupedBatchSampler(LENGTHS, 8, shuffle=False, seed=0))
    b = list(LengthGroupedBatchSampler(LENGTHS, 8, shuffle=False, seed=99))
    assert a == b
    ordered = [LENGTHS[i] for i in _flat(a)]
    assert ordered == sorted(LENGTHS, reverse=True)


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_and_epoch_give_the_same_order_and_set_epoch_changes_it():
    a = LengthGroupedBatchSampler(LENGTHS, 8, seed=5)
    b = LengthGroupedBatchSampler(LENGTHS, 8, seed=5)
    epoch0 = list(a)
    assert epoch0 == list(b) == list(a)  # repeatable, also on a second pass
    b.set_epoch(1)
    epoch1 = list(b)
    assert epoch1 != epoch0
    assert sorted(_flat(epoch1)) == sorted(_flat(epoch0))  # a new order of the same samples
    b.set_epoch(0)
    assert list(b) == epoch0
    assert list(LengthGroupedBatchSampler(LENGTHS, 8, seed=6)) != epoch0
    assert list(LengthGroupedBatchSampler(LENGTHS, 8, seed=6)) == epoch1  # epoch e draws with seed + e


def test_lightning_sets_the_epoch_through_batch_sampler_sampler():
    """Lightning calls set_epoch on ``loader.batch_sampler.sampler`` only; the shuffle must follow."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    sampler = LengthGroupedBatchSampler(LENGTHS, 8, seed=5)
    loader = DataLoader(list(range(len(LENGTHS))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3
    assert list(sampler) == list(LengthGroupedBatchSampler(LENGTHS, 8, seed=8))  # seed + epoch


# ------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("consumed", [0, 1, 17, 40])
def test_a_resumed_sampler_continues_the_epoch_where_the_position_says(world, consumed):
    for rank in range(world):
        unbroken = LengthGroupedBatchSampler(
            LENGTHS, 8, seed=2, rank=rank, world_size=world, mega_batch_mult=10
        )
        unbroken.set_epoch(4)
        epoch = list(unbroken)
        position = unbroken.position(consumed)
        assert position == {
            "epoch": 4,
            "batches_consumed": consumed,
            "batches_per_epoch": len(unbroken),
            "world_size": world,
            "batch_size": 8,
        }
        resumed = LengthGroupedBatchSampler(
            LENGTHS, 8, seed=2, rank=rank, world_size=world, mega_batch_mult=10
        )
        resumed.resume(position)
        assert resumed.epoch == 4
        assert len(resumed) == len(epoch)  # Lightning counts the whole epoch and skips by itself
        assert list(resumed) == epoch[consumed:]
        assert list(resumed) == epoch  # the skip applies to one pass only


def test_a_position_at_the_epoch_end_resumes_with_the_next_epoch_on_any_number_of_ranks():
    two = LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=0, world_size=2)
    two.set_epoch(1)
    position = two.position(len(two))
    for world in (1, 2, 4):
        shards = []
        for rank in range(world):
            resumed = LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=rank, world_size=world)
            resumed.resume(position)
            assert resumed.epoch == 2
            expected = LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=rank, world_size=world)
            expected.set_epoch(2)
            assert list(resumed) == list(expected)
            shards.append(list(resumed))
        # the same global batch order, dealt to `world` ranks
        every = LengthGroupedBatchSampler(LENGTHS, 8, seed=2)
        every.set_epoch(2)
        dealt = [b for rank_batches in zip(*shards, strict=True) for b in rank_batches]
        assert dealt == list(every)[: len(dealt)]


def test_a_state_restored_after_the_loader_was_built_has_the_loader_built_again():
    """FSDP2 / FSDP restore after ``configure_optimizers``, whose ``estimated_stepping_batches``
    already built (and began iterating) the training loader in epoch 0's order: the data module
    drops it, and the loader Lightning builds next resumes at the saved position."""

    from prefalign.data.batching import ResumableTrainOrder

    module = ResumableTrainOrder()
    module.trainer = SimpleNamespace(fit_loop=SimpleNamespace(_combined_loader=object()))
    module.track_train_sampler(LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=1, world_size=2))
    written = LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=1, world_size=2)
    module.load_state_dict({"train_order": written.position(3)})  # mid-epoch 0
    assert module.trainer.fit_loop._combined_loader is None  # Lightning builds the loader again
    rebuilt = module.track_train_sampler(LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=1, world_size=2))
    assert list(rebuilt) == list(written)[3:]  # the rest of epoch 0 on this rank


@pytest.mark.parametrize(("world", "batch_size"), [(1, 8), (4, 8), (2, 4)])
def test_a_mid_epoch_position_of_another_world_or_batch_size_is_a_clear_error(world, batch_size):
    written = LengthGroupedBatchSampler(LENGTHS, 8, seed=2, rank=0, world_size=2)
    position = written.position(5)
    other = LengthGroupedBatchSampler(LENGTHS, batch_size, seed=2, rank=0, world_size=world)
    with pytest.raises(ConfigError, match=r"mid-epoch \(epoch 0, batch 5 of \d+\) by 2 rank\(s\)") as error:
        other.resume(position)
    assert "trainer.devices x trainer.num_nodes" in str(error.value)
    assert "epoch_XXX.ckpt" in str(error.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        LengthGroupedBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        LengthGroupedBatchSampler(LENGTHS, 4, rank=2, world_size=2)


# ----------------------------------------------------------------------------------------- padding


def test_length_grouping_cuts_padding_at_least_in_half():
    for seed in range(3):
        grouped = list(LengthGroupedBatchSampler(LENGTHS, 8, seed=seed, mega_batch_mult=50))
        random_batches = list(LengthGroupedBatchSampler(LENGTHS, 8, seed=seed, mega_batch_mult=1))
        assert sorted(_flat(grouped)) == sorted(_flat(random_batches)) == list(range(len(LENGTHS)))
        # baseline sanity: random batches of lognormal lengths waste a lot
        assert _padding(random_batches) > 0.5 * sum(LENGTHS)
        assert 2 * _padding(grouped) < _padding(random_batches)


def test_batches_of_one_mega_batch_do_not_interleave_in_length():
    lengths = LENGTHS[:200]
    batches = list(LengthGroupedBatchSampler(lengths, 8, seed=0, mega_batch_mult=25))  # one mega-batch
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (_, high), (low, _) in itertools.pairwise(spans):
        assert high <= low
    sorted_padding = _padding(list(LengthGroupedBatchSampler(lengths, 8, shuffle=False)), lengths)
    assert _padding(batches, lengths) == sorted_padding  # as little as a full sort gives


# ------------------------------------------------------------------------------------- pad_collate

SAMPLES = [
    {
        "id": "a",
        "input_ids": [11, 12, 13],
        "labels": [IGNORE_INDEX, 12, 13],
        "length": 3,
        "num_response_tokens": 2,
        "truncated": False,
        "aligned_score": -1.5,
        "noise": False,
        "source": "alpaca",
    },
    {
        "id": "b",
        "input_ids": [21, 22, 23, 24, 25],
        "labels": [IGNORE_INDEX, IGNORE_INDEX, 23, IGNORE_INDEX, 25],
        "length": 5,
        "num_response_tokens": 2,
        "truncated": True,
        "aligned_score": 0.25,
        "noise": True,
        "source": "dolly",
    },
    {
        "id": "c",
        "input_ids": [31],
        "labels": [31],
        "length": 1,
        "num_response_tokens": 1,
        "truncated": False,
        "aligned_score": 2.0,
        "noise": False,
        "source": "dolly",
    },
]


def test_pad_collate_pads_right_and_passes_scalar_columns():
    batch = pad_collate(SAMPLES, pad_token_id=7)
    P, I = 7, IGNORE_INDEX  # noqa: E741
    assert batch["input_ids"].tolist() == [[11, 12, 13, P, P], [21, 22, 23, 24, 25], [31, P, P, P, P]]
    assert batch["labels"].tolist() == [[I, 12, 13, I, I], [I, I, 23, I, 25], [31, I, I, I, I]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    for key in ("input_ids", "labels", "attention_mask"):
        assert batch[key].dtype == torch.long
    assert batch["id"] == ["a", "b", "c"]
    assert batch["aligned_score"].dtype.is_floating_point
    assert torch.allclose(batch["aligned_score"], torch.tensor([-1.5, 0.25, 2.0]))
    assert batch["noise"].dtype == torch.bool and batch["noise"].tolist() == [False, True, False]
    assert batch["num_response_tokens"].dtype == torch.long
    assert batch["num_response_tokens"].tolist() == [2, 2, 1]
    assert "source" not in batch  # strings other than the id are not collated
    assert "length" not in batch and "truncated" not in batch
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "id",
        "aligned_score",
        "noise",
        "num_response_tokens",
        "target_row",
        "target_position",
        "target_token",
        "target_slot",
    }
    # the response targets found on the host: (row, position whose logits predict, token, slot)
    assert batch["target_row"][:4].tolist() == [0, 0, 1, 1]
    assert batch["target_position"][:4].tolist() == [0, 1, 1, 3]
    assert batch["target_token"][:4].tolist() == [12, 13, 23, 25]
    assert batch["target_slot"][:4].tolist() == [0, 0, 1, 1]
    assert len(batch["target_slot"]) == 16 and set(batch["target_slot"][4:].tolist()) == {3}


@pytest.mark.parametrize(("multiple", "width"), [(None, 5), (1, 5), (4, 8), (5, 5), (8, 8), (64, 64)])
def test_pad_collate_pad_to_multiple_of(multiple, width):
    batch = pad_collate(SAMPLES, pad_token_id=0, pad_to_multiple_of=multiple)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 1]
    assert (batch["labels"][:, 5:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][:, 5:] == 0).all()


# ------------------------------------------------------------------------------------ data module


def _records(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


@pytest.fixture
def _isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.usefixtures("_isolated_hf_cache")
def test_datamodule_end_to_end_on_the_bundled_data(make_tokenizer):
    tokenizer = make_tokenizer("chatml")  # the tiny model's tokenizer
    train_path, val_path = bundled("tiny_chat_train.jsonl"), bundled("tiny_chat_val.jsonl")
    dm = ChatDataModule(
        tokenizer,
        train={"path": train_path, "limit": 160},
        val=val_path,
        max_length=512,
        batch_size=8,
        eval_batch_size=16,
        mega_batch_mult=4,
        pad_to_multiple_of=8,
        seed=1,
    )
    dm.setup()
    train_records, val_records = _records(train_path), _records(val_path)
    assert dm.drop_counts() == {"data/train_samples": 160, "data/val_samples": len(val_records)}

    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 20
    ids = [i for batch in batches for i in batch["id"]]
    assert sorted(ids) == sorted(list(train_records)[:160])  # the first 160, each exactly once

    for batch in batches:
        input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
        assert input_ids.shape == labels.shape == mask.shape
        assert input_ids.shape[0] <= 8 and input_ids.shape[1] % 8 == 0
        labelled = labels != IGNORE_INDEX
        assert labelled.sum(1).min() > 0  # every sample has response tokens
        assert torch.equal(labels[labelled], input_ids[labelled])
        assert not (labelled & (mask == 0)).any()
        assert (input_ids[mask == 0] == tokenizer.pad_token_id).all()

    # the labelled tokens of a sample are its assistant responses, each ended by <|im_end|>
    first = batches[0]
    for row, sample_id in enumerate(first["id"]):
        tokens = first["input_ids"][row][first["labels"][row] != IGNORE_INDEX].tolist()
        responses = [m["content"] for m in train_records[sample_id]["messages"] if m["role"] == "assistant"]
        assert tokenizer.decode(tokens) == "".join(f"{r}<|im_end|>" for r in responses)

    val_ids = [i for batch in dm.val_dataloader() for i in batch["id"]]
    assert sorted(val_ids) == sorted(val_records)


@pytest.mark.usefixtures("_isolated_hf_cache")
def test_datamodule_without_length_grouping_still_covers_every_sample(make_tokenizer):
    dm = ChatDataModule(
        make_tokenizer("chatml"),
        train={"path": bundled("tiny_chat_val.jsonl")},
        max_length=512,
        batch_size=8,
        group_by_length=False,
    )
    dm.setup()
    assert dm.val_dataloader() == []
    ids = [i for batch in dm.train_dataloader() for i in batch["id"]]
    assert Counter(ids) == Counter(dm.datasets["train"]["id"])


@pytest.mark.usefixtures("_isolated_hf_cache")
def test_datamodule_names_a_missing_required_column(make_tokenizer):
    dm = ChatDataModule(
        make_tokenizer("chatml"), train=bundled("tiny_chat_val.jsonl"), required_columns=["missing_col"]
    )
    with pytest.raises(DataError, match=r"the objective needs column\(s\) \['missing_col'\]") as err:
        dm.setup()
    assert bundled("tiny_chat_val.jsonl") in str(err.value)


@pytest.mark.usefixtures("_isolated_hf_cache")
def test_fewer_training_batches_than_ranks_is_an_error_not_a_run_without_steps(make_tokenizer):
    dm = ChatDataModule(
        make_tokenizer("chatml"), train={"path": bundled("tiny_chat_val.jsonl"), "limit": 16}, batch_size=16
    )
    dm.setup()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    assert len(dm.train_dataloader()) == 1
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2)  # one batch for two ranks
    with pytest.raises(
        DataError,
        match=r"16 sample\(s\), which make 1 batch\(es\) of data.batch_size=16: fewer than the 2 rank",
    ):
        dm.train_dataloader()
