"""Frozen-model columns: aligned-LLM scores (PoFT) and reference log-probs (DPO, IPO, SSO, and any
objective that declares ``needs_reference``), produced by the scoring engine and attached to a
data module's splits by sample id, in one place.

The training app calls :func:`attach_frozen_columns` after building the data module and before the
fit. Every frozen model goes through one policy (:func:`cached_or_scored`): a finished cache entry
(fingerprint of data, model, template and ``max_length``) is loaded; otherwise, with
``score_missing``, the engine scores now; otherwise a :class:`ScoreCacheError` says what to run.

The data module side of the seam (:class:`prefalign.data.datamodule.ChatDataModule`):
``splits``, ``source_name(split)``, ``columns_needed(split)``, ``records(split)`` (the normalised
records, which the aligned members score), ``sequence_conversations(split)`` (one conversation per
record and sequence, which the reference scores), ``sequences`` and ``add_columns(split, columns,
report)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import datasets

from prefalign.core.errors import ConfigError, DataError, DropReport
from prefalign.core.names import ALIGNED_SCORE, ID, member_score_column, reference_columns, sequence_id
from prefalign.models.loading import frozen_model_config
from prefalign.scoring.aligned import AGGREGATIONS, members_used
from prefalign.scoring.engine import (
    ScoreCacheError,
    ScoreTable,
    find_cached_scores,
    load_score_table,
    score_conversations,
)

log = logging.getLogger(__name__)


def cached_or_scored(
    conversations: datasets.Dataset,
    model_cfg: Mapping[str, Any],
    *,
    max_length: int,
    cache_dir: str,
    score_missing: bool,
    member: str,
    source: str,
    batch_size: int = 16,
    what: str,
    to_run: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> ScoreTable:
    """The scores of ``model_cfg`` on ``conversations``: cached -> load; ``score_missing`` -> score
    now (and cache); else a :class:`ScoreCacheError` naming ``what`` is missing and ``to_run``."""
    if not score_missing:
        folder, finished = find_cached_scores(conversations, model_cfg, max_length, cache_dir)
        if not finished:
            raise ScoreCacheError(
                f"{source}: no cached {what} for this data (max_length={max_length}, expected at {folder}). "
                f"{to_run}"
            )
        return load_score_table(folder)
    return score_conversations(  # a finished cache is loaded there
        conversations,
        model_cfg,
        max_length=max_length,
        cache_dir=cache_dir,
        member=member,
        source=source,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
    )


def aligned_score_columns(
    ds: datasets.Dataset,
    aligned_cfg: Mapping[str, Any],
    source: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, list], DropReport]:
    """``id``, ``score_<member>`` and the aggregated ``aligned_score`` of every sample of ``ds``.

    A sample without a score from some member (e.g. its response did not fit that member's
    ``max_length``) is an error, or with ``aligned.on_missing=drop`` a counted drop (left out of the
    columns). Non-finite scores are always an error naming the id.
    """
    names = members_used(aligned_cfg)
    aggregation = aligned_cfg.get("aggregation", "avg")
    combine = AGGREGATIONS.get(aggregation, AGGREGATIONS["avg"])
    on_missing = aligned_cfg.get("on_missing", "raise")
    max_length = int(aligned_cfg["max_length"])
    scores = {
        name: cached_or_scored(
            ds,
            aligned_cfg["members"][name],
            max_length=max_length,
            cache_dir=aligned_cfg["cache_dir"],
            score_missing=bool(aligned_cfg.get("score_missing", False)),
            member=name,
            source=source,
            batch_size=int(aligned_cfg.get("batch_size", 16)),
            what=f"scores of aligned member {name!r}",
            to_run="Run `prefalign-score` with the same data and aligned configs first, "
            "or set aligned.score_missing=true to score before training",
            trainer_kwargs=trainer_kwargs,
        ).mean_by_id()
        for name in names
    }
    report = DropReport(total=len(ds))
    columns: dict[str, list] = {
        ID: [],
        **{member_score_column(name): [] for name in names},
        ALIGNED_SCORE: [],
    }
    for row, sample_id in enumerate(ds[ID]):
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
        columns[ID].append(sample_id)
        for name, value in zip(names, values, strict=True):
            columns[member_score_column(name)].append(value)
        columns[ALIGNED_SCORE].append(combine(values))
    if report.dropped:
        log.warning(report.summary(f"{source} (aligned scores)"))
    return columns, report


def reference_logprob_columns(
    records: datasets.Dataset,
    conversations: datasets.Dataset,
    sequences: list[str],
    reference_cfg: Mapping[str, Any],
    max_length: int,
    source: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list]:
    """``id`` and ``ref.<sequence>.sum`` / ``.count`` of every record whose sequences were all scored.

    ``conversations`` are the records' sequences (ids ``"<id>::<sequence>"``). A record the engine
    could not score (no response token left after truncation) is left out; the data module's join
    raises if training keeps it.
    """
    table = cached_or_scored(
        conversations,
        frozen_model_config(reference_cfg["model"]),  # frozen: model.frozen_dtype when set
        max_length=max_length,
        cache_dir=reference_cfg["cache_dir"],
        score_missing=bool(reference_cfg.get("score_missing", False)),
        member="reference",
        source=source,
        batch_size=int(reference_cfg.get("batch_size", 16)),
        what="reference log-probs",
        to_run="Set reference.score_missing=true to score them before training (the default of "
        "conf/train.yaml), or run the same training command once with it",
        trainer_kwargs=trainer_kwargs,
    ).table
    sums = dict(zip(table[ID], table["logp_sum"], strict=True))
    counts = dict(zip(table[ID], table["num_tokens"], strict=True))
    columns: dict[str, list] = {ID: []}
    for name in sequences:
        columns.update({column: [] for column in reference_columns(name)})
    for sample_id in records[ID]:
        keys = [sequence_id(sample_id, name) for name in sequences]
        if any(key not in sums for key in keys):
            continue
        columns[ID].append(sample_id)
        for name, key in zip(sequences, keys, strict=True):
            total, count = reference_columns(name)
            columns[total].append(sums[key])
            columns[count].append(counts[key])
    return columns


def attach_frozen_columns(
    datamodule: Any,
    aligned: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Compute (or load) every frozen-model column the data module's splits need and add them to it.

    Args:
        datamodule: a :class:`prefalign.data.datamodule.ChatDataModule` (or preference subclass)
            before setup; its ``columns_needed(split)`` says what to attach.
        aligned: the aligned ensemble config (``conf/aligned``), for ``aligned_score``.
        reference: ``{model, cache_dir, score_missing, batch_size}``, for ``ref.<sequence>.*``.
        trainer_kwargs: Lightning ``Trainer`` arguments for scoring now (``score_missing``).
    """
    for split in datamodule.splits:
        needed = datamodule.columns_needed(split)
        source = datamodule.source_name(split)
        if ALIGNED_SCORE in needed:
            if aligned is None:
                raise DataError(f"{source}: aligned-LLM scores are needed; set the `aligned` config group")
            columns, report = aligned_score_columns(
                datamodule.records(split), aligned, source, trainer_kwargs
            )
            datamodule.add_columns(split, columns, report)
        scored = [name for name in datamodule.sequences if reference_columns(name)[0] in needed]
        if scored:
            if reference is None:
                raise ConfigError(
                    f"config key `reference`: the objective needs reference log-probs of {scored}"
                )
            columns = reference_logprob_columns(
                datamodule.records(split),
                datamodule.sequence_conversations(split),
                list(datamodule.sequences),
                reference,
                datamodule.max_length,
                source,
                trainer_kwargs,
            )
            datamodule.add_columns(split, columns)
