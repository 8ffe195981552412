"""Principle-conditioned SFT data for the CPU SSO study.

A one-feature principles file (``src/prefalign/data/bundled/principles_correctness.yaml``) gives a
good and a bad system message; :func:`principle_conditioned_sft` teaches a model to follow either
(and to answer without one), :func:`write_principled` writes the study's files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefalign.core.chat import prompt_messages
from prefalign.core.jsonl import write_jsonl
from prefalign.worlds.verifiable.mistakes import wrong_answer
from prefalign.worlds.verifiable.tasks import draws
from prefalign.worlds.verifiable.world import generate_world, prompt_set

CONDITIONS = ("good", "bad", "none")


def principle_system_messages(path: str | Path, feature: str | None = None) -> tuple[str, str]:
    """The (good, bad) system messages that the SSO pipeline builds for ``feature`` of a principles file.

    ``feature`` may be left out when the file has exactly one feature.
    """
    from prefalign.generation.principles import load_principles, principle_system_message

    principles = load_principles(path)
    if feature is None:
        if len(principles) != 1:
            raise ValueError(f"{path}: name one of its features {sorted(principles)}")
        feature = next(iter(principles))
    principle = principles[feature]
    return principle_system_message(principle, True), principle_system_message(principle, False)


def principle_conditioned_sft(
    n: int,
    seed: int,
    good_system: str,
    bad_system: str,
    none_correct_rate: float = 0.5,
    families: Sequence[str | Any] | None = None,
    condition_weights: Sequence[float] = (1.0, 1.0, 1.0),
    id_prefix: str = "vs",
) -> Iterator[dict]:
    """SFT conversations teaching a model to follow a correctness principle (and its opposite).

    Each record draws a condition (``good``, ``bad``, ``none`` with ``condition_weights``): the
    ``good_system`` message and a correct answer; the ``bad_system`` message and a wrong answer
    (:func:`wrong_answer`); or no system message and a correct answer with probability
    ``none_correct_rate``, else a wrong one. One-turn only, like the SSO prompt set.

    Yields:
        ``{"id", "messages", "task", "answer", "condition", "correct"}`` (``answer`` is the gold
        answer even when the response is wrong).
    """
    if len(condition_weights) != len(CONDITIONS):
        raise ValueError(f"condition_weights needs {len(CONDITIONS)} weights (good, bad, none)")
    for index, task, rng in draws(n, seed, families):
        condition = rng.choices(CONDITIONS, weights=condition_weights)[0]
        correct = condition == "good" or (condition == "none" and rng.random() < none_correct_rate)
        messages = []
        if condition != "none":
            messages.append({"role": "system", "content": good_system if condition == "good" else bad_system})
        messages += [
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": task.response if correct else wrong_answer(task, rng)},
        ]
        yield {
            "id": f"{id_prefix}-{seed}-{index}",
            "messages": messages,
            "task": task.family,
            "answer": task.answer,
            "condition": condition,
            "correct": correct,
        }


def condition_messages(
    record: Mapping[str, Any], condition: str, good_system: str, bad_system: str
) -> list[dict]:
    """The prompt of a one-turn record under a condition (``good``, ``bad`` or ``none`` system message)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    user = [m for m in prompt_messages(record) if m["role"] == "user"][-1:]
    if condition == "none":
        return user
    return [{"role": "system", "content": good_system if condition == "good" else bad_system}, *user]


def write_principled(
    out_dir: str | Path,
    principles: str | Path,
    train: int = 4000,
    val: int = 200,
    test: int = 300,
    prompts: int = 600,
    seed: int = 0,
    none_correct_rate: float = 0.5,
    families: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write principle-conditioned SFT splits and the SSO prompt set for a one-feature principles file.

    Files: ``principled_{train,val}.jsonl`` (:func:`principle_conditioned_sft`), ``test.jsonl``
    (one-turn world records without a system message), ``test_good.jsonl`` / ``test_bad.jsonl``
    (the same records with the good / bad principle as system message) and ``prompts.jsonl``
    (:func:`prompt_set`).
    """
    good, bad = principle_system_messages(principles)
    out = Path(out_dir)
    test_records = list(generate_world(test, seed + 2, families, 0.0))

    def sft(size: int, offset: int) -> Iterator[dict]:
        return principle_conditioned_sft(size, seed + offset, good, bad, none_correct_rate, families)

    def under(condition: str) -> list[dict]:
        return [
            {**r, "messages": [*condition_messages(r, condition, good, bad), r["messages"][-1]]}
            for r in test_records
        ]

    return {
        "train": write_jsonl(out / "principled_train.jsonl", sft(train, 0)),
        "val": write_jsonl(out / "principled_val.jsonl", sft(val, 1)),
        "test": write_jsonl(out / "test.jsonl", test_records),
        "test_good": write_jsonl(out / "test_good.jsonl", under("good")),
        "test_bad": write_jsonl(out / "test_bad.jsonl", under("bad")),
        "prompts": write_jsonl(out / "prompts.jsonl", prompt_set(prompts, seed + 3, families)),
    }
