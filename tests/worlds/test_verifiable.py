"""The verifiable instruction world: generation, answer checking, wrong answers, the rule judge."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from prefalign.data.chat import IGNORE_INDEX
from prefalign.data.datamodule import ChatDataModule
from prefalign.generation.judges import signal_accuracy
from prefalign.generation.principles import load_principles, principle_system_message
from prefalign.worlds.verifiable import (
    FAMILIES,
    MULTI_TURN,
    Addition,
    RuleJudge,
    condition_messages,
    exact_match,
    exact_match_report,
    extract_answer,
    follow_up,
    generate_preferences,
    generate_world,
    is_correct,
    main,
    principle_conditioned_sft,
    principle_system_messages,
    prompt_messages,
    prompt_set,
    record_prompt,
    wrong_answer,
)

PRINCIPLES = (
    Path(__file__).parents[2] / "src" / "prefalign" / "data" / "bundled" / "principles_correctness.yaml"
)


def test_generation_is_deterministic_by_seed():
    first = list(generate_world(50, seed=3, multi_turn_rate=0.3))
    assert first == list(generate_world(50, seed=3, multi_turn_rate=0.3))
    assert first != list(generate_world(50, seed=4, multi_turn_rate=0.3))
    assert len({r["id"] for r in first}) == 50
    assert first[0]["id"] == "vw-3-0"


def test_records_have_the_project_format_and_every_family():
    records = list(generate_world(400, seed=0, multi_turn_rate=0.25))
    assert {r["task"] for r in records} == {*FAMILIES, MULTI_TURN}
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles in (["user", "assistant"], ["user", "assistant"] * 2)
        assert (r["task"] == MULTI_TURN) == (len(roles) == 4) == bool(r["first_task"])
        assert r["messages"][-1]["content"] == f"Answer: {r['answer']}"
    assert {r["task"] for r in generate_world(20, seed=0, multi_turn_rate=0.0, families=["add"])} == {"add"}
    with pytest.raises(ValueError, match="unknown task family"):
        list(generate_world(1, families=["nope"]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_canonical_answers_pass_and_wrong_answers_fail(family):
    rng = random.Random(family)
    for _ in range(200):
        task = FAMILIES[family].make(rng)
        assert is_correct(task.answer, task.response)
        for mistake in (wrong_answer(task, rng), wrong_answer(task.answer, rng)):
            assert mistake.startswith("Answer: ")
            assert not is_correct(task.answer, mistake), (task, mistake)


def test_family_answers_are_right():
    rng = random.Random(0)
    for _ in range(100):
        task = FAMILIES["add"].make(rng)
        a, b = (int(x) for x in task.prompt.removeprefix("What is ").removesuffix("?").split(" plus "))
        assert int(task.answer) == a + b and a <= 19 and b <= 19
        task = FAMILIES["sub"].make(rng)
        a, b = (int(x) for x in task.prompt.removeprefix("What is ").removesuffix("?").split(" minus "))
        assert int(task.answer) == a - b >= 0
        task = FAMILIES["count"].make(rng)
        letter, word = task.prompt.split("'")[1], task.prompt.split("'")[3]
        assert int(task.answer) == word.count(letter)
        task = FAMILIES["sort"].make(rng)
        words = task.prompt.split(": ")[1].rstrip(".").split(", ")
        assert task.answer.split(", ") == sorted(words)
    assert Addition(max_value=5).make(rng).prompt.count("plus") == 1


def test_extract_answer_edge_cases():
    assert extract_answer("Answer: 42") == "42"
    assert extract_answer("answer:42.") == "42"
    assert extract_answer("First try. Answer: 3\nAnswer:  'elppa' ") == "elppa"  # the last marker
    assert extract_answer("ANSWER: apple, river\nthanks") == "apple, river"
    assert extract_answer("The result is 5.") is None
    assert extract_answer("Answer:") is None
    assert extract_answer("Answer:   \n5") is None
    assert extract_answer("") is None and extract_answer(None) is None


def test_is_correct_normalisation():
    assert is_correct("68", "Answer: 068")
    assert is_correct("apple, river, tiger", "Answer: apple,river ,  tiger.")
    assert is_correct("elppa", "Answer: ELPPA")  # case is ignored for lowercase gold answers
    assert not is_correct("APPLE", "Answer: apple")  # ... but matters for the capital-letters task
    assert is_correct({"answer": "n"}, "answer: 'n'")
    assert not is_correct("5", "5")  # no marker, no answer
    assert not is_correct("5", "Answer: 55")


def test_multi_turn_follow_ups_depend_on_the_first_answer():
    rng = random.Random(1)
    records = [r for r in generate_world(300, seed=1, multi_turn_rate=1.0)]
    assert {r["task"] for r in records} == {MULTI_TURN}
    seen = Counter()
    for r in records:
        first = extract_answer(r["messages"][1]["content"])
        question = r["messages"][2]["content"]
        seen[r["followup"]] += 1
        if r["followup"] in ("add_k", "subtract_k"):
            k = int(question.split()[2])
            expected = int(first) + (k if r["followup"] == "add_k" else -k)
            assert int(r["answer"]) == expected >= 0
        elif r["followup"] == "reverse_it":
            assert r["answer"] == first[::-1]
        elif r["followup"] == "capitalise_it":
            assert r["answer"] == first.upper() != first
        elif r["followup"] == "letter_after":
            assert ord(r["answer"]) == ord(first) + 1
        else:
            items = first.split(", ")
            assert r["answer"] == (items[0] if r["followup"] == "first_word" else items[-1])
        assert is_correct(r, r["messages"][-1]["content"])
        assert prompt_messages(r) == r["messages"][:3]
    assert set(seen) == {
        "add_k",
        "subtract_k",
        "reverse_it",
        "capitalise_it",
        "letter_after",
        "first_word",
        "last_word",
    }
    # a follow-up's typical mistake is forgetting it: the first answer again
    task = FAMILIES["add"].make(rng)
    assert follow_up(task, rng).mistakes == (task.answer,)


def test_exact_match_and_per_family_report():
    records = list(generate_world(40, seed=2, multi_turn_rate=0.2))
    rng = random.Random(0)
    responses = [
        r["messages"][-1]["content"] if i % 2 == 0 else wrong_answer(r, rng) for i, r in enumerate(records)
    ]
    responses[1] = "I do not know."
    assert exact_match(records, responses) == 0.5
    report = exact_match_report(records, responses)
    assert report["exact_match"] == 0.5 and report["n"] == 40 and report["no_answer"] == 1 / 40
    assert sum(v["n"] for v in report["by_family"].values()) == 40
    for family, stats in report["by_family"].items():
        members = [i for i, r in enumerate(records) if r["task"] == family]
        assert stats["exact_match"] == sum(i % 2 == 0 for i in members) / len(members)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="2 records but 1 responses"):
        exact_match(records[:2], responses[:1])


def test_rule_judge_verdicts_and_signal_accuracy():
    records = list(generate_world(30, seed=5, multi_turn_rate=0.3))
    judge = RuleJudge(records)
    rng = random.Random(0)
    right = [r["messages"][-1]["content"] for r in records]
    wrong = [wrong_answer(r, rng) for r in records]
    prompts = [record_prompt(r) for r in records]
    assert judge(prompts[0], right[0], wrong[0]) == "a"
    assert judge(prompts[0], wrong[0], right[0]) == "b"
    assert judge(prompts[0], right[0], right[0]) is None
    assert judge(prompts[0], wrong[0], "no answer") is None
    with pytest.raises(KeyError, match="no gold answer"):
        judge("What is the capital of France?", "a", "b")
    triples = [(p, r, w) for p, r, w in zip(prompts, right, wrong, strict=True)]
    triples[0] = (prompts[0], wrong[0], right[0])
    triples[1] = (prompts[1], right[1], right[1])
    assert signal_accuracy(judge, triples) == {
        "signal_accuracy": 28 / 30,
        "signal_inverted": 1 / 30,
        "signal_unsure": 1 / 30,
    }
    by_mapping = RuleJudge({"What is 2 plus 3?": "5"})
    assert by_mapping("What is 2 plus 3?", "Answer: 5", "Answer: 6") == "a"


def test_rule_judge_from_a_prompt_set_file(tmp_path):
    from prefalign.core.jsonl import write_jsonl

    path = write_jsonl(tmp_path / "prompts.jsonl", prompt_set(20, seed=1))
    judge = RuleJudge.from_file(path)
    row = next(prompt_set(1, seed=1))
    assert judge(row["prompt"], f"Answer: {row['answer']}", wrong_answer(row, random.Random(0))) == "a"


def test_world_records_load_through_the_chat_data_module(tmp_path, make_tokenizer):
    from prefalign.core.jsonl import write_jsonl

    records = list(generate_world(60, seed=7, multi_turn_rate=0.3))
    path = write_jsonl(tmp_path / "world.jsonl", records)
    tokenizer = make_tokenizer("chatml")
    dm = ChatDataModule(tokenizer, train=str(path), val=str(path), max_length=512, batch_size=8)
    dm.setup()
    ds = dm.datasets["train"]
    assert len(ds) == 60 and {"task", "answer", "first_task", "followup"} <= set(ds.column_names)
    by_id = {r["id"]: r for r in records}
    for row in ds:
        record = by_id[row["id"]]
        assert row["answer"] == record["answer"] and row["task"] == record["task"]
        labelled = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
        responses = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        # the labels cover every assistant turn (and its end-of-turn token), nothing else
        assert labelled == "".join(f"{y}<|im_end|>" for y in responses)
    batches = list(dm.train_dataloader())
    assert all(b["input_ids"].shape == b["labels"].shape for b in batches)
    assert sorted(i for b in batches for i in b["id"]) == sorted(by_id)


def test_principles_file_gives_the_pipelines_system_messages():
    principles = load_principles(PRINCIPLES)
    assert list(principles) == ["Correctness"]
    good, bad = principle_system_messages(PRINCIPLES)
    assert good == principle_system_message(principles["Correctness"], True)
    assert bad == principle_system_message(principles["Correctness"], False)
    assert "Answer correctly." in good and "Answer incorrectly." in bad


def test_principle_conditioned_sft_splits_correct_and_wrong_by_condition(tmp_path, make_tokenizer):
    good, bad = principle_system_messages(PRINCIPLES)
    records = list(principle_conditioned_sft(600, seed=0, good_system=good, bad_system=bad))
    assert records == list(principle_conditioned_sft(600, seed=0, good_system=good, bad_system=bad))
    by_condition = Counter(r["condition"] for r in records)
    assert set(by_condition) == {"good", "bad", "none"} and min(by_condition.values()) > 150
    none_correct = []
    for r in records:
        response = r["messages"][-1]["content"]
        assert r["correct"] == is_correct(r, response)
        if r["condition"] == "good":
            assert r["messages"][0] == {"role": "system", "content": good} and r["correct"]
        elif r["condition"] == "bad":
            assert r["messages"][0] == {"role": "system", "content": bad} and not r["correct"]
        else:
            assert r["messages"][0]["role"] == "user"
            none_correct.append(r["correct"])
    assert 0.4 < sum(none_correct) / len(none_correct) < 0.6
    always = list(
        principle_conditioned_sft(100, 1, good, bad, none_correct_rate=1.0, condition_weights=(0, 0, 1))
    )
    assert all(r["correct"] and r["condition"] == "none" for r in always)
    row = records[0]
    assert condition_messages(row, "bad", good, bad) == [
        {"role": "system", "content": bad},
        [m for m in row["messages"] if m["role"] == "user"][0],
    ]
    # the data module accepts them (extra columns kept, the bool as a batch tensor)
    from prefalign.core.jsonl import write_jsonl

    path = write_jsonl(tmp_path / "principled.jsonl", records[:40])
    dm = ChatDataModule(make_tokenizer("chatml"), train=str(path), max_length=512, batch_size=8)
    dm.setup()
    assert {"condition", "correct", "answer"} <= set(dm.datasets["train"].column_names)
    assert next(iter(dm.train_dataloader()))["correct"].dtype.is_floating_point is False


def test_prompt_set_and_preferences_feed_the_sso_and_dpo_loaders(tmp_path):
    import datasets
    from omegaconf import OmegaConf

    from prefalign.core.jsonl import write_jsonl
    from prefalign.data.preference import PreferenceColumns, normalise_preferences
    from prefalign.pipelines.sso import load_prompt_splits

    path = write_jsonl(tmp_path / "prompts.jsonl", prompt_set(30, seed=2))
    splits = load_prompt_splits(OmegaConf.create({"path": str(path)}), 3, 0)
    assert [len(s) for s in splits] == [10, 10, 10]
    prefs = list(generate_preferences(20, seed=3))
    assert all(is_correct(p, p["chosen"]) and not is_correct(p, p["rejected"]) for p in prefs)
    ds, report = normalise_preferences(
        datasets.Dataset.from_list(prefs), PreferenceColumns(), ["prompt", "chosen", "rejected"], "prefs"
    )
    assert len(ds) == 20 and not report.dropped


def test_command_line_writes_the_splits(tmp_path, capsys):
    main(["world", str(tmp_path / "w"), "--train", "20", "--val", "5", "--test", "6", "--seed", "1"])
    lines = {p.name: p.read_text().splitlines() for p in (tmp_path / "w").iterdir()}
    assert {k: len(v) for k, v in lines.items()} == {"train.jsonl": 20, "val.jsonl": 5, "test.jsonl": 6}
    main(["principled", str(tmp_path / "p"), "--principles", str(PRINCIPLES), "--train", "9", "--val", "3"])
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == [
        "principled_train.jsonl",
        "principled_val.jsonl",
        "prompts.jsonl",
        "test.jsonl",
        "test_bad.jsonl",
        "test_good.jsonl",
    ]
    # the same test records, asked without a principle, under the good one and under the bad one
    plain, good, bad = (
        [json.loads(x) for x in (tmp_path / "p" / n).open()]
        for n in ("test.jsonl", "test_good.jsonl", "test_bad.jsonl")
    )
    good_system, bad_system = principle_system_messages(PRINCIPLES)
    assert [r["id"] for r in plain] == [r["id"] for r in good] == [r["id"] for r in bad]
    assert all(r["messages"][0]["role"] == "user" for r in plain)
    assert all(r["messages"][0] == {"role": "system", "content": good_system} for r in good)
    assert all(r["messages"][0] == {"role": "system", "content": bad_system} for r in bad)
    assert all(g["messages"][1:] == p["messages"] for g, p in zip(good, plain, strict=True))
    assert "train:" in capsys.readouterr().out
