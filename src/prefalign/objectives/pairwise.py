"""Preference objectives over several sequences per sample: DPO and IPO (SSO builds on them).

Each sample contributes several (prompt, response) sequences, named ``"<prompt>|<response>"``:
``x|y+`` (the prompt with the chosen response) and ``x|y-`` (with the rejected one) for DPO and
IPO. The LightningModule scores every sequence an objective declares in :attr:`sequences` in one
concatenated forward and passes the policy's and the (frozen, precomputed) reference's
:class:`SequenceLogProbs` by name.

With h = (log π(y+) − log π_ref(y+)) − (log π(y−) − log π_ref(y−)):

- DPO: L = −log σ(β·h) on summed log-probs (TRL's convention);
- IPO: L = (h − 1/(2β))² on per-token average log-probs (TRL's and SSO's released code's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prefalign.core.names import CHOSEN, REJECTED
from prefalign.objectives.base import MultiSequenceObjective, ObjectiveOutput
from prefalign.scoring.logprobs import SequenceLogProbs


@dataclass
class PairTerms:
    """One pairwise loss term: per-example loss, the log-ratio difference h, and the implicit rewards."""

    losses: torch.Tensor
    h: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor


class PairwiseLoss(nn.Module):
    """A base preference loss L_base(chosen, rejected) with a scale β.

    Subclasses define :meth:`log_likelihood` (sum or per-token mean) and :meth:`loss_from_h`.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"objective.beta must be positive, got {beta}")
        self.beta = beta

    def log_likelihood(self, scores: SequenceLogProbs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss_from_h(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def terms(
        self,
        chosen: SequenceLogProbs,
        rejected: SequenceLogProbs,
        ref_chosen: SequenceLogProbs | None,
        ref_rejected: SequenceLogProbs | None,
    ) -> PairTerms:
        """L_base for one (chosen, rejected) pair of sequences; no reference means a zero reference."""
        chosen_ratio = self.log_likelihood(chosen)
        rejected_ratio = self.log_likelihood(rejected)
        if ref_chosen is not None and ref_rejected is not None:
            chosen_ratio = chosen_ratio - self.log_likelihood(ref_chosen).to(chosen_ratio)
            rejected_ratio = rejected_ratio - self.log_likelihood(ref_rejected).to(rejected_ratio)
        h = chosen_ratio - rejected_ratio
        return PairTerms(
            losses=self.loss_from_h(h),
            h=h,
            chosen_reward=(self.beta * chosen_ratio).detach(),
            rejected_reward=(self.beta * rejected_ratio).detach(),
        )


class DPOLoss(PairwiseLoss):
    """−log σ(β·h) on summed log-probs."""

    def log_likelihood(self, scores: SequenceLogProbs) -> torch.Tensor:
        return scores.sum

    def loss_from_h(self, h: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(self.beta * h)


class IPOLoss(PairwiseLoss):
    """(h − 1/(2β))² on per-token average log-probs."""

    def log_likelihood(self, scores: SequenceLogProbs) -> torch.Tensor:
        return scores.mean

    def loss_from_h(self, h: torch.Tensor) -> torch.Tensor:
        return (h - 1.0 / (2.0 * self.beta)) ** 2


BASE_LOSSES = {"dpo": DPOLoss, "ipo": IPOLoss}


def make_base_loss(name: str, beta: float) -> PairwiseLoss:
    """The base loss called ``name`` (``dpo`` or ``ipo``)."""
    if name not in BASE_LOSSES:
        raise ValueError(f"objective.base must be one of {sorted(BASE_LOSSES)}, got {name!r}")
    return BASE_LOSSES[name](beta)


def pair_metrics(terms: PairTerms, prefix: str = "") -> dict[str, torch.Tensor]:
    """TRL-style reward metrics of a pair term: rewards, margins, accuracies."""
    return {
        f"{prefix}rewards/chosen": terms.chosen_reward,
        f"{prefix}rewards/rejected": terms.rejected_reward,
        f"{prefix}rewards/margins": terms.chosen_reward - terms.rejected_reward,
        f"{prefix}rewards/accuracies": (terms.chosen_reward > terms.rejected_reward).float(),
    }


class PairwisePreference(MultiSequenceObjective):
    """DPO (``base: dpo``) or IPO (``base: ipo``) on (x, y+, y−).

    Args:
        base: ``dpo`` or ``ipo``.
        beta: β (DPO's inverse temperature; IPO's 1/(2β) target margin).
    """

    sequences = (CHOSEN, REJECTED)
    distribution_metrics = ("rewards/margins",)

    def __init__(self, base: str = "dpo", beta: float = 0.1) -> None:
        super().__init__()
        self.base = make_base_loss(base, beta)

    def forward(self, policy, reference, batch) -> ObjectiveOutput:
        ref = reference or {}
        terms = self.base.terms(policy[CHOSEN], policy[REJECTED], ref.get(CHOSEN), ref.get(REJECTED))
        return ObjectiveOutput(losses=terms.losses, metrics=pair_metrics(terms))
