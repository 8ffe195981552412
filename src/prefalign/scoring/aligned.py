"""Aligned-LLM ensembles: which members an aggregation uses and how their scores combine.

An ensemble config (``conf/aligned/*.yaml``) names its members (each a ``model`` config: name or
path, revision, dtype, optional chat-template override) and an ``aggregation``: ``avg``, ``min``
or ``max`` over the members' length-normalised scores r_j(x, y), or a member's name to use that
member alone (PoFT paper Tables 7 and 8). The members' scores are computed (or read from the cache)
and joined to the training data as ``score_<member>`` and ``aligned_score`` columns by
:func:`prefalign.scoring.frozen.aligned_score_columns`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AGGREGATIONS = {"avg": lambda xs: sum(xs) / len(xs), "min": min, "max": max}


def members_used(aligned_cfg: Mapping[str, Any]) -> list[str]:
    """Members whose scores the aggregation needs (all of them, or the one named)."""
    members = list(aligned_cfg["members"])
    aggregation = aligned_cfg.get("aggregation", "avg")
    if aggregation in AGGREGATIONS:
        return members
    if aggregation in members:
        return [aggregation]
    raise ValueError(
        f"aligned.aggregation must be one of {sorted(AGGREGATIONS)} or a member name {members}, got {aggregation!r}"
    )
