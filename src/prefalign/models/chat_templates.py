"""Public chat templates, verbatim from the models' ``tokenizer_config.json``.

They are used as fixtures (tests render and mask conversations with each) and by the ``tiny``
model, whose tokenizer can speak any of them. Each entry gives the Jinja template and the special
tokens it refers to (``bos_token`` / ``eos_token``), since a template is only meaningful together
with the tokens it prints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template with the special tokens it prints.

    Attributes:
        name: short name used in configs (``model.tiny.template``).
        source: the public model whose ``tokenizer_config.json`` the template comes from.
        jinja: the template text.
        bos_token / eos_token: the tokenizer's BOS and EOS; ``eos_token`` ends an assistant turn.
        supports_system: whether the template accepts a ``system`` message.
    """

    name: str
    source: str
    jinja: str
    bos_token: str
    eos_token: str
    supports_system: bool = True


ZEPHYR = ChatTemplate(
    name="zephyr",
    source="HuggingFaceH4/zephyr-7b-beta",
    jinja=(
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
    bos_token="<s>",
    eos_token="</s>",
)

LLAMA3 = ChatTemplate(
    name="llama3",
    source="meta-llama/Meta-Llama-3-8B-Instruct",
    jinja=(
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
)

CHATML = ChatTemplate(
    name="chatml",
    source="teknium/OpenHermes-2.5-Mistral-7B",
    jinja=(
        "{% for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    bos_token="<s>",
    eos_token="<|im_end|>",
)

MISTRAL = ChatTemplate(
    name="mistral",
    source="mistralai/Mistral-7B-Instruct-v0.1",
    jinja=(
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
        "{% endif %}{% endfor %}"
    ),
    bos_token="<s>",
    eos_token="</s>",
    supports_system=False,
)

TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (ZEPHYR, LLAMA3, CHATML, MISTRAL)}

# Every special token the templates above print; the project's offline tokenizer knows them all.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<s>",
    "</s>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "[/INST]",
)


def get_template(name: str) -> ChatTemplate:
    """Return the template called ``name``; raises ``KeyError`` listing the known names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}") from None
