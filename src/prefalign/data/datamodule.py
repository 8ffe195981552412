"""The LightningDataModule for chat SFT data (one sequence per sample).

Frozen-model outputs (aligned-LLM scores, reference log-probs) are not computed here: the training
app computes them with :func:`prefalign.scoring.frozen.attach_frozen_columns` before the fit, from
the normalised records this module exposes (:meth:`ChatDataModule.records`,
:meth:`ChatDataModule.sequence_conversations`), and hands them back as column tables
(:meth:`ChatDataModule.add_columns`) that :meth:`ChatDataModule.setup` joins by sample id.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from prefalign.core.errors import DataError, DropReport
from prefalign.core.names import ALIGNED_SCORE, ID, LENGTH, MESSAGES, NOISE, SINGLE, sequence_id
from prefalign.data.batching import LengthGroupedBatchSampler, ResumableTrainOrder, pad_collate
from prefalign.data.chat import tokenize_dataset
from prefalign.data.filtering import filter_top_fraction
from prefalign.data.language import filter_english
from prefalign.data.noise import NoiseConfig, build_noisy_dataset
from prefalign.data.records import ColumnMap, load_json_records, load_raw, normalise_records

log = logging.getLogger(__name__)

# Values of a data source's `format` key (None: by the file suffix, folder or hub name).
FORMATS = (None, "json_records")


@dataclass
class DataSource:
    """One dataset: a local json/jsonl/parquet file, a ``save_to_disk`` folder, or a hub name.

    Attributes:
        path: file, folder or hub dataset name.
        split: split for hub datasets and saved ``DatasetDict`` folders.
        subset: hub configuration name.
        revision: hub revision.
        data_files: files inside a hub dataset repository to load (e.g. one language's file).
        limit: keep only the first ``limit`` samples (after validation), or all when ``None``.
        format: ``None`` (by the file suffix / folder / hub name) or ``json_records``: a file
            holding one JSON array of records, decoded record by record so that a file cut off at
            its end still loads (:func:`prefalign.data.records.load_json_records`); the
            incomplete last record is counted as ``truncated_tail``.
        english_only: keep only English conversations (:mod:`prefalign.data.language`), counting
            the others as ``not_english``; applied after validation and before ``limit``.
    """

    path: str
    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    data_files: str | list[str] | None = None
    limit: int | None = None
    format: str | None = None
    english_only: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data source {self.path}: format must be one of {FORMATS}, got {self.format!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> DataSource:
        return cls(path=cfg) if isinstance(cfg, str) else cls(**dict(cfg))

    def read(self) -> tuple[datasets.Dataset, DropReport]:
        """The raw rows of this source and a report of records that could not be read.

        Only a ``json_records`` file can lose a record here (its cut-off tail); other sources
        either load whole or raise a :class:`DataError`.
        """
        if self.format == "json_records":
            return load_json_records(self.path)
        raw = load_raw(
            self.path,
            split=self.split,
            subset=self.subset,
            revision=self.revision,
            data_files=self.data_files,
        )
        return raw, DropReport(total=len(raw))

    def load(self) -> datasets.Dataset:
        """The raw rows of this source (see :meth:`read`; a cut-off tail is logged there)."""
        if self.english_only:
            raise DataError(
                f"{self.path}: english_only filters normalised conversations "
                "(load_conversations, chat data); it cannot be applied to raw rows"
            )
        return self.read()[0]


def load_conversations(
    source: DataSource,
    columns: ColumnMap,
    on_invalid: str = "raise",
    num_proc: int | None = None,
    split: str = "train",
    noise: Mapping[str, Any] | None = None,
) -> tuple[datasets.Dataset, DropReport]:
    """Load and normalise one source to ``id`` + ``messages`` (+ any extra columns).

    This is the one recipe shared by training and scoring, so both see the same samples: load,
    validate, keep the first ``source.limit`` samples, and for the ``train`` split mix in the
    hand-crafted noise samples described by ``noise`` (a :class:`prefalign.data.noise.NoiseConfig`
    mapping; PoFT paper §4.3), labelled by a boolean ``noise`` column (``False`` on the other splits).
    With ``source.english_only``, non-English conversations are dropped before the limit.

    The report counts everything removed: a cut-off record of a ``json_records`` file, invalid
    records, non-English conversations.
    """
    raw, report = source.read()
    ds, normalise_report = normalise_records(
        raw, columns, source.path, on_invalid=on_invalid, num_proc=num_proc
    )
    report.merge(normalise_report)
    if source.english_only:
        ds, english_report = filter_english(ds)
        report.merge(english_report)
        log.info("%s: kept %d English conversations of %d", source.path, len(ds), english_report.total)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    if noise and split == "train":
        ds = build_noisy_dataset(ds, NoiseConfig(**dict(noise)))
        log.info("%s: mixed in %d hand-crafted noise samples", source.path, noise["num_samples"])
    elif noise and NOISE not in ds.column_names:  # evaluation splits stay clean, and say so
        ds = ds.add_column(NOISE, [False] * len(ds))
    return ds, report


class ChatDataModule(ResumableTrainOrder, L.LightningDataModule):
    """Loads, validates, tokenises and batches chat data for training and validation.

    Args:
        tokenizer: the trained model's tokenizer (its chat template defines the encoding).
        train / val: :class:`DataSource` configs (``val`` optional).
        columns: :class:`ColumnMap` config (where conversations live in the raw rows).
        max_length: tokens kept per sample; samples left with no response token are dropped and counted.
        batch_size / eval_batch_size: samples per batch on one device.
        group_by_length: length-grouped batches (little padding); else random batches.
        mega_batch_mult: mega-batch size in batches for length grouping.
        pad_to_multiple_of: pad batch length to a multiple (8 helps tensor cores), or ``None``.
        on_invalid: ``raise`` at the first bad record, or ``drop`` and count bad records.
        num_workers: DataLoader workers.
        num_proc: processes for tokenisation (``datasets.map``).
        seed: shuffling seed (epoch ``e`` uses ``seed + e``).
        required_columns: extra columns the objective reads (set by the training app from the
            objective's declaration); checked at setup. Frozen-model columns among them
            (``aligned_score``, ``ref.<sequence>.*``) must have been added with :meth:`add_columns`.
        noise: hand-crafted noise mixed into the training split (:class:`prefalign.data.noise.NoiseConfig`
            fields: ``num_samples``, ``seed``, ``insert_rate``, ``delete_rate``, ``modify_rate``), or ``None``.
        filter_top_fraction: keep only this top fraction of the training split by aggregated
            aligned score (PoFT paper Figure 4), or ``None`` to keep everything (the scores are
            then needed: :meth:`columns_needed`).
    """

    # The sequences of a sample (one: the conversation as it is).
    sequences: tuple[str, ...] = (SINGLE,)

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        train: Mapping[str, Any] | str,
        val: Mapping[str, Any] | str | None = None,
        columns: Mapping[str, Any] | None = None,
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
        noise: Mapping[str, Any] | None = None,
        filter_top_fraction: float | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.sources = {"train": DataSource.from_config(train)}
        if val is not None:
            self.sources["val"] = DataSource.from_config(val)
        self.columns = ColumnMap.from_config(columns)
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.group_by_length = group_by_length
        self.mega_batch_mult = mega_batch_mult
        self.pad_to_multiple_of = pad_to_multiple_of
        self.on_invalid = on_invalid
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        self.required_columns = tuple(required_columns)
        self.noise = noise
        self.filter_top_fraction = filter_top_fraction
        self.datasets: dict[str, datasets.Dataset] = {}
        self.drop_reports: dict[str, DropReport] = {}
        self._records: dict[str, tuple[datasets.Dataset, DropReport]] = {}
        self._added: dict[str, list[tuple[dict[str, list], DropReport]]] = {}

    # -- the seam to frozen-model columns (prefalign.scoring.frozen) -----------------------------
    @property
    def splits(self) -> list[str]:
        """The configured splits (``train``, and ``val`` when set)."""
        return list(self.sources)

    def source_name(self, split: str) -> str:
        """The path of a split's source, for messages."""
        return self.sources[split].path

    def columns_needed(self, split: str) -> list[str]:
        """The columns a split must carry before tokenisation: the objective's, plus the aligned
        score on the training split when filtering by it."""
        needed = list(self.required_columns)
        if split == "train" and self.filter_top_fraction is not None and ALIGNED_SCORE not in needed:
            needed.append(ALIGNED_SCORE)
        return needed

    def load_records(self, split: str) -> tuple[datasets.Dataset, DropReport]:
        """Load and validate one split's records (no tokenisation); see :func:`load_conversations`."""
        return load_conversations(
            self.sources[split], self.columns, self.on_invalid, self.num_proc, split, self.noise
        )

    def records(self, split: str) -> datasets.Dataset:
        """The normalised records of a split (loaded once): what frozen models score."""
        if split not in self._records:
            self._records[split] = self.load_records(split)
        return self._records[split][0]

    def sequence_conversations(self, split: str) -> datasets.Dataset:
        """One conversation per (record, sequence), id ``"<id>::<sequence>"``
        (:func:`prefalign.core.names.sequence_id`): what the reference model scores."""
        (name,) = self.sequences
        ds = self.records(split).select_columns([ID, MESSAGES])
        return ds.map(lambda row: {ID: sequence_id(row[ID], name)})

    def add_columns(self, split: str, columns: Mapping[str, list], report: DropReport | None = None) -> None:
        """Columns computed outside the data layer, joined to the split by sample id at setup.

        ``columns`` holds an ``id`` list and one list per column. Samples absent from it must be
        exactly those ``report`` counts as dropped (e.g. ``aligned.on_missing=drop``); any other
        absent sample is a :class:`DataError` at setup.
        """
        if ID not in columns:
            raise ValueError(f"{self.source_name(split)}: added columns need an `{ID}` list")
        self._added.setdefault(split, []).append((dict(columns), report or DropReport()))

    def join_added_columns(self, split: str, ds: datasets.Dataset, report: DropReport) -> datasets.Dataset:
        """Join the columns of :meth:`add_columns` to ``ds`` by sample id (merging their drop reports)."""
        for columns, added_report in self._added.get(split, []):
            row_of = {sample_id: row for row, sample_id in enumerate(columns[ID])}
            keep = [i for i, sample_id in enumerate(ds[ID]) if sample_id in row_of]
            names = [c for c in columns if c != ID]
            absent = len(ds) - len(keep)
            if absent != added_report.dropped:
                missing = [sample_id for sample_id in ds[ID] if sample_id not in row_of][:5]
                raise DataError(
                    f"{self.source_name(split)}: no value of column(s) {names} for {absent} sample(s) "
                    f"(e.g. ids {missing}), of which {added_report.dropped} were counted as dropped"
                )
            report.merge(added_report)
            if absent:
                ds = ds.select(keep)
            rows = [row_of[sample_id] for sample_id in ds[ID]]
            for name in names:
                ds = ds.add_column(name, [columns[name][r] for r in rows])
        return ds

    def check_columns(self, split: str, ds: datasets.Dataset, needed: Sequence[str]) -> None:
        """A :class:`DataError` naming the columns in ``needed`` that ``ds`` lacks."""
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{self.source_name(split)}: the objective needs column(s) {missing}; the data has "
                f"{ds.column_names}. Frozen-model columns (aligned scores, reference log-probs) are "
                "attached before setup by prefalign.scoring.frozen.attach_frozen_columns (the training "
                "app does it; set the `aligned` / `reference` config)"
            )

    def build(self, split: str) -> tuple[datasets.Dataset, DropReport]:
        """Join the added columns to a split's records, filter, tokenise; return the dataset and
        what was dropped."""
        self.records(split)
        ds, report = self._records.pop(split)
        source = self.sources[split]
        ds = self.join_added_columns(split, ds, report)
        self.check_columns(split, ds, self.columns_needed(split))
        if split == "train" and self.filter_top_fraction is not None:
            ds, filter_report = filter_top_fraction(ds, self.filter_top_fraction)
            log.info("%s: %s", source.path, filter_report.summary())
            if filter_report.dropped:
                report.counts["below_score_threshold"] += filter_report.dropped
                report.examples.setdefault("below_score_threshold", [])
        ds, truncation_report = tokenize_dataset(
            ds, self.tokenizer, self.max_length, source.path, self.num_proc
        )
        report.merge(truncation_report)
        log.info(report.summary(f"{split} ({source.path})"))
        return ds, report

    def setup(self, stage: str | None = None) -> None:
        for split in self.sources:
            if split not in self.datasets:
                self.datasets[split], self.drop_reports[split] = self.build(split)

    def drop_counts(self) -> dict[str, int]:
        """``data/<split>_dropped_<reason>`` counts (and kept sizes), for the loggers."""
        counts = {}
        for split, report in self.drop_reports.items():
            counts[f"data/{split}_samples"] = len(self.datasets[split])
            for reason, n in report.counts.items():
                counts[f"data/{split}_dropped_{reason}"] = n
        return counts

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        lengths = ds[LENGTH] if self.group_by_length else [1] * len(ds)
        sampler = LengthGroupedBatchSampler(
            lengths,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
            mega_batch_mult=self.mega_batch_mult if self.group_by_length else 1,
        )
        if shuffle and len(sampler) == 0:  # Lightning would stop "successfully" without a step
            raise DataError(
                f"the training split has {len(ds)} sample(s), which make {sampler._num_global_batches()} "
                f"batch(es) of data.batch_size={batch_size}: fewer than the {world} rank(s), so no rank "
                "would train. Lower data.batch_size or add training data"
            )
        if shuffle:  # the training order: saved in checkpoints, resumed mid-epoch
            self.track_train_sampler(sampler)
        return DataLoader(
            ds.with_format(None),
            batch_sampler=sampler,
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def collate_fn(self):
        """The batch collation: right-padded token tensors plus scalar columns."""
        return functools.partial(
            pad_collate, pad_token_id=self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []
