"""Running lm-evaluation-harness on a model, or on each epoch checkpoint of a training run, from a
``prefalign-eval`` config (:func:`evaluate`); the app composes the config and calls it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefalign.evaluation.aggregate import aggregate_epochs, markdown_table, write_summary
from prefalign.evaluation.harness import (
    HarnessSettings,
    TaskSpec,
    build_task_manager,
    run_tasks,
    task_specs,
)

log = logging.getLogger(__name__)


def harness_settings(cfg: DictConfig) -> HarnessSettings:
    """The ``lm_eval`` config section as :class:`HarnessSettings`."""
    section = cfg.lm_eval
    return HarnessSettings(
        batch_size=int(section.batch_size),
        max_length=section.max_length,
        limit=section.limit,
        apply_chat_template=bool(section.apply_chat_template),
        fewshot_as_multiturn=bool(section.fewshot_as_multiturn),
        seed=int(section.seed),
        bootstrap_iters=int(section.bootstrap_iters),
    )


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def _evaluate_loaded(
    model: Any, tokenizer: Any, name: str, specs: list[TaskSpec], manager: Any, cfg: DictConfig, out: Path
) -> dict[str, float]:
    """Run every task on the loaded model, write lm-eval's outputs, return the scaled scores."""
    scores, outputs = run_tasks(model, tokenizer, specs, manager, harness_settings(cfg))
    for label, output in outputs.items():
        _write_json(out / "lm_eval" / name / f"{label}.json", output)
    scale = float(cfg.aggregate.scale)
    return {label: score * scale for label, score in scores.items()}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured model, or each epoch of the configured run, on the configured tasks.

    Task names, the run directory and its checkpoints are checked before any model is loaded.
    Returns what ``summary.json`` (a run) or ``scores.json`` (one model) holds.
    """
    # imported here, not at the top: the app's --help / --cfg job never load torch or transformers
    from prefalign.evaluation.runs import load_checkpoint_weights, model_source
    from prefalign.models.loading import load_for_inference

    source = model_source(cfg)
    specs = task_specs(OmegaConf.to_container(cfg.tasks, resolve=True))
    manager = build_task_manager(specs, cfg.lm_eval.include_path or [])
    out = Path(cfg.paths.output_dir)
    extra = {
        **source.description,
        "task_settings": {spec.label: spec.describe() for spec in specs},
        "scale": cfg.aggregate.scale,
    }
    model, tokenizer = load_for_inference(source.model_config, str(cfg.device), setting="device")
    if not source.checkpoints:
        scores = _evaluate_loaded(model, tokenizer, source.name, specs, manager, cfg, out)
        table = markdown_table({source.name: scores}, list(scores), corner="model")
        result = {"scores": scores, **extra}
        _write_json(out / "scores.json", result)
        (out / "scores.md").write_text(table + "\n", encoding="utf-8")
        print(f"\n{table}\n")
        return result
    per_epoch = {}
    for checkpoint in source.checkpoints:
        log.info("epoch %d: %s", checkpoint.epoch, checkpoint.path)
        load_checkpoint_weights(model, checkpoint.path)
        name = f"epoch{checkpoint.epoch}"  # epoch1 = checkpoints/epoch_000.ckpt
        per_epoch[checkpoint.epoch] = _evaluate_loaded(model, tokenizer, name, specs, manager, cfg, out)
    summary = aggregate_epochs(per_epoch, skip_first=int(cfg.aggregate.skip_first))
    path = write_summary(summary, out, extra)
    print(f"\n{summary.to_markdown()}\n")
    log.info(
        "per-epoch scores, Last / Avg / Std (Avg and Std over epochs %s): %s", summary.summary_epochs, path
    )
    return {**summary.to_dict(), **extra}
