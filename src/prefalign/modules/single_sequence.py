"""The LightningModule for objectives with one (prompt, response) sequence per sample (CE, PoFT, bi-PoFT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefalign.data.chat import IGNORE_INDEX
from prefalign.modules.base import AlignmentModule
from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.scoring.logprobs import model_sequence_logprobs


class SingleSequenceModule(AlignmentModule):
    """Runs the policy over a padded batch, scores the response tokens, applies the objective.

    Arguments as :class:`AlignmentModule`; ``objective`` must be a :class:`SingleSequenceObjective`.
    """

    def __init__(
        self, model, objective, optimizer, scheduler=None, logprob_chunk_rows=None, disable_dropout=None
    ) -> None:
        if not isinstance(objective, SingleSequenceObjective):
            raise TypeError(
                f"{type(objective).__name__} is not a one-sequence-per-sample objective; "
                "set `module._target_` to the LightningModule for its batch shape"
            )
        super().__init__(model, objective, optimizer, scheduler, logprob_chunk_rows, disable_dropout)

    def objective_output(self, batch: Mapping[str, Any]) -> ObjectiveOutput:
        labels = batch["labels"]
        if self.objective.scored_tokens == "all":  # every non-pad token (the official PoFT code)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        # memory-lean log-probs (gpu helper): only response positions are projected to the vocabulary
        policy = model_sequence_logprobs(
            self.model, batch["input_ids"], batch["attention_mask"], labels, self.logprob_chunk_rows
        )
        return self.objective(policy, batch)
