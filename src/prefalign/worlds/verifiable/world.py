"""The verifiable instruction world's data: conversations, preference pairs and SSO prompts.

:func:`generate_world` mixes the task families of :mod:`prefalign.worlds.verifiable.tasks`, with a
share of two-turn conversations whose second question depends on the first answer ("Now add 3 to
that."). Records follow the project's record format: ``{"id", "messages", "task", "answer"}``
(plus ``first_task`` / ``followup``); the chat and preference data modules keep the extra string
columns. :func:`write_world` writes the train / val / test splits as JSON-lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefalign.core.jsonl import write_jsonl
from prefalign.worlds.verifiable.mistakes import wrong_answer
from prefalign.worlds.verifiable.tasks import MULTI_TURN, draws, follow_up


def generate_world(
    n: int,
    seed: int = 0,
    families: Sequence[str | Any] | None = None,
    multi_turn_rate: float = 0.2,
    id_prefix: str = "vw",
) -> Iterator[dict]:
    """Yield ``n`` conversations, deterministically for a given ``seed``.

    Args:
        families: family names (keys of :data:`FAMILIES`) or family objects; default: all, drawn
            uniformly.
        multi_turn_rate: probability that a conversation has two turns: a question from
            ``families``, its correct answer, then a follow-up (:func:`follow_up`) whose answer
            is the record's ``answer``.
        id_prefix: ids are ``<id_prefix>-<seed>-<index>``.

    Yields:
        ``{"id", "messages", "task", "answer", "first_task", "followup"}``; ``task`` is the family
        name, or ``multi_turn`` (then ``first_task`` names the first question's family and
        ``followup`` the follow-up; both are "" for one-turn records).
    """
    if not 0.0 <= multi_turn_rate <= 1.0:
        raise ValueError(f"multi_turn_rate must be in [0, 1], got {multi_turn_rate}")
    for index, task, rng in draws(n, seed, families):
        messages = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.response}]
        record = {"id": f"{id_prefix}-{seed}-{index}", "task": task.family, "first_task": "", "followup": ""}
        if rng.random() < multi_turn_rate:
            second = follow_up(task, rng)
            messages += [
                {"role": "user", "content": second.prompt},
                {"role": "assistant", "content": second.response},
            ]
            record.update(task=MULTI_TURN, first_task=task.family, followup=second.family)
            task = second
        yield {**record, "messages": messages, "answer": task.answer}


def generate_preferences(
    n: int, seed: int = 0, families: Sequence[str | Any] | None = None, id_prefix: str = "vp"
) -> Iterator[dict]:
    """Yield ``n`` preference records: ``prompt``, ``chosen`` (correct), ``rejected`` (:func:`wrong_answer`)."""
    for index, task, rng in draws(n, seed, families):
        yield {
            "id": f"{id_prefix}-{seed}-{index}",
            "prompt": task.prompt,
            "chosen": task.response,
            "rejected": wrong_answer(task, rng),
            "task": task.family,
            "answer": task.answer,
        }


def prompt_set(
    n: int, seed: int = 0, families: Sequence[str | Any] | None = None, id_prefix: str = "vq"
) -> Iterator[dict]:
    """Yield ``n`` one-turn prompts for the SSO pipeline: ``{"id", "prompt", "answer", "task"}``."""
    for index, task, _ in draws(n, seed, families):
        yield {
            "id": f"{id_prefix}-{seed}-{index}",
            "prompt": task.prompt,
            "answer": task.answer,
            "task": task.family,
        }


def write_world(
    out_dir: str | Path,
    train: int = 4000,
    val: int = 200,
    test: int = 500,
    seed: int = 0,
    families: Sequence[str] | None = None,
    multi_turn_rate: float = 0.2,
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (seeds ``seed``, ``seed+1``, ``seed+2``).

    The splits are independent draws from the same distribution; the small families (20 words,
    25 letters) have few distinct prompts, so test prompts also occur in training.
    """
    out = Path(out_dir)
    return {
        split: write_jsonl(
            out / f"{split}.jsonl", generate_world(size, seed + offset, families, multi_turn_rate)
        )
        for offset, (split, size) in enumerate((("train", train), ("val", val), ("test", test)))
    }
