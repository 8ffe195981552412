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


def test_keyed_sampling_does_not_depend_on_the_batch(tiny_model_and_tokenizer):
    """Each prompt sampled with its own stream (seed, key): the same response alone, in a batch,
    in another order: what lets prompts be split over processes without changing the samples."""
    model, tokenizer = tiny_model_and_tokenizer
    generator = HFGenerator(model, tokenizer)
    config = SamplingConfig(max_new_tokens=10, seed=7, batch_size=3)
    keys = ["1/a", "1/b", "1/c"]
    batched = generator.generate(CONVERSATIONS, config, keys=keys)
    alone = [generator.generate([c], config, keys=[k])[0] for c, k in zip(CONVERSATIONS, keys, strict=True)]
    reversed_ = generator.generate(CONVERSATIONS[::-1], config, keys=keys[::-1])[::-1]
    assert batched == alone == reversed_
    other_seed = generator.generate(CONVERSATIONS, SamplingConfig(max_new_tokens=10, seed=8), keys=keys)
    other_keys = generator.generate(CONVERSATIONS, config, keys=["2/a", "2/b", "2/c"])
    assert other_seed != batched and other_keys != batched
    assert len({g.text for g in generator.generate([CONVERSATIONS[0]] * 3, config, keys=keys)}) > 1


def test_keyed_sampling_draws_from_the_top_p_nucleus():
    import torch

    from prefalign.generation.sampling import PerRowSampler

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = PerRowSampler(["k"], SamplingConfig(temperature=1.0, top_p=0.8, seed=0))
    draws = [int(sampler(None, scores).argmax()) for _ in range(2000)]
    counts = [draws.count(t) for t in range(4)]
    assert counts[2] == counts[3] == 0  # outside the smallest set reaching 0.8
    assert abs(counts[0] / 2000 - 0.5 / 0.8) < 0.04 and abs(counts[1] / 2000 - 0.3 / 0.8) < 0.04


def test_generation_shows_a_labelled_bar_on_rank_zero_only(tiny_model_and_tokenizer, monkeypatch, capsys):
    from prefalign.core.progress import ENV

    model, tokenizer = tiny_model_and_tokenizer
    generator = HFGenerator(model, tokenizer)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=2, batch_size=2)
    monkeypatch.setenv(ENV, "1")
    generator.generate(CONVERSATIONS, greedy, desc="iteration 1: y+")
    drawn = capsys.readouterr().err
    assert "iteration 1: y+" in drawn and "3/3" in drawn
    generator.generate(CONVERSATIONS, greedy)  # no label: no bar (e.g. inside the Trainer)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")
    generator.generate(CONVERSATIONS, greedy, desc="iteration 1: y+")
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("RANK")
    monkeypatch.setenv(ENV, "0")
    generator.generate(CONVERSATIONS, greedy, desc="iteration 1: y+")
    assert capsys.readouterr().err == ""


LONG_SYSTEM = "Answer as a careful assistant: " + "think about the question, then answer it. " * 6


def test_a_shared_prompt_prefix_is_computed_once_and_changes_no_output(tiny_model_and_tokenizer, monkeypatch):
    """Prompts that all start with the same long text (as the Table 14 allocation prompt does):
    the prefix's KV cache is computed once and reused by every batch; greedy and keyed sampled
    outputs are the same tokens as without it, and the prompts' own tokens only are run per batch."""
    from prefalign.generation.sampling import prompt_token_ids, shared_prefix_length

    model, tokenizer = tiny_model_and_tokenizer
    conversations = [[{"role": "user", "content": LONG_SYSTEM + c[-1]["content"]}] for c in CONVERSATIONS]
    prompts = [prompt_token_ids(tokenizer, c) for c in conversations]
    shared = shared_prefix_length(prompts)
    assert shared >= 32 and all(len(p) > shared for p in prompts)
    generator = HFGenerator(model, tokenizer)
    keys = ["k/a", "k/b", "k/c"]
    for temperature in (0.0, 0.7):
        without = SamplingConfig(
            temperature=temperature, max_new_tokens=10, batch_size=2, shared_prefix_min_tokens=0
        )
        with_prefix = SamplingConfig(**{**without.__dict__, "shared_prefix_min_tokens": 32})
        plain = generator.generate(conversations, without, keys=keys)
        seen: list[int] = []  # the input length of each forward pass

        def record(_module, _args, kwargs, seen=seen):
            seen.append(kwargs["input_ids"].shape[-1])

        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            cached = generator.generate(conversations, with_prefix, keys=keys)
        finally:
            hook.remove()
        assert cached == plain
        assert seen[0] == shared  # the prefix alone, once
        prompt_passes = [n for n in seen[1:] if n > 1]  # each batch's first step: its own tokens
        assert len(prompt_passes) == 2 and max(prompt_passes) == max(len(p) for p in prompts) - shared
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # every prompt keeps a token of its own
    assert shared_prefix_length([[5], [6]]) == 0
