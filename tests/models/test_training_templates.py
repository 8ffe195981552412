"""The ``{% generation %}``-marked forms of the project's chat templates: they render every
conversation byte-identically to the public templates, and the assistant mask Hugging Face derives
from their markers is exactly the project's response tokens (:mod:`prefalign.data.chat`)."""

from __future__ import annotations

from prefalign.data.chat import IGNORE_INDEX, encode_conversation
from prefalign.models.chat_templates import TEMPLATES, training_template

CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": " Hello! How can I help?  "}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": " and 3+3?\n"},
        {"role": "assistant", "content": "6\n\nok"},
    ],
]


def _conversations(template):
    for conversation in CONVERSATIONS:
        if not template.supports_system:
            conversation = [m for m in conversation if m["role"] != "system"]
        yield conversation


def test_the_marked_template_renders_byte_identically(template_name, make_tokenizer):
    template, tokenizer = TEMPLATES[template_name], make_tokenizer(template_name)
    assert "{% generation %}" in template.training_jinja and "{% generation %}" not in template.jinja
    for conversation in _conversations(template):
        for messages, generation_prompt in ((conversation, False), (conversation[:-1], True)):
            renders = [
                tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=jinja
                )
                for jinja in (template.jinja, template.training_jinja)
            ]
            assert renders[0] == renders[1]


def test_its_assistant_mask_is_the_projects_response_tokens(template_name, make_tokenizer):
    template, tokenizer = TEMPLATES[template_name], make_tokenizer(template_name)
    for conversation in _conversations(template):
        ours = encode_conversation(tokenizer, conversation, max_length=4096)
        marked = tokenizer.apply_chat_template(
            conversation,
            chat_template=template.training_jinja,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert marked["input_ids"] == ours.input_ids
        assert marked["assistant_masks"] == [int(label != IGNORE_INDEX) for label in ours.labels]
        assert sum(marked["assistant_masks"]) == ours.num_response_tokens > 0


def test_only_the_projects_own_templates_are_rewritten():
    for template in TEMPLATES.values():
        assert training_template(template.jinja) == template.training_jinja
    other = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert training_template(other) == other
    assert training_template(None) is None
