"""Rendering conversations with a model's own chat template and marking the response tokens.

One definition of "response tokens" serves every model in the project (the target, the aligned
LLMs, the reference): the tokens of every assistant turn's content plus the template's end-of-turn
token (so the model learns to stop), and nothing of role headers, user or system text.

How the spans are found: an assistant turn ``i`` starts where the rendering of ``messages[:i]``
with the generation prompt ends, and stops where the rendering of ``messages[:i+1]`` ends, trailing
whitespace excluded. Both renderings must be prefixes of the full rendering (true for the public
templates we test: Zephyr, Llama-3, ChatML, Mistral); a template for which they are not is
reported with the sample id rather than silently mis-masked. Tokens are assigned to spans through
the fast tokenizer's character offsets, so no ``{% generation %}`` tags are needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import weakref
from dataclasses import dataclass

import datasets
from transformers import PreTrainedTokenizerBase

from prefalign.core.errors import DataError, DropReport

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Bump when the encoding below changes, so cached tokenisations are not reused.
ENCODING_VERSION = "1"


class TemplateError(DataError):
    """The chat template cannot render a conversation, or renders it in a way we cannot mask."""


@dataclass
class EncodedConversation:
    """A tokenised conversation.

    Attributes:
        input_ids: token ids of the full rendering (no extra special tokens added).
        labels: ``input_ids`` on response tokens, :data:`IGNORE_INDEX` elsewhere (unshifted).
        num_response_tokens: response tokens kept after truncation.
        truncated: whether the rendering was longer than ``max_length``.
    """

    input_ids: list[int]
    labels: list[int]
    num_response_tokens: int
    truncated: bool


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool, sample_id: str
) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as err:  # noqa: BLE001 - a template's raise_exception, or a Jinja error
        raise TemplateError(
            f"sample {sample_id}: the chat template cannot render this conversation: {err}"
        ) from err


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], sample_id: str = "?"
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and return (text, character spans of the assistant responses)."""
    if tokenizer.chat_template is None:
        raise TemplateError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; set model.chat_template"
        )
    text = _render(tokenizer, messages, False, sample_id)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], True, sample_id)
        upto = _render(tokenizer, messages[: i + 1], False, sample_id)
        if not text.startswith(head) or not text.startswith(upto):
            raise TemplateError(
                f"sample {sample_id}: the chat template is not prefix-consistent at assistant turn {i} "
                "(rendering the conversation up to a turn is not a prefix of rendering all of it), so its "
                "response tokens cannot be located"
            )
        start, end = len(head), len(upto.rstrip())
        if end <= start:
            raise TemplateError(f"sample {sample_id}: assistant turn {i} renders to no text")
        spans.append((start, end))
    return text, spans


# Tokens tokenised past max_length before a clipped conversation's cut, so that the kept tokens
# never depend on where the cut fell (only tokens next to a cut can change).
CLIP_MARGIN_TOKENS = 64
CLIP_MARK = "."
_MAX_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the characters one token covers: the longest vocabulary entry (a byte-level
    entry has one symbol per byte, a SentencePiece entry one per character; cached per tokenizer)."""
    try:
        return _MAX_TOKEN_CHARS[tokenizer]
    except (KeyError, TypeError):
        pass
    bound = max(1, max((len(token) for token in tokenizer.get_vocab()), default=1))
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _MAX_TOKEN_CHARS[tokenizer] = bound
    return bound


def clip_conversation(messages: list[dict], max_chars: int) -> tuple[list[dict], bool]:
    """The conversation cut to its first ``max_chars`` characters of message content (later turns
    dropped, the turn at the limit cut and ended with :data:`CLIP_MARK`), and whether anything was cut.

    Rendering the clipped conversation gives a prefix of at least ``max_chars`` characters in
    common with the full rendering (a template only adds text around the contents), so the
    tokens that fit in that prefix are the same, and an oversized record is never rendered nor
    tokenised whole.
    """
    clipped: list[dict] = []
    remaining = max_chars
    for message in messages:
        if remaining <= 0:
            return clipped, True
        content = message["content"]
        if len(content) <= remaining:
            clipped.append(message)
            remaining -= len(content)
            continue
        # the cut ends in a non-blank mark, so a template that trims contents (Llama-3) cannot eat
        # a run of whitespace before the cut; the mark lies past the tokens that are kept
        clipped.append({**message, "content": content[:remaining] + CLIP_MARK})
        return clipped, True
    return clipped, False


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int, sample_id: str = "?"
) -> EncodedConversation:
    """Tokenise a conversation with the tokenizer's chat template, labelling response tokens only.

    Truncation keeps the first ``max_length`` tokens. A conversation whose contents are longer than
    ``max_length + CLIP_MARGIN_TOKENS`` tokens could cover (:func:`max_token_chars`) is clipped
    first (:func:`clip_conversation`), so memory stays bounded by a multiple of ``max_length``
    however long the record.
    """
    if not tokenizer.is_fast:
        raise TemplateError(
            f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer; character offsets are needed"
        )
    messages, clipped = clip_conversation(
        messages, (max_length + CLIP_MARGIN_TOKENS) * max_token_chars(tokenizer)
    )
    text, spans = assistant_spans(tokenizer, messages, sample_id)
    # the cut to max_length below is ours: transformers' "... > model_max_length ... will result in
    # indexing errors" warning is only meaningful when max_length itself exceeds the model's maximum
    encoding = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        verbose=max_length > tokenizer.model_max_length,
    )
    input_ids = encoding["input_ids"]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for t, (char_start, char_end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and spans[span_index][1] <= char_start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if char_end > span_start and char_start < span_end:
            labels[t] = input_ids[t]
    truncated = clipped or len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedConversation(
        input_ids=input_ids,
        labels=labels,
        num_response_tokens=sum(label != IGNORE_INDEX for label in labels),
        truncated=truncated,
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything about a tokenizer that changes the encoding (vocab, merges, template, specials)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None)  # call-time settings, not part of the encoding
        state.pop("truncation", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()[:16]


def tokenize_dataset(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    source: str,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, DropReport]:
    """Tokenise every conversation; drop (and count) samples whose responses are fully truncated.

    Adds ``input_ids``, ``labels``, ``length`` and ``num_response_tokens``; keeps ``id`` and any
    other column except ``messages``. The result is cached by ``datasets`` under a fingerprint of
    (input data, tokenizer, chat template, ``max_length``, encoding version), so a second run with
    the same inputs reads the cache.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")

    def encode(row: dict) -> dict:
        try:
            enc = encode_conversation(tokenizer, row["messages"], max_length, row["id"])
        except TemplateError as err:
            raise TemplateError(f"{source}: {err}") from err
        return {
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "length": len(enc.input_ids),
            "num_response_tokens": enc.num_response_tokens,
            "truncated": enc.truncated,
        }

    fingerprint = hashlib.sha256(
        f"{ds._fingerprint}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{ENCODING_VERSION}".encode()
    ).hexdigest()[:16]
    encoded = ds.map(
        encode,
        remove_columns=["messages"],
        new_fingerprint=fingerprint,
        num_proc=num_proc,
        desc=f"tokenising {source}",
    )
    report = DropReport(total=len(encoded))
    counts = encoded["num_response_tokens"]
    empty = [i for i, n in enumerate(counts) if n == 0]
    if empty:
        ids = encoded.select(empty)["id"]
        for sample_id in ids:
            report.add("response_truncated", sample_id)
        keep = [i for i, n in enumerate(counts) if n > 0]
        encoded = encoded.select(keep)
        log.warning(
            "%s: %d samples dropped because max_length=%d leaves none of their response tokens (e.g. %s)",
            source,
            len(empty),
            max_length,
            report.examples["response_truncated"],
        )
    if len(encoded) == 0:
        raise DataError(f"{source}: no sample left after tokenisation with max_length={max_length}")
    n_truncated = sum(encoded["truncated"])
    if n_truncated:
        log.info(
            "%s: %d samples truncated to max_length=%d (responses partly kept)",
            source,
            n_truncated,
            max_length,
        )
    return encoded, report
