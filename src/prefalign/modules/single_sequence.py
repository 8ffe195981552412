"""The LightningModule for objectives with one (prompt, response) sequence per sample (CE, PoFT,
bi-PoFT, and any single-sequence objective that reads reference log-probs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefalign.core.names import SINGLE, reference_columns
from prefalign.data.chat import IGNORE_INDEX
from prefalign.data.datamodule import ChatDataModule
from prefalign.modules.base import AlignmentModule
from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.scoring.logprobs import SequenceLogProbs, batch_targets, model_sequence_logprobs


class SingleSequenceModule(AlignmentModule):
    """Runs the policy over a padded batch, scores the response tokens, applies the objective.

    An objective with ``needs_reference`` also gets the frozen reference's log-probs of the same
    sequence, precomputed by the scoring engine and carried by the batch (``ref.x|y.sum`` /
    ``.count``).

    Arguments as :class:`AlignmentModule`; ``objective`` must be a :class:`SingleSequenceObjective`.
    """

    # The data module class whose batches this module reads (checked by the training app).
    data_module = ChatDataModule

    def __init__(
        self, model, objective, optimizer, scheduler=None, logprob_chunk_rows=None, disable_dropout=None
    ) -> None:
        if not isinstance(objective, SingleSequenceObjective):
            raise TypeError(
                f"{type(objective).__name__} is not a one-sequence-per-sample objective; the objective "
                "names its LightningModule (its `module` attribute), and a `module._target_` override "
                "must name that same class"
            )
        super().__init__(model, objective, optimizer, scheduler, logprob_chunk_rows, disable_dropout)

    def _reference(self, batch: Mapping[str, Any]) -> SequenceLogProbs | None:
        total, count = reference_columns(SINGLE)
        if total not in batch:
            if self.objective.needs_reference:
                raise KeyError(
                    f"{type(self.objective).__name__} needs reference log-probs, but the batch has no "
                    f"{total!r} column (attach them with prefalign.scoring.frozen.attach_frozen_columns)"
                )
            return None
        return SequenceLogProbs(sum=batch[total].float(), count=batch[count])

    def objective_output(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels, targets = batch["labels"], batch_targets(batch)
        if self.objective.scored_tokens == "all":  # every non-pad token (the official PoFT code)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
            targets = None  # the collate's targets are the response's: every position is projected
        # memory-lean log-probs: the response positions (found by the collate on the host) projected
        # to the vocabulary a chunk at a time
        policy = model_sequence_logprobs(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            labels,
            self.logprob_chunk_rows,
            targets=targets,
        )
        if not self.objective.needs_reference:
            return self.objective(policy, batch)
        return self.objective(policy, batch, self._reference(batch))
