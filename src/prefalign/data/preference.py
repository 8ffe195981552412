"""Preference data: several (prompt, response) sequences per sample, for DPO, IPO and SSO.

A preference record has an ``id``, a ``prompt`` (a string, or a conversation prefix ending with
a user turn), a ``chosen`` (y+) and a ``rejected`` (y−) response, and for SSO an ``original``
response (y_o, sampled without principle) and the two principle system messages ``system_good`` /
``system_bad`` (x+ / x−). A sequence is named ``"<prompt>|<response>"`` with prompts ``x``, ``x+``,
``x-`` and responses ``y+``, ``y-``, ``yo``; an objective declares which it needs, each is
tokenised with the model's chat template (response tokens labelled, as everywhere), and the frozen
reference's log-probs of each are computed once by the scoring engine
(:func:`prefalign.scoring.frozen.attach_frozen_columns`, called by the training app) and joined by
sample id at setup. Sequence names and their sequence-major layout: :mod:`prefalign.core.names`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from prefalign.core.errors import DataError, DropReport
from prefalign.core.names import (
    CHOSEN,
    ID,
    LENGTH,
    PROMPT_SYSTEMS,
    REJECTED,
    RESPONSES,
    parse_sequence,
    reference_columns,
    required_fields,
    sequence_id,
    stack_sequence_major,
)
from prefalign.data.batching import pad_collate
from prefalign.data.chat import TemplateError, encode_conversation
from prefalign.data.datamodule import ChatDataModule, DataSource
from prefalign.data.packing import collate_shared_prompts
from prefalign.data.records import content_id

log = logging.getLogger(__name__)


@dataclass
class PreferenceColumns:
    """Where a preference record's parts live in a raw row (any may be renamed)."""

    id: str | None = ID
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    original: str = "original"
    system_good: str = "system_good"
    system_bad: str = "system_bad"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> PreferenceColumns:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"data.columns: unknown keys {sorted(unknown)}")
        return cls(**cfg)


def _text(value: Any) -> str | None:
    """A response given as text, or as a conversation whose last turn is the assistant's."""
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        value = value[-1].get("content")
    return None if value is None else str(value)


def _prompt_messages(value: Any) -> list[dict[str, str]] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else None
    if isinstance(value, list) and value:
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in value]
        if messages[-1]["role"] == "assistant":  # a full chosen conversation: keep the prefix
            messages = messages[:-1]
        return messages if messages and messages[-1]["role"] == "user" else None
    return None


def normalise_preferences(
    raw: datasets.Dataset,
    columns: PreferenceColumns,
    fields: Sequence[str],
    source: str,
    on_invalid: str = "raise",
) -> tuple[datasets.Dataset, DropReport]:
    """Validate preference rows and normalise them to ``id``, ``prompt`` (messages) and the text fields.

    Empty responses (e.g. empty generations), an unusable prompt and duplicate ids raise a
    :class:`DataError` naming the source, the row and the id, or with ``on_invalid="drop"`` are
    dropped and counted.
    """
    column_of = {f: getattr(columns, f) for f in fields}
    missing = [c for c in column_of.values() if c not in raw.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has columns {raw.column_names}")
    report = DropReport(total=len(raw))
    rows, seen = [], {}
    for index, row in enumerate(raw):
        prompt = _prompt_messages(row[column_of["prompt"]])
        record: dict[str, Any] = {"prompt": prompt}
        problem = "" if prompt else "bad_prompt|the prompt is empty or does not end with a user turn"
        for f in fields[1:]:
            record[f] = _text(row[column_of[f]])
            if not problem and not (record[f] or "").strip():
                problem = f"empty_{f}|the {f} text is empty"
        raw_id = row.get(columns.id) if columns.id else None
        sample_id = (
            str(raw_id)
            if raw_id not in (None, "")
            else content_id(
                (prompt or []) + [{"role": "assistant", "content": record.get(f) or ""} for f in fields[1:]]
            )
        )
        if not problem and sample_id in seen:
            problem = f"duplicate_id|duplicate sample id, first seen at row {seen[sample_id]}"
        if problem:
            code, detail = problem.split("|", 1)
            if on_invalid != "drop":
                raise DataError(f"{source}: row {index} (id={sample_id}): {detail}")
            report.add(code, sample_id)
            continue
        seen[sample_id] = index
        rows.append({ID: sample_id, **record})
    if report.dropped:
        log.warning(report.summary(source))
    if not rows:
        raise DataError(f"{source}: no valid preference record")
    return datasets.Dataset.from_list(rows), report


def sequence_messages(row: Mapping[str, Any], name: str) -> list[dict[str, str]]:
    """The conversation of sequence ``name`` for one normalised record."""
    prompt, response = parse_sequence(name)
    messages = list(row["prompt"])
    system_field = PROMPT_SYSTEMS[prompt]
    if system_field:
        messages = [{"role": "system", "content": row[system_field]}, *messages]
    return [*messages, {"role": "assistant", "content": row[RESPONSES[response]]}]


def sequences_as_conversations(ds: datasets.Dataset, sequences: Sequence[str]) -> datasets.Dataset:
    """One conversation per (record, sequence), id ``"<id>::<sequence>"``
    (:func:`prefalign.core.names.sequence_id`): what the scoring engine reads."""
    rows = [
        {ID: sequence_id(row[ID], name), "messages": sequence_messages(row, name)}
        for row in ds
        for name in sequences
    ]
    return datasets.Dataset.from_list(rows)


def tokenize_preferences(
    ds: datasets.Dataset, tokenizer: Any, max_length: int, sequences: Sequence[str], source: str
) -> tuple[datasets.Dataset, DropReport]:
    """Tokenise every sequence of every record (``<sequence>.input_ids`` / ``.labels`` columns and ``length``).

    A record any of whose sequences keeps no response token after truncation is dropped and counted.
    """
    report = DropReport(total=len(ds))
    rows = []
    for row in ds:
        out: dict[str, Any] = {ID: row[ID]}
        longest, empty = 0, False
        for name in sequences:
            try:
                enc = encode_conversation(tokenizer, sequence_messages(row, name), max_length, row[ID])
            except TemplateError as err:
                raise TemplateError(f"{source}: sequence {name}: {err}") from err
            out[f"{name}.input_ids"], out[f"{name}.labels"] = enc.input_ids, enc.labels
            longest = max(longest, len(enc.input_ids))
            empty |= enc.num_response_tokens == 0
        if empty:
            report.add("response_truncated", row[ID])
            continue
        out[LENGTH] = longest
        for key, value in row.items():
            if key not in out and isinstance(value, (int, float, bool)) and not isinstance(value, str):
                out[key] = value
        rows.append(out)
    if not rows:
        raise DataError(
            f"{source}: no preference record left after tokenisation with max_length={max_length}"
        )
    if report.dropped:
        log.warning(report.summary(f"{source} (max_length={max_length})"))
    return datasets.Dataset.from_list(rows), report


def collate_sequences(
    samples: list[dict[str, Any]], sequences: Sequence[str], pad_token_id: int, share_prompts: bool = False
) -> dict[str, Any]:
    """Batch every sequence of every sample for one forward pass, sequence-major.

    Without ``share_prompts``, rows ``k*B .. (k+1)*B`` hold sequence ``sequences[k]`` of the ``B``
    samples (:func:`prefalign.core.names.stack_sequence_major`), each padded to the longest. With it, the sequences that share a prompt share one row
    and the prompt is computed once (:func:`prefalign.data.packing.collate_shared_prompts`); scores
    come out in the same sequence-major order. Reference columns become ``(B,)`` tensors.
    """
    if share_prompts:
        batch = collate_shared_prompts(samples, sequences, pad_token_id)
    else:
        flat = [
            {ID: s[ID], "input_ids": s[f"{name}.input_ids"], "labels": s[f"{name}.labels"]}
            for name, s in stack_sequence_major(samples, sequences)
        ]
        batch = pad_collate(flat, pad_token_id)
    batch[ID] = [s[ID] for s in samples]
    batch["sequences"] = list(sequences)
    for name in sequences:
        total, count = reference_columns(name)
        if total in samples[0]:
            batch[total] = torch.tensor([s[total] for s in samples], dtype=torch.float64)
            batch[count] = torch.tensor([s[count] for s in samples], dtype=torch.long)
    return batch


class PreferenceDataModule(ChatDataModule):
    """Preference data for multi-sequence objectives (DPO, IPO, SSO, the reward model).

    Arguments as :class:`ChatDataModule`, except ``noise`` and ``filter_top_fraction`` (settings of
    chat data only), plus:
        columns: :class:`PreferenceColumns` config.
        sequences: the sequence names the objective needs (set by the training app).
        share_prompts: pack the sequences that share a prompt into one row, the prompt computed
            once (:mod:`prefalign.data.packing`; needs ``sdpa`` or ``eager`` attention).

    Reference log-probs (``ref.<sequence>.sum`` / ``.count``) are required when the app lists them in
    ``required_columns``, and added by :func:`prefalign.scoring.frozen.attach_frozen_columns`.
    """

    def __init__(
        self,
        tokenizer: Any,
        train: Mapping[str, Any] | str,
        val: Mapping[str, Any] | str | None = None,
        columns: Mapping[str, Any] | None = None,
        sequences: Sequence[str] = (CHOSEN, REJECTED),
        share_prompts: bool = True,
        max_length: int = 2048,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        mega_batch_mult: int = 50,
        pad_to_multiple_of: int | None = None,
        on_invalid: str = "raise",
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 0,
        required_columns: Sequence[str] = (),
    ) -> None:
        super().__init__(
            tokenizer,
            train,
            val,
            columns=None,
            max_length=max_length,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            group_by_length=group_by_length,
            mega_batch_mult=mega_batch_mult,
            pad_to_multiple_of=pad_to_multiple_of,
            on_invalid=on_invalid,
            num_workers=num_workers,
            num_proc=num_proc,
            seed=seed,
            required_columns=required_columns,
        )
        self.columns = PreferenceColumns.from_config(columns)
        self.sequences = tuple(sequences)
        self.share_prompts = share_prompts

    def load_records(self, split: str) -> tuple[datasets.Dataset, DropReport]:
        """Validate and normalise one split's preference records (first ``limit`` kept)."""
        source: DataSource = self.sources[split]
        ds, report = normalise_preferences(
            source.load(), self.columns, required_fields(self.sequences), source.path, self.on_invalid
        )
        if source.limit is not None:
            ds = ds.select(range(min(source.limit, len(ds))))
        return ds, report

    def sequence_conversations(self, split: str) -> datasets.Dataset:
        """Every (record, sequence) as a conversation (:func:`sequences_as_conversations`)."""
        return sequences_as_conversations(self.records(split), self.sequences)

    def build(self, split: str) -> tuple[datasets.Dataset, DropReport]:
        """Tokenise every sequence, then join the added columns (reference log-probs) by sample id."""
        source: DataSource = self.sources[split]
        self.records(split)
        ds, report = self._records.pop(split)
        tokenised, truncation = tokenize_preferences(
            ds, self.tokenizer, self.max_length, self.sequences, source.path
        )
        report.merge(truncation)
        tokenised = self.join_added_columns(split, tokenised, report)
        self.check_columns(split, tokenised, self.columns_needed(split))
        log.info(report.summary(f"{split} ({source.path})"))
        return tokenised, report

    def collate_fn(self):
        return functools.partial(
            collate_sequences,
            sequences=self.sequences,
            pad_token_id=self.tokenizer.pad_token_id,
            share_prompts=self.share_prompts,
        )
