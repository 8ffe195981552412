"""A verifiable instruction world: seeded conversations whose answers can be checked exactly.

Small string and arithmetic task families (:mod:`.tasks`), mixed into one- and two-turn
conversations (:mod:`.world`); every response ends with ``Answer: <value>``, so the answer is read
back and checked (:mod:`.metric`: the quality metric, with the comparison rules). The same check is
a rule-based pairwise judge (:mod:`.judge`) and the source of wrong answers (:mod:`.mistakes`) for
preference data and for a "bad principle" (:mod:`.principled`, the CPU SSO study's data).

Command line (:mod:`.cli`)::

    python -m prefalign.worlds.verifiable world OUT --train 4000 --val 200 --test 500
    python -m prefalign.worlds.verifiable principled OUT --principles src/prefalign/data/bundled/principles_correctness.yaml

Configs reach it by dotted path, e.g. ``metric: prefalign.worlds.verifiable.exact_match_report`` and
``judge: {_target_: prefalign.worlds.verifiable.RuleJudge.from_file, path: ...}``.
"""

from prefalign.core.chat import prompt_messages
from prefalign.worlds.verifiable.cli import main
from prefalign.worlds.verifiable.judge import RuleJudge, record_prompt
from prefalign.worlds.verifiable.metric import (
    answers_match,
    exact_match,
    exact_match_report,
    extract_answer,
    gold_answer,
    is_correct,
    normalise_answer,
)
from prefalign.worlds.verifiable.mistakes import wrong_answer
from prefalign.worlds.verifiable.principled import (
    CONDITIONS,
    condition_messages,
    principle_conditioned_sft,
    principle_system_messages,
    write_principled,
)
from prefalign.worlds.verifiable.tasks import (
    ANSWER_MARKER,
    FAMILIES,
    MULTI_TURN,
    Addition,
    CountLetter,
    NextLetter,
    Reverse,
    SortWords,
    Subtraction,
    Task,
    Uppercase,
    draws,
    follow_up,
    format_response,
)
from prefalign.worlds.verifiable.world import generate_preferences, generate_world, prompt_set, write_world

__all__ = [
    "ANSWER_MARKER",
    "CONDITIONS",
    "FAMILIES",
    "MULTI_TURN",
    "Addition",
    "CountLetter",
    "NextLetter",
    "Reverse",
    "RuleJudge",
    "SortWords",
    "Subtraction",
    "Task",
    "Uppercase",
    "answers_match",
    "condition_messages",
    "draws",
    "exact_match",
    "exact_match_report",
    "extract_answer",
    "follow_up",
    "format_response",
    "generate_preferences",
    "generate_world",
    "gold_answer",
    "is_correct",
    "main",
    "normalise_answer",
    "principle_conditioned_sft",
    "principle_system_messages",
    "prompt_messages",
    "prompt_set",
    "record_prompt",
    "wrong_answer",
    "write_principled",
    "write_world",
]
