"""The frozen-model scoring engine (design idea 2): model outputs as cached, id-keyed columns.

``score_conversations`` runs one frozen causal LM over a dataset of conversations and returns, per
sample id, the sum of the response tokens' log-probs and their count (``logp_sum``,
``num_tokens``), computed with the model's own tokenizer and chat template and the same
definition of response tokens as training (:mod:`prefalign.data.chat`). It serves the aligned-LLM
scores of PoFT and the reference log-probs of DPO / IPO / SSO alike.

- Batches are length-sorted inside each shard (no padding to a fixed length); log-probs are fp32;
  Lightning ``predict`` runs under ``torch.inference_mode`` on one device or across devices
  (each rank scores whole shards).
- Results are cached under ``cache_dir/<key>`` where ``key`` fingerprints (the data's ids and
  conversations — order-independent, so a shuffled copy hits the same cache —, the model's name
  or tiny spec, revision, GGUF file and dtype, the tokenizer with its chat template, and
  ``max_length``). A finished run leaves ``table/`` (``save_to_disk``) and ``meta.json``; a second
  run with the same inputs is a cache hit.
- Work is split in shards of ``shard_size`` samples, each written atomically to ``shards/`` as it
  completes, so a killed run resumes without recomputing finished shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler

from prefalign.core.errors import DataError, DropReport
from prefalign.data.batching import pad_collate
from prefalign.data.chat import tokenize_dataset, tokenizer_fingerprint
from prefalign.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from prefalign.scoring.logprobs import model_sequence_logprobs

log = logging.getLogger(__name__)

ENGINE_VERSION = "1"
MODEL_IDENTITY_KEYS = ("name_or_path", "tiny", "revision", "gguf_file", "dtype")


class ScoreCacheError(DataError):
    """Scores are missing, duplicated or invalid for some sample ids."""


def data_fingerprint(ds: datasets.Dataset) -> str:
    """Order-independent hash of a conversation dataset's ``id`` and ``messages`` columns."""
    digests = []
    for batch in ds.select_columns(["id", "messages"]).iter(batch_size=4096):
        for sample_id, messages in zip(batch["id"], batch["messages"], strict=True):
            row = json.dumps([sample_id, [[m["role"], m["content"]] for m in messages]], ensure_ascii=False)
            digests.append(hashlib.sha256(row.encode("utf-8")).digest())
    h = hashlib.sha256()
    for digest in sorted(digests):
        h.update(digest)
    return h.hexdigest()[:16]


def model_identity(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a model config that change its outputs (name or tiny spec, revision, GGUF file, dtype)."""
    identity = {}
    for key in MODEL_IDENTITY_KEYS:
        value = model_cfg.get(key)
        identity[key] = dict(value) if isinstance(value, Mapping) else value
    return identity


def cache_key(data_fp: str, model_cfg: Mapping[str, Any], tokenizer: Any, max_length: int) -> str:
    """Fingerprint of (data, model, tokenizer + chat template, max_length, engine version)."""
    payload = json.dumps(
        {
            "data": data_fp,
            "model": model_identity(model_cfg),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "max_length": max_length,
            "engine": ENGINE_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass
class ScoreTable:
    """Scores of one model on one dataset.

    Attributes:
        table: ``id`` (str), ``logp_sum`` (float64), ``num_tokens`` (int64), one row per scored sample.
        path: the cache folder.
        cache_hit: whether the table was read from the cache.
        drops: samples not scored (no response token left after truncation), by reason.
    """

    table: datasets.Dataset
    path: Path
    cache_hit: bool
    drops: DropReport = field(default_factory=DropReport)

    def mean_by_id(self) -> dict[str, float]:
        """``id -> logp_sum / num_tokens``, the length-normalised score r(x, y)."""
        return {
            i: s / n
            for i, s, n in zip(
                self.table["id"], self.table["logp_sum"], self.table["num_tokens"], strict=True
            )
        }


class ShardBatchSampler(Sampler[list[int]]):
    """Length-sorted batches that never cross a shard; each rank takes every ``world_size``-th shard."""

    def __init__(
        self,
        lengths: Sequence[int],
        shards: Sequence[int],
        shard_size: int,
        batch_size: int,
        rank: int,
        world_size: int,
    ):
        self.batches: list[list[int]] = []
        lengths_t = torch.as_tensor(lengths)
        for shard in list(shards)[rank::world_size]:
            start, stop = shard * shard_size, min((shard + 1) * shard_size, len(lengths))
            order = (torch.argsort(lengths_t[start:stop], descending=True, stable=True) + start).tolist()
            self.batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ScoringModule(L.LightningModule):
    """Wraps a frozen model for ``Trainer.predict``: per sequence, response log-prob sum and count."""

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: datasets.Dataset,
        shards: Sequence[int],
        shard_size: int,
        batch_size: int,
        pad_token_id: int,
        logprob_chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.dataset = dataset
        self.shards = list(shards)
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.logprob_chunk_rows = logprob_chunk_rows

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ShardBatchSampler(
            self.dataset["length"],
            self.shards,
            self.shard_size,
            self.batch_size,
            trainer.global_rank,
            trainer.world_size,
        )
        return DataLoader(
            self.dataset.with_format(None),
            batch_sampler=sampler,
            collate_fn=functools.partial(pad_collate, pad_token_id=self.pad_token_id),
        )

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        scores = model_sequence_logprobs(  # memory-lean: response positions only
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], self.logprob_chunk_rows
        )
        return {
            "id": list(batch["id"]),
            "position": batch["position"].tolist(),
            "logp_sum": scores.sum.double().cpu().tolist(),
            "num_tokens": scores.count.cpu().tolist(),
        }


class ShardWriter(BasePredictionWriter):
    """Buffers predictions per shard and writes each finished shard atomically as parquet."""

    def __init__(self, folder: Path, shard_sizes: Mapping[int, int], shard_size: int) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.shard_sizes = dict(shard_sizes)
        self.shard_size = shard_size
        self.buffers: dict[int, dict[str, list]] = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        shard = prediction["position"][0] // self.shard_size
        buffer = self.buffers.setdefault(shard, {"id": [], "logp_sum": [], "num_tokens": []})
        for key in ("id", "logp_sum", "num_tokens"):
            buffer[key].extend(prediction[key])
        if len(buffer["id"]) == self.shard_sizes[shard]:
            write_shard(self.folder, shard, buffer)
            del self.buffers[shard]


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.parquet"


def write_shard(folder: Path, shard: int, columns: Mapping[str, list]) -> None:
    """Write one shard's scores atomically (temporary file, then rename)."""
    table = pa.table(
        {
            "id": pa.array(columns["id"], pa.string()),
            "logp_sum": pa.array(columns["logp_sum"], pa.float64()),
            "num_tokens": pa.array(columns["num_tokens"], pa.int64()),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".shard-{shard:05d}.", suffix=".tmp", dir=folder)
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, _shard_path(folder, shard))


def _merge_shards(folder: Path, expected_ids: Sequence[str], n_shards: int, member: str) -> datasets.Dataset:
    tables = [pq.read_table(_shard_path(folder / "shards", k)) for k in range(n_shards)]
    merged = datasets.Dataset(pa.concat_tables(tables))
    ids = merged["id"]
    if len(ids) != len(set(ids)):
        raise ScoreCacheError(f"{folder}: duplicate ids in the score shards of {member}")
    missing = set(expected_ids) - set(ids)
    if missing:
        raise ScoreCacheError(
            f"{folder}: {len(missing)} ids were not scored by {member}, e.g. {sorted(missing)[:5]}"
        )
    sums = torch.tensor(merged["logp_sum"], dtype=torch.float64)
    bad = ~torch.isfinite(sums)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise ScoreCacheError(
            f"{folder}: model {member} gave a non-finite score ({sums[first].item()}) for id {ids[first]}"
        )
    return merged


def _save_atomically(ds: datasets.Dataset, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".table.", dir=target.parent))
    shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def find_cached_scores(
    ds: datasets.Dataset,
    model_cfg: Mapping[str, Any],
    max_length: int,
    cache_dir: str | os.PathLike,
    tokenizer: Any | None = None,
) -> tuple[Path, bool]:
    """The cache folder for scoring ``ds`` with ``model_cfg`` and whether a finished table is there."""
    if tokenizer is None:
        tokenizer = _load_member_tokenizer(model_cfg)
    folder = Path(cache_dir).expanduser() / cache_key(data_fingerprint(ds), model_cfg, tokenizer, max_length)
    return folder, (folder / "meta.json").exists() and (folder / "table").exists()


def _load_member_tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    return load_tokenizer(
        resolve_model_path(model_cfg),
        revision=model_cfg.get("revision"),
        chat_template=model_cfg.get("chat_template"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        gguf_file=model_cfg.get("gguf_file"),
    )


def load_score_table(folder: Path) -> ScoreTable:
    """Read a finished score table from its cache folder."""
    meta = json.loads((folder / "meta.json").read_text())
    drops = DropReport(total=meta["num_samples"])
    for reason, n in meta.get("dropped", {}).items():
        drops.counts[reason] = n
    drops.examples = {k: list(v) for k, v in meta.get("dropped_examples", {}).items()}
    return ScoreTable(datasets.load_from_disk(str(folder / "table")), folder, cache_hit=True, drops=drops)


def score_conversations(
    ds: datasets.Dataset,
    model_cfg: Mapping[str, Any],
    *,
    max_length: int,
    cache_dir: str | os.PathLike,
    member: str = "model",
    source: str = "data",
    batch_size: int = 16,
    shard_size: int = 1024,
    trainer_kwargs: Mapping[str, Any] | None = None,
    logprob_chunk_rows: int | None = None,
) -> ScoreTable | None:
    """Score every conversation of ``ds`` (``id`` + ``messages``) with the model of ``model_cfg``.

    Args:
        ds: normalised conversations (:func:`prefalign.data.records.normalise_records`).
        model_cfg: a ``model`` config (name or tiny spec, revision, dtype, chat template...).
        max_length: tokens kept per sample, as in training; samples left without response tokens
            are not scored and are counted in ``drops``.
        cache_dir: root of the score cache.
        member / source: names used in messages and metadata.
        batch_size: sequences per forward pass.
        shard_size: samples per resumable shard.
        trainer_kwargs: ``lightning.Trainer`` arguments (``accelerator``, ``devices``, ``strategy``,
            ``precision``, ``callbacks``...). Defaults to one CPU/GPU device.

    Returns:
        The table, or ``None`` on non-zero ranks of a multi-process run (rank 0 merges).
    """
    tokenizer = _load_member_tokenizer(model_cfg)
    folder, finished = find_cached_scores(ds, model_cfg, max_length, cache_dir, tokenizer)
    if finished:
        log.info("%s on %s: cache hit at %s", member, source, folder)
        return load_score_table(folder)
    tokenised, drops = tokenize_dataset(ds, tokenizer, max_length, source)
    tokenised = tokenised.add_column("position", list(range(len(tokenised))))
    n_shards = math.ceil(len(tokenised) / shard_size)
    shard_folder = folder / "shards"
    todo = [k for k in range(n_shards) if not _shard_path(shard_folder, k).exists()]
    log.info(
        "%s on %s: %d samples in %d shards, %d to score", member, source, len(tokenised), n_shards, len(todo)
    )
    started = time.perf_counter()
    kwargs = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,
        "inference_mode": True,
    }
    kwargs.update(dict(trainer_kwargs or {}))
    callbacks = list(kwargs.pop("callbacks", []) or [])
    rank = 0
    if todo:
        model = load_causal_lm(
            resolve_model_path(model_cfg),
            revision=model_cfg.get("revision"),
            dtype=model_cfg.get("dtype", "float32"),
            attn_implementation=model_cfg.get("attn_implementation", "sdpa"),
            trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
            gguf_file=model_cfg.get("gguf_file"),
        )
        model.requires_grad_(False)
        sizes = {k: min((k + 1) * shard_size, len(tokenised)) - k * shard_size for k in todo}
        writer = ShardWriter(shard_folder, sizes, shard_size)
        trainer = L.Trainer(callbacks=[writer, *callbacks], **kwargs)
        module = ScoringModule(
            model, tokenised, todo, shard_size, batch_size, tokenizer.pad_token_id, logprob_chunk_rows
        )
        trainer.predict(module, return_predictions=False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            trainer.strategy.barrier()
        rank = trainer.global_rank
    if rank != 0:
        return None
    table = _merge_shards(folder, tokenised["id"], n_shards, member)
    _save_atomically(table, folder / "table")
    meta = {
        "member": member,
        "source": source,
        "model": model_identity(model_cfg),
        "chat_template": tokenizer.chat_template,
        "max_length": max_length,
        "num_samples": drops.total,
        "num_scored": len(table),
        "dropped": dict(drops.counts),
        "dropped_examples": drops.examples,
        "seconds": time.perf_counter() - started,
        "engine": ENGINE_VERSION,
    }
    (folder / "meta.tmp").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(folder / "meta.tmp", folder / "meta.json")
    shutil.rmtree(shard_folder, ignore_errors=True)
    log.info(
        "%s on %s: scored %d samples in %.1fs -> %s", member, source, len(table), meta["seconds"], folder
    )
    return ScoreTable(table, folder, cache_hit=False, drops=drops)
