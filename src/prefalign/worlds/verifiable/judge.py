"""A rule-based pairwise judge that knows the verifiable world's gold answers.

Reached by ``_target_`` (the SSO pipeline's ``judge``:
``{_target_: prefalign.worlds.verifiable.RuleJudge.from_file, path: prompts.jsonl}``) and usable
with :func:`prefalign.generation.judges.signal_accuracy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefalign.core.chat import prompt_messages
from prefalign.core.jsonl import iter_jsonl
from prefalign.worlds.verifiable.metric import is_correct


def record_prompt(record: Mapping[str, Any]) -> str:
    """The prompt string that identifies a record for :class:`RuleJudge`.

    The ``prompt`` column when there is one, else the only user turn, else (two-turn records) the
    conversation before the last answer as ``role: content`` lines.
    """
    if record.get("prompt"):
        return str(record["prompt"])
    messages = prompt_messages(record)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class RuleJudge:
    """A pairwise judge that knows the gold answers: ``judge(prompt, a, b) -> "a" | "b" | None``.

    ``"a"`` when only ``a`` is correct, ``"b"`` when only ``b`` is, ``None`` when both or neither
    are. Works with :func:`prefalign.generation.judges.signal_accuracy` and as the SSO pipeline's
    ``judge`` (``{_target_: prefalign.worlds.verifiable.RuleJudge.from_file, path: prompts.jsonl}``).

    Args:
        gold: a mapping prompt -> gold answer, or records (:func:`record_prompt` gives each
            record's prompt, its ``answer`` column the gold answer).

    Raises:
        KeyError: when asked about a prompt it has no gold answer for (an unknown prompt is a
            wiring error, not an "unsure" verdict).
    """

    def __init__(self, gold: Mapping[str, str] | Iterable[Mapping[str, Any]]) -> None:
        if isinstance(gold, Mapping):
            self.gold = {str(k): str(v) for k, v in gold.items()}
        else:
            self.gold = {}
            for record in gold:
                prompt, answer = record_prompt(record), str(record["answer"])
                if self.gold.setdefault(prompt, answer) != answer:
                    raise ValueError(
                        f"prompt {prompt!r} has two gold answers: {self.gold[prompt]!r}, {answer!r}"
                    )

    @classmethod
    def from_file(cls, path: str | Path) -> RuleJudge:
        """A judge over the records of a JSON-lines file (world, principled or prompt-set records)."""
        return cls([record for _, record in iter_jsonl(path)])

    def __call__(self, prompt: str, response_a: str, response_b: str) -> str | None:
        if prompt not in self.gold:
            raise KeyError(f"RuleJudge: no gold answer for prompt {prompt[:80]!r}")
        gold = self.gold[prompt]
        a, b = is_correct(gold, response_a), is_correct(gold, response_b)
        return "a" if a and not b else "b" if b and not a else None

    def judge_many(self, items: Sequence[tuple[str, str, str]]) -> list[str | None]:
        """Verdicts for (prompt, a, b) triples."""
        return [self(*item) for item in items]
