"""Length-grouped batching and padding collation.

Batches are drawn from "mega-batches": a seeded shuffle of the data is cut into chunks of
``batch_size * mega_batch_mult`` samples, each chunk is sorted by length and cut into batches, and
the batches are shuffled. Samples in a batch then have similar lengths (little padding) while the
order stays random from epoch to epoch. The sampler shards batches across ranks itself, so the
Trainer runs with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from prefalign.data.chat import IGNORE_INDEX


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, grouped by length and sharded across ranks.

    Args:
        lengths: token length of every sample.
        batch_size: samples per batch on one rank.
        shuffle: shuffle (training) or iterate in length order (evaluation).
        seed: base seed; epoch ``e`` uses ``seed + e`` so every rank draws the same permutation.
        rank / world_size: this process's shard.
        mega_batch_mult: mega-batch size in batches (ignored when not shuffling).
        drop_last: drop the final incomplete batch (training); otherwise it is kept.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mega_batch_mult: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.mega_batch_mult = mega_batch_mult
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start; changes the shuffle."""
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
            mega = self.batch_size * self.mega_batch_mult
            batches = []
            for start in range(0, n, mega):
                chunk = order[start : start + mega]
                chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
                batches.extend(
                    chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
                )
            if self.drop_last:
                batches = [b for b in batches if len(b) == self.batch_size]
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            return [batches[i] for i in permutation]
        order = torch.argsort(self.lengths, descending=True, stable=True).tolist()
        return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def _num_global_batches(self) -> int:
        n = len(self.lengths)
        if not self.shuffle:
            return math.ceil(n / self.batch_size)
        mega = self.batch_size * self.mega_batch_mult
        chunks = [min(mega, n - start) for start in range(0, n, mega)]
        return sum(c // self.batch_size if self.drop_last else math.ceil(c / self.batch_size) for c in chunks)

    def __len__(self) -> int:
        """Batches on this rank. Training gives every rank ``G // world_size`` of the ``G`` global
        batches (up to ``world_size - 1`` batches an epoch are left out, so ranks step together);
        evaluation gives ``ceil(G / world_size)``, a rank short of a batch repeating its last one."""
        if self.shuffle:
            return self._num_global_batches() // self.world_size
        return math.ceil(self._num_global_batches() / self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        mine = batches[self.rank :: self.world_size][: len(self)]
        while len(mine) < len(self):
            mine.append(mine[-1] if mine else batches[0])
        return iter(mine)


def pad_collate(
    samples: list[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Right-pad ``input_ids`` (with ``pad_token_id``) and ``labels`` (with ``IGNORE_INDEX``).

    Returns ``input_ids``, ``attention_mask``, ``labels`` as ``(B, T)`` tensors, ``id`` as a list of
    strings, and every other numeric or boolean column as a ``(B,)`` tensor (scores, noise flags).
    """
    longest = max(len(s["input_ids"]) for s in samples)
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    batch_size = len(samples)
    input_ids = torch.full((batch_size, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        input_ids[row, :n] = torch.as_tensor(sample["input_ids"])
        labels[row, :n] = torch.as_tensor(sample["labels"])
        attention_mask[row, :n] = 1
    batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    batch["id"] = [s["id"] for s in samples]
    for key, value in samples[0].items():
        if key in batch or key in ("length", "truncated"):
            continue
        if isinstance(value, (bool, int, float)):
            batch[key] = torch.tensor([s[key] for s in samples])
    return batch
