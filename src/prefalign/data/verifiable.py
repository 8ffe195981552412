"""A verifiable instruction world: seeded conversations whose answers can be checked exactly.

Small string and arithmetic task families (:data:`FAMILIES`), each a ``make(rng) -> Task``;
:func:`generate_world` mixes them, with a share of two-turn conversations whose second question
depends on the first answer ("Now add 3 to that."). Every response ends with ``Answer: <value>``,
so :func:`extract_answer` reads the value back and :func:`is_correct` checks it against the gold
answer. The same check is the quality metric (:func:`exact_match`, :func:`exact_match_report`),
a rule-based pairwise judge (:class:`RuleJudge`, usable with
:func:`prefalign.generation.judges.signal_accuracy` and as the SSO pipeline's ``judge``) and the
source of wrong answers (:func:`wrong_answer`) for preference data and for a "bad principle".

Records follow the project's record format: ``{"id", "messages", "task", "answer"}`` (plus
``first_task`` / ``followup`` for two-turn records); the chat and preference data modules keep the
extra string columns. Vocabulary and numbers are small so that a tiny model trained from scratch
learns the world in a few CPU minutes; the phrasing and the word list are those of
:mod:`prefalign.data.synthetic`, on which the offline BPE tokenizer learns its merges, so those
merges shorten this world's sequences too.

Answer comparison (documented once here): the value after the last ``Answer:`` marker (any case)
on its line is compared with the gold answer after normalisation: surrounding whitespace, quotes
and a trailing period are stripped, inner whitespace is collapsed, list items are joined by
``", "`` and integers lose leading zeros. Letter case matters only when the gold answer contains a
capital letter (the capital-letters tasks): ``ELPPA`` answers "Reverse 'apple'" correctly, but
``apple`` does not answer "Write 'apple' in capital letters".

Command line (writes JSON-lines splits into a folder)::

    python -m prefalign.data.verifiable world OUT --train 4000 --val 200 --test 500
    python -m prefalign.data.verifiable principled OUT --principles src/prefalign/data/bundled/principles_correctness.yaml
"""

from __future__ import annotations

import argparse
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefalign.data.synthetic import WORDS, write_jsonl

WORDS: tuple[str, ...] = tuple(WORDS)
ANSWER_MARKER = "Answer:"
_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
_LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Task:
    """One question with a checkable answer.

    Attributes:
        family: the task family's name (``add``, ``reverse``...).
        prompt: the user's question.
        answer: the canonical answer string.
        kind: the answer's shape: ``number``, ``word``, ``letter`` or ``words`` (a comma list);
            it decides the follow-up questions and the wrong answers.
        mistakes: typical wrong answers a solver of this task makes (the word left unreversed,
            the list left unsorted, the follow-up's operation forgotten); used by
            :func:`wrong_answer`.
    """

    family: str
    prompt: str
    answer: str
    kind: str
    mistakes: tuple[str, ...] = ()

    @property
    def response(self) -> str:
        """The canonical assistant response."""
        return format_response(self.answer)


def format_response(answer: str) -> str:
    """The assistant response stating ``answer``: ``Answer: <answer>``."""
    return f"{ANSWER_MARKER} {answer}"


# -- task families ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Addition:
    """``What is a plus b?`` with ``0 <= a, b <= max_value``."""

    max_value: int = 19
    name: str = "add"

    def make(self, rng: random.Random) -> Task:
        a, b = rng.randint(0, self.max_value), rng.randint(0, self.max_value)
        return Task(self.name, f"What is {a} plus {b}?", str(a + b), "number")


@dataclass(frozen=True)
class Subtraction:
    """``What is a minus b?`` with ``0 <= b <= a <= max_value`` (never negative)."""

    max_value: int = 19
    name: str = "sub"

    def make(self, rng: random.Random) -> Task:
        a, b = rng.randint(0, self.max_value), rng.randint(0, self.max_value)
        a, b = max(a, b), min(a, b)
        return Task(self.name, f"What is {a} minus {b}?", str(a - b), "number")


@dataclass(frozen=True)
class Reverse:
    """``Reverse the word 'apple'.`` -> ``elppa``."""

    words: tuple[str, ...] = WORDS
    name: str = "reverse"

    def make(self, rng: random.Random) -> Task:
        word = rng.choice(self.words)
        return Task(self.name, f"Reverse the word '{word}'.", word[::-1], "word", (word,))


@dataclass(frozen=True)
class Uppercase:
    """``Write 'apple' in capital letters.`` -> ``APPLE``."""

    words: tuple[str, ...] = WORDS
    name: str = "upper"

    def make(self, rng: random.Random) -> Task:
        word = rng.choice(self.words)
        prompt = f"Write '{word}' in capital letters."
        return Task(self.name, prompt, word.upper(), "word", (word, word.capitalize()))


@dataclass(frozen=True)
class CountLetter:
    """``How many times does the letter 'p' appear in 'apple'?`` -> ``2``.

    The letter is one of the word's letters, or with probability ``absent_rate`` one it lacks (0).
    """

    words: tuple[str, ...] = WORDS
    absent_rate: float = 0.2
    name: str = "count"

    def make(self, rng: random.Random) -> Task:
        word = rng.choice(self.words)
        absent = sorted(set(_LETTERS) - set(word))
        letter = rng.choice(absent) if rng.random() < self.absent_rate else rng.choice(sorted(set(word)))
        prompt = f"How many times does the letter '{letter}' appear in '{word}'?"
        return Task(self.name, prompt, str(word.count(letter)), "number")


@dataclass(frozen=True)
class SortWords:
    """``Sort these words alphabetically: tiger, apple, river.`` -> ``apple, river, tiger``."""

    words: tuple[str, ...] = WORDS
    count: int = 3
    name: str = "sort"

    def make(self, rng: random.Random) -> Task:
        chosen = rng.sample(self.words, self.count)
        prompt = f"Sort these words alphabetically: {', '.join(chosen)}."
        return Task(self.name, prompt, ", ".join(sorted(chosen)), "words", (", ".join(chosen),))


@dataclass(frozen=True)
class NextLetter:
    """``Which letter comes after 'k'?`` -> ``l`` (``a`` to ``y``)."""

    name: str = "next_letter"

    def make(self, rng: random.Random) -> Task:
        letter = rng.choice(_LETTERS[:-1])
        prompt = f"Which letter comes after '{letter}'?"
        return Task(self.name, prompt, _next_letter(letter), "letter", (letter,))


def _next_letter(letter: str) -> str:
    return chr(ord(letter) + 1)


FAMILIES: dict[str, Any] = {
    f.name: f
    for f in (
        Addition(),
        Subtraction(),
        Reverse(),
        Uppercase(),
        CountLetter(),
        SortWords(),
        NextLetter(),
    )
}
MULTI_TURN = "multi_turn"


def _families(families: Sequence[str | Any] | None) -> list[Any]:
    if families is None:
        return list(FAMILIES.values())
    resolved = []
    for family in families:
        if isinstance(family, str):
            if family not in FAMILIES:
                raise ValueError(f"unknown task family {family!r}; known: {sorted(FAMILIES)}")
            family = FAMILIES[family]
        resolved.append(family)
    if not resolved:
        raise ValueError("no task family given")
    return resolved


def _draws(
    n: int, seed: int, families: Sequence[str | Any] | None
) -> Iterator[tuple[int, Task, random.Random]]:
    """``n`` seeded draws ``(index, task, rng)``, the family chosen uniformly; ``rng`` is the draws'
    own generator, for the caller's further random choices about the same record."""
    pool = _families(families)
    rng = random.Random(seed)
    for index in range(n):
        yield index, rng.choice(pool).make(rng), rng


# -- follow-up questions (the second turn of a two-turn conversation) ------------------------------
def follow_up(task: Task, rng: random.Random) -> Task:
    """A second question about ``task``'s answer, e.g. ``Now add 3 to that.``.

    Numbers get ``add k`` / ``subtract k`` (never below 0); words and letters ``reverse`` or
    ``capital letters`` (the latter only when not already capitals); letters also ``the letter
    after that`` (not after ``z``); word lists ``the first`` / ``the last`` word.
    """
    value = task.answer
    if task.kind == "number":
        k = rng.randint(1, 9)
        if int(value) >= k and rng.random() < 0.5:
            return Task("subtract_k", f"Now subtract {k} from that.", str(int(value) - k), "number", (value,))
        return Task("add_k", f"Now add {k} to that.", str(int(value) + k), "number", (value,))
    if task.kind == "words":
        items = value.split(", ")
        if rng.random() < 0.5:
            return Task("first_word", "Now give only the first word.", items[0], "word", (items[-1],))
        return Task("last_word", "Now give only the last word.", items[-1], "word", (items[0],))
    options = []
    if task.kind == "letter" and value != "z":
        options.append(
            Task("letter_after", "And the letter after that?", _next_letter(value), "letter", (value,))
        )
    if len(value) > 1:
        options.append(Task("reverse_it", "Now reverse that.", value[::-1], task.kind, (value,)))
    if value != value.upper():
        options.append(
            Task("capitalise_it", "Now write that in capital letters.", value.upper(), task.kind, (value,))
        )
    return rng.choice(options)


# -- the world -------------------------------------------------------------------------------------
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
    for index, task, rng in _draws(n, seed, families):
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


def prompt_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation the model answers: everything before the record's last assistant turn.

    A record with a ``prompt`` column and no ``messages`` (an SSO prompt-set record) becomes one
    user turn.
    """
    messages = record.get("messages")
    if not messages:
        return [{"role": "user", "content": record["prompt"]}]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]]


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


# -- checking answers ------------------------------------------------------------------------------
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


def _gold(record_or_answer: Mapping[str, Any] | str) -> str:
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
    return value is not None and answers_match(value, _gold(record_or_answer))


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


# -- wrong answers ---------------------------------------------------------------------------------
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
        alphabet = _LETTERS if gold.islower() else _LETTERS.upper()
        i = alphabet.index(gold)
        return alphabet[min(max(i + rng.choice((-1, 1, 2)), 0), len(alphabet) - 1)]
    chars = list(gold)
    pairs = [i for i in range(len(chars) - 1) if chars[i].lower() != chars[i + 1].lower()]
    if pairs and rng.random() < 0.5:
        i = pairs[0]
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    replacement = rng.choice([c for c in _LETTERS if c != chars[0].lower()])
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
        gold, mistakes = _gold(task_or_answer), ()
    mistakes = [m for m in mistakes if not answers_match(m, gold)]
    if mistakes and rng.random() < mistake_rate:
        return format_response(rng.choice(mistakes))
    for _ in range(100):
        value = _perturb(gold, rng)
        if not answers_match(value, gold):
            return format_response(value)
    raise ValueError(f"cannot build a wrong answer for {gold!r}")  # pragma: no cover - no such gold


def generate_preferences(
    n: int, seed: int = 0, families: Sequence[str | Any] | None = None, id_prefix: str = "vp"
) -> Iterator[dict]:
    """Yield ``n`` preference records: ``prompt``, ``chosen`` (correct), ``rejected`` (:func:`wrong_answer`)."""
    for index, task, rng in _draws(n, seed, families):
        yield {
            "id": f"{id_prefix}-{seed}-{index}",
            "prompt": task.prompt,
            "chosen": task.response,
            "rejected": wrong_answer(task, rng),
            "task": task.family,
            "answer": task.answer,
        }


# -- a rule-based pairwise judge -------------------------------------------------------------------
class RuleJudge:
    """A pairwise judge that knows the gold answers: ``judge(prompt, a, b) -> "a" | "b" | None``.

    ``"a"`` when only ``a`` is correct, ``"b"`` when only ``b`` is, ``None`` when both or neither
    are. Works with :func:`prefalign.generation.judges.signal_accuracy` and as the SSO pipeline's
    ``judge`` (``{_target_: prefalign.data.verifiable.RuleJudge.from_file, path: prompts.jsonl}``).

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
        from prefalign.core.jsonl import iter_jsonl

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


# -- principle-conditioned SFT data (the SSO study) -------------------------------------------------
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
    for index, task, rng in _draws(n, seed, families):
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


def prompt_set(
    n: int, seed: int = 0, families: Sequence[str | Any] | None = None, id_prefix: str = "vq"
) -> Iterator[dict]:
    """Yield ``n`` one-turn prompts for the SSO pipeline: ``{"id", "prompt", "answer", "task"}``."""
    for index, task, _ in _draws(n, seed, families):
        yield {
            "id": f"{id_prefix}-{seed}-{index}",
            "prompt": task.prompt,
            "answer": task.answer,
            "task": task.family,
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


# -- writing splits --------------------------------------------------------------------------------
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prefalign.data.verifiable", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    world = sub.add_parser("world", help="train/val/test conversations")
    world.add_argument("out_dir")
    world.add_argument("--train", type=int, default=4000)
    world.add_argument("--val", type=int, default=200)
    world.add_argument("--test", type=int, default=500)
    world.add_argument("--multi-turn-rate", type=float, default=0.2)
    principled = sub.add_parser("principled", help="principle-conditioned SFT splits and SSO prompts")
    principled.add_argument("out_dir")
    principled.add_argument("--principles", required=True)
    principled.add_argument("--train", type=int, default=4000)
    principled.add_argument("--val", type=int, default=200)
    principled.add_argument("--test", type=int, default=300)
    principled.add_argument("--prompts", type=int, default=600)
    principled.add_argument("--none-correct-rate", type=float, default=0.5)
    for p in (world, principled):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--families", nargs="+", default=None, choices=sorted(FAMILIES))
    args = parser.parse_args(argv)
    if args.command == "world":
        paths = write_world(
            args.out_dir, args.train, args.val, args.test, args.seed, args.families, args.multi_turn_rate
        )
    else:
        paths = write_principled(
            args.out_dir,
            args.principles,
            args.train,
            args.val,
            args.test,
            args.prompts,
            args.seed,
            args.none_correct_rate,
            args.families,
        )
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
