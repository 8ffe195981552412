"""Response masks (`assistant_spans`, `encode_conversation`) and `tokenize_dataset` (drops, caching)."""

from __future__ import annotations

import json
import os

import datasets
import pytest

import prefalign.data.chat as chat
from prefalign.core.errors import DataError
from prefalign.data.chat import (
    IGNORE_INDEX,
    TemplateError,
    assistant_spans,
    encode_conversation,
    tokenize_dataset,
)
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.models.chat_templates import TEMPLATES
from prefalign.models.tokenizer import build_tokenizer

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
TURNS = [
    {"role": "user", "content": "Reverse the word 'stone', please."},
    {"role": "assistant", "content": "enots"},
    {"role": "user", "content": "Now in French: café ☕?"},
    {"role": "assistant", "content": "Café — « enots » ☕"},
    {"role": "user", "content": "And what is 2 + 40? Answer as the assistant would."},
    {"role": "assistant", "content": "2 plus 40 is 42.\nDone."},
]
RESPONSES = [m["content"] for m in TURNS if m["role"] == "assistant"]
PROMPTS = [m["content"] for m in TURNS if m["role"] == "user"]


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """Every test gets its own `datasets` cache, so cache hits can only come from the test itself."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _messages(template_name: str) -> list[dict]:
    return ([SYSTEM] if TEMPLATES[template_name].supports_system else []) + TURNS


def _runs(input_ids, labels, labelled: bool) -> list[list[int]]:
    """Contiguous runs of labelled (or of unlabelled) token ids."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if (label != IGNORE_INDEX) == labelled:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _decoded_runs(tokenizer, encoded, labelled: bool = True) -> list[str]:
    return [tokenizer.decode(run) for run in _runs(encoded.input_ids, encoded.labels, labelled)]


# ------------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("bpe_merges", [0, 300], ids=["bytes", "bpe300"])
def test_only_assistant_contents_and_their_end_of_turn_token_are_labelled(
    make_tokenizer, template_name, bpe_merges
):
    tokenizer = make_tokenizer(template_name, bpe_merges=bpe_merges)
    template = TEMPLATES[template_name]
    messages = _messages(template_name)
    encoded = encode_conversation(tokenizer, messages, max_length=4096, sample_id="s1")

    # the token ids are exactly the rendering, with no extra BOS/EOS added
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == rendered
    assert len(encoded.labels) == len(encoded.input_ids)
    assert not encoded.truncated

    # labels are either ignored or equal to the input token (unshifted)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (IGNORE_INDEX, token)

    # each labelled run is one assistant content followed by the end-of-turn token, nothing else
    labelled = _decoded_runs(tokenizer, encoded)
    assert labelled == [f"{response}{template.eos_token}" for response in RESPONSES]
    assert encoded.num_response_tokens == sum(label != IGNORE_INDEX for label in encoded.labels)
    assert encoded.num_response_tokens == sum(len(r) for r in _runs(encoded.input_ids, encoded.labels, True))

    # prompts, the system text and every role header are in the unlabelled part
    unlabelled = "".join(_decoded_runs(tokenizer, encoded, labelled=False))
    for prompt in PROMPTS:
        assert prompt in unlabelled
        assert not any(prompt in run for run in labelled)
    if template.supports_system:
        assert SYSTEM["content"] in unlabelled
        assert not any(SYSTEM["content"] in run for run in labelled)
    assert len(unlabelled) + sum(len(run) for run in labelled) == len(rendered)


def test_bpe_tokenizer_really_merges_bytes(make_tokenizer):
    """Guards the BPE case above: it must tokenise differently from the byte tokenizer."""
    messages = _messages("llama3")
    by_bytes = encode_conversation(make_tokenizer("llama3"), messages, 4096)
    by_bpe = encode_conversation(make_tokenizer("llama3", bpe_merges=300), messages, 4096)
    assert len(by_bpe.input_ids) < 0.8 * len(by_bytes.input_ids)
    assert by_bpe.num_response_tokens < by_bytes.num_response_tokens


def test_assistant_spans_are_the_responses_with_their_end_of_turn_token(make_tokenizer, template_name):
    tokenizer = make_tokenizer(template_name)
    eos = TEMPLATES[template_name].eos_token
    text, spans = assistant_spans(tokenizer, _messages(template_name), "s1")
    assert [text[start:end] for start, end in spans] == [f"{r}{eos}" for r in RESPONSES]
    assert spans == sorted(spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_single_turn_conversation(make_tokenizer, template_name):
    tokenizer = make_tokenizer(template_name)
    eos = TEMPLATES[template_name].eos_token
    encoded = encode_conversation(tokenizer, TURNS[:2], 4096, "one")
    assert _decoded_runs(tokenizer, encoded) == [f"enots{eos}"]
    assert encoded.num_response_tokens == len("enots") + 1  # one token per byte, plus the end of turn


# ----------------------------------------------------------------------------------- template errors


def test_mistral_rejects_a_system_turn_naming_the_sample(make_tokenizer):
    with pytest.raises(TemplateError, match=r"^sample conv-42: the chat template cannot render"):
        encode_conversation(make_tokenizer("mistral"), [SYSTEM, *TURNS], 4096, "conv-42")


def test_tokenize_dataset_reports_the_source_and_the_sample_of_a_template_error(make_tokenizer):
    ds = datasets.Dataset.from_list(
        [{"id": "fine", "messages": TURNS}, {"id": "with-system", "messages": [SYSTEM, *TURNS]}]
    )
    with pytest.raises(TemplateError, match=r"^chats\.jsonl: sample with-system: the chat template cannot"):
        tokenize_dataset(ds, make_tokenizer("mistral"), 4096, "chats.jsonl")


def test_a_tokenizer_without_chat_template_is_an_error():
    tokenizer = build_tokenizer("chatml")
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template"):
        encode_conversation(tokenizer, TURNS, 4096, "s1")
    with pytest.raises(TemplateError, match="has no chat template"):
        assistant_spans(tokenizer, TURNS, "s1")


NOT_PREFIX_CONSISTENT = {
    # renders the turns last to first
    "reversed": "{% for m in messages | reverse %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}",
    # a header counting all the messages
    "counter": (
        "[{{ messages | length }} messages]"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    ),
}


@pytest.mark.parametrize("kind", sorted(NOT_PREFIX_CONSISTENT))
def test_a_template_that_is_not_prefix_consistent_is_reported(kind):
    tokenizer = build_tokenizer("zephyr")
    tokenizer.chat_template = NOT_PREFIX_CONSISTENT[kind]
    with pytest.raises(TemplateError, match=r"sample s7: .*not prefix-consistent at assistant turn 1"):
        encode_conversation(tokenizer, TURNS, 4096, "s7")


def test_a_template_that_drops_assistant_turns_is_reported():
    tokenizer = build_tokenizer("chatml")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="sample s8: assistant turn 1 renders to no text"):
        encode_conversation(tokenizer, TURNS, 4096, "s8")


# --------------------------------------------------------------------------------------- truncation


def test_truncation_inside_the_second_response_keeps_the_first(make_tokenizer, template_name):
    tokenizer = make_tokenizer(template_name)
    eos = TEMPLATES[template_name].eos_token
    messages = _messages(template_name)
    full = encode_conversation(tokenizer, messages, 4096, "t")
    labelled_positions = [i for i, label in enumerate(full.labels) if label != IGNORE_INDEX]
    first_len = len(RESPONSES[0].encode()) + 1
    second_start = labelled_positions[first_len]  # first labelled token of the second response
    assert second_start > labelled_positions[first_len - 1] + 1  # there is a prompt in between

    cut = encode_conversation(tokenizer, messages, second_start + 2, "t")
    assert cut.truncated
    assert len(cut.input_ids) == len(cut.labels) == second_start + 2
    assert cut.input_ids == full.input_ids[: second_start + 2]
    assert cut.labels == full.labels[: second_start + 2]
    runs = _decoded_runs(tokenizer, cut)
    assert runs == [f"{RESPONSES[0]}{eos}", RESPONSES[1].encode()[:2].decode()]
    assert cut.num_response_tokens == first_len + 2

    # no cut at all when max_length is exactly the length; a cut as soon as it is one less
    assert not encode_conversation(tokenizer, messages, len(full.input_ids), "t").truncated
    without_last_eos = encode_conversation(tokenizer, messages, labelled_positions[-1], "t")
    assert without_last_eos.truncated
    assert without_last_eos.num_response_tokens == full.num_response_tokens - 1
    assert _decoded_runs(tokenizer, without_last_eos)[-1] == RESPONSES[-1]


def test_truncation_before_any_response_leaves_no_response_token(make_tokenizer):
    tokenizer = make_tokenizer("chatml")
    cut = encode_conversation(tokenizer, TURNS, 10, "t")
    assert cut.truncated and cut.num_response_tokens == 0 and set(cut.labels) == {IGNORE_INDEX}


def _file_dataset(tmp_path, rows, name="chats.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    ds, _ = normalise_records(load_raw(str(path)), ColumnMap(), str(path))
    return ds, str(path)


LONG_PROMPT = {
    "id": "long-prompt",
    "messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "ok"}],
    "score": 1.0,
}
LONG_RESPONSE = {
    "id": "long-response",
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * 200}],
    "score": 2.0,
}
SHORT = {
    "id": "short",
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "score": 3.0,
}


def test_tokenize_dataset_drops_and_counts_samples_whose_response_is_cut_off(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer("chatml")
    ds, path = _file_dataset(tmp_path, [LONG_PROMPT, LONG_RESPONSE, SHORT])
    tokenised, report = tokenize_dataset(ds, tokenizer, 64, path)

    assert tokenised["id"] == ["long-response", "short"]
    assert report.total == 3 and report.dropped == 1
    assert dict(report.counts) == {"response_truncated": 1}
    assert report.examples["response_truncated"] == ["long-prompt"]
    assert len(tokenised) + report.dropped == report.total
    assert sorted(tokenised.column_names) == sorted(
        ["id", "input_ids", "labels", "length", "num_response_tokens", "truncated", "score"]
    )
    assert tokenised["score"] == [2.0, 3.0]  # extra columns kept, aligned with their rows
    assert tokenised["truncated"] == [True, False]

    for row, source in zip(tokenised, [LONG_RESPONSE, SHORT], strict=True):
        expected = encode_conversation(tokenizer, source["messages"], 64, source["id"])
        assert row["input_ids"] == expected.input_ids and row["labels"] == expected.labels
        assert row["length"] == len(row["input_ids"]) <= 64
        assert row["num_response_tokens"] == sum(label != IGNORE_INDEX for label in row["labels"])
    assert tokenised[0]["length"] == 64
    # <|im_start|> "user\nhi" <|im_end|> "\n" <|im_start|> "assistant\n", one token per byte or special
    prompt_tokens = 1 + len("user\nhi") + 1 + 1 + 1 + len("assistant\n")
    assert tokenised[0]["num_response_tokens"] == 64 - prompt_tokens
    assert tokenised[1]["num_response_tokens"] == len("hello") + 1


def test_tokenize_dataset_raises_when_nothing_remains(tmp_path, make_tokenizer):
    ds, path = _file_dataset(tmp_path, [LONG_PROMPT, {**LONG_PROMPT, "id": "long-2"}])
    with pytest.raises(DataError, match="no sample left after tokenisation with max_length=64") as err:
        tokenize_dataset(ds, make_tokenizer("chatml"), 64, path)
    assert path in str(err.value)
    with pytest.raises(ValueError, match="max_length must be positive"):
        tokenize_dataset(ds, make_tokenizer("chatml"), 0, path)


# ------------------------------------------------------------------------------------------ caching


def test_tokenisation_is_cached_under_a_fingerprint_of_data_tokenizer_template_and_length(
    tmp_path, make_tokenizer, monkeypatch
):
    rows = [{"id": f"r{i}", "messages": TURNS[: 2 + 2 * (i % 3)]} for i in range(6)]
    tokenizer = make_tokenizer("chatml")
    first, path = _file_dataset(tmp_path, rows)
    again, _ = normalise_records(load_raw(path), ColumnMap(), path)  # loaded afresh from the same file
    assert first._fingerprint == again._fingerprint

    a, _ = tokenize_dataset(first, tokenizer, 128, path)
    assert a.cache_files and all(str(tmp_path) in f["filename"] for f in a.cache_files)

    # the second run reads the cache: encoding is never called
    def must_not_encode(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(chat, "encode_conversation", must_not_encode)
        b, _ = tokenize_dataset(again, tokenizer, 128, path)
        assert b._fingerprint == a._fingerprint
        assert b.cache_files == a.cache_files
        assert b["input_ids"] == a["input_ids"]
        with pytest.raises(AssertionError, match="instead of reading the cache"):  # the patch is live
            tokenize_dataset(again, tokenizer, 100, path)

    # a different max_length, a different template, or a different tokenizer: a different fingerprint
    shorter, _ = tokenize_dataset(first, tokenizer, 64, path)
    other_template = build_tokenizer("chatml")
    other_template.chat_template = TEMPLATES["chatml"].jinja + "{# same output, edited template #}"
    edited, _ = tokenize_dataset(first, other_template, 128, path)
    zephyr, _ = tokenize_dataset(first, make_tokenizer("zephyr"), 128, path)
    bpe, _ = tokenize_dataset(first, make_tokenizer("chatml", bpe_merges=300), 128, path)
    fingerprints = [x._fingerprint for x in (a, shorter, edited, zephyr, bpe)]
    assert len(set(fingerprints)) == len(fingerprints)
    assert edited["input_ids"] == a["input_ids"]  # (the edit really changed nothing but the text)


def test_changing_the_data_file_changes_the_fingerprint(tmp_path, make_tokenizer):
    rows = [{"id": f"r{i}", "messages": TURNS[:2]} for i in range(3)]
    ds, path = _file_dataset(tmp_path, rows)
    before, _ = tokenize_dataset(ds, make_tokenizer("chatml"), 128, path)
    mtime = os.stat(path).st_mtime_ns
    edited = [*rows[:2], {"id": "r2", "messages": TURNS[2:4]}]
    ds, _ = _file_dataset(tmp_path, edited)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a clearly later mtime, however coarse the clock
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    after, _ = tokenize_dataset(ds, make_tokenizer("chatml"), 128, path)
    assert after._fingerprint != before._fingerprint
    assert after["input_ids"][2] != before["input_ids"][2]
    assert after["input_ids"][:2] == before["input_ids"][:2]


def test_tokenizer_fingerprint_ignores_call_time_padding_state():
    from prefalign.data.chat import tokenizer_fingerprint
    from prefalign.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("chatml")
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a", "abc"], padding=True)
    assert tokenizer_fingerprint(tokenizer) == before


def _full_encoding(tokenizer, messages, max_length):
    """The encoding without clipping: render and tokenise the whole conversation, then cut."""
    text, spans = assistant_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(s < end and start < e for s, e in spans) else IGNORE_INDEX
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
    ]
    return encoding["input_ids"][:max_length], labels[:max_length]


@pytest.mark.parametrize("bpe_merges", [0, 200])
@pytest.mark.parametrize(
    "filler",
    ["The quick brown fox, café ☕ — jumps. ", "a", "word" * 40 + " ", "\n  \t"],
    ids=["prose", "one-letter-run", "long-words", "whitespace"],
)
def test_oversized_records_encode_exactly_like_the_whole_rendering(
    make_tokenizer, template_name, bpe_merges, filler
):
    """Clipping an oversized conversation before rendering keeps exactly the tokens and labels
    that rendering and tokenising the whole conversation would keep."""
    tokenizer = make_tokenizer(template_name, bpe_merges)
    budget = (32 + chat.CLIP_MARGIN_TOKENS) * chat.max_token_chars(tokenizer)
    long = "start " + filler * (3 * budget // len(filler) + 1) + " end"
    cases = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": long}],
        [{"role": "user", "content": long}, {"role": "assistant", "content": "ok"}],
        [
            *TURNS[:2],
            {"role": "user", "content": "more"},
            {"role": "assistant", "content": long},
            *TURNS[2:4],
        ],
    ]
    for max_length in (8, 32, 40):
        for messages in cases:
            enc = encode_conversation(tokenizer, messages, max_length)
            ids, labels = _full_encoding(tokenizer, messages, max_length)
            assert enc.input_ids == ids
            assert enc.labels == labels
            assert enc.truncated


def test_an_oversized_record_is_never_rendered_nor_tokenised_whole(make_tokenizer, monkeypatch):
    """A 2 MB response with max_length=64: every string rendered or tokenised stays within a fixed
    multiple of max_length characters (the old encoder rendered and tokenised all 2 MB, and its
    Python lists of ids, labels and offsets grew with the record: 8.5 GB for 21.6 MB)."""
    tokenizer = make_tokenizer("chatml", 200)
    max_length = 64
    bound = (max_length + chat.CLIP_MARGIN_TOKENS) * chat.max_token_chars(tokenizer) + 200
    seen = []
    render, call = type(tokenizer).apply_chat_template, type(tokenizer).__call__

    def recording_render(self, *args, **kwargs):
        text = render(self, *args, **kwargs)
        seen.append(len(text))
        return text

    def recording_call(self, text, *args, **kwargs):
        seen.append(len(text))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "apply_chat_template", recording_render)
    monkeypatch.setattr(type(tokenizer), "__call__", recording_call)
    huge = "All work and no play makes a dull model. " * 50_000
    enc = encode_conversation(
        tokenizer, [{"role": "user", "content": "write"}, {"role": "assistant", "content": huge}], max_length
    )
    assert len(huge) > 2_000_000 and seen
    assert max(seen) <= bound < len(huge) / 100
    assert len(enc.input_ids) == max_length and enc.truncated and enc.num_response_tokens > 0


def test_clip_conversation_cuts_at_the_limit_and_drops_later_turns():
    messages = [
        {"role": "user", "content": "abcd"},
        {"role": "assistant", "content": "efghij"},
        {"role": "user", "content": "k"},
    ]
    assert chat.clip_conversation(messages, 100) == (messages, False)
    clipped, cut = chat.clip_conversation(messages, 7)
    assert cut and clipped == [messages[0], {"role": "assistant", "content": "efg" + chat.CLIP_MARK}]
    clipped, cut = chat.clip_conversation(messages, 4)
    assert cut and clipped == [messages[0]]
