"""Length-grouped batching and padding collation, with the response targets found on the host.

The collate also lists which positions score a response token (:func:`response_targets`), padded
to a bucket size (:func:`target_bucket`), so the lean log-prob path projects only those positions
without a data-dependent shape on the device.

Batches are drawn from "mega-batches": a seeded shuffle of the data is cut into chunks of
``batch_size * mega_batch_mult`` samples, each chunk is sorted by length and cut into batches, and
the batches are shuffled. Samples in a batch then have similar lengths (little padding) while the
order stays random from epoch to epoch. The sampler shards batches across ranks itself, so the
Trainer runs with ``use_distributed_sampler=False``.

Mid-epoch resume: a checkpoint stores the training order's position (epoch, batches consumed,
world size; :class:`ResumableTrainOrder`, saved as the data module's state), and the resumed run's
sampler starts that epoch's order where the checkpoint left it, so a run resumed from a checkpoint
taken every K steps sees the same batches as the run that never stopped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from prefalign.core.errors import ConfigError
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
        self._skip = 0  # batches of the next iteration already consumed before a resume

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` (not on the batch sampler) at
        every epoch start; pointing it here is what makes the shuffle change from epoch to epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start; changes the shuffle."""
        self.epoch = epoch

    def position(self, batches_consumed: int) -> dict[str, int]:
        """Where training stands in the order: this epoch, and ``batches_consumed`` of its batches on
        each rank already trained on (Lightning's count, which unlike the sampler's own count does
        not include prefetched batches). Saved in checkpoints; :meth:`resume` reads it back."""
        return {
            "epoch": self.epoch,
            "batches_consumed": batches_consumed,
            "batches_per_epoch": len(self),
            "world_size": self.world_size,
            "batch_size": self.batch_size,
        }

    def resume(self, position: dict[str, int]) -> None:
        """Continue the order at ``position`` (from :meth:`position`): the next iteration yields
        the rest of that epoch, or the next epoch when the checkpoint was taken at its end.

        The batch order of an epoch does not depend on the number of ranks, so a checkpoint taken
        at an epoch end resumes on any number of ranks. Mid-epoch, the batches consumed per rank
        only mean the same on the same number of ranks with the same batch size.

        Raises:
            ConfigError: a mid-epoch position written with another world size or batch size.
        """
        consumed, per_epoch = position["batches_consumed"], position["batches_per_epoch"]
        at_epoch_end = consumed >= per_epoch
        same_shape = (position["world_size"], position["batch_size"]) == (self.world_size, self.batch_size)
        if not at_epoch_end and consumed > 0 and not same_shape:
            raise ConfigError(
                f"the checkpoint was taken mid-epoch (epoch {position['epoch']}, batch {consumed} of "
                f"{per_epoch}) by {position['world_size']} rank(s) with data.batch_size="
                f"{position['batch_size']}; this run has {self.world_size} rank(s) with data.batch_size="
                f"{self.batch_size}. Resume it with the same trainer.devices x trainer.num_nodes and "
                "data.batch_size, or resume from an epoch-end checkpoint (checkpoints/epoch_XXX.ckpt), "
                "which any number of ranks can continue"
            )
        self.epoch = position["epoch"] + 1 if at_epoch_end else position["epoch"]
        self._skip = 0 if at_epoch_end else consumed

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
        skip, self._skip = self._skip, 0  # a resume skips the consumed batches once
        return iter(mine[skip:])


class ResumableTrainOrder:
    """Mixin for a ``LightningDataModule`` whose training loader uses a
    :class:`LengthGroupedBatchSampler`: the training order's position is the data module's state,
    which Lightning saves in every checkpoint and restores before building the loaders.

    The data module calls :meth:`track_train_sampler` on each training sampler it builds.
    """

    _train_sampler: LengthGroupedBatchSampler | None = None
    _resume_position: dict[str, int] | None = None

    def track_train_sampler(self, sampler: LengthGroupedBatchSampler) -> LengthGroupedBatchSampler:
        """Remember the training sampler and, after a checkpoint was loaded, resume it."""
        if self._resume_position is not None:
            sampler.resume(self._resume_position)
        self._train_sampler = sampler
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """``{"train_order": position}``: the epoch and the batches per rank trained on so far."""
        trainer = getattr(self, "trainer", None)
        if self._train_sampler is None or trainer is None:
            return {}
        consumed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_order": self._train_sampler.position(consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved position for the training sampler built next.

        Strategies that restore a checkpoint after their setup (``ModelParallelStrategy`` / FSDP2,
        FSDP, DeepSpeed) run ``configure_optimizers`` first, and its
        ``trainer.estimated_stepping_batches`` builds the training loader and starts iterating it
        in epoch 0's order before this state arrives; that loader is then dropped, so Lightning
        builds it again with the saved position (without this, such a resume trained on another
        order than the unbroken run).
        """
        self._resume_position = state_dict.get("train_order")
        trainer = getattr(self, "trainer", None)
        if self._resume_position is not None and self._train_sampler is not None and trainer is not None:
            trainer.fit_loop._combined_loader = None  # Lightning's own "not built yet" state
            self._train_sampler = None
        if self._resume_position is not None:
            # Lightning looks for a stateful DataLoader and, finding none, warns that a mid-epoch
            # resume is unreliable; the order is restored here instead.
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended before the epoch"
            )


TARGET_KEYS = ("target_row", "target_position", "target_token", "target_slot")
"""Batch keys of the response targets (:func:`response_targets`), in the argument order of
:func:`prefalign.scoring.logprobs.model_gathered_sequence_logprobs`."""


def target_bucket(count: int) -> int:
    """The padded length of ``count`` response targets: ``count`` rounded up to a multiple of
    ``max(16, 2**(bit_length(count - 1) - 4))``, i.e. eight buckets per power of two (at most 1/8 of
    the entries padding once ``count > 128``, at most 15 below), so batches of similar sizes repeat
    one shape (a compiled graph or cached kernel is reused) while the padding's projection to the
    vocabulary stays a small share of the head's work."""
    if count <= 0:
        return 0
    step = max(16, 2 ** max(0, (count - 1).bit_length() - 4))
    return math.ceil(count / step) * step


def pad_targets(
    rows: list[int], positions: list[int], tokens: list[int], slots: list[int], num_slots: int
) -> dict[str, torch.Tensor]:
    """The ``target_*`` tensors of :data:`TARGET_KEYS`, padded to :func:`target_bucket` entries.

    A padding entry reads row 0, position 0 (which every batch has), scores token 0 and adds to slot
    ``num_slots``, one past the batch's sequences: the log-prob paths sum into ``num_slots + 1``
    slots and drop the last, so padding changes no sum, count or gradient.
    """
    extra = target_bucket(len(tokens)) - len(tokens)
    return {
        "target_row": torch.tensor(rows + [0] * extra, dtype=torch.long),
        "target_position": torch.tensor(positions + [0] * extra, dtype=torch.long),
        "target_token": torch.tensor(tokens + [0] * extra, dtype=torch.long),
        "target_slot": torch.tensor(slots + [num_slots] * extra, dtype=torch.long),
    }


def response_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which positions of a padded ``(B, T)`` batch score a response token, found on the host.

    Token ``labels[b, t + 1]`` (not ``IGNORE_INDEX``) is predicted by the logits at ``(b, t)`` and
    belongs to sequence (slot) ``b``; returned as :func:`pad_targets`, so the lean log-prob path
    projects only those positions without a data-dependent shape on the device (no ``nonzero()``).
    """
    targets = labels[:, 1:]
    rows, positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    row_list = rows.tolist()
    return pad_targets(
        row_list, positions.tolist(), targets[rows, positions].tolist(), row_list, labels.shape[0]
    )


def pad_collate(
    samples: list[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Right-pad ``input_ids`` (with ``pad_token_id``) and ``labels`` (with ``IGNORE_INDEX``).

    Returns ``input_ids``, ``attention_mask``, ``labels`` as ``(B, T)`` tensors, the response
    targets of the labels (:func:`response_targets`: ``target_row``, ``target_position``,
    ``target_token``, ``target_slot``, padded to a bucket size), ``id`` as a list of strings, and
    every other numeric or boolean column as a ``(B,)`` tensor (scores, noise flags).
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
    batch.update(response_targets(labels))
    batch["id"] = [s["id"] for s in samples]
    for key, value in samples[0].items():
        if key in batch or key in ("length", "truncated"):
            continue
        if isinstance(value, (bool, int, float)):
            batch[key] = torch.tensor([s[key] for s in samples])
    return batch
