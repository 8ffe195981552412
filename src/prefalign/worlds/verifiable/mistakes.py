"""Plausible wrong answers: the rejected side of preference pairs and the "bad principle"'s answers."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from prefalign.worlds.verifiable.metric import answers_match, gold_answer
from prefalign.worlds.verifiable.tasks import LETTERS, Task, format_response


def _perturb(gold: str, rng: random.Random) -> str:
    """A generic wrong variant of ``gold``; words and lists change at their start.

    Changing the first characters (rather than a random position) makes "answer wrongly" a
    behaviour that greedy decoding can reproduce after training on such answers.
    """
    if re.fullmatch(r"\d+", gold):
        value = int(gold)
        deltas = [d for d in (-10, -2, -1, 1, 2, 10) if value + d >= 0]
        return str(value + rng.choice(deltas))
    if ", " in gold:
        items = gold.split(", ")
        items[0], items[1] = items[1], items[0]
        return ", ".join(items)
    if len(gold) == 1 and gold.isalpha():
        alphabet = LETTERS if gold.islower() else LETTERS.upper()
        i = alphabet.index(gold)
        return alphabet[min(max(i + rng.choice((-1, 1, 2)), 0), len(alphabet) - 1)]
    chars = list(gold)
    pairs = [i for i in range(len(chars) - 1) if chars[i].lower() != chars[i + 1].lower()]
    if pairs and rng.random() < 0.5:
        i = pairs[0]
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    replacement = rng.choice([c for c in LETTERS if c != chars[0].lower()])
    chars[0] = replacement.upper() if chars[0].isupper() else replacement
    return "".join(chars)


def wrong_answer(
    task_or_answer: Task | Mapping[str, Any] | str, rng: random.Random, mistake_rate: float = 0.5
) -> str:
    """A fluent, plausible but wrong response in the canonical format (``Answer: <value>``).

    For a :class:`Task` with typical mistakes (``Task.mistakes``), one of them with probability
    ``mistake_rate``; otherwise a generic perturbation: numbers move by ±1, ±2 or ±10 (never
    below 0), word lists swap their first two items, letters move to a neighbouring letter, words
    swap their first two different neighbouring letters or change their first letter. The result
    never passes :func:`is_correct` for the gold answer.
    """
    if isinstance(task_or_answer, Task):
        gold, mistakes = task_or_answer.answer, task_or_answer.mistakes
    else:
        gold, mistakes = gold_answer(task_or_answer), ()
    mistakes = [m for m in mistakes if not answers_match(m, gold)]
    if mistakes and rng.random() < mistake_rate:
        return format_response(rng.choice(mistakes))
    for _ in range(100):
        value = _perturb(gold, rng)
        if not answers_match(value, gold):
            return format_response(value)
    raise ValueError(f"cannot build a wrong answer for {gold!r}")  # pragma: no cover - no such gold
