"""Seeded generator of small chat conversations whose answers are checkable.

Used for the bundled quick-start data and the offline tokenizer's corpus (:func:`corpus_texts`);
the words are :data:`prefalign.data.words.WORDS`. Each record is a conversation in the project's
record format (``id`` + ``messages``), single- or multi-turn, sometimes with a system turn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from prefalign.core.jsonl import write_jsonl
from prefalign.data.words import WORDS

_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer with the result only.",
    "You answer small string and arithmetic questions exactly.",
)


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        word = rng.choice(WORDS)
        return f"Reverse the word '{word}'.", f"The reverse of '{word}' is '{word[::-1]}'."
    if kind == 2:
        word = rng.choice(WORDS)
        return f"Write '{word}' in capital letters.", f"In capital letters: {word.upper()}."
    if kind == 3:
        words = rng.sample(WORDS, 3)
        return f"Sort these words alphabetically: {', '.join(words)}.", f"Sorted: {', '.join(sorted(words))}."
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    return (
        f"How many times does the letter '{letter}' appear in '{word}'?",
        f"The letter '{letter}' appears {word.count(letter)} time{'s' if word.count(letter) != 1 else ''} in '{word}'.",
    )


def generate_conversations(n: int, seed: int = 0) -> Iterator[dict]:
    """Yield ``n`` conversations, deterministically for a given ``seed``."""
    rng = random.Random(seed)
    for index in range(n):
        messages = []
        if rng.random() < 0.25:
            messages.append({"role": "system", "content": rng.choice(_SYSTEMS)})
        for _ in range(1 if rng.random() < 0.7 else 2):
            question, answer = _task(rng)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        yield {"id": f"syn-{seed}-{index}", "messages": messages}


def corpus_texts(n: int = 2000, seed: int = 1234) -> list[str]:
    """Every turn's text of ``n`` seeded conversations: the offline tokenizer's fixed BPE corpus
    (:func:`prefalign.models.tokenizer.build_tokenizer`)."""
    return [turn["content"] for record in generate_conversations(n, seed) for turn in record["messages"]]


def _wrong(answer: str, rng: random.Random) -> str:
    """A fluent but wrong variant of an answer: a number changed, or words swapped."""
    tokens = answer.split()
    numbers = [i for i, t in enumerate(tokens) if t.strip(".").isdigit()]
    if numbers:
        i = numbers[-1]
        value = int(tokens[i].strip("."))
        tokens[i] = str(value + rng.choice([-2, -1, 1, 2, 10])) + ("." if tokens[i].endswith(".") else "")
        return " ".join(tokens)
    return answer.replace("'", "").upper() if rng.random() < 0.5 else " ".join(reversed(tokens))


def generate_preferences(n: int, seed: int = 0) -> Iterator[dict]:
    """Yield ``n`` preference records: a prompt, a correct (chosen) and a wrong (rejected) answer."""
    rng = random.Random(seed)
    for index in range(n):
        question, answer = _task(rng)
        yield {
            "id": f"pref-{seed}-{index}",
            "prompt": question,
            "chosen": answer,
            "rejected": _wrong(answer, rng),
        }


if __name__ == "__main__":  # regenerate the bundled files
    here = Path(__file__).parent / "bundled"
    write_jsonl(here / "tiny_chat_train.jsonl", generate_conversations(512, seed=0))
    write_jsonl(here / "tiny_chat_val.jsonl", generate_conversations(64, seed=1))
    write_jsonl(here / "tiny_pref_train.jsonl", generate_preferences(256, seed=2))
    write_jsonl(here / "tiny_pref_val.jsonl", generate_preferences(32, seed=3))
