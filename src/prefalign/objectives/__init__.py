"""Objectives: small modules from per-sequence log-probs to per-example losses and metrics."""

from prefalign.objectives.base import (
    MultiSequenceObjective,
    Objective,
    ObjectiveOutput,
    SingleSequenceObjective,
)
from prefalign.objectives.ce import CrossEntropy
from prefalign.objectives.pairwise import PairwisePreference
from prefalign.objectives.poft import BiPoFT, PoFT
from prefalign.objectives.reward import BradleyTerry
from prefalign.objectives.sso import SSO

__all__ = [
    "SSO",
    "BiPoFT",
    "BradleyTerry",
    "CrossEntropy",
    "MultiSequenceObjective",
    "Objective",
    "PairwisePreference",
    "PoFT",
    "ObjectiveOutput",
    "SingleSequenceObjective",
]
