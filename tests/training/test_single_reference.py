"""A single-sequence objective that needs reference log-probs, added as one class, one YAML file
(tests/training/conf/objective/single_reference.yaml, on Hydra's search path) and this test, with
no edit anywhere else: the frozen reference is scored by the engine and reaches its forward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.scoring.logprobs import SequenceLogProbs
from prefalign.training.run import run_task, train

CONF = Path(__file__).parent / "conf"


class ReferenceAnchored(SingleSequenceObjective):
    """L = −log σ(β·(r_θ − r_ref)), r the per-token average log-prob (a SimPO/KTO-with-reference-style loss)."""

    needs_reference = True

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, policy: SequenceLogProbs, batch, reference: SequenceLogProbs) -> ObjectiveOutput:
        margin = policy.mean - reference.mean.to(policy.mean)
        return ObjectiveOutput(
            losses=-F.logsigmoid(self.beta * margin),
            metrics={"margin": margin.detach(), "r_ref": reference.mean.detach()},
        )


def test_reference_log_probs_reach_a_single_sequence_objective(compose_train):
    cfg = compose_train(
        [
            f"hydra.searchpath=[file://{CONF}]",
            "objective=single_reference",
            "data.val=null",
            "trainer.max_steps=1",
            "logger=csv",
        ]
    )
    metrics = run_task(train, cfg)
    # the reference is the starting policy (reference.model = ${model}), precomputed by the scoring
    # engine: at the first step every margin is zero, so the loss is log 2
    assert metrics["train/margin"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["train/loss"] == pytest.approx(math.log(2.0), abs=1e-4)
    assert metrics["train/r_ref"] < 0 and torch.isfinite(torch.tensor(metrics["train/r_ref"]))
