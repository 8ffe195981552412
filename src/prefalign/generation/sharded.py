"""Samplers and judges shared across the ranks of a ``torch.distributed`` process group.

In one process they are the wrapped sampler / judge; in a group every rank handles its part of the
prompts (:func:`prefalign.core.ranks.shard_map`) and every rank receives all the results in order.
Used by the SSO pipeline (allocation, sampling, held-out evaluation, the judge).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefalign.core.errors import ConfigError
from prefalign.core.ranks import shard_map, world
from prefalign.generation.sampling import Generator, SamplingConfig, labelled


def generate(
    generator: Generator, conversations: list, config: SamplingConfig, keys: list[str], desc: str = "generate"
) -> list:
    """``generator.generate``, each prompt seeded by (``config.seed``, its key
    ``<iteration>/<prompt id>/<role>``) when the backend takes ``keys`` (:class:`HFGenerator` does:
    the samples then do not depend on batching), else seeded by the backend's own rule. ``desc``
    labels the backend's progress bar (drawn by rank 0 only, over its share of the prompts;
    :mod:`prefalign.core.progress`).

    In a ``torch.distributed`` process group the prompts are shared across the ranks
    (:func:`shard_map`) and every rank receives all the results in order (the same as one process,
    thanks to the keys; greedy decoding (temperature 0) needs no keys).
    """
    import inspect

    keyed = "keys" in inspect.signature(generator.generate).parameters
    label = labelled(generator, desc)
    size = world()[1]
    if not keyed:
        if size > 1 and config.temperature > 0:
            raise ConfigError(
                f"config key `generator`: {type(generator).__name__}.generate takes no per-prompt keys, "
                f"so its samples would depend on how {size} processes split the prompts; run on one process"
            )
        return shard_map(lambda part: generator.generate(part, config, **label), conversations)
    pairs = list(zip(conversations, keys, strict=True))
    return shard_map(
        lambda part: generator.generate([c for c, _ in part], config, keys=[k for _, k in part], **label),
        pairs,
    )


class ShardedGenerator:
    """A sampler whose ``generate(conversations, config)`` is shared across the ranks
    (:func:`generate`, each conversation keyed ``<prefix>/<index>``): held-out evaluation of a
    policy with every rank answering its part of the records."""

    def __init__(self, generator: Generator, prefix: str) -> None:
        self.generator, self.prefix = generator, prefix
        self.tokenizer = getattr(generator, "tokenizer", None)

    def generate(self, conversations: list, config: SamplingConfig, desc: str = "generate") -> list:
        keys = [f"{self.prefix}/{k}" for k in range(len(conversations))]
        return generate(self.generator, list(conversations), config, keys, desc=desc)


class ShardedJudge:
    """A judge whose ``judge_many(triples)`` is shared across the ranks (:func:`shard_map`); the
    verdicts are those of the wrapped judge, which decodes greedily. When the wrapped judge records
    its raw answers (:class:`prefalign.generation.judges.LLMJudge`: ``answer_pairs``), the answers
    of every rank are counted in ``answer_counts``, as the wrapped judge counts them in one process."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.answer_counts: Counter | None = None

    def judge_many(self, triples: list) -> list:
        def verdicts(part: list) -> list:
            if hasattr(self.judge, "judge_many"):
                out = self.judge.judge_many(part)
            else:
                out = [self.judge(*t) for t in part]
            pairs = getattr(self.judge, "answer_pairs", None) if part else None
            return [(v, pairs[k] if pairs is not None else None) for k, v in enumerate(out)]

        results = shard_map(verdicts, list(triples))
        if any(pair is not None for _, pair in results):
            self.answer_counts = Counter(a or "unparsed" for _, pair in results if pair for a in pair)
        return [v for v, _ in results]
