"""Score-based data filtering (PoFT paper §4.3, Figure 4): keep the top p% by aligned score."""

from __future__ import annotations

import math
from dataclasses import dataclass

import datasets

from prefalign.core.errors import DataError
from prefalign.core.names import ALIGNED_SCORE


@dataclass
class FilterReport:
    """What a filter kept.

    Attributes:
        total / kept / dropped: sample counts.
        threshold: the lowest kept score.
        fraction: the requested fraction.
    """

    total: int
    kept: int
    dropped: int
    threshold: float
    fraction: float

    def summary(self) -> str:
        return (
            f"kept the top {self.fraction:.0%} by score: {self.kept} of {self.total} samples "
            f"(dropped {self.dropped}, lowest kept score {self.threshold:.4f})"
        )


def top_fraction_count(fraction: float, total: int) -> int:
    """How many of ``total`` samples the top ``fraction`` keeps: ``round(fraction * total)``, at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"filter fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * total))


def filter_top_fraction(
    ds: datasets.Dataset, fraction: float, score_column: str = ALIGNED_SCORE
) -> tuple[datasets.Dataset, FilterReport]:
    """Keep the ``fraction`` of rows with the highest ``score_column`` (ties broken by id).

    ``round(fraction * n)`` rows are kept (at least one), in their original order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"filter fraction must be in (0, 1], got {fraction}")
    if score_column not in ds.column_names:
        raise DataError(f"filter: no {score_column!r} column; the data has {ds.column_names}")
    scores, ids = ds[score_column], ds["id"]
    for sample_id, score in zip(ids, scores, strict=True):
        if score is None or not math.isfinite(score):
            raise DataError(f"filter: sample {sample_id} has a non-finite {score_column} ({score})")
    n_keep = top_fraction_count(fraction, len(ds))
    ranked = sorted(range(len(ds)), key=lambda i: (-scores[i], ids[i]))[:n_keep]
    kept = sorted(ranked)
    report = FilterReport(
        total=len(ds), kept=n_keep, dropped=len(ds) - n_keep, threshold=scores[ranked[-1]], fraction=fraction
    )
    return ds.select(kept), report
