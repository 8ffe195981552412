"""Aligned-LLM ensembles: joining cached member scores to the training data by sample id.

An ensemble config (``conf/aligned/*.yaml``) names its members (each a ``model`` config: name or
path, revision, dtype, optional chat-template override) and an ``aggregation``: ``avg``, ``min``
or ``max`` over the members' length-normalised scores r_j(x, y), or a member's name to use that
member alone (PoFT paper Tables 7 and 8). The result is an ``aligned_score`` column (plus
``score_<member>`` columns) that PoFT reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import datasets

from prefalign.core.errors import DropReport
from prefalign.scoring.engine import (
    ScoreCacheError,
    find_cached_scores,
    load_score_table,
    score_conversations,
)

log = logging.getLogger(__name__)

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


def member_scores(
    ds: datasets.Dataset,
    aligned_cfg: Mapping[str, Any],
    name: str,
    source: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """``id -> r_j`` for member ``name``, from the cache (or scored now if ``aligned.score_missing``)."""
    member_cfg = aligned_cfg["members"][name]
    max_length = int(aligned_cfg["max_length"])
    folder, finished = find_cached_scores(ds, member_cfg, max_length, aligned_cfg["cache_dir"])
    if finished:
        return load_score_table(folder).mean_by_id()
    if not aligned_cfg.get("score_missing", False):
        raise ScoreCacheError(
            f"{source}: no cached scores of aligned member {name!r} for this data (max_length={max_length}, "
            f"expected at {folder}). Run `prefalign-score` with the same data and aligned configs first, "
            "or set aligned.score_missing=true to score before training"
        )
    table = score_conversations(
        ds,
        member_cfg,
        max_length=max_length,
        cache_dir=aligned_cfg["cache_dir"],
        member=name,
        source=source,
        batch_size=int(aligned_cfg.get("batch_size", 16)),
        trainer_kwargs=trainer_kwargs,
    )
    return table.mean_by_id()


def attach_aligned_scores(
    ds: datasets.Dataset,
    aligned_cfg: Mapping[str, Any],
    source: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> tuple[datasets.Dataset, DropReport]:
    """Add ``score_<member>`` and the aggregated ``aligned_score`` columns, joined by ``id``.

    A sample without a score from some member (e.g. its response did not fit that member's
    ``max_length``) is an error, or with ``aligned.on_missing=drop`` a counted drop. Non-finite
    scores are always an error naming the id.
    """
    names = members_used(aligned_cfg)
    aggregation = aligned_cfg.get("aggregation", "avg")
    combine = AGGREGATIONS.get(aggregation, AGGREGATIONS["avg"])
    on_missing = aligned_cfg.get("on_missing", "raise")
    scores = {name: member_scores(ds, aligned_cfg, name, source, trainer_kwargs) for name in names}
    report = DropReport(total=len(ds))
    keep, columns = [], {f"score_{name}": [] for name in names}
    aggregated = []
    for row, sample_id in enumerate(ds["id"]):
        missing = [name for name in names if sample_id not in scores[name]]
        if missing:
            if on_missing != "drop":
                raise ScoreCacheError(
                    f"{source}: row {row} (id={sample_id}): no score from aligned member(s) {missing}"
                )
            report.add(f"missing_score_{missing[0]}", sample_id)
            continue
        values = [scores[name][sample_id] for name in names]
        bad = [name for name, v in zip(names, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise ScoreCacheError(
                f"{source}: row {row} (id={sample_id}): non-finite score from aligned member(s) {bad}"
            )
        keep.append(row)
        for name, value in zip(names, values, strict=True):
            columns[f"score_{name}"].append(value)
        aggregated.append(combine(values))
    if report.dropped:
        log.warning(report.summary(f"{source} (aligned scores)"))
        ds = ds.select(keep)
    for column, values in columns.items():
        ds = ds.add_column(column, values)
    return ds.add_column("aligned_score", aggregated), report
