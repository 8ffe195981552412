"""Cross-entropy SFT, the papers' baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.scoring.logprobs import SequenceLogProbs

REDUCTIONS = ("token_mean", "sample_mean")


class CrossEntropy(SingleSequenceObjective):
    """Negative log-likelihood of the response tokens.

    Args:
        reduction: ``token_mean`` averages over every response token of the batch (standard SFT,
            identical to a Hugging Face model's ``labels`` loss); ``sample_mean`` first normalises
            each sample by its own response length, L = -(1/T0(y)) log p(y|x) (PoFT paper eq. 3),
            then averages over samples.
    """

    compares_logprobs = False  # plain SFT: dropout stays as the model configures it

    def __init__(self, reduction: str = "token_mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"objective.reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, policy: SequenceLogProbs, batch: Mapping[str, Any]) -> ObjectiveOutput:
        nll = -policy.mean
        weights = policy.count if self.reduction == "token_mean" else None
        return ObjectiveOutput(
            losses=nll,
            weights=weights,
            metrics={"ce": nll.detach(), "response_tokens": policy.count.detach().float()},
        )
