"""``prefalign-export-answers``: answers for the judge-based benchmarks (MT-Bench, AlpacaEval 2.0).

Examples::

    prefalign-export-answers                                   # the tiny model, bundled demo questions
    prefalign-export-answers model=hf model.name_or_path=<model> model_id=mistral-sft \\
        mt_bench.question_file=<FastChat>/fastchat/llm_judge/data/mt_bench/question.jsonl \\
        alpaca_eval.prompt_file=alpaca_eval.json
    prefalign-export-answers run_dir=logs/train/runs/<time> alpaca_eval=null   # MT-Bench, every epoch

Writes ``mt_bench/model_answer/<model_id>.jsonl`` (FastChat's answer format) and
``alpaca_eval/<model_id>.json`` (alpaca_eval's model outputs), each with a ``<model_id>.settings.json``
sidecar, to the run folder (``logs/export_answers/runs/<time>/``). Judge them with FastChat's
``gen_judgment.py --model-list <model_id>`` and ``alpaca_eval --model_outputs <file>``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir, register_resolvers
from prefalign.core.errors import ConfigError
from prefalign.core.jsonl import write_json, write_jsonl
from prefalign.evaluation.harness import EvalConfigError

log = logging.getLogger(__name__)
register_resolvers()
MODEL_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def export_answers(cfg: DictConfig) -> dict[str, list[Path]]:
    """Generate and write the configured benchmarks' answers for the model or each epoch of the run.

    Question files, the run directory and its checkpoints are checked before any model is loaded.
    Returns the written answer files per benchmark.
    """
    # imported here, not at the top: the app's --help / --cfg job never load torch or transformers
    from prefalign.evaluation.answers import (
        alpaca_eval_outputs,
        generation_settings,
        load_alpaca_eval_prompts,
        load_mt_bench_questions,
        mt_bench_answers,
    )
    from prefalign.evaluation.runs import load_checkpoint_weights, model_source
    from prefalign.generation.backends import build_generator
    from prefalign.generation.sampling import HFGenerator, SamplingConfig
    from prefalign.models.loading import load_for_inference

    base_id = cfg.get("model_id")
    if base_id is not None and not MODEL_ID.match(str(base_id)):
        raise EvalConfigError(
            f"config key `model_id`: {base_id!r} may only hold letters, digits, '.', '_', '-'"
        )
    mt_cfg, alpaca_cfg = cfg.get("mt_bench"), cfg.get("alpaca_eval")
    questions = load_mt_bench_questions(mt_cfg.question_file) if mt_cfg else None
    prompts = load_alpaca_eval_prompts(alpaca_cfg.prompt_file) if alpaca_cfg else None
    if questions is None and prompts is None:
        raise EvalConfigError("config keys `mt_bench` / `alpaca_eval`: both are null, nothing to answer")
    source = model_source(cfg)
    base_id = str(base_id or source.name)
    if not MODEL_ID.match(base_id):
        raise EvalConfigError(f"the model name {base_id!r} cannot name an answer file; set model_id")
    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    if generation.get("backend", "hf") == "hf":
        model, tokenizer = load_for_inference(
            source.model_config, str(generation.get("device", "auto")), setting="generation.device"
        )
        generator = HFGenerator(model, tokenizer)
    elif source.checkpoints:
        raise EvalConfigError(
            "config keys `generation.backend` / `run_dir`: vllm serves a Hugging Face model folder, not "
            "a run's epoch checkpoints; use generation=hf for a run, or export the epochs first"
        )
    else:
        generator = build_generator(generation, source.model_config, seed=int(cfg.seed))
    out = Path(cfg.paths.output_dir)
    written: dict[str, list[Path]] = {"mt_bench": [], "alpaca_eval": []}
    for checkpoint in source.checkpoints or [None]:
        model_id, about = base_id, dict(source.description)
        if checkpoint is not None:
            load_checkpoint_weights(model, checkpoint.path)
            model_id = f"{base_id}_epoch{checkpoint.epoch}"
            about = {
                "run_dir": about["run_dir"],
                "epoch": checkpoint.epoch,
                "checkpoint": str(checkpoint.path),
            }
        if questions is not None:
            sampling = SamplingConfig(
                temperature=float(mt_cfg.default_temperature),
                top_p=float(mt_cfg.top_p),
                max_new_tokens=int(mt_cfg.max_new_tokens),
                batch_size=int(cfg.batch_size),
                seed=int(cfg.seed),
            )
            temperatures = dict(mt_cfg.category_temperature or {})
            records, generations = mt_bench_answers(generator, questions, model_id, sampling, temperatures)
            path = out / "mt_bench" / "model_answer" / f"{model_id}.jsonl"
            write_jsonl(path, records)
            settings = generation_settings(
                sampling,
                generations,
                benchmark="mt_bench",
                model_id=model_id,
                question_file=str(Path(mt_cfg.question_file).expanduser().resolve()),
                category_temperature=temperatures,
                **about,
            )
            write_json(path.with_suffix(".settings.json"), settings)
            written["mt_bench"].append(path)
            log.info("MT-Bench answers of %s: %s", model_id, path)
        if prompts is not None:
            sampling = SamplingConfig(
                temperature=float(alpaca_cfg.temperature),
                top_p=float(alpaca_cfg.top_p),
                max_new_tokens=int(alpaca_cfg.max_new_tokens),
                batch_size=int(cfg.batch_size),
                seed=int(cfg.seed),
            )
            outputs, generations = alpaca_eval_outputs(generator, prompts, model_id, sampling)
            path = out / "alpaca_eval" / f"{model_id}.json"
            write_json(path, outputs)
            settings = generation_settings(
                sampling,
                generations,
                benchmark="alpaca_eval",
                model_id=model_id,
                prompt_file=str(Path(alpaca_cfg.prompt_file).expanduser().resolve()),
                **about,
            )
            write_json(path.with_suffix(".settings.json"), settings)
            written["alpaca_eval"].append(path)
            log.info("AlpacaEval outputs of %s: %s", model_id, path)
    return written


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export_answers")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``prefalign-export-answers``."""
    try:
        export_answers(cfg)
    except ConfigError as error:  # a bad setting: one clear line, no traceback
        log.error("%s", error)
        raise SystemExit(f"prefalign-export-answers: {error}") from None


if __name__ == "__main__":
    main()
