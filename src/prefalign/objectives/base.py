"""What every objective returns and declares, and the two objective interfaces by batch shape.

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

from prefalign.core.names import SINGLE, reference_columns
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


class Objective(nn.Module):
    """What every objective declares, read by the training app and the LightningModules.

    Attributes:
        module: dotted path of the LightningModule for this objective's batch shape (the app
            instantiates it; named as a string because modules sit above objectives).
        sequences: the (prompt, response) sequences of a sample the module scores
            (:mod:`prefalign.core.names`).
        batch_columns: dataset columns, besides the tokens, that the objective reads from the batch
            (e.g. :data:`~prefalign.core.names.ALIGNED_SCORE`); frozen-model columns among them
            are attached by :func:`prefalign.scoring.frozen.attach_frozen_columns` before training.
        needs_reference: whether the frozen reference's log-probs of :attr:`sequences` reach
            :meth:`forward` (``ref.<sequence>.sum`` / ``.count`` columns, precomputed by the
            scoring engine, or a live reference model where the module supports one).
        distribution_metrics: metrics whose spread matters (logged with a standard deviation and
            as W&B histograms).
        compares_logprobs: whether the loss compares the policy's log-probs (or rewards) with
            another model's or another sequence's; the module then turns dropout off by default, so
            the policy is scored as the frozen models are (``module.disable_dropout``).
    """

    module: str = ""
    compares_logprobs: bool = True
    sequences: tuple[str, ...] = ()
    batch_columns: tuple[str, ...] = ()
    needs_reference: bool = False
    distribution_metrics: tuple[str, ...] = ()

    def required_columns(self, precomputed_reference: bool = True) -> list[str]:
        """The columns the batches must carry: :attr:`batch_columns`, plus the reference columns of
        every sequence when a reference is needed and precomputed."""
        columns = list(self.batch_columns)
        if self.needs_reference and precomputed_reference:
            for sequence in self.sequences:
                columns.extend(reference_columns(sequence))
        return columns


class SingleSequenceObjective(Objective):
    """An objective over one (prompt, response) sequence per sample (CE, PoFT, bi-PoFT).

    Subclasses implement ``forward(policy, batch)``, or ``forward(policy, batch, reference)`` when
    they set ``needs_reference = True``: ``reference`` is the frozen reference's
    :class:`SequenceLogProbs` of the same sequence (a KTO- or SimPO-with-reference-style loss).
    ``scored_tokens`` tells the LightningModule which tokens the policy's log-likelihood covers.
    """

    module = "prefalign.modules.SingleSequenceModule"
    sequences = (SINGLE,)
    # Which tokens the policy's log-likelihood covers: "response" (labels) or "all" non-pad tokens.
    scored_tokens: str = "response"

    def forward(
        self, policy: SequenceLogProbs, batch: Mapping[str, Any]
    ) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError


class MultiSequenceObjective(Objective):
    """An objective over several named (prompt, response) sequences per sample (DPO, IPO, SSO).

    :attr:`sequences` names the sequences the module must score, e.g. ``("x|y+", "x|y-")``; the
    module passes the policy's (and the reference's) :class:`SequenceLogProbs` by name.
    """

    module = "prefalign.modules.MultiSequenceModule"
    needs_reference = True

    def forward(
        self,
        policy: Mapping[str, SequenceLogProbs],
        reference: Mapping[str, SequenceLogProbs] | None,
        batch: Mapping[str, Any],
    ) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError
