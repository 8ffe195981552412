"""SSO principles (Table 13), feature allocation (Table 14) and the judge prompt (Table 15)."""

from __future__ import annotations

import random

import pytest

from prefalign.generation.principles import (
    AllocationStats,
    PrincipleError,
    allocate_feature,
    allocation_prompt,
    is_exact_allocation,
    judge_messages,
    load_principles,
    parse_features,
    parse_judge_answer,
    principle_system_message,
)

# Table 13: feature -> (adjectives, the opening of the good principle, the opening of the bad principle)
TABLE_13 = {
    "Engagement": (
        ("Engaging", "Dull"),
        "Create responses that are designed to captivate the user's attention",
        "Produce responses that are monotonous, impersonal,",
    ),
    "Accuracy": (
        ("Accurate", "Inaccurate"),
        "Commit to delivering responses that are meticulously accurate",
        "Provide responses that contain inaccuracies, outdated information,",
    ),
    "Literariness": (
        ("Literary", "Boring"),
        "Craft responses that showcase a refined command of language",
        "Compose responses that lack literary finesse,",
    ),
    "Helpfulness": (
        ("Helpful", "Unhelpful"),
        "Focus on delivering responses that are genuinely helpful",
        "Provide responses that are vague, irrelevant, or unhelpful,",
    ),
    "Comprehensiveness": (
        ("Comprehensive", "Incomplete"),
        "Strive to deliver responses that are comprehensive,",
        "Offer responses that are superficial, lacking depth,",
    ),
    "Logicality": (
        ("Logical", "Illogical"),
        "Construct responses that adhere to strict logical principles,",
        "Create responses that lack a clear structure or logical flow,",
    ),
    "Safety": (
        ("Safe", "Unsafe"),
        "Design responses that prioritize the safety and well-being of the user at all times.",
        "Generate responses that disregard the safety and well-being of the user,",
    ),
}


def test_the_seven_features_of_table_13():
    principles = load_principles()
    assert set(principles) == set(TABLE_13)
    for name, (adjectives, good, bad) in TABLE_13.items():
        p = principles[name]
        assert p.adjectives == adjectives
        assert p.good.startswith(good) and p.bad.startswith(bad)
    # sentences legible in the paper's Table 13, word for word
    assert (
        "Use a formal or detached tone that discourages conversation and makes the interaction feel transactional."
        in principles["Engagement"].bad
    )
    assert (
        "Encourage the user to seek professional help or support when dealing with sensitive issues."
        in principles["Safety"].good
    )


def test_features_can_be_added_or_replaced_by_config():
    extra = {
        "Concision": {
            "adjective": ["Concise", "Verbose"],
            "meaning": "Short.",
            "good_principle": "Be brief.",
            "bad_principle": "Ramble.",
        },
        "Safety": {
            "adjective": ["Safe", "Unsafe"],
            "meaning": "m",
            "good_principle": "g",
            "bad_principle": "b",
        },
    }
    principles = load_principles(extra=extra)
    assert len(principles) == 8 and principles["Safety"].good == "g"


def test_a_principle_file_missing_a_bad_principle_names_the_file_and_feature(tmp_path):
    path = tmp_path / "principles.yaml"
    path.write_text("Safety:\n  adjective: [Safe, Unsafe]\n  meaning: m\n  good_principle: g\n")
    with pytest.raises(PrincipleError, match=r"principles.yaml: feature 'Safety' has no bad_principle"):
        load_principles(path)
    path.write_text("Safety:\n  adjective: [Safe]\n  meaning: m\n  good_principle: g\n  bad_principle: b\n")
    with pytest.raises(PrincipleError, match="pair"):
        load_principles(path)


def test_system_messages_carry_the_good_or_bad_principle():
    safety = load_principles()["Safety"]
    good, bad = principle_system_message(safety, True), principle_system_message(safety, False)
    assert "Safe." in good and safety.good in good and safety.bad not in good
    assert "Unsafe." in bad and safety.bad in bad


def test_allocation_prompt_lists_every_feature_and_ends_with_the_query():
    principles = load_principles()
    prompt = allocation_prompt("How do I bake bread?", principles)
    assert all(f"- {name}: " in prompt for name in principles)
    assert prompt.count("### Query") == 4 and prompt.endswith("### Query\nHow do I bake bread?\n### Output\n")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Logicality,Accuracy", ["Logicality", "Accuracy"]),
        ("Safety, Engagement\n### Query\nnext", ["Safety", "Engagement"]),
        ("accuracy and helpfulness.", ["Accuracy", "Helpfulness"]),
        ("**Comprehensiveness**,Comprehensiveness,Truthfulness", ["Comprehensiveness"]),
        ("I would say the answer needs care", []),
        ("", []),
    ],
)
def test_parse_features_on_real_looking_answers(answer, expected):
    assert parse_features(answer, load_principles()) == expected


def test_allocation_picks_a_named_feature_seeded_and_counts_fallbacks():
    principles = load_principles()
    answers = ["Logicality,Accuracy", "no idea", "Safety", "###", "Helpfulness,Literariness"]
    picks = []
    for seed in (0, 0):
        stats = AllocationStats()
        rng = random.Random(seed)
        picks.append([allocate_feature(a, principles, rng, stats) for a in answers])
    assert picks[0] == picks[1]
    assert picks[0][0] in ("Logicality", "Accuracy") and picks[0][2] == "Safety"
    assert stats.total == 5 and stats.fallbacks == 2 and stats.fallback_rate == pytest.approx(0.4)
    assert sum(stats.picked.values()) == 5
    # parsed: named a known feature; exact: the first line is only "Feature1,Feature2"
    assert stats.parse_rate == pytest.approx(0.6)
    assert stats.exact == 3 and stats.exact_rate == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("answer", "exact"),
    [
        ("Logicality,Accuracy", True),
        ("Safety\n### Query\nnext", True),
        ("Accuracy, Logicality", True),  # the paper's own examples put a space after the comma
        ("accuracy,logicality", False),  # parsed (case-insensitive), not the exact names
        ("Accuracy and Logicality", False),
        ("**Accuracy**,Safety", False),
        ("### Example\nAccuracy", False),  # what SmolLM2-135M answers: the pattern, not the features
        ("", False),
    ],
)
def test_exact_table14_format_is_told_apart_from_a_lenient_parse(answer, exact):
    assert is_exact_allocation(answer, load_principles()) is exact


def test_judge_prompt_and_answers():
    messages = judge_messages("Say hi", "hello", "bye")
    assert messages[0]["role"] == "system" and "highly efficient assistant" in messages[0]["content"]
    user = messages[1]["content"]
    assert (
        '"output": "hello"' in user
        and '"output": "bye"' in user
        and user.endswith("## Best Model Identifier")
    )
    assert parse_judge_answer(" M\n") == "M" and parse_judge_answer("m") == "m"
    assert parse_judge_answer("model m") is None and parse_judge_answer("") is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [  # SmolLM2-135M-Instruct's answers to the Table 15 prompt
        ("The best model identifier is: m", "m"),
        ("The best model identifier for the best model is M.", "M"),
        ("The best model identifier for this task is:\n\nm", "m"),
        ("The best model identifier is: m.\n\nThe best", "m"),
        ("The best model identifier for the best model is:", None),
        ("Either m or M could be best", None),  # both named: no verdict
        ("M", "M"),
    ],
)
def test_judge_answers_inside_a_sentence_count_only_when_asked(answer, expected):
    assert parse_judge_answer(answer, in_sentence=True) == expected
    if answer != "M":
        assert parse_judge_answer(answer) is None  # the default: the identifier alone
