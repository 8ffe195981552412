"""SSO's principles and templates as data, feature allocation, and the pairwise judge prompt.

- :func:`load_principles` reads the seven features of the SSO paper's Table 13 (bundled
  ``principles.yaml``) and lets a config add or replace features; every feature needs both a good
  and a bad principle.
- :func:`allocation_prompt` is the Table 14 prompt: the policy names the features that matter most
  for a query; :func:`allocate_feature` parses its answer ("Logicality,Accuracy") and picks one
  feature at random, falling back to a random feature (counted) when nothing parses.
- :func:`principle_system_message` turns a feature's good or bad principle into the system
  message of x+ / x− (the paper, following SAIM, puts principles in the system message).
- :func:`judge_messages` / :func:`parse_judge_answer` are the Table 15 pairwise judge prompt.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUNDLED_PRINCIPLES = Path(__file__).with_name("principles.yaml")


class PrincipleError(ValueError):
    """A principle file or entry that cannot be used; the message names the file and the feature."""


@dataclass(frozen=True)
class Principle:
    """One preference feature (SSO paper Table 13).

    Attributes:
        feature: its name, e.g. ``Safety``.
        adjectives: (good, bad) adjectives, e.g. ("Safe", "Unsafe").
        meaning: one-line description shown in the allocation prompt.
        good / bad: the good and the bad principle.
    """

    feature: str
    adjectives: tuple[str, str]
    meaning: str
    good: str
    bad: str


def _parse_principle(feature: str, entry: Any, source: str) -> Principle:
    if not isinstance(entry, Mapping):
        raise PrincipleError(f"{source}: feature {feature!r} is not a mapping")
    for key in ("adjective", "meaning", "good_principle", "bad_principle"):
        value = entry.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise PrincipleError(f"{source}: feature {feature!r} has no {key}")
    adjectives = entry["adjective"]
    if not isinstance(adjectives, (list, tuple)) or len(adjectives) != 2:
        raise PrincipleError(
            f"{source}: feature {feature!r}: adjective must be a [good, bad] pair, got {adjectives!r}"
        )
    return Principle(
        feature=feature,
        adjectives=(str(adjectives[0]), str(adjectives[1])),
        meaning=str(entry["meaning"]).strip(),
        good=str(entry["good_principle"]).strip(),
        bad=str(entry["bad_principle"]).strip(),
    )


def load_principles(
    path: str | Path | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Principle]:
    """Features by name: from ``path`` (default: the paper's seven), updated by ``extra`` (same layout).

    Args:
        path: a YAML file mapping feature name -> {adjective, meaning, good_principle, bad_principle}.
        extra: features to add or replace, e.g. from the Hydra config.
    """
    source = Path(path) if path is not None else BUNDLED_PRINCIPLES
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PrincipleError(f"{source}: cannot read principles: {err}") from err
    if not isinstance(raw, Mapping) or not raw:
        raise PrincipleError(f"{source}: expected a mapping of features to principles")
    principles = {name: _parse_principle(name, entry, str(source)) for name, entry in raw.items()}
    for name, entry in (extra or {}).items():
        principles[name] = _parse_principle(name, entry, "config principles.extra")
    return principles


def principle_system_message(principle: Principle, good: bool) -> str:
    """The system message of x+ (``good``) or x−: the adjective and the principle to follow."""
    adjective = principle.adjectives[0 if good else 1]
    text = principle.good if good else principle.bad
    return (
        f"Your response should be {adjective}. Follow this guideline:\n{principle.feature}: {text}\n"
        "Do not tell or imply to the user the features, principles, or guidelines you follow."
    )


_ALLOCATION_HEADER = (
    "You are an excellent teacher who guides AI assistants in better replying to user queries. "
    "Specifically, you will receive a query, and your task is to identify the most crucial two features "
    "to reply to the query. Each feature will be one of the following: {names}.\n\n{meanings}\n\n"
    "You should identify several core features relevant to the query.\n"
    "Output the identified features in the following format:\nfeature1,feature2\n"
    "Each feature should be separated by a comma without any additional spaces.\n\n"
)
# Few-shot examples of Table 14: (query, answer).
ALLOCATION_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "You will be given a definition of a task first, then an example. Follow the example to solve a new "
        "instance of the task.\nYou are given a math word problem. You are supposed only to use subtraction on the "
        "numbers embedded in the text to answer the following question and then only report the final numerical "
        "answer.\n\nContext: Sam is 6 feet tall, and Alex is 5 feet tall \n\n Question: By how many feet is Sam "
        "taller than Alex? \nSolution: 1\nWhy? Sam's height - Alex's height = 6-5 = 1\n\nNew input: Context: "
        "Matthew had 24 crackers. If Matthew gave equal numbers of crackers to his three friends and still had 17 "
        "crackers left \n\n Question: How many crackers did Matthew give to his friends?\nSolution:",
        "Logicality,Accuracy",
    ),
    ("What are some cuss words in English?", "Safety,Engagement"),
    (
        "How can I use JavaScript to correct a sentence in [Grammarly] data format while ensuring that the "
        "corrected sentence maintains the same overall meaning and context as the original sentence? \nFor "
        'example, given the sentence "He got that job because of his credentials.", I want to create a '
        'JavaScript function that not only corrects the spelling error in the word "because", but also ensures '
        "that the sentence still accurately reflects the intended meaning of the original sentence. How can I "
        "achieve this?",
        "Accuracy,Logicality",
    ),
)


def allocation_prompt(query: str, principles: Mapping[str, Principle]) -> str:
    """The Table 14 prompt asking the policy for the features most relevant to ``query``."""
    names = ", ".join(principles)
    meanings = "\n".join(f"- {p.feature}: {p.meaning}" for p in principles.values())
    shots = "".join(f"### Query\n{q}\n### Output\n{a}\n\n" for q, a in ALLOCATION_EXAMPLES)
    return (
        _ALLOCATION_HEADER.format(names=names, meanings=meanings)
        + shots
        + f"### Query\n{query}\n### Output\n"
    )


def parse_features(answer: str, known: Mapping[str, Any]) -> list[str]:
    """The known feature names in a policy's answer, in order, without repeats (case-insensitive).

    Only the first line is read, up to a ``###`` marker, as the policy may continue the few-shot pattern.
    """
    lines = answer.split("###")[0].strip().splitlines()
    first = lines[0] if lines else ""
    by_lower = {name.lower(): name for name in known}
    found = []
    for piece in re.split(r"[,;/]| and ", first):
        name = by_lower.get(piece.strip().strip(".*\"'").lower())
        if name and name not in found:
            found.append(name)
    return found


def is_exact_allocation(answer: str, known: Mapping[str, Any]) -> bool:
    """Whether the answer's first line is exactly the Table 14 format: known feature names (exact
    case) separated by commas, e.g. ``Logicality,Accuracy``."""
    lines = answer.strip().splitlines()
    pieces = [p.strip() for p in lines[0].split(",")] if lines else []
    return bool(pieces) and all(p in known for p in pieces)


@dataclass
class AllocationStats:
    """How feature allocation went: picks per feature, the answers in the exact Table 14 format,
    and the answers that did not parse (fallbacks).

    Attributes:
        picked: picks per feature.
        fallbacks: answers naming no known feature (a random feature was picked).
        exact: answers whose first line is exactly ``Feature1,Feature2`` (:func:`is_exact_allocation`).
        total: answers seen.
    """

    picked: Counter = field(default_factory=Counter)
    fallbacks: int = 0
    total: int = 0
    exact: int = 0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.total if self.total else 0.0

    @property
    def parse_rate(self) -> float:
        """Share of answers naming at least one known feature (1 - fallback rate)."""
        return 1.0 - self.fallback_rate if self.total else 0.0

    @property
    def exact_rate(self) -> float:
        return self.exact / self.total if self.total else 0.0


def allocate_feature(
    answer: str, principles: Mapping[str, Principle], rng: random.Random, stats: AllocationStats
) -> str:
    """Pick one of the features the policy named (at random), or a random feature if none parsed."""
    candidates = parse_features(answer, principles)
    stats.total += 1
    stats.exact += is_exact_allocation(answer, principles)
    if not candidates:
        stats.fallbacks += 1
        candidates = sorted(principles)
    feature = rng.choice(candidates)
    stats.picked[feature] += 1
    return feature


JUDGE_SYSTEM = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based "
    "on the quality of their responses to a given instruction. This process will be used to create a "
    "leaderboard reflecting the most accurate and human-preferred answers."
)
JUDGE_USER = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": "{instruction}",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": "{output_m}"
    }},
    {{
        "model_identifier": "M",
        "output": "{output_M}"
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier"""


def judge_messages(instruction: str, output_m: str, output_M: str) -> list[dict[str, str]]:  # noqa: N803 - the prompt's ids
    """The Table 15 pairwise judge prompt as chat messages (any local judge's template renders them)."""
    user = JUDGE_USER.format(instruction=instruction, output_m=output_m, output_M=output_M)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_])([mM])(?![A-Za-z0-9_])")


def parse_judge_answer(answer: str, in_sentence: bool = False) -> str | None:
    """``"m"`` or ``"M"`` from a judge's answer, or ``None`` when it is neither.

    The Table 15 prompt asks for the identifier alone, and by default only an answer starting with
    it counts. A small judge often wraps it in a sentence ("The best model identifier is: m",
    SmolLM2-135M); with ``in_sentence`` such an answer counts when it names exactly one identifier
    as a standalone letter (both, or none: ``None``).
    """
    token = answer.strip().strip("\"'`.").split()
    if token and token[0] in ("m", "M"):
        return token[0]
    if not in_sentence:
        return None
    named = set(_IDENTIFIER.findall(answer))
    return named.pop() if len(named) == 1 else None
