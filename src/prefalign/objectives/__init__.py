"""Objectives: small modules from per-sequence log-probs to per-example losses and metrics."""

from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.objectives.ce import CrossEntropy

__all__ = ["CrossEntropy", "ObjectiveOutput", "SingleSequenceObjective"]
