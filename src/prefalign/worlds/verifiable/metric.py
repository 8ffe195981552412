"""Checking answers in the verifiable world: the quality metric.

Every response of the world ends with ``Answer: <value>``, so :func:`extract_answer` reads the
value back and :func:`is_correct` checks it against the gold answer; :func:`exact_match` and
:func:`exact_match_report` are the metric (a ``GenerationEval`` / SSO held-out ``metric``, by
``_target_`` or dotted path).

Answer comparison (documented once here): the value after the last ``Answer:`` marker (any case)
on its line is compared with the gold answer after normalisation: surrounding whitespace, quotes
and a trailing period are stripped, inner whitespace is collapsed, list items are joined by
``", "`` and integers lose leading zeros. Letter case matters only when the gold answer contains a
capital letter (the capital-letters tasks): ``ELPPA`` answers "Reverse 'apple'" correctly, but
``apple`` does not answer "Write 'apple' in capital letters".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)


def extract_answer(response: str | None) -> str | None:
    """The value after the last ``Answer:`` marker (any case), up to the end of its line.

    Surrounding whitespace, quotes and one trailing period are removed. ``None`` when there is no
    marker or nothing follows it.
    """
    if not response:
        return None
    matches = list(_MARKER.finditer(response))
    if not matches:
        return None
    value = response[matches[-1].end() :].split("\n", 1)[0].strip()
    value = value[:-1].rstrip() if value.endswith(".") else value
    value = value.strip("'\"`").strip()
    return value or None


def normalise_answer(value: str, case_sensitive: bool = True) -> str:
    """The comparison form of an answer (see the module docstring)."""
    value = " ".join(str(value).split()).strip().strip("'\"`").strip()
    if value.endswith("."):
        value = value[:-1].rstrip()
    value = re.sub(r"\s*,\s*", ", ", value)
    if re.fullmatch(r"[+-]?\d+", value):
        value = str(int(value))
    return value if case_sensitive else value.lower()


def gold_answer(record_or_answer: Mapping[str, Any] | str) -> str:
    """The gold answer of a record (its ``answer`` column) or a bare answer string."""
    if isinstance(record_or_answer, Mapping):
        return str(record_or_answer["answer"])
    return str(record_or_answer)


def answers_match(value: str, gold: str) -> bool:
    """Whether an extracted ``value`` equals ``gold`` (case matters only when ``gold`` has capitals)."""
    case_sensitive = gold != gold.lower()
    return normalise_answer(value, case_sensitive) == normalise_answer(gold, case_sensitive)


def is_correct(record_or_answer: Mapping[str, Any] | str, response: str | Any) -> bool:
    """Whether ``response`` states the gold answer of a record (or of a bare answer string).

    ``response`` may be a string or anything with a ``text`` attribute (a sampled ``Generation``).
    """
    text = getattr(response, "text", response)
    value = extract_answer(text)
    return value is not None and answers_match(value, gold_answer(record_or_answer))


def exact_match(records: Sequence[Mapping[str, Any]], responses: Sequence[str | Any]) -> float:
    """Share of ``responses`` that answer their record correctly (0.0 for no records)."""
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    return sum(is_correct(r, y) for r, y in zip(records, responses, strict=True)) / max(len(records), 1)


def exact_match_report(
    records: Sequence[Mapping[str, Any]], responses: Sequence[str | Any], by: str = "task"
) -> dict[str, Any]:
    """Exact match overall and per family (the records' ``by`` column), with counts.

    Returns ``{"exact_match", "no_answer", "n", "by_family": {name: {"exact_match", "n"}}}``;
    ``no_answer`` is the share of responses without an extractable answer.
    """
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    hits: Counter = Counter()
    counts: Counter = Counter()
    missing = 0
    for record, response in zip(records, responses, strict=True):
        text = getattr(response, "text", response)
        group = str(record.get(by, "")) or "?"
        counts[group] += 1
        hits[group] += is_correct(record, text)
        missing += extract_answer(text) is None
    n = len(records)
    return {
        "exact_match": sum(hits.values()) / max(n, 1),
        "no_answer": missing / max(n, 1),
        "n": n,
        "by_family": {g: {"exact_match": hits[g] / counts[g], "n": counts[g]} for g in sorted(counts)},
    }
