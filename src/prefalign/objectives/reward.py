"""Bradley–Terry reward-model training (SSO paper §4.2.3): L = −log σ(r(x, y+) − r(x, y−))."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from prefalign.core.names import CHOSEN, REJECTED
from prefalign.objectives.base import MultiSequenceObjective, ObjectiveOutput


class BradleyTerry(MultiSequenceObjective):
    """Pairwise reward-model loss on scalar rewards of (x, y+) and (x, y−); no reference.

    Args:
        margin_l2: optional coefficient of an L2 penalty on the rewards (keeps them centred); 0 disables it.
    """

    # a scalar reward per sequence, read at its last token: one row per sequence
    module = "prefalign.modules.RewardModelModule"
    sequences = (CHOSEN, REJECTED)
    needs_reference = False
    distribution_metrics = ("rewards/margins",)

    def __init__(self, margin_l2: float = 0.0) -> None:
        super().__init__()
        self.margin_l2 = margin_l2

    def forward(
        self, rewards: Mapping[str, torch.Tensor], reference: None, batch: Mapping[str, Any]
    ) -> ObjectiveOutput:
        chosen, rejected = rewards[CHOSEN].float(), rewards[REJECTED].float()
        losses = -F.logsigmoid(chosen - rejected)
        if self.margin_l2:
            losses = losses + self.margin_l2 * (chosen**2 + rejected**2)
        return ObjectiveOutput(
            losses=losses,
            metrics={
                "rewards/chosen": chosen.detach(),
                "rewards/rejected": rejected.detach(),
                "rewards/margins": (chosen - rejected).detach(),
                "rewards/accuracies": (chosen > rejected).float().detach(),
            },
        )
