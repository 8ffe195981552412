"""Objectives: small modules from per-sequence log-probs to per-example losses and metrics."""

from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.objectives.ce import CrossEntropy
from prefalign.objectives.poft import BiPoFT, PoFT

__all__ = ["BiPoFT", "CrossEntropy", "PoFT", "ObjectiveOutput", "SingleSequenceObjective"]
