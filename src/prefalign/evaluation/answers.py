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
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from prefalign.core.errors import DataError
from prefalign.core.jsonl import iter_jsonl, read_jsonl
from prefalign.evaluation.harness import EvalConfigError
from prefalign.generation.sampling import Generation, Generator, SamplingConfig, labelled

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
