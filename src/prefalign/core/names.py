"""Column and sequence names, and the sequence-major layout of several sequences per sample.

Columns are what the data carries besides the tokens: the sample ``id``, the conversation
``messages``, the aligned ensemble's ``aligned_score`` (and one ``score_<member>`` per member), the
``noise`` label of hand-crafted noise samples, and the frozen reference's log-probs of a sequence
(``ref.<sequence>.sum`` / ``ref.<sequence>.count``).

A sequence is one (prompt, response) combination of a preference record, named
``"<prompt>|<response>"``: prompts ``x`` (the user prompt), ``x+`` / ``x-`` (with the good / bad
principle as system message, SSO), responses ``y+`` (chosen), ``y-`` (rejected), ``yo`` (original,
SSO). A one-sequence-per-sample record is the sequence :data:`SINGLE`. Several sequences of ``B``
samples are stacked sequence-major: rows ``k*B .. (k+1)*B`` hold sequence ``k``
(:func:`stack_sequence_major`, :func:`split_sequence_major`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

ID = "id"
MESSAGES = "messages"
ALIGNED_SCORE = "aligned_score"
NOISE = "noise"
LENGTH = "length"

# Sequence prompts: the user prompt, and with the good / bad principle as system message (SSO).
X, X_GOOD, X_BAD = "x", "x+", "x-"
# Sequence responses: chosen, rejected, original (sampled without principle, SSO).
Y_CHOSEN, Y_REJECTED, Y_ORIGINAL = "y+", "y-", "yo"
# Sequence prompts -> the record field of their system message (None: no system message).
PROMPT_SYSTEMS: dict[str, str | None] = {X: None, X_GOOD: "system_good", X_BAD: "system_bad"}
# Sequence responses -> the record field holding the response text.
RESPONSES: dict[str, str] = {Y_CHOSEN: "chosen", Y_REJECTED: "rejected", Y_ORIGINAL: "original"}


def sequence(prompt: str, response: str) -> str:
    """The name of the sequence (``prompt``, ``response``): ``"<prompt>|<response>"``."""
    return f"{prompt}|{response}"


CHOSEN, REJECTED = sequence(X, Y_CHOSEN), sequence(X, Y_REJECTED)
# The one sequence of a chat record (the conversation as it is).
SINGLE = sequence(X, "y")

T = TypeVar("T")


def member_score_column(member: str) -> str:
    """The column of aligned member ``member``'s score: ``score_<member>``."""
    return f"score_{member}"


def reference_columns(sequence: str) -> tuple[str, str]:
    """The reference log-prob sum and count columns of ``sequence``."""
    return f"ref.{sequence}.sum", f"ref.{sequence}.count"


def sequence_id(sample_id: str, sequence: str) -> str:
    """The id of one sequence of a sample when sequences are scored as conversations: ``<id>::<sequence>``."""
    return f"{sample_id}::{sequence}"


def parse_sequence(name: str) -> tuple[str, str]:
    """``"x+|y-"`` -> (``"x+"``, ``"y-"``), checking both parts."""
    prompt, _, response = name.partition("|")
    if prompt not in PROMPT_SYSTEMS or response not in RESPONSES:
        raise ValueError(
            f"unknown sequence {name!r}: prompts are {list(PROMPT_SYSTEMS)}, responses {list(RESPONSES)}"
        )
    return prompt, response


def required_fields(sequences: Sequence[str]) -> list[str]:
    """The record fields that the named sequences use (``prompt`` first)."""
    fields = ["prompt"]
    for name in sequences:
        prompt, response = parse_sequence(name)
        for field_name in (PROMPT_SYSTEMS[prompt], RESPONSES[response]):
            if field_name and field_name not in fields:
                fields.append(field_name)
    return fields


def stack_sequence_major(
    samples: Sequence[Mapping[str, Any]], sequences: Sequence[str]
) -> list[tuple[str, Any]]:
    """``(sequence, sample)`` pairs in sequence-major order: every sample's first sequence, then
    every sample's second... The inverse of :func:`split_sequence_major`."""
    return [(name, sample) for name in sequences for sample in samples]


def split_sequence_major(values: T, sequences: Sequence[str]) -> dict[str, T]:
    """Undo :func:`stack_sequence_major` on anything sliceable along its first axis (a tensor, a
    list): ``{sequence: its B rows}``."""
    size = len(values) // len(sequences)
    if size * len(sequences) != len(values):
        raise ValueError(f"{len(values)} rows cannot be split into {len(sequences)} sequences")
    return {name: values[k * size : (k + 1) * size] for k, name in enumerate(sequences)}
