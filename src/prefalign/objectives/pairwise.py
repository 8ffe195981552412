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
    """One pairwise loss term: per-example loss, the log-ratio difference h, and the implicit rewards.

    ``chosen_reward`` / ``rejected_reward`` are β × the log-ratio the loss itself uses (summed for
    DPO, per-token average for IPO); ``chosen_summed_reward`` / ``rejected_summed_reward`` are
    β × the summed log-ratio (TRL's reward, whatever the loss) and ``chosen_logps`` /
    ``rejected_logps`` the policy's summed log-probs.
    """

    losses: torch.Tensor
    h: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_summed_reward: torch.Tensor
    rejected_summed_reward: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    per_token: bool = False  # the loss works on per-token averages (IPO)


class PairwiseLoss(nn.Module):
    """A base preference loss L_base(chosen, rejected) with a scale β.

    Subclasses define :meth:`log_likelihood` (sum or per-token mean, :attr:`per_token`) and
    :meth:`loss_from_h`.
    """

    per_token: bool = False

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
        chosen_sum, rejected_sum = chosen.sum.detach(), rejected.sum.detach()
        if ref_chosen is not None and ref_rejected is not None:
            chosen_sum = chosen_sum - ref_chosen.sum.to(chosen_sum)
            rejected_sum = rejected_sum - ref_rejected.sum.to(rejected_sum)
        return PairTerms(
            losses=self.loss_from_h(h),
            h=h,
            chosen_reward=(self.beta * chosen_ratio).detach(),
            rejected_reward=(self.beta * rejected_ratio).detach(),
            chosen_summed_reward=self.beta * chosen_sum,
            rejected_summed_reward=self.beta * rejected_sum,
            chosen_logps=chosen.sum.detach(),
            rejected_logps=rejected.sum.detach(),
            per_token=self.per_token,
        )


class DPOLoss(PairwiseLoss):
    """−log σ(β·h) on summed log-probs."""

    def log_likelihood(self, scores: SequenceLogProbs) -> torch.Tensor:
        return scores.sum

    def loss_from_h(self, h: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(self.beta * h)


class IPOLoss(PairwiseLoss):
    """(h − 1/(2β))² on per-token average log-probs."""

    per_token = True

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
    """Per-example metrics of a pair term under TRL's ``DPOTrainer`` names and conventions.

    - ``rewards/chosen``, ``rewards/rejected``: β × (log π − log π_ref) of the response with
      log-probs SUMMED over its tokens, for every base loss (TRL logs IPO's rewards this way too);
    - ``rewards/margins``: chosen − rejected; ``rewards/accuracies``: 1 where chosen > rejected;
    - ``logps/chosen``, ``logps/rejected``: the policy's summed log-probs.

    When the loss itself works on per-token averages (IPO), its own view is logged as well:
    ``rewards_per_token/{chosen,rejected,margins,accuracies}``, the same quantities with
    β × the per-token average log-ratio (the rewards whose difference enters IPO's loss, β·h).
    """
    metrics = {
        f"{prefix}rewards/chosen": terms.chosen_summed_reward,
        f"{prefix}rewards/rejected": terms.rejected_summed_reward,
        f"{prefix}rewards/margins": terms.chosen_summed_reward - terms.rejected_summed_reward,
        f"{prefix}rewards/accuracies": (terms.chosen_summed_reward > terms.rejected_summed_reward).float(),
        f"{prefix}logps/chosen": terms.chosen_logps,
        f"{prefix}logps/rejected": terms.rejected_logps,
    }
    if terms.per_token:
        metrics |= {
            f"{prefix}rewards_per_token/chosen": terms.chosen_reward,
            f"{prefix}rewards_per_token/rejected": terms.rejected_reward,
            f"{prefix}rewards_per_token/margins": terms.chosen_reward - terms.rejected_reward,
            f"{prefix}rewards_per_token/accuracies": (terms.chosen_reward > terms.rejected_reward).float(),
        }
    return metrics


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
