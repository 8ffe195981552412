"""The frozen-model scoring engine (design idea 2): model outputs as cached, id-keyed columns.

``score_conversations`` runs one frozen causal LM over a dataset of conversations and returns, per
sample id, the sum of the response tokens' log-probs and their count (``logp_sum``,
``num_tokens``), computed with the model's own tokenizer and chat template and the same
definition of response tokens as training (:mod:`prefalign.data.chat`). It serves the aligned-LLM
scores of PoFT and the reference log-probs of DPO / IPO / SSO alike.

**Cache.** Results live under ``cache_dir/<key>`` where ``key`` fingerprints (the data's ids and
conversations — order-independent, so a shuffled copy hits the same cache —, the model's name or
tiny spec, revision, GGUF file and dtype, the weights' content identity — a cheap fingerprint of a
local folder, the resolved commit of a hub model: :mod:`prefalign.models.identity` —, the tokenizer
with its chat template, and ``max_length``). A finished cache holds ``table/`` (``save_to_disk``)
and ``meta.json`` (written last; it records the model and weights identity, the row count and a
SHA-256 of the table); a finished cache whose recorded identity is not the member's is an error
naming both (:func:`check_cache_identity`). Reading a finished table checks it
(:mod:`prefalign.scoring.cache`): a corrupt or truncated table, non-finite values,
``num_tokens <= 0``, log-prob sums above 0, duplicate ids or a row count other than recorded are a
:class:`ScoreCacheError` naming the file.

**Shards and resume.** The samples are put in a canonical order (longest first, ties by id: the
same for any order of the input), the ones not yet scored are cut in shards of ``shard_size``, and
each shard is written atomically to ``shards/shard-<digest of its ids>.parquet`` as soon as it is
complete. A killed run resumes from every valid shard, whatever shard size wrote it; an invalid
shard (truncated, corrupt, impossible values) is logged and scored again.

**One writer per cache.** The process that scores holds ``<folder>/lock`` (pid, host, heartbeat;
:class:`~prefalign.scoring.cache.CacheLock`). Another process scoring the same (data, model) — a
second job of a sweep or of a SLURM array — waits for it and then reads the finished table, or
after ``lock_timeout`` seconds fails with a message naming the cache folder. A lock whose holder
died (a dead pid on this host, or no heartbeat for ``lock_stale_s``) is broken. Shards and
temporary files are removed once the table is written.

**Several ranks score once, together.** Every rank calls ``score_conversations`` with the same
arguments (the call is collective); rank 0 takes the lock and makes the plan, each rank scores its
shards of the length-sorted data on its own device (rank ``r`` takes shards ``r, r + N, ...``; one
writer per shard file), all ranks wait for each other, rank 0 merges and checks the shards and
writes the table, and every rank returns the finished table. No rank scores the full data on its
own. How the ranks are found:

- **A process group is initialised** (``torch.distributed``; e.g. called inside a Lightning hook,
  or after an earlier Lightning ``fit`` / ``predict`` in the same process, or by the app): its
  ranks coordinate over a gloo group (object broadcasts and gathers); each rank runs a one-device
  ``Trainer.predict`` on ``cuda:<LOCAL_RANK>`` (or the CPU).
- **The ranks exist but no group yet** — ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``) or ``srun`` (``SLURM_NTASKS > 1``), e.g. a training app that attaches frozen
  columns before ``trainer.fit``: a temporary gloo group is created from those variables for the
  call and destroyed afterwards, so Lightning later initialises its own group (NCCL on GPUs).
- **One process, ``trainer_kwargs`` asking for several devices** (``prefalign-score
  trainer.devices=2 trainer.strategy=ddp``): Lightning's ``predict`` launches the ranks (the
  ``ddp`` subprocess launcher re-runs the program, ``ddp_spawn`` forks workers). The launching
  process takes the lock *before* launching, so the ranks it starts see the same cache state; the
  plan is broadcast from rank 0 in ``setup``, a rank without a shard scores one throw-away batch
  (Lightning needs one), rank 0's process merges, and the other ranks wait for the finished table.
  Later calls in the same program find the group initialised (first case).
- **Lightning's subprocess-launched ranks of a training app** (``LOCAL_RANK`` set, no group yet):
  the parent called this function before ``fit`` launched them, so the cache is finished and they
  read it (or they wait for its writer's lock).

Each rank needs ``cache_dir`` on a file system all ranks share (as for checkpoints).
"""

from __future__ import annotations

import contextlib
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
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler

from prefalign.core.errors import DropReport
from prefalign.core.ranks import Ranks, launched_ranks, lightning_child, process_group
from prefalign.data.batching import pad_collate
from prefalign.data.chat import tokenize_dataset, tokenizer_fingerprint
from prefalign.models.identity import weights_identity
from prefalign.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from prefalign.scoring.cache import (
    CacheLock,
    ScoreCacheError,
    check_scores,
    read_shard,
    shard_name,
    table_digest,
    write_shard,
)
from prefalign.scoring.logprobs import batch_targets, model_sequence_logprobs

log = logging.getLogger(__name__)

ENGINE_VERSION = "1"
MODEL_IDENTITY_KEYS = ("name_or_path", "tiny", "revision", "gguf_file", "dtype")

__all__ = [
    "ScoreCacheError",
    "ScoreTable",
    "cache_key",
    "data_fingerprint",
    "find_cached_scores",
    "load_score_table",
    "check_cache_identity",
    "model_identity",
    "score_conversations",
]


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


def cache_key(
    data_fp: str,
    model_cfg: Mapping[str, Any],
    tokenizer: Any,
    max_length: int,
    weights: Mapping[str, Any] | None = None,
) -> str:
    """Fingerprint of (data, model, the weights' identity, tokenizer + chat template, max_length,
    engine version); ``weights``: :func:`prefalign.models.identity.weights_identity` of
    ``model_cfg`` (computed when not given)."""
    payload = json.dumps(
        {
            "data": data_fp,
            "model": model_identity(model_cfg),
            "weights": weights if weights is not None else weights_identity(model_cfg),
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


# --------------------------------------------------------------------------------------------
# Ranks: who scores what (prefalign.core.ranks)


def _wants_several_processes(kwargs: Mapping[str, Any]) -> bool:
    devices = kwargs.get("devices", 1)
    if isinstance(devices, str):
        devices = devices.strip()
        if devices in ("-1", "auto"):
            return True  # all visible devices: let Lightning decide how many processes
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    n = len(devices) if isinstance(devices, Sequence) else int(devices)
    return n * int(kwargs.get("num_nodes", 1) or 1) > 1


# --------------------------------------------------------------------------------------------
# Lightning predict over a plan of shards


class PlanBatchSampler(Sampler[list[int]]):
    """Batches of this rank's shards (rank ``r`` of ``N`` takes shards ``r, r + N, ...``); never across shards.

    Shards hold positions in the canonical order (longest first), so batches are length-sorted.
    A rank without a shard gets one throw-away batch (``filler``): Lightning needs one per rank.
    """

    def __init__(self, plan: Sequence[Sequence[int]], batch_size: int, rank: int, world_size: int):
        self.batches = [
            list(shard[i : i + batch_size])
            for shard in list(plan)[rank::world_size]
            for i in range(0, len(shard), batch_size)
        ]
        self.filler = not self.batches
        if self.filler:
            self.batches = [[plan[0][0]]] if plan else [[0]]

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
        plan: Sequence[Sequence[int]],
        batch_size: int,
        pad_token_id: int,
        logprob_chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.dataset = dataset
        self.plan = [list(shard) for shard in plan]
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.logprob_chunk_rows = logprob_chunk_rows
        self.shard_of: dict[int, int] = {}

    def setup(self, stage: str) -> None:
        # every rank scores rank 0's plan (the process that holds the cache lock made it)
        self.plan = self.trainer.strategy.broadcast(self.plan, src=0)

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = PlanBatchSampler(self.plan, self.batch_size, trainer.global_rank, trainer.world_size)
        mine = range(trainer.global_rank, len(self.plan), trainer.world_size)
        self.shard_of = {position: k for k in mine for position in self.plan[k]}
        return DataLoader(
            self.dataset.with_format(None),
            batch_sampler=sampler,
            collate_fn=functools.partial(pad_collate, pad_token_id=self.pad_token_id),
        )

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        scores = model_sequence_logprobs(  # memory-lean: the collate's response positions only
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            self.logprob_chunk_rows,
            targets=batch_targets(batch),
        )
        return {
            "id": list(batch["id"]),
            "position": batch["position"].tolist(),
            "logp_sum": scores.sum.double().cpu().tolist(),
            "num_tokens": scores.count.cpu().tolist(),
        }

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("scoring-shards-written")


class ShardWriter(BasePredictionWriter):
    """Buffers predictions per shard of the plan and writes each finished shard atomically."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.buffers: dict[int, dict[str, list]] = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        shard = pl_module.shard_of.get(prediction["position"][0])
        if shard is None:  # a rank's throw-away batch
            return
        buffer = self.buffers.setdefault(shard, {"id": [], "logp_sum": [], "num_tokens": []})
        for key in ("id", "logp_sum", "num_tokens"):
            buffer[key].extend(prediction[key])
        if len(buffer["id"]) == len(pl_module.plan[shard]):
            write_shard(self.folder, buffer)
            del self.buffers[shard]


# --------------------------------------------------------------------------------------------
# The cache folder


def _finished(folder: Path) -> bool:
    return (folder / "meta.json").exists() and (folder / "table").exists()


def find_cached_scores(
    ds: datasets.Dataset,
    model_cfg: Mapping[str, Any],
    max_length: int,
    cache_dir: str | os.PathLike,
    tokenizer: Any | None = None,
) -> tuple[Path, bool]:
    """The cache folder for scoring ``ds`` with ``model_cfg`` and whether a finished table is there.

    The folder's name fingerprints the weights' content identity too
    (:func:`prefalign.models.identity.weights_identity`), so weights replaced in place are scored
    again. A finished table is checked to be this member's (:func:`check_cache_identity`).
    """
    if tokenizer is None:
        tokenizer = _load_member_tokenizer(model_cfg)
    weights = weights_identity(model_cfg)
    key = cache_key(data_fingerprint(ds), model_cfg, tokenizer, max_length, weights)
    folder = Path(cache_dir).expanduser() / key
    finished = _finished(folder)
    if finished:
        check_cache_identity(folder, model_cfg, weights)
    return folder, finished


def check_cache_identity(folder: Path, model_cfg: Mapping[str, Any], weights: Mapping[str, Any]) -> None:
    """Raise :class:`ScoreCacheError` naming both when the model and weights a finished cache's
    ``meta.json`` records are not ``model_cfg``'s (a cache folder copied in from another member,
    or written before prefalign recorded the weights' identity)."""
    from prefalign.models.identity import describe

    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ScoreCacheError(
            f"{meta_path}: unreadable score-cache metadata ({err}); delete {folder}"
        ) from err
    recorded_model, recorded_weights = meta.get("model"), meta.get("weights")
    current = json.loads(json.dumps(model_identity(model_cfg), default=str))
    if recorded_model != current or recorded_weights != json.loads(json.dumps(weights, default=str)):
        raise ScoreCacheError(
            f"{meta_path}: this score cache holds the scores of {recorded_model} with weights "
            f"{describe(recorded_weights)}, but the member is {current} with weights {describe(weights)}; "
            f"delete {folder} to score again"
        )


def _load_member_tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    return load_tokenizer(
        resolve_model_path(model_cfg),
        revision=model_cfg.get("revision"),
        chat_template=model_cfg.get("chat_template"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        gguf_file=model_cfg.get("gguf_file"),
    )


def load_score_table(folder: Path) -> ScoreTable:
    """Read and check a finished score table from its cache folder.

    Raises :class:`ScoreCacheError` naming the file when ``meta.json`` or ``table/`` is unreadable,
    the table's content hash or row count differs from ``meta.json``, or a row is not a possible
    score (non-finite, ``num_tokens <= 0``, log-prob sum above 0, duplicate id). Delete the folder
    to score again.
    """
    folder = Path(folder)
    meta_path, table_dir = folder / "meta.json", folder / "table"
    advice = f"delete {folder} to score again"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ScoreCacheError(f"{meta_path}: unreadable score-cache metadata ({err}); {advice}") from err
    try:
        table = datasets.load_from_disk(str(table_dir))
        arrow = table.data.table
        arrow.validate(full=True)
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many types; all mean "unreadable"
        raise ScoreCacheError(
            f"{table_dir}: unreadable score table ({type(err).__name__}: {err}); {advice}"
        ) from err
    check_scores(arrow, str(table_dir))
    if "num_scored" in meta and len(table) != meta["num_scored"]:
        raise ScoreCacheError(
            f"{table_dir}: {len(table)} rows, {meta_path} recorded {meta['num_scored']}; {advice}"
        )
    recorded = meta.get("table_sha256")
    if recorded is not None:
        actual = table_digest(table_dir)
        if actual != recorded:
            raise ScoreCacheError(
                f"{table_dir}: the score table's content differs from what {meta_path} recorded "
                f"(sha256 {actual[:12]}... != {recorded[:12]}...): corrupt or modified; {advice}"
            )
    drops = DropReport(total=meta["num_samples"])
    for reason, n in meta.get("dropped", {}).items():
        drops.counts[reason] = n
    drops.examples = {k: list(v) for k, v in meta.get("dropped_examples", {}).items()}
    return ScoreTable(table, folder, cache_hit=True, drops=drops)


def _canonical_order(tokenised: datasets.Dataset) -> list[int]:
    """Positions longest first, ties by id: the same order for any order of the input."""
    ids, lengths = tokenised["id"], tokenised["length"]
    return sorted(range(len(ids)), key=lambda p: (-lengths[p], ids[p]))


def _make_plan(
    folder: Path, tokenised: datasets.Dataset, shard_size: int, world: int
) -> tuple[list[Path], list[list[int]]]:
    """(valid shard files to reuse, shards still to score as canonical-order positions)."""
    ids = tokenised["id"]
    expected = set(ids)
    reuse, scored = [], set()
    for path in sorted((folder / "shards").glob("shard-*.parquet")):
        table = read_shard(path, expected)
        if table is None:
            continue
        shard_ids = set(table.column("id").to_pylist())
        if shard_ids & scored:
            log.warning("ignoring score shard %s: it overlaps shards already taken", path)
            continue
        reuse.append(path)
        scored |= shard_ids
    remaining = [p for p in _canonical_order(tokenised) if ids[p] not in scored]
    size = max(1, min(shard_size, math.ceil(len(remaining) / world)))
    return reuse, [remaining[i : i + size] for i in range(0, len(remaining), size)]


def _clean(folder: Path) -> None:
    """Remove what a writer leaves behind: shards, temporary tables and files (the lock holder only)."""
    shutil.rmtree(folder / "shards", ignore_errors=True)
    for stray in folder.glob(".table.*"):
        shutil.rmtree(stray, ignore_errors=True)
    (folder / "meta.tmp").unlink(missing_ok=True)
    for stray in folder.glob(".lock.*.tmp"):  # left by a process killed while taking the lock
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stray.stat().st_mtime > 60:
                stray.unlink()


def _finish(
    folder: Path,
    tokenised: datasets.Dataset,
    files: Sequence[Path],
    member: str,
    meta: dict[str, Any],
) -> datasets.Dataset:
    """Merge and check the shards, write ``table/`` and then ``meta.json``, remove the shards."""
    expected = set(tokenised["id"])
    tables = []
    for path in files:
        table = read_shard(path, expected)
        if table is None:
            raise ScoreCacheError(f"{path}: a score shard written by this run is missing or invalid")
        tables.append(table)
    merged = pa.concat_tables(tables) if tables else pa.table({"id": [], "logp_sum": [], "num_tokens": []})
    check_scores(merged, f"{folder} (scores of {member})")
    missing = expected - set(merged.column("id").to_pylist())
    if missing:
        raise ScoreCacheError(
            f"{folder}: {len(missing)} ids were not scored by {member}, e.g. {sorted(missing)[:5]}"
        )
    ds = datasets.Dataset(merged.replace_schema_metadata(None))
    target = folder / "table"
    tmp = Path(tempfile.mkdtemp(prefix=".table.", dir=folder))
    shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    meta = {**meta, "num_scored": len(ds), "table_sha256": table_digest(target)}
    (folder / "meta.tmp").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(folder / "meta.tmp", folder / "meta.json")
    _clean(folder)
    return ds


def _wait_for_table(folder: Path, timeout_s: float | None, poll_s: float = 0.5) -> None:
    """Wait until another rank's process has written the finished table (or its lock is gone without it)."""
    started = time.monotonic()
    while not _finished(folder):
        if not (folder / "lock").exists():
            time.sleep(poll_s)  # the holder writes meta.json before it releases the lock
            if not _finished(folder):
                raise ScoreCacheError(
                    f"{folder}: the rank writing this score cache stopped before finishing it"
                )
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise ScoreCacheError(f"{folder}: waited {timeout_s}s for rank 0 to finish this score cache")
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# Scoring


def _load_model(model_cfg: Mapping[str, Any]) -> torch.nn.Module:
    model = load_causal_lm(
        resolve_model_path(model_cfg),
        revision=model_cfg.get("revision"),
        dtype=model_cfg.get("dtype", "float32"),
        attn_implementation=model_cfg.get("attn_implementation", "sdpa"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        gguf_file=model_cfg.get("gguf_file"),
    )
    return model.requires_grad_(False)


def _one_device(kwargs: Mapping[str, Any], local_rank: int) -> dict[str, Any]:
    """Trainer arguments for one rank scoring on its own device (``cuda:<local_rank>`` or the CPU)."""
    kwargs = dict(kwargs)
    accelerator = kwargs.get("accelerator", "auto")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        kwargs.update(accelerator="cuda", devices=[local_rank % torch.cuda.device_count()])
    else:
        kwargs.update(accelerator="cpu" if accelerator in ("auto", "gpu", "cuda") else accelerator, devices=1)
    kwargs.update(strategy="auto", num_nodes=1)
    return kwargs


def _predict(
    kwargs: Mapping[str, Any], model: torch.nn.Module, module_args: dict[str, Any], folder: Path
) -> L.Trainer:
    kwargs = dict(kwargs)
    callbacks = list(kwargs.pop("callbacks", []) or [])
    trainer = L.Trainer(callbacks=[ShardWriter(folder / "shards"), *callbacks], **kwargs)
    trainer.predict(ScoringModule(model, **module_args), return_predictions=False)
    return trainer


def _under_lock(folder: Path, lock: CacheLock) -> bool:
    """Take the cache's lock unless the table is (or becomes) finished; ``True`` if there is work to do."""
    if _finished(folder):
        return False
    if not lock.acquire(until=lambda: _finished(folder)):
        return False
    if _finished(folder):  # finished between our check and taking the lock
        lock.release()
        return False
    _clean_tmp_only(folder)
    return True


def _clean_tmp_only(folder: Path) -> None:
    for stray in folder.glob(".table.*"):
        shutil.rmtree(stray, ignore_errors=True)
    for stray in (folder / "shards").glob(".*.tmp"):
        stray.unlink(missing_ok=True)


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
    lock_timeout: float | None = None,
    lock_stale_s: float = 120.0,
) -> ScoreTable:
    """Score every conversation of ``ds`` (``id`` + ``messages``) with the model of ``model_cfg``.

    In a multi-rank run every rank must call this with the same arguments (see the module
    docstring): the ranks share the work and all return the finished table.

    Args:
        ds: normalised conversations (:func:`prefalign.data.records.normalise_records`).
        model_cfg: a ``model`` config (name or tiny spec, revision, dtype, chat template...).
        max_length: tokens kept per sample, as in training; samples left without response tokens
            are not scored and are counted in ``drops``.
        cache_dir: root of the score cache.
        member / source: names used in messages and metadata.
        batch_size: sequences per forward pass.
        shard_size: samples per resumable shard (changing it between runs reuses the valid shards).
        trainer_kwargs: ``lightning.Trainer`` arguments (``accelerator``, ``devices``, ``strategy``,
            ``precision``, ``callbacks``...). Defaults to one CPU/GPU device; several devices in a
            single process make Lightning launch the ranks.
        logprob_chunk_rows: rows per log-softmax chunk (bounds memory for large vocabularies).
        lock_timeout: seconds to wait for another process writing the same cache before failing
            with a message naming the folder; ``None`` waits as long as that process is alive.
        lock_stale_s: a cache lock not refreshed for this many seconds is stale (its holder died).

    Returns:
        The table, on every rank.
    """
    tokenizer = _load_member_tokenizer(model_cfg)
    folder, finished = find_cached_scores(ds, model_cfg, max_length, cache_dir, tokenizer)
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
    job = _Job(
        ds,
        model_cfg,
        tokenizer,
        folder,
        max_length,
        member,
        source,
        batch_size,
        shard_size,
        logprob_chunk_rows,
    )
    lock = CacheLock(folder, timeout_s=lock_timeout, stale_s=lock_stale_s)

    if dist.is_available() and (dist.is_initialized() or launched_ranks() is not None):
        with process_group("gloo", timeout_s=lock_timeout or 7 * 24 * 3600) as ranks:
            return job.collective(ranks, kwargs, lock)
    if _wants_several_processes(kwargs):
        return job.lightning_launch(kwargs, lock, lock_timeout)
    if finished:
        log.info("%s on %s: cache hit at %s", member, source, folder)
        return load_score_table(folder)
    return job.collective(Ranks(), kwargs, lock)


@dataclass
class _Job:
    """One (data, model) scoring call; the two ways of running it across ranks."""

    ds: datasets.Dataset
    model_cfg: Mapping[str, Any]
    tokenizer: Any
    folder: Path
    max_length: int
    member: str
    source: str
    batch_size: int
    shard_size: int
    logprob_chunk_rows: int | None

    def tokenise(self) -> tuple[datasets.Dataset, DropReport]:
        tokenised, drops = tokenize_dataset(self.ds, self.tokenizer, self.max_length, self.source)
        return tokenised.add_column("position", list(range(len(tokenised)))), drops

    def module_args(self, tokenised: datasets.Dataset, plan: list[list[int]]) -> dict[str, Any]:
        return {
            "dataset": tokenised,
            "plan": plan,
            "batch_size": self.batch_size,
            "pad_token_id": self.tokenizer.pad_token_id,
            "logprob_chunk_rows": self.logprob_chunk_rows,
        }

    def meta(self, drops: DropReport, started: float) -> dict[str, Any]:
        return {
            "member": self.member,
            "source": self.source,
            "model": model_identity(self.model_cfg),
            "weights": weights_identity(self.model_cfg),
            "chat_template": self.tokenizer.chat_template,
            "max_length": self.max_length,
            "num_samples": drops.total,
            "dropped": dict(drops.counts),
            "dropped_examples": drops.examples,
            "seconds": time.perf_counter() - started,
            "engine": ENGINE_VERSION,
        }

    def files(
        self, reuse: Sequence[Path], tokenised: datasets.Dataset, plan: Sequence[Sequence[int]]
    ) -> list[Path]:
        ids = tokenised["id"]
        return [*reuse, *(self.folder / "shards" / shard_name([ids[p] for p in shard]) for shard in plan)]

    def log_plan(
        self, tokenised: datasets.Dataset, reuse: Sequence[Path], plan: Sequence[Sequence[int]], world: int
    ) -> None:
        log.info(
            "%s on %s: %d samples, %d valid shard(s) reused, %d sample(s) to score in %d shard(s) on %d rank(s)",
            self.member,
            self.source,
            len(tokenised),
            len(reuse),
            sum(len(s) for s in plan),
            len(plan),
            world,
        )

    def collective(self, ranks: Ranks, kwargs: Mapping[str, Any], lock: CacheLock) -> ScoreTable:
        """Rank 0 locks and plans, every rank scores its shards, rank 0 merges, every rank reads."""
        started = time.perf_counter()
        tokenised = drops = None
        decision: dict[str, Any] = {"error": None, "plan": None}
        own_error: BaseException | None = None
        if ranks.rank == 0:
            try:
                if _under_lock(self.folder, lock):
                    tokenised, drops = self.tokenise()
                    reuse, plan = _make_plan(self.folder, tokenised, self.shard_size, ranks.world)
                    self.log_plan(tokenised, reuse, plan, ranks.world)
                    decision["plan"], decision["reuse"] = plan, [str(p) for p in reuse]
            except BaseException as err:  # tell the other ranks before raising
                lock.release()
                own_error, decision["error"] = err, f"rank 0: {type(err).__name__}: {err}"
        decision = ranks.broadcast(decision)
        if own_error is not None:
            raise own_error
        if decision["error"] is not None:
            raise ScoreCacheError(f"{self.folder}: {decision['error']}")
        if decision["plan"] is None:
            log.info("%s on %s: cache hit at %s", self.member, self.source, self.folder)
            return load_score_table(self.folder)

        plan: list[list[int]] = decision["plan"]
        status = None
        try:
            if tokenised is None:
                tokenised, drops = self.tokenise()
            mine = plan[ranks.rank :: ranks.world]
            if mine:
                model = _load_model(self.model_cfg)
                device_kwargs = _one_device(kwargs, ranks.local_rank) if ranks.world > 1 else kwargs
                _predict(device_kwargs, model, self.module_args(tokenised, mine), self.folder)
        except BaseException as err:
            own_error, status = err, f"rank {ranks.rank}: {type(err).__name__}: {err}"
        failures = [s for s in ranks.gather(status) if s]
        table = None
        if ranks.rank == 0:
            try:
                if not failures:
                    files = self.files([Path(p) for p in decision["reuse"]], tokenised, plan)
                    table = _finish(self.folder, tokenised, files, self.member, self.meta(drops, started))
            except BaseException as err:
                own_error = own_error or err
                failures.append(f"rank 0: {type(err).__name__}: {err}")
            finally:
                lock.release()
        failures = ranks.broadcast(failures)
        if own_error is not None:
            raise own_error
        if failures:
            raise ScoreCacheError(f"{self.folder}: scoring {self.member} failed on another rank: {failures}")
        if table is None:
            result = load_score_table(self.folder)
            result.cache_hit = False
            return result
        log.info("%s on %s: scored %d samples -> %s", self.member, self.source, len(table), self.folder)
        return ScoreTable(table, self.folder, cache_hit=False, drops=drops)

    def lightning_launch(
        self, kwargs: Mapping[str, Any], lock: CacheLock, timeout_s: float | None
    ) -> ScoreTable:
        """Lightning's ``predict`` launches the ranks; the launching process holds the lock and merges."""
        started = time.perf_counter()
        child = lightning_child()
        if child:
            if _finished(self.folder):
                return load_score_table(self.folder)
        elif not _under_lock(self.folder, lock):
            log.info("%s on %s: cache hit at %s", self.member, self.source, self.folder)
            return load_score_table(self.folder)
        try:
            tokenised, drops = self.tokenise()
            trainer_kwargs = dict(kwargs)
            callbacks = list(trainer_kwargs.pop("callbacks", []) or [])
            trainer = L.Trainer(callbacks=[ShardWriter(self.folder / "shards"), *callbacks], **trainer_kwargs)
            reuse, plan = _make_plan(self.folder, tokenised, self.shard_size, trainer.world_size)
            if plan:
                self.log_plan(tokenised, reuse, plan, trainer.world_size)
                model = _load_model(self.model_cfg)
                trainer.predict(
                    ScoringModule(model, **self.module_args(tokenised, plan)), return_predictions=False
                )
            if child or trainer.global_rank != 0:
                _wait_for_table(self.folder, timeout_s)
                result = load_score_table(self.folder)
                result.cache_hit = False
                return result
            table = _finish(
                self.folder,
                tokenised,
                self.files(reuse, tokenised, plan),
                self.member,
                self.meta(drops, started),
            )
        finally:
            if not child:
                lock.release()
        log.info("%s on %s: scored %d samples -> %s", self.member, self.source, len(table), self.folder)
        return ScoreTable(table, self.folder, cache_hit=False, drops=drops)
