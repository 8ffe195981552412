"""LightningModules, split by batch shape (not by loss)."""

from prefalign.modules.base import AlignmentModule
from prefalign.modules.multi_sequence import MultiSequenceModule, RewardModelModule
from prefalign.modules.single_sequence import SingleSequenceModule

__all__ = ["AlignmentModule", "MultiSequenceModule", "RewardModelModule", "SingleSequenceModule"]
