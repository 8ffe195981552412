"""Objectives: small modules from per-sequence log-probs to per-example losses and metrics."""

from prefalign.objectives.base import ObjectiveOutput, SingleSequenceObjective
from prefalign.objectives.ce import CrossEntropy
from prefalign.objectives.pairwise import MultiSequenceObjective, PairwisePreference
from prefalign.objectives.poft import BiPoFT, PoFT
from prefalign.objectives.reward import BradleyTerry
from prefalign.objectives.sso import SSO

__all__ = [
    "SSO",
    "BiPoFT",
    "BradleyTerry",
    "CrossEntropy",
    "MultiSequenceObjective",
    "PairwisePreference",
    "PoFT",
    "ObjectiveOutput",
    "SingleSequenceObjective",
]
