"""Public chat templates, verbatim from the models' ``tokenizer_config.json``.

They are used as fixtures (tests render and mask conversations with each) and by the ``tiny``
model, whose tokenizer can speak any of them. Each entry gives the Jinja template and the special
tokens it refers to (``bos_token`` / ``eos_token``), since a template is only meaningful together
with the tokens it prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template with the special tokens it prints.

    Attributes:
        name: short name used in configs (``model.tiny.template``).
        source: the public model whose ``tokenizer_config.json`` the template comes from.
        jinja: the template text.
        bos_token / eos_token: the tokenizer's BOS and EOS; ``eos_token`` ends an assistant turn.
        supports_system: whether the template accepts a ``system`` message.
        training_jinja: the same template with ``{% generation %}`` / ``{% endgeneration %}`` around
            each assistant turn's content and end-of-turn token (the project's response tokens,
            :mod:`prefalign.data.chat`). The markers render nothing, so it renders byte-identically
            to ``jinja``; Hugging Face's ``return_assistant_tokens_mask`` and TRL's
            ``assistant_only_loss=True`` need them. Exports carry it (:func:`training_template`).
    """

    name: str
    source: str
    jinja: str
    bos_token: str
    eos_token: str
    training_jinja: str
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
    training_jinja=(
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        "{{ '\n' }}"  # a newline after a block tag is trimmed, after an expression it is printed
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
    training_jinja=(
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set header = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' %}"
        "{% if loop.index0 == 0 %}{% set header = bos_token + header %}{% endif %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ header }}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ header + message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
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
    training_jinja=(
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
        "{% endgeneration %}{{ '\n' }}"
        "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endif %}{% endfor %}"
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
    training_jinja=(
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ ' ' }}"
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


def training_template(chat_template: str | None) -> str | None:
    """The ``{% generation %}``-marked form of ``chat_template`` when it is one of the project's own
    templates (:data:`TEMPLATES`, verbatim), else ``chat_template`` unchanged (a model's own
    template is the model's: not rewritten). Both render byte-identically."""
    for template in TEMPLATES.values():
        if chat_template == template.jinja:
            return template.training_jinja
    return chat_template


def get_template(name: str) -> ChatTemplate:
    """Return the template called ``name``; raises ``KeyError`` listing the known names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}") from None


_SENTINEL = "PREFALIGN_END_OF_TURN_PROBE"


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the tokenizer's chat template prints right after an assistant turn's text
    (``<|eot_id|>`` for Llama-3, ``<|im_end|>`` for ChatML, ``</s>`` for Zephyr / Mistral), found
    by rendering a one-exchange conversation; ``None`` when the template prints no special token
    there (or cannot render a user/assistant exchange).

    This is the token a model trained with the template emits to end its answer, whatever the
    tokenizer's ``eos_token`` is (a Jinja override may print a token other than the EOS).
    """
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": _SENTINEL},
    ]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this exchange: no end-of-turn known
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    after = text.split(_SENTINEL, 1)[1]
    special = sorted(
        {str(t) for t in tokenizer.all_special_tokens} | set(getattr(tokenizer, "added_tokens_encoder", {})),
        key=len,
        reverse=True,
    )
    return next((token for token in special if token and after.startswith(token)), None)


def end_of_turn_ids(tokenizer: Any, eos_token_id: int | list[int] | None = None) -> list[int]:
    """The ids that end a generated answer: ``eos_token_id`` (e.g. the model's own
    ``generation_config.eos_token_id``, an int or a list), the tokenizer's EOS and the chat
    template's end-of-turn token (:func:`end_of_turn_token`), without repeats, in that order.

    With a chat template override (``model.chat_template=llama3`` on a base Llama-3) the model's
    EOS (``<|end_of_text|>``) and the template's end-of-turn (``<|eot_id|>``) differ: both stop
    generation.
    """
    given = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    ids = [int(i) for i in given]
    ids.append(tokenizer.eos_token_id)
    token = end_of_turn_token(tokenizer)
    if token is not None:
        ids.append(tokenizer.convert_tokens_to_ids(token))
    return [i for i in dict.fromkeys(ids) if i is not None]
