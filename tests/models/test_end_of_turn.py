"""The chat template's end-of-turn token, found by rendering, and the ids that end an answer."""

from __future__ import annotations

import pytest

from prefalign.models.chat_templates import TEMPLATES, end_of_turn_ids, end_of_turn_token

EXPECTED = {"zephyr": "</s>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>", "mistral": "</s>"}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_end_of_turn_token_is_what_the_template_prints_after_an_answer(make_tokenizer, name):
    tokenizer = make_tokenizer(name)
    assert end_of_turn_token(tokenizer) == EXPECTED[name] == TEMPLATES[name].eos_token


def test_an_overridden_template_adds_its_end_of_turn_to_the_models_eos(make_tokenizer):
    import copy

    tokenizer = copy.deepcopy(make_tokenizer("zephyr"))  # EOS </s>
    eos = tokenizer.convert_tokens_to_ids("</s>")
    assert end_of_turn_ids(tokenizer, eos) == [eos]
    tokenizer.chat_template = TEMPLATES["chatml"].jinja  # Jinja override: the EOS stays </s>
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tokenizer, eos) == [eos, im_end]
    assert end_of_turn_ids(tokenizer, [eos, 7]) == [eos, 7, im_end]
    assert end_of_turn_ids(tokenizer) == [eos, im_end]


def test_a_template_printing_no_special_token_after_the_answer_has_no_end_of_turn(make_tokenizer):
    import copy

    tokenizer = copy.deepcopy(make_tokenizer("chatml"))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_token(tokenizer) is None
    assert end_of_turn_ids(tokenizer, None) == [tokenizer.eos_token_id]
    tokenizer.chat_template = "{{ raise_exception('no') }}"
    assert end_of_turn_token(tokenizer) is None
