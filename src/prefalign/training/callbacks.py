"""Callbacks: W&B run id in checkpoints, data drop counts in the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

WANDB_RUN_ID_KEY = "wandb_run_id"


class WandbRunIdInCheckpoint(L.Callback):
    """Stores the W&B run id in every checkpoint, so resuming continues the same W&B run."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[WANDB_RUN_ID_KEY] = logger.version


def wandb_run_id_from_checkpoint(ckpt_path: str | Path) -> str | None:
    """The W&B run id stored in a checkpoint file (or a sharded checkpoint folder's ``meta.pt``)."""
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "meta.pt"
        if not path.exists():
            return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return checkpoint.get(WANDB_RUN_ID_KEY)


class LogDataDrops(L.Callback):
    """Logs how many samples each split kept and dropped (by reason) at the start of training."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "drop_counts"):
            return
        counts = datamodule.drop_counts()
        for logger in trainer.loggers:
            logger.log_metrics(counts, step=trainer.global_step)
        log.info("data: %s", counts)


class MetricHistograms(L.Callback):
    """Sends the per-example values of the objective's ``distribution_metrics`` (PoFT: τ, margin)
    to W&B as histograms every ``every_n_steps`` training batches (values pooled over the interval)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self.buffers: dict[str, list[torch.Tensor]] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        names = getattr(getattr(pl_module, "objective", None), "distribution_metrics", ())
        if not names or not isinstance(outputs, dict) or "metrics" not in outputs:
            return
        for name in names:
            self.buffers.setdefault(name, []).append(outputs["metrics"][name].detach().float().cpu())
        if (batch_idx + 1) % self.every_n_steps:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers and trainer.is_global_zero:
            import wandb

            payload = {
                f"train/{n}_hist": wandb.Histogram(torch.cat(v).numpy()) for n, v in self.buffers.items()
            }
            payload["trainer/global_step"] = trainer.global_step
            for logger in loggers:
                logger.experiment.log(payload)
        self.buffers = {}


class PerSampleMetrics(L.Callback):
    """Writes every training sample's values of the objective's per-example metrics (by default its
    ``distribution_metrics``: SSO's W, PoFT's τ and margin) to a JSON-lines file, one row per sample
    and epoch: ``{"epoch": <0-based>, "id": <sample id>, "<metric>": <value>, ...}``.

    The values are those of the training step that saw the sample (the policy as it was trained, so
    a sample's first-epoch W is computed by nearly the starting policy). The file is rewritten
    atomically at every epoch end and holds all finished epochs; a resumed fit keeps the rows of the
    epochs before the one it resumes. Under ``torch.distributed`` every rank's rows are gathered and
    rank 0 writes them.

    Args:
        path: the JSON-lines file (e.g. ``${paths.output_dir}/per_sample_metrics.jsonl``).
        metrics: the per-example metric names to record; ``None``: the objective's
            ``distribution_metrics``.
    """

    def __init__(self, path: str, metrics: list[str] | None = None) -> None:
        self.path = Path(path)
        self.metrics = list(metrics) if metrics is not None else None
        self.rows: list[dict[str, Any]] = []

    def _names(self, pl_module: L.LightningModule) -> list[str]:
        if self.metrics is not None:
            return self.metrics
        return list(getattr(getattr(pl_module, "objective", None), "distribution_metrics", ()))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from prefalign.core.jsonl import read_jsonl

        # a resumed fit keeps the finished epochs' rows (only rank 0 holds them: it writes the file)
        self.rows = []
        if trainer.is_global_zero and trainer.current_epoch > 0 and self.path.exists():
            self.rows = [r for r in read_jsonl(self.path) if r["epoch"] < trainer.current_epoch]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        names = self._names(pl_module)
        if not names or not isinstance(outputs, dict) or "metrics" not in outputs:
            return
        ids = [str(i) for i in batch["id"]]
        columns = {}
        for name in names:
            value = outputs["metrics"].get(name)
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or len(value) != len(ids):
                raise ValueError(
                    f"config key `callbacks.per_sample_metrics.metrics`: {name!r} is not a per-example "
                    f"metric of {type(pl_module.objective).__name__} (one value per sample of the batch, "
                    f"{len(ids)} here); its per-example metrics: "
                    f"{sorted(k for k, v in outputs['metrics'].items() if v.dim() == 1 and len(v) == len(ids))}"
                )
            columns[name] = value.detach().float().cpu().tolist()
        epoch = trainer.current_epoch
        for k, sample_id in enumerate(ids):
            self.rows.append({"epoch": epoch, "id": sample_id, **{n: v[k] for n, v in columns.items()}})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from prefalign.core.jsonl import write_jsonl

        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            epoch = trainer.current_epoch
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, [r for r in rows if r["epoch"] == epoch])
            if trainer.is_global_zero:  # earlier epochs as gathered before, this one from every rank
                rows = [r for r in rows if r["epoch"] < epoch] + [r for part in gathered for r in part]
                self.rows = rows
        if trainer.is_global_zero:
            write_jsonl(self.path, rows)


class ExportHF(L.Callback):
    """Writes the trained model (and the data module's tokenizer) in Hugging Face format at the end
    of fit, and with ``every_n_epochs`` also after every n-th epoch.

    Layout (:func:`prefalign.training.checkpointing.write_hf_export`)::

        <dirpath>/                   the final model alone: AutoModelForCausalLM / vLLM / lm-eval load
                                     it, and it uploads to the Hub as it is
        <dirpath>/adapter/           LoRA runs only: the adapter alone (<dirpath>/ holds it merged)
        <epochs_dirpath>/epoch_<e>/  every_n_epochs > 0: the model after epoch e (same layout); e is
                                     0-based like the checkpoints, epoch_000 = checkpoints/epoch_000.ckpt

    Every folder is written to a temporary folder beside it, with ``checksums.sha256.json`` (size
    and SHA-256 of every file, checked before the folder is loaded:
    :func:`prefalign.core.checksums.verify_checksums`), and renamed when complete, only from finite
    weights (:func:`prefalign.training.guards.check_finite_weights`), by global rank 0 (under DDP); sharded
    models (FSDP, FSDP2) are gathered into a full state dict on the CPU first, on every rank.
    ``generation_config.json`` stops generation at the chat template's end-of-turn token as well
    as at the model's EOS. The folder loads with ``model=hf model.name_or_path=<dirpath>``: the next
    stage of a pipeline (the next SSO iteration's policy and reference, PoFT -> DPO) starts from it.

    A run killed while writing the final export leaves its finished ``last.ckpt`` and a temporary
    ``.<name>.*.tmp`` folder: the rerun with ``ckpt_path=auto`` trains nothing more, removes the
    temporary folders (those of per-epoch exports too) and writes the export from the checkpoint
    (:meth:`on_fit_end`).

    Args:
        dirpath: the final export's folder (the run's ``hf/``).
        every_n_epochs: also export after every n-th training epoch to ``<epochs_dirpath>/epoch_<e>``
            (0: the final export only).
        epochs_dirpath: where the per-epoch exports go, beside the final one (the run's
            ``hf_epochs/``); ``None``: ``<dirpath>_epochs``.
        dtype: the exported weights' dtype (``bfloat16``: what the Hub and vLLM expect of a 7-8B
            model, half the size of fp32 master weights); ``None``: the trained weights' dtype.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_epochs: int = 0,
        epochs_dirpath: str | None = None,
        dtype: str | None = None,
    ) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(
                f"callbacks.hf_export.every_n_epochs must be an integer >= 0 (0: final export only), "
                f"got {every_n_epochs!r}"
            )
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.epochs_dirpath = epochs_dirpath if epochs_dirpath is not None else f"{dirpath}_epochs"
        from prefalign.models.loading import DTYPES

        if dtype is not None and dtype not in DTYPES:
            raise ValueError(
                f"callbacks.hf_export.dtype must be one of {sorted(DTYPES)} or null, got {dtype!r}"
            )
        self.dtype = dtype
        self._final_written = False  # the final export was written by this fit

    def epoch_dirpath(self, epoch: int) -> Path:
        """Where the export after (0-based) ``epoch`` goes: ``<epochs_dirpath>/epoch_<epoch:03d>``."""
        return Path(self.epochs_dirpath) / f"epoch_{epoch:03d}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every_n_epochs or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.export(trainer, pl_module, self.epoch_dirpath(trainer.current_epoch))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._final_written = False
        if not trainer.is_global_zero:
            return
        import shutil

        final, epochs = Path(self.dirpath), Path(self.epochs_dirpath)
        strays = [*final.parent.glob(f".{final.name}.*.tmp"), *epochs.glob(".epoch_*.tmp")]
        for stray in sorted(strays):  # a killed export's temporary folders
            log.warning("removing %s, left by an export that was stopped", stray)
            shutil.rmtree(stray, ignore_errors=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, Path(self.dirpath))
        self._final_written = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A fit resumed from a finished checkpoint trains nothing and never reaches ``on_train_end``:
        if the final export is missing or damaged (a run killed while exporting), write it now from
        the checkpoint's weights."""
        from prefalign.core.checksums import verify_checksums

        if self._final_written or not trainer.fit_loop.done:
            return
        final = Path(self.dirpath)
        try:
            complete = verify_checksums(final)
            problem = "it has no checksum record (written by an older prefalign, or never)"
        except ValueError as err:  # CorruptArtefactError
            complete, problem = False, str(err)
        if complete:
            return
        log.warning(
            "training had already finished (global step %d) but the export %s is %s: exporting now",
            trainer.global_step,
            final,
            "missing" if not final.exists() else f"incomplete ({problem})",
        )
        self.export(trainer, pl_module, final)
        self._final_written = True

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, dirpath: Path) -> None:
        """Write the model to ``dirpath`` (called on every rank: the finiteness check and the
        gathering of shards are collective; rank 0 writes)."""
        from prefalign.core.checksums import write_checksums
        from prefalign.training.checkpointing import atomic_folder, write_hf_export
        from prefalign.training.guards import check_finite_weights

        model = pl_module.model
        # parameter names as in checkpoints (model.<...>), so every non-finite error reads alike
        check_finite_weights(trainer, pl_module.named_parameters(), f"the Hugging Face export to {dirpath}")
        state_dict = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if trainer.is_global_zero:
            with atomic_folder(dirpath) as tmp:  # never half an export under the final name
                write_hf_export(
                    model, getattr(trainer.datamodule, "tokenizer", None), tmp, state_dict, dtype=self.dtype
                )
                write_checksums(tmp)  # published with the files; checked before the folder is loaded
            log.info("exported the model to %s", dirpath)
        trainer.strategy.barrier()


class GenerationEval(L.Callback):
    """Generates answers to held-out prompts at the end of every ``every_n_epochs`` training epochs
    and logs a metric of them (the CPU studies' exact match, per epoch, as the papers evaluate).

    The prompts are the records of a JSON-lines file: each answers its ``messages`` up to the last
    assistant turn (or its ``prompt`` as one user turn; :func:`prefalign.core.chat.prompt_messages`), with the data module's tokenizer and chat
    template, by :class:`prefalign.generation.sampling.HFGenerator` (greedy by default). ``metric``
    takes ``(records, responses)`` and returns a number or a mapping of numbers (nested mappings
    are flattened with ``/``), logged as ``<prefix>/<key>`` against the epoch, e.g.
    ``val/exact_match`` from :func:`prefalign.worlds.verifiable.exact_match_report`. The responses of
    every evaluation are written to ``<output_dir>/epoch_<e>.jsonl`` (``id``, ``response``).

    Args:
        path: the JSON-lines file of held-out records.
        metric: a callable, or its dotted import path.
        limit: first ``limit`` records only (null: all).
        every_n_epochs: evaluate after every n-th epoch (and never inside sanity checks).
        max_new_tokens / temperature / top_p / batch_size / seed: generation settings
            (:class:`prefalign.generation.sampling.SamplingConfig`; temperature 0 is greedy).
        prefix: the logged keys' prefix.
        output_dir: where the responses go (null: not written).

    Generation runs on global rank 0 with the unsharded module; sharded strategies (FSDP, FSDP2)
    are refused at fit start.
    """

    def __init__(
        self,
        path: str,
        metric: Any,
        limit: int | None = None,
        every_n_epochs: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        seed: int = 0,
        prefix: str = "val",
        output_dir: str | None = None,
    ) -> None:
        from hydra.utils import get_method

        from prefalign.core.errors import DataError
        from prefalign.core.jsonl import iter_jsonl

        self.metric = get_method(metric) if isinstance(metric, str) else metric
        self.records: list[dict[str, Any]] = []
        for line_number, record in iter_jsonl(path):
            if not record.get("messages") and not record.get("prompt"):
                raise DataError(f"{path}, line {line_number}: a record needs `messages` or `prompt`")
            self.records.append(record)
            if limit is not None and len(self.records) >= limit:
                break
        if not self.records:
            raise DataError(f"{path}: no records to evaluate on")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.path = path
        self.every_n_epochs = every_n_epochs
        self.sampling = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
            seed=seed,
        )
        self.prefix = prefix
        self.output_dir = Path(output_dir) if output_dir else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = type(trainer.strategy).__name__
        if "FSDP" in name or "ModelParallel" in name:
            raise ValueError(f"GenerationEval needs an unsharded model; the strategy is {name}")

    def evaluate(self, model: Any, tokenizer: Any) -> tuple[dict[str, float], list[str]]:
        """The flattened metric of ``model``'s responses to the records, and the responses."""
        from prefalign.generation.sampling import HFGenerator

        return self.evaluate_with(HFGenerator(model, tokenizer))

    def evaluate_with(self, generator: Any, desc: str | None = None) -> tuple[dict[str, float], list[str]]:
        """:meth:`evaluate` with any sampler (:class:`prefalign.generation.sampling.Generator`,
        e.g. the SSO pipeline's vLLM engine serving π_i); ``desc`` labels a progress bar over the
        records (None: none, as inside the Trainer, whose own bar is showing)."""
        from prefalign.core.chat import prompt_messages
        from prefalign.generation.sampling import SamplingConfig, labelled

        conversations = [prompt_messages(r) for r in self.records]
        label = labelled(generator, desc) if desc is not None else {}
        generations = generator.generate(conversations, SamplingConfig(**self.sampling), **label)
        responses = [g.text for g in generations]
        return _flatten(self.metric(self.records, responses)), responses

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if trainer.is_global_zero:
            values, responses = self.evaluate(pl_module.model, trainer.datamodule.tokenizer)
            epoch = trainer.current_epoch
            for logger in trainer.loggers:
                logger.log_metrics(
                    {f"{self.prefix}/{k}": v for k, v in values.items()} | {"epoch": epoch},
                    step=trainer.global_step,
                )
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in values.items() if "/" not in k})
            if self.output_dir is not None:
                from prefalign.core.jsonl import write_jsonl

                write_jsonl(
                    self.output_dir / f"epoch_{epoch:03d}.jsonl",
                    (
                        {"id": record.get("id"), "response": response}
                        for record, response in zip(self.records, responses, strict=True)
                    ),
                )
        trainer.strategy.barrier()


def _flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """``{"a": 1, "b": {"c": 2}}`` -> ``{"a": 1.0, "b/c": 2.0}``; a bare number becomes ``{"metric": x}``."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping):
        return {prefix or "metric": float(value)}
    flat: dict[str, float] = {}
    for key, item in value.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(item, Mapping):
            flat.update(_flatten(item, name))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            flat[name] = float(item)
    return flat
