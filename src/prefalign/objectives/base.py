"""What every objective returns, and the interface of one-sequence-per-sample objectives.

An objective is a small ``nn.Module``: it takes the per-sequence quantities it needs and returns a
per-example loss, optional reduction weights, and a dict of detached per-example metrics. The
LightningModule reduces and logs; it never branches on the objective's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prefalign.scoring.logprobs import SequenceLogProbs


@dataclass
class ObjectiveOutput:
    """Per-example losses and metrics.

    Attributes:
        losses: ``(B,)`` per-example loss (differentiable).
        weights: ``(B,)`` reduction weights, or ``None`` for a plain mean. The batch loss is
            ``sum(w * l) / sum(w)``; token-mean CE uses the response-token counts.
        metrics: detached ``(B,)`` tensors (or scalars) logged as ``<stage>/<name>`` batch means.
    """

    losses: torch.Tensor
    weights: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def loss(self) -> torch.Tensor:
        """The batch loss: the (weighted) mean of the per-example losses."""
        if self.weights is None:
            return self.losses.mean()
        weights = self.weights.to(self.losses.dtype)
        return (self.losses * weights).sum() / weights.sum().clamp(min=1e-12)


class SingleSequenceObjective(nn.Module):
    """An objective over one (prompt, response) sequence per sample (CE, PoFT, bi-PoFT).

    Subclasses implement :meth:`forward`. ``batch_columns`` names the dataset columns, besides
    the tokens, that the objective reads from the batch (e.g. aligned-LLM scores); the data module
    checks they exist before training starts. ``scored_tokens`` and ``distribution_metrics`` are
    read by the LightningModule (which tokens to score; which metrics to log as distributions).
    """

    batch_columns: tuple[str, ...] = ()
    # Which tokens the policy's log-likelihood covers: "response" (labels) or "all" non-pad tokens.
    scored_tokens: str = "response"
    # Metrics whose spread matters (logged with a standard deviation, and as W&B histograms).
    distribution_metrics: tuple[str, ...] = ()

    def forward(
        self, policy: SequenceLogProbs, batch: Mapping[str, Any]
    ) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError
