"""LightningModules, split by batch shape (not by loss)."""

from prefalign.modules.single_sequence import SingleSequenceModule

__all__ = ["SingleSequenceModule"]
