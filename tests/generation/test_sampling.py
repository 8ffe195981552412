"""Batched generation: equals one-at-a-time greedy decoding, seeded sampling, length flags, long prompts."""

from __future__ import annotations

import pytest

from prefalign.core.errors import DataError
from prefalign.generation.sampling import HFGenerator, SamplingConfig, filter_prompts_by_length

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 30? Think."}],
    [{"role": "user", "content": "Reverse the word 'forest', please, letter by letter."}],
]


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    generator = HFGenerator(model, tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12, batch_size=3)
    batched = generator.generate(CONVERSATIONS, greedy)
    alone = [
        generator.generate([c], SamplingConfig(temperature=0.0, max_new_tokens=12, batch_size=1))[0]
        for c in CONVERSATIONS
    ]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(g.hit_max_new_tokens == (g.num_tokens == 12) for g in batched)


def test_sampling_is_seeded(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    generator = HFGenerator(model, tokenizer)
    a = generator.generate(CONVERSATIONS, SamplingConfig(max_new_tokens=8, seed=3))
    b = generator.generate(CONVERSATIONS, SamplingConfig(max_new_tokens=8, seed=3))
    c = generator.generate(CONVERSATIONS, SamplingConfig(max_new_tokens=8, seed=4))
    assert a == b and a != c
    assert model.training  # the training mode is restored


def test_long_prompts_are_counted_or_refused(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    long = [{"role": "user", "content": "x" * 5000}]
    keep, report = filter_prompts_by_length(["a", "b"], [CONVERSATIONS[0], long], tokenizer, 512)
    assert keep == [0] and report.examples == {"prompt_too_long": ["b"]}
    with pytest.raises(DataError, match="prompt 0 has .* tokens; the model allows 4096"):
        HFGenerator(model, tokenizer).generate([long], SamplingConfig(max_new_tokens=4))
