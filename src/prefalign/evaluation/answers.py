"""Answers for judge-based benchmarks, in the files their judges read.

- MT-Bench (FastChat ``llm_judge``): questions ``{question_id, category, turns: [...]}`` one per line;
  the second turn is asked after the model's own first answer. Answers go to
  ``model_answer/<model_id>.jsonl``, one line per question:
  ``{question_id, answer_id, model_id, choices: [{index: 0, turns: [...]}], tstamp}``, which
  FastChat's ``gen_judgment.py --model-list <model_id>`` reads.
- AlpacaEval 2.0 (``alpaca_eval``): prompts ``[{instruction, ...}]``; outputs are the same records
  with ``output`` (the answer) and ``generator`` (the model's name) set -- other fields such as
  ``dataset`` are kept -- for ``alpaca_eval --model_outputs <file>``.

Prompts are rendered with the model's own chat template (:class:`~prefalign.generation.sampling.HFGenerator`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from prefalign.core.errors import DataError
from prefalign.core.jsonl import iter_jsonl, read_jsonl, write_json, write_jsonl
from prefalign.evaluation.harness import EvalConfigError
from prefalign.generation.sampling import Generation, Generator, SamplingConfig, labelled

log = logging.getLogger(__name__)
MODEL_ID = re.compile(r"^[A-Za-z0-9._-]+$")  # a model id names answer files

# FastChat's sampling temperature per MT-Bench category (fastchat/llm_judge/common.py); 0 is greedy.
MT_BENCH_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}


def load_mt_bench_questions(path: str | Path) -> list[dict[str, Any]]:
    """Read an MT-Bench question file (JSON lines of ``{question_id, category, turns}``).

    Raises:
        EvalConfigError: a missing file, bad JSON, a missing field, an empty turn, or a repeated id,
            naming the file and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalConfigError(f"MT-Bench question file {path} does not exist")
    questions, seen = [], set()
    try:
        numbered = list(iter_jsonl(path))
    except DataError as error:
        raise EvalConfigError(str(error)) from error
    for number, question in numbered:
        where = f"{path}, line {number}"
        if "question_id" not in question:
            raise EvalConfigError(f"{where}: an MT-Bench question needs a question_id")
        turns = question.get("turns")
        if (
            not isinstance(turns, list)
            or not turns
            or not all(isinstance(t, str) and t.strip() for t in turns)
        ):
            raise EvalConfigError(f"{where}: `turns` must be a non-empty list of non-empty strings")
        if question["question_id"] in seen:
            raise EvalConfigError(f"{where}: question_id {question['question_id']!r} appears twice")
        seen.add(question["question_id"])
        questions.append(question)
    if not questions:
        raise EvalConfigError(f"MT-Bench question file {path} has no questions")
    return questions


def mt_bench_answers(
    generator: Generator,
    questions: Sequence[Mapping[str, Any]],
    model_id: str,
    sampling: SamplingConfig,
    temperatures: Mapping[str, float] = MT_BENCH_TEMPERATURES,
) -> tuple[list[dict[str, Any]], list[Generation]]:
    """Answer every turn of every question, each turn after the model's previous answers.

    Turn ``t`` of all questions is generated in batches, one batch group per sampling temperature:
    ``temperatures[category]``, else ``sampling.temperature``; the other settings come from
    ``sampling``. Returns the FastChat answer records (in question order) and every generation
    (for truncation counts). Each batch group shows a progress bar (:mod:`prefalign.core.progress`).
    """
    conversations: list[list[dict[str, str]]] = [[] for _ in questions]
    generations: list[Generation] = []
    for turn in range(max(len(q["turns"]) for q in questions)):
        by_temperature: dict[float, list[int]] = {}
        for i, question in enumerate(questions):
            if turn < len(question["turns"]):
                temperature = float(temperatures.get(question.get("category"), sampling.temperature))
                by_temperature.setdefault(temperature, []).append(i)
        for temperature, indices in sorted(by_temperature.items()):
            for i in indices:
                conversations[i].append({"role": "user", "content": questions[i]["turns"][turn]})
            outputs = generator.generate(
                [conversations[i] for i in indices],
                replace(sampling, temperature=temperature),
                **labelled(generator, f"{model_id}: MT-Bench turn {turn + 1}, temperature {temperature}"),
            )
            for i, output in zip(indices, outputs, strict=True):
                conversations[i].append({"role": "assistant", "content": output.text})
            generations.extend(outputs)
    records = []
    for question, conversation in zip(questions, conversations, strict=True):
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        records.append(
            {
                "question_id": question["question_id"],
                "answer_id": uuid.uuid4().hex,
                "model_id": model_id,
                "choices": [{"index": 0, "turns": answers}],
                "tstamp": time.time(),
            }
        )
    return records, generations


def load_alpaca_eval_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read AlpacaEval prompts: a JSON list (``alpaca_eval.json``) or JSON lines of ``{instruction, ...}``.

    Raises:
        EvalConfigError: a missing file, bad JSON, or a record without a non-empty ``instruction``,
            naming the file and record.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalConfigError(f"AlpacaEval prompt file {path} does not exist")
    try:
        if path.suffix == ".jsonl":
            records = read_jsonl(path)
        else:
            records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvalConfigError(f"{path}: not valid JSON ({error})") from error
    except DataError as error:
        raise EvalConfigError(str(error)) from error
    if not isinstance(records, list) or not records:
        raise EvalConfigError(f"{path}: expected a non-empty list of {{instruction, ...}} records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not str(record.get("instruction") or "").strip():
            raise EvalConfigError(f"{path}: record {index} has no non-empty `instruction`")
    return records


def alpaca_eval_outputs(
    generator: Generator, prompts: Sequence[Mapping[str, Any]], model_id: str, sampling: SamplingConfig
) -> tuple[list[dict[str, Any]], list[Generation]]:
    """Answer every instruction (one user turn each); returns alpaca_eval's model outputs and the generations.

    Each output record is the prompt record with ``output`` and ``generator`` set (a reference
    model's ``output`` / ``generator`` in the prompt file are replaced). A progress bar shows over
    the prompts (:mod:`prefalign.core.progress`).
    """
    generations = generator.generate(
        [[{"role": "user", "content": p["instruction"]}] for p in prompts],
        sampling,
        **labelled(generator, f"{model_id}: AlpacaEval"),
    )
    outputs = [
        {**prompt, "output": generation.text, "generator": model_id}
        for prompt, generation in zip(prompts, generations, strict=True)
    ]
    return outputs, generations


def generation_settings(
    sampling: SamplingConfig, generations: Sequence[Generation], **extra: Any
) -> dict[str, Any]:
    """The sidecar record of an answer file: sampling settings, counts, and whatever ``extra`` names."""
    return {
        **extra,
        "sampling": asdict(sampling),
        "num_generations": len(generations),
        "hit_max_new_tokens": sum(g.hit_max_new_tokens for g in generations),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def export_answers(cfg: Any) -> dict[str, list[Path]]:
    """Generate and write the configured benchmarks' answers for the model or each epoch of the run.

    Question files, the run directory and its checkpoints are checked before any model is loaded.
    Returns the written answer files per benchmark.
    """
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
    from omegaconf import OmegaConf

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
