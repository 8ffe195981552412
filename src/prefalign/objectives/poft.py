"""PoFT and bi-PoFT (PoFT paper §3.2, eq. 6–9, and appendix C.3, eq. 12).

r_θ is the target's length-normalised response log-likelihood, r_agg the aggregate of the aligned
LLMs' scores (precomputed by the scoring engine and joined by sample id as ``aligned_score``):

    PoFT:     L = −log σ(r_θ − r_agg)
    bi-PoFT:  L = −log σ(s · (r_θ − r_agg)),  s = +1 on clean samples, −1 on noise samples

The gradient is ∂L/∂θ = τ · ∂L_CE/∂θ with L_CE the sample-mean CE and
τ = σ(r_agg − r_θ) (eq. 7–9): the aligned LLMs act as a soft filter. τ is logged per batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from prefalign.core.names import ALIGNED_SCORE, NOISE
from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.scoring.logprobs import SequenceLogProbs

SCORED_TOKENS = ("response", "all")


class PoFT(SingleSequenceObjective):
    """Preference-oriented SFT: prefer the target model over the aligned LLMs.

    Args:
        scored_tokens: ``response`` (default, the paper's formula: r_θ averages the response
            tokens, exactly as the aligned scores do) or ``all``: reproduce the official code,
            which averages the target's log-likelihood over every non-pad token (prompt and role
            tags included) while the aligned LLMs' scores cover the response only.
    """

    batch_columns: tuple[str, ...] = (ALIGNED_SCORE,)
    distribution_metrics: tuple[str, ...] = ("tau", "margin")

    def __init__(self, scored_tokens: str = "response") -> None:
        super().__init__()
        if scored_tokens not in SCORED_TOKENS:
            raise ValueError(f"objective.scored_tokens must be one of {SCORED_TOKENS}, got {scored_tokens!r}")
        self.scored_tokens = scored_tokens

    def preference_sign(self, batch: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor:
        """+1 where the target should beat the aligned LLMs (every sample, for PoFT)."""
        return torch.ones_like(like)

    def forward(self, policy: SequenceLogProbs, batch: Mapping[str, Any]) -> ObjectiveOutput:
        r_theta = policy.mean
        r_agg = batch[ALIGNED_SCORE].to(r_theta)
        margin = r_theta - r_agg
        sign = self.preference_sign(batch, margin)
        losses = -F.logsigmoid(sign * margin)
        tau = torch.sigmoid(-sign * margin)  # |∂L/∂r_θ|: the weight on the sample's CE gradient
        return ObjectiveOutput(
            losses=losses,
            metrics={
                "ce": (-r_theta).detach(),
                "r_theta": r_theta.detach(),
                "r_agg": r_agg.detach(),
                "margin": margin.detach(),
                "tau": tau.detach(),
            },
        )


class BiPoFT(PoFT):
    """bi-PoFT (eq. 12): the preference is reversed on samples whose ``noise`` column is true."""

    batch_columns = (ALIGNED_SCORE, NOISE)

    def preference_sign(self, batch: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor:
        noise = batch[NOISE].to(device=like.device, dtype=torch.bool)
        return torch.where(noise, -torch.ones_like(like), torch.ones_like(like))

    def forward(self, policy: SequenceLogProbs, batch: Mapping[str, Any]) -> ObjectiveOutput:
        output = super().forward(policy, batch)
        output.metrics[NOISE] = batch[NOISE].to(policy.sum).detach()
        return output
