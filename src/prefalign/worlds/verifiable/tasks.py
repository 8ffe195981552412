"""The verifiable world's task families: seeded questions whose answers can be checked exactly.

Each family is a small frozen dataclass with ``make(rng) -> Task``; :data:`FAMILIES` holds one
instance of each by name. :func:`follow_up` asks a second question about a task's answer (the
second turn of a two-turn conversation) and :func:`draws` is the seeded draw every generator of
the world shares. Vocabulary and numbers are small so that a tiny model trained from scratch
learns the world in a few CPU minutes; the words are :data:`prefalign.data.words.WORDS`, on whose
sentences the offline BPE tokenizer learns its merges.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prefalign.data.words import WORDS

ANSWER_MARKER = "Answer:"
LETTERS = string.ascii_lowercase


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
        absent = sorted(set(LETTERS) - set(word))
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
        letter = rng.choice(LETTERS[:-1])
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


def draws(
    n: int, seed: int, families: Sequence[str | Any] | None
) -> Iterator[tuple[int, Task, random.Random]]:
    """``n`` seeded draws ``(index, task, rng)``, the family chosen uniformly among ``families``
    (names or family objects; default all); ``rng`` is the draws' own generator, for the caller's
    further random choices about the same record."""
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
