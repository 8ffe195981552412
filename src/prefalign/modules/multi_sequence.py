"""The LightningModule for objectives with several sequences per sample (DPO, IPO, SSO)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import PreTrainedModel

from prefalign.core.names import reference_columns, split_sequence_major
from prefalign.data.packing import shared_prompt_attention_mask
from prefalign.data.preference import PreferenceDataModule
from prefalign.modules.base import AlignmentModule
from prefalign.objectives.base import MultiSequenceObjective, ObjectiveOutput
from prefalign.scoring.logprobs import (
    SequenceLogProbs,
    batch_targets,
    model_gathered_sequence_logprobs,
    model_sequence_logprobs,
)


def split_by_sequence(scores: SequenceLogProbs, names: list[str]) -> dict[str, SequenceLogProbs]:
    """Undo the sequence-major stacking of :func:`prefalign.data.preference.collate_sequences`
    (:func:`prefalign.core.names.split_sequence_major`)."""
    sums, counts = split_sequence_major(scores.sum, names), split_sequence_major(scores.count, names)
    return {name: SequenceLogProbs(sum=sums[name], count=counts[name]) for name in names}


class MultiSequenceModule(AlignmentModule):
    """Scores all of a batch's (prompt, response) sequences in one concatenated forward pass.

    Reference log-probs come precomputed in the batch (``ref.<sequence>.sum`` / ``.count``, from the
    scoring engine: the reference is frozen within an SSO iteration, so training holds one model),
    or, with ``reference_model`` set (the ``live`` mode), from a second frozen model run on the same
    batch.

    Arguments as :class:`AlignmentModule`, plus ``reference_model``.
    """

    # The data module class whose batches this module reads (checked by the training app).
    data_module = PreferenceDataModule

    def __init__(
        self,
        model,
        objective,
        optimizer,
        scheduler=None,
        logprob_chunk_rows=None,
        reference_model: PreTrainedModel | None = None,
        disable_dropout=None,
    ) -> None:
        if not isinstance(objective, MultiSequenceObjective):
            raise TypeError(
                f"{type(objective).__name__} is not a multi-sequence objective; "
                "the objective names its LightningModule (its `module` attribute), and a "
                "`module._target_` override must name that same class"
            )
        super().__init__(model, objective, optimizer, scheduler, logprob_chunk_rows, disable_dropout)
        self.reference_model = (
            reference_model.eval().requires_grad_(False) if reference_model is not None else None
        )

    def _score(self, model: PreTrainedModel, batch: Mapping[str, Any]) -> SequenceLogProbs:
        """Log-prob sum and count of every sequence of the batch under ``model``, sequence-major."""
        if "segment_ids" in batch:  # shared-prompt rows (prefalign.data.packing)
            mask = shared_prompt_attention_mask(
                batch["segment_ids"], model.config._attn_implementation, model.dtype
            )
            # memory-lean log-probs: only the response positions are projected to the vocabulary
            return model_gathered_sequence_logprobs(
                model,
                batch["input_ids"],
                mask,
                batch["position_ids"],
                *batch_targets(batch),
                batch["num_slots"],
                chunk_tokens=None
                if self.logprob_chunk_rows is None
                else self.logprob_chunk_rows * batch["input_ids"].shape[1],
            )
        return model_sequence_logprobs(  # memory-lean log-probs of the collate's response targets
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            self.logprob_chunk_rows,
            targets=batch_targets(batch),
        )

    def _reference(self, batch: Mapping[str, Any], names: list[str]) -> dict[str, SequenceLogProbs] | None:
        if self.reference_model is not None:
            with torch.no_grad():
                return split_by_sequence(self._score(self.reference_model, batch), names)
        if reference_columns(names[0])[0] not in batch:
            if self.objective.needs_reference:
                raise KeyError(
                    "the batch has no reference log-probs (ref.<sequence>.sum) and no live reference model"
                )
            return None
        reference = {}
        for name in names:
            total, count = reference_columns(name)
            reference[name] = SequenceLogProbs(sum=batch[total].float(), count=batch[count])
        return reference

    def objective_output(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        names = list(batch["sequences"])
        missing = [n for n in self.objective.sequences if n not in names]
        if missing:
            raise KeyError(
                f"the batch lacks sequence(s) {missing} that {type(self.objective).__name__} needs"
            )
        policy = split_by_sequence(self._score(self.model, batch), names)
        return self.objective(policy, self._reference(batch, names), batch)


class RewardModelModule(AlignmentModule):
    """Trains a scalar reward head (``model.head=reward``) on preference pairs in one forward pass.

    The model scores every (prompt, response) sequence of the batch; the rewards are split by
    sequence name and passed to the objective (e.g. :class:`prefalign.objectives.reward.BradleyTerry`).
    """

    data_module = PreferenceDataModule

    def objective_output(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        if "segment_ids" in batch:
            raise ValueError(
                "reward-model training reads each sequence's last token and needs one row per sequence: "
                "set data.share_prompts=false"
            )
        names = list(batch["sequences"])
        rewards = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            :, 0
        ]
        return self.objective(split_sequence_major(rewards, names), None, batch)
