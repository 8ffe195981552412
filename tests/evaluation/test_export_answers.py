"""Answer export for MT-Bench (FastChat's answer files) and AlpacaEval 2.0 (alpaca_eval's model outputs)."""

from __future__ import annotations

import json

import pytest

from prefalign.config import bundled
from prefalign.evaluation.answers import (
    alpaca_eval_outputs,
    load_alpaca_eval_prompts,
    load_mt_bench_questions,
    mt_bench_answers,
)
from prefalign.evaluation.harness import EvalConfigError
from prefalign.generation.sampling import Generation, SamplingConfig


class EchoGenerator:
    """Answers with the number of messages it was shown and the temperature; records every call."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, config):
        self.calls.append(([list(c) for c in conversations], config))
        return [Generation(f"reply {len(c)} at {config.temperature}", 4, False) for c in conversations]


def test_mt_bench_second_turn_follows_the_models_first_answer():
    questions = load_mt_bench_questions(bundled("eval_demo_mt_bench_question.jsonl"))
    assert [q["category"] for q in questions] == ["writing", "math"]
    generator = EchoGenerator()
    sampling = SamplingConfig(temperature=0.5, top_p=1.0, max_new_tokens=16, seed=3)
    records, generations = mt_bench_answers(generator, questions, "tiny-sft", sampling, {"math": 0.0})
    assert len(generations) == 4
    # turn 1: the math question greedy (its category's temperature), writing at the default
    (greedy_convs, greedy_cfg), (default_convs, default_cfg), *second_turn = generator.calls
    assert greedy_cfg.temperature == 0.0 and default_cfg.temperature == 0.5
    assert greedy_cfg.seed == default_cfg.seed == 3 and greedy_cfg.max_new_tokens == 16
    assert greedy_convs == [[{"role": "user", "content": questions[1]["turns"][0]}]]
    # turn 2 is asked after the model's own first answer
    writing_turn_2 = next(convs[0] for convs, cfg in second_turn if cfg.temperature == 0.5)
    assert writing_turn_2 == [
        {"role": "user", "content": questions[0]["turns"][0]},
        {"role": "assistant", "content": "reply 1 at 0.5"},
        {"role": "user", "content": questions[0]["turns"][1]},
    ]
    for record, question in zip(records, questions, strict=True):
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert record["question_id"] == question["question_id"] and record["model_id"] == "tiny-sft"
        temperature = 0.0 if question["category"] == "math" else 0.5
        assert record["choices"] == [
            {"index": 0, "turns": [f"reply 1 at {temperature}", f"reply 3 at {temperature}"]}
        ]
    assert records[0]["answer_id"] != records[1]["answer_id"]


def test_alpaca_eval_outputs_keep_the_prompt_fields_and_replace_the_reference():
    prompts = load_alpaca_eval_prompts(bundled("eval_demo_alpaca_eval.json"))
    assert len(prompts) == 3
    prompts[0] = {**prompts[0], "output": "a reference answer", "generator": "gpt4_1106_preview"}
    outputs, _ = alpaca_eval_outputs(EchoGenerator(), prompts, "tiny-sft", SamplingConfig())
    assert [o["instruction"] for o in outputs] == [p["instruction"] for p in prompts]
    assert all(o["output"] == "reply 1 at 0.7" and o["generator"] == "tiny-sft" for o in outputs)
    assert all(o["dataset"] == "prefalign_demo" for o in outputs)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "q.jsonl",
            '{"question_id": 1, "turns": []}\n',
            r"q.jsonl, line 1: `turns` must be a non-empty list",
        ),
        ("q.jsonl", '{"turns": ["hi"]}\n', r"q.jsonl, line 1: an MT-Bench question needs a question_id"),
        (
            "q.jsonl",
            '{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n',
            r"q.jsonl, line 2: .*twice",
        ),
        ("q.jsonl", "{not json\n", r"q.jsonl, line 1: not JSON"),
    ],
)
def test_bad_mt_bench_files_are_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(EvalConfigError, match=message):
        load_mt_bench_questions(tmp_path / name)


def test_bad_alpaca_eval_files_are_named(tmp_path):
    with pytest.raises(EvalConfigError, match="prompt file .*missing.json does not exist"):
        load_alpaca_eval_prompts(tmp_path / "missing.json")
    (tmp_path / "p.json").write_text(json.dumps([{"instruction": "a"}, {"input": "b"}]))
    with pytest.raises(EvalConfigError, match=r"p.json: record 1 has no non-empty `instruction`"):
        load_alpaca_eval_prompts(tmp_path / "p.json")


def test_export_answers_cli_writes_fastchat_and_alpaca_eval_files(tmp_path, run_app):
    result = run_app(
        "prefalign.apps.export_answers",
        [
            "model_id=tiny-demo",
            "seed=7",
            "mt_bench.max_new_tokens=8",
            "alpaca_eval.max_new_tokens=8",
            "hydra.run.dir=out",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    lines = (out / "mt_bench" / "model_answer" / "tiny-demo.jsonl").read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["question_id"] for a in answers] == [1, 2]
    for answer in answers:
        assert set(answer) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert answer["model_id"] == "tiny-demo"
        (choice,) = answer["choices"]
        assert choice["index"] == 0 and len(choice["turns"]) == 2
        assert all(isinstance(turn, str) for turn in choice["turns"])
    outputs = json.loads((out / "alpaca_eval" / "tiny-demo.json").read_text())
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(set(o) == {"instruction", "dataset", "output", "generator"} for o in outputs)
    assert all(o["generator"] == "tiny-demo" and isinstance(o["output"], str) for o in outputs)
    for benchmark, path in (
        ("mt_bench", out / "mt_bench" / "model_answer" / "tiny-demo.settings.json"),
        ("alpaca_eval", out / "alpaca_eval" / "tiny-demo.settings.json"),
    ):
        settings = json.loads(path.read_text())
        assert settings["benchmark"] == benchmark and settings["model_id"] == "tiny-demo"
        assert settings["sampling"]["seed"] == 7 and settings["sampling"]["max_new_tokens"] == 8
        assert settings["model"]["tiny"]["hidden_size"] == 64
        assert settings["num_generations"] == (4 if benchmark == "mt_bench" else 3)
    mt_settings = json.loads((out / "mt_bench" / "model_answer" / "tiny-demo.settings.json").read_text())
    assert mt_settings["category_temperature"]["math"] == 0.0 and mt_settings["sampling"]["top_p"] == 1.0
