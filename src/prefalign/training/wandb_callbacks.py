"""W&B views of PoFT training beyond scalar curves: a table of samples and aligned-score histograms.

- :class:`SampleTable` logs a ``wandb.Table`` of training samples every ``every_n_steps``
  batches: prompt, response, each aligned member's score, the aggregate, r_θ, τ, the margin and
  the noise flag where the data has one (PoFT paper eq. 6–9: which samples the soft filter weighs
  down, and why).
- :class:`AlignedScoreHistograms` logs, once at the start of fit, histograms of the training
  split's aligned scores (the aggregate and each member's; clean and noise samples apart when
  the data has a ``noise`` column): PoFT paper Figures 2 and 3d for the run's own data.

Both do nothing without a W&B logger (e.g. ``logger=csv``), and both work with W&B offline. The
metric keys they log are listed in ``notebooks/wandb_dashboard.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from prefalign.data.chat import IGNORE_INDEX

log = logging.getLogger(__name__)

# Batch columns shown in the sample table and histograms: each member's score and the aggregate.
SCORE_COLUMN_PATTERNS = ("score_*", "aligned_score")


def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []


def _score_columns(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Columns matching ``patterns``: members' ``score_*`` (sorted), then ``aligned_score``."""
    members = sorted(n for n in names if any(fnmatch(n, p) for p in patterns) and n != "aligned_score")
    return members + (["aligned_score"] if "aligned_score" in names and "aligned_score" in patterns else [])


def split_prompt_response(
    input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[list[int], list[int]]:
    """One row's prompt tokens (everything before the first trained token) and response tokens.

    The response is every trained (label) token: in a multi-turn conversation, all assistant
    turns, joined; the prompt is the context up to the first of them.
    """
    ids = input_ids[attention_mask.bool()].tolist()
    trained = (labels[attention_mask.bool()] != IGNORE_INDEX).tolist()
    first = trained.index(True) if True in trained else len(ids)
    return ids[:first], [t for t, keep in zip(ids, trained, strict=True) if keep]


class SampleTable(L.Callback):
    """Logs a W&B table of training samples with their aligned scores, r_θ and τ.

    Every ``every_n_steps`` training batches (counted across epochs), the first ``max_rows``
    samples of that batch become rows of a ``wandb.Table`` logged under ``key`` with
    ``trainer/global_step``. Columns: ``step``, ``id``, ``prompt``, ``response`` (decoded with the
    data module's tokenizer, cut to ``max_chars`` characters each), ``score_<member>`` and
    ``aligned_score`` (batch columns, when the objective reads aligned scores), every per-example
    metric the objective returns (PoFT: ``r_theta``, ``tau``, ``margin``, ``ce``; ``r_agg`` is left
    out as it equals ``aligned_score``) and ``noise`` where the data has that column.

    One-sequence batches only (CE, PoFT, bi-PoFT); other batch shapes are skipped with a warning.

    Args:
        every_n_steps: training batches between tables.
        max_rows: samples per table (from the current batch).
        max_chars: characters kept of each prompt and response (the start of the prompt is cut,
            so its end — the question just before the response — stays visible).
        key: the W&B key of the table.
    """

    def __init__(
        self, every_n_steps: int = 200, max_rows: int = 16, max_chars: int = 2000, key: str = "train/samples"
    ) -> None:
        if every_n_steps < 1 or max_rows < 1 or max_chars < 1:
            raise ValueError(
                "callbacks.sample_table: every_n_steps, max_rows and max_chars must be >= 1, got "
                f"{every_n_steps}, {max_rows}, {max_chars}"
            )
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows
        self.max_chars = max_chars
        self.key = key
        self.batches_seen = 0
        self._warned = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches_seen += 1
        if self.batches_seen % self.every_n_steps:
            return
        loggers = _wandb_loggers(trainer)
        if not loggers:
            return
        if not isinstance(batch, Mapping) or not {"input_ids", "labels", "attention_mask"} <= set(batch):
            if not self._warned:
                log.warning("sample table: batches are not one sequence per sample; no table is logged")
                self._warned = True
            return
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("sample table: the data module has no `tokenizer` to decode samples with")
        columns, data = self.rows(
            batch,
            outputs.get("metrics", {}) if isinstance(outputs, Mapping) else {},
            tokenizer,
            trainer.global_step,
        )
        import wandb

        for logger in loggers:
            logger.experiment.log(
                {
                    self.key: wandb.Table(columns=columns, data=data),
                    "trainer/global_step": trainer.global_step,
                }
            )

    def rows(
        self, batch: Mapping[str, Any], metrics: Mapping[str, torch.Tensor], tokenizer: Any, step: int
    ) -> tuple[list[str], list[list[Any]]]:
        """The table's columns and rows for one batch (see the class docstring)."""
        size = len(batch["id"])
        scores = _score_columns(
            [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 1], SCORE_COLUMN_PATTERNS
        )
        per_example = [
            name
            for name, value in metrics.items()
            if torch.is_tensor(value)
            and value.dim() == 1
            and len(value) == size
            and name not in ("noise",)
            and not (name == "r_agg" and "aligned_score" in scores)
        ]
        has_noise = torch.is_tensor(batch.get("noise"))
        columns = ["step", "id", "prompt", "response", *scores, *per_example] + (
            ["noise"] if has_noise else []
        )
        data = []
        for row in range(min(size, self.max_rows)):
            prompt_ids, response_ids = split_prompt_response(
                batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
            )
            prompt = tokenizer.decode(prompt_ids)
            response = tokenizer.decode(response_ids)
            values: list[Any] = [
                step,
                str(batch["id"][row]),
                prompt[-self.max_chars :],
                response[: self.max_chars],
            ]
            values += [float(batch[c][row]) for c in scores]
            values += [float(metrics[m][row]) for m in per_example]
            if has_noise:
                values.append(bool(batch["noise"][row]))
            data.append(values)
        return columns, data


class AlignedScoreHistograms(L.Callback):
    """Histograms of the training split's aligned scores, logged to W&B once at the start of fit.

    Logs ``data/<column>_hist`` for the aggregate (``aligned_score``) and each member
    (``score_<member>``) over the whole training split, and, when the data has a ``noise`` column
    with noise samples, ``data/<column>_clean_hist`` and ``data/<column>_noise_hist``. Nothing is
    logged when the training data has no aligned scores (e.g. CE runs).

    Args:
        columns: glob patterns of the score columns to plot.
        num_bins: histogram bins (W&B allows at most 512).
    """

    def __init__(self, columns: Sequence[str] = SCORE_COLUMN_PATTERNS, num_bins: int = 64) -> None:
        if not 1 <= num_bins <= 512:
            raise ValueError(
                f"callbacks.aligned_score_histograms.num_bins must be in [1, 512], got {num_bins}"
            )
        self.columns = tuple(columns)
        self.num_bins = num_bins

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = _wandb_loggers(trainer)
        datasets = getattr(trainer.datamodule, "datasets", None)
        if not loggers or not isinstance(datasets, Mapping) or "train" not in datasets:
            return
        payload = self.histograms(datasets["train"])
        if not payload:
            return
        payload["trainer/global_step"] = trainer.global_step
        for logger in loggers:
            logger.experiment.log(payload)

    def histograms(self, dataset: Any) -> dict[str, Any]:
        """``data/<column>[_clean|_noise]_hist`` -> ``wandb.Histogram`` for a training dataset."""
        import numpy as np
        import wandb

        names = _score_columns(list(dataset.column_names), self.columns)
        noise = np.asarray(dataset["noise"], dtype=bool) if "noise" in dataset.column_names else None
        payload: dict[str, Any] = {}
        for name in names:
            values = np.asarray(dataset[name], dtype=np.float64)
            payload[f"data/{name}_hist"] = wandb.Histogram(values, num_bins=self.num_bins)
            if noise is not None and noise.any():
                for label, mask in (("clean", ~noise), ("noise", noise)):
                    if mask.any():
                        payload[f"data/{name}_{label}_hist"] = wandb.Histogram(
                            values[mask], num_bins=self.num_bins
                        )
        return payload
