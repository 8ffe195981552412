"""The Table 15 judge asks both orders and is unsure when they disagree; signal accuracy counts verdicts."""

from __future__ import annotations

from prefalign.generation.judges import LLMJudge, signal_accuracy
from prefalign.generation.sampling import Generation


class _ScriptedGenerator:
    """Answers the judge prompts from a script: one answer per (prompt, order)."""

    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def generate(self, conversations, config):
        self.seen.extend(conversations)
        return [
            Generation(text=self.answers.pop(0), num_tokens=1, hit_max_new_tokens=False)
            for _ in conversations
        ]


def test_both_orders_must_agree():
    # per item: the answer with (a, b) shown as (m, M), then with (b, a)
    generator = _ScriptedGenerator(["m", "M", "M", "m", "m", "m", "garbage", "M"])
    judge = LLMJudge(generator)
    verdicts = judge.judge_many(
        [("p1", "a1", "b1"), ("p2", "a2", "b2"), ("p3", "a3", "b3"), ("p4", "a4", "b4")]
    )
    assert verdicts == ["a", "b", None, None]
    first, swapped = generator.seen[0][1]["content"], generator.seen[1][1]["content"]
    assert first.index("a1") < first.index("b1") and swapped.index("b1") < swapped.index("a1")
    assert judge.config.temperature == 0.0


def test_signal_accuracy_counts_verdicts():
    verdicts = iter(["a", "a", "b", None])
    stats = signal_accuracy(lambda p, a, b: next(verdicts), [("p", "a", "b")] * 4)
    assert stats == {"signal_accuracy": 0.5, "signal_inverted": 0.25, "signal_unsure": 0.25}


def test_the_judge_labels_its_bar_when_the_backend_draws_one(monkeypatch, capsys):
    from prefalign.core.progress import ENV

    class _Labelled(_ScriptedGenerator):
        def generate(self, conversations, config, desc=None):
            self.desc = desc
            return super().generate(conversations, config)

    generator = _Labelled(["m", "M"])
    assert LLMJudge(generator).judge_many([("p", "a", "b")]) == ["a"]
    assert generator.desc == "judge (both orders)"
    monkeypatch.setenv(ENV, "1")
    verdicts = iter(["a", "b"])
    signal_accuracy(lambda p, a, b: next(verdicts), [("p", "a", "b")] * 2)  # pair by pair: a bar
    assert "2/2" in capsys.readouterr().err


def test_signal_accuracy_tells_position_bias_and_off_format_answers_from_disagreement():
    # item 1: agree on a; item 2: always "m" (position bias, unsure); item 3: off-format (unsure)
    generator = _ScriptedGenerator(["m", "M", "m", "m", "The best", "M"])
    stats = signal_accuracy(LLMJudge(generator), [("p1", "a", "b"), ("p2", "a", "b"), ("p3", "a", "b")])
    assert stats["signal_accuracy"] == stats["signal_unsure"] / 2 == 1 / 3
    assert stats["judge_answers/m"] == 3 / 6 and stats["judge_answers/M"] == 2 / 6
    assert stats["judge_answers/unparsed"] == 1 / 6


def test_a_judge_can_count_identifiers_named_inside_a_sentence():
    answers = ["The best model identifier is: m", "The best is M.", "The best model is m"] * 2
    strict = signal_accuracy(LLMJudge(_ScriptedGenerator(list(answers[:4]))), [("p", "a", "b")] * 2)
    assert strict["signal_unsure"] == 1.0 and strict["judge_answers/unparsed"] == 1.0
    lenient = LLMJudge(_ScriptedGenerator(list(answers[:4])), in_sentence=True)
    stats = signal_accuracy(lenient, [("p", "a", "b")] * 2)
    # item 1: m then M (a both times); item 2: m then m (position bias: unsure)
    assert stats["signal_accuracy"] == stats["signal_unsure"] == 0.5
    assert stats["judge_answers/unparsed"] == 0.0
