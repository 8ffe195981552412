"""Pairwise judges for signal accuracy: is y+ really better than y−?

A judge is any callable ``judge(prompt, response_a, response_b) -> "a" | "b" | None`` (None:
unsure). :class:`LLMJudge` asks a local causal LM with the SSO paper's Table 15 prompt in both
orders and answers only when the two orders agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefalign.core.progress import progress_bar
from prefalign.generation.principles import judge_messages, parse_judge_answer
from prefalign.generation.sampling import Generator, SamplingConfig, labelled

Judge = Callable[[str, str, str], "str | None"]


class LLMJudge:
    """Table 15 judge on a local model; "unsure" (None) when swapping the outputs changes the verdict."""

    def __init__(self, generator: Generator, max_new_tokens: int = 4, in_sentence: bool = False) -> None:
        self.generator = generator
        # count an identifier named inside a sentence (parse_judge_answer's in_sentence)
        self.in_sentence = in_sentence
        self.config = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
        # The last judge_many call's answers over both orders: "m", "M", or "unparsed" (neither);
        # tells an unsure verdict from a judge that always names one position or answers off-format.
        self.answer_counts: Counter = Counter()

    @classmethod
    def from_model_config(
        cls,
        model: Mapping[str, Any],
        max_new_tokens: int = 4,
        generation: Mapping[str, Any] | None = None,
        in_sentence: bool = False,
    ) -> LLMJudge:
        """A judge on the causal LM described by a ``model`` config (e.g. from ``judge:`` in
        ``conf/sso.yaml``), sampled by the ``generation`` backend (default: hf on this rank's GPU
        or the CPU, :func:`prefalign.generation.backends.build_generator`); ``in_sentence``: also
        count an identifier the judge names inside a sentence (a small judge's habit)."""
        from prefalign.generation.backends import build_generator

        generator = build_generator(dict(generation or {"backend": "hf"}), dict(model))
        return cls(generator, max_new_tokens, in_sentence)

    def judge_many(self, items: Sequence[tuple[str, str, str]]) -> list[str | None]:
        """Verdicts for (prompt, a, b) triples: "a", "b" or None (a progress bar over the 2 × N
        judge prompts where :mod:`prefalign.core.progress` allows)."""
        conversations = []
        for prompt, a, b in items:
            conversations.append(judge_messages(prompt, a, b))  # a is "m"
            conversations.append(judge_messages(prompt, b, a))  # a is "M"
        label = labelled(self.generator, "judge (both orders)")
        generations = self.generator.generate(conversations, self.config, **label)
        answers = [parse_judge_answer(g.text, self.in_sentence) for g in generations]
        self.answer_pairs = list(zip(answers[0::2], answers[1::2], strict=True))  # per triple, both orders
        self.answer_counts = Counter(a or "unparsed" for a in answers)
        verdicts = []
        for first, second in zip(answers[0::2], answers[1::2], strict=True):
            a_first = {"m": "a", "M": "b"}.get(first or "")
            a_second = {"M": "a", "m": "b"}.get(second or "")
            verdicts.append(a_first if a_first is not None and a_first == a_second else None)
        return verdicts

    def __call__(self, prompt: str, a: str, b: str) -> str | None:
        return self.judge_many([(prompt, a, b)])[0]


def signal_accuracy(judge: Judge, triples: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """Share of (prompt, y+, y−) where the judge prefers y+, prefers y−, or is unsure (a judge
    without ``judge_many`` is asked pair by pair, under a progress bar).

    A judge that counts its raw answers (:class:`LLMJudge`: ``answer_counts``) adds their shares
    over both orders, ``judge_answers/m``, ``judge_answers/M`` and ``judge_answers/unparsed``: an
    "unsure" rate from a judge that always names the same position differs from an off-format one.
    """
    if hasattr(judge, "judge_many"):
        verdicts = judge.judge_many(triples)
    else:
        verdicts = [judge(*t) for t in progress_bar(triples, desc="judge", unit="pair")]
    n = max(len(verdicts), 1)
    stats = {
        "signal_accuracy": sum(v == "a" for v in verdicts) / n,
        "signal_inverted": sum(v == "b" for v in verdicts) / n,
        "signal_unsure": sum(v is None for v in verdicts) / n,
    }
    counts = getattr(judge, "answer_counts", None)
    if counts is not None:
        answers = max(sum(counts.values()), 1)
        stats.update({f"judge_answers/{k}": counts[k] / answers for k in ("m", "M", "unparsed")})
    return stats
