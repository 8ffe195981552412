"""Response masks on real public chat templates, truncation drops, and tokenisation caching."""

from __future__ import annotations

import json

import datasets
import pytest

from prefalign.data.chat import IGNORE_INDEX, TemplateError, encode_conversation, tokenize_dataset
from prefalign.data.records import ColumnMap, DataError, load_raw, normalise_records
from prefalign.models.chat_templates import TEMPLATES

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Reverse 'stone'."},
    {"role": "assistant", "content": "enots"},
    {"role": "user", "content": "And add 2 and 40?"},
    {"role": "assistant", "content": "2 plus 40 is 42."},
]


def _labelled_runs(tokenizer, encoded):
    """Decoded contiguous runs of labelled tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize("bpe_merges", [0, 300])
def test_only_assistant_turns_and_their_end_of_turn_token_are_labelled(
    make_tokenizer, template_name, bpe_merges
):
    tokenizer = make_tokenizer(template_name, bpe_merges)
    template = TEMPLATES[template_name]
    messages = ([SYSTEM] if template.supports_system else []) + TURNS
    encoded = encode_conversation(tokenizer, messages, max_length=4096, sample_id="s1")
    runs = _labelled_runs(tokenizer, encoded)
    assert runs == [f"enots{template.eos_token}", f"2 plus 40 is 42.{template.eos_token}"]
    assert encoded.num_response_tokens == sum(label != IGNORE_INDEX for label in encoded.labels)
    masked = tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE_INDEX]
    )
    assert "Reverse 'stone'." in masked and "add 2 and 40" in masked
    if template.supports_system:
        assert "You are terse." in masked
    assert not encoded.truncated


def test_a_template_that_rejects_system_turns_names_the_sample(make_tokenizer):
    with pytest.raises(
        TemplateError, match=r"sample s9: the chat template cannot render .*Conversation roles must alternate"
    ):
        encode_conversation(make_tokenizer("mistral"), [SYSTEM, *TURNS], 4096, "s9")


def test_missing_chat_template_is_an_error(make_tokenizer):
    bare = make_tokenizer("chatml")
    saved = bare.chat_template
    try:
        bare.chat_template = None
        with pytest.raises(TemplateError, match="has no chat template"):
            encode_conversation(bare, TURNS, 4096, "s1")
    finally:
        bare.chat_template = saved


def test_a_template_that_is_not_prefix_consistent_is_reported(make_tokenizer):
    tokenizer = make_tokenizer("chatml")
    saved = tokenizer.chat_template
    try:  # the header counts the messages, so a prefix renders differently from the whole
        tokenizer.chat_template = (
            "[{{ messages | length }}]{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        )
        with pytest.raises(TemplateError, match="not prefix-consistent at assistant turn 1"):
            encode_conversation(tokenizer, TURNS, 4096, "s2")
    finally:
        tokenizer.chat_template = saved


def test_truncation_keeps_the_start_and_labels_what_is_left(make_tokenizer):
    tokenizer = make_tokenizer("chatml")
    full = encode_conversation(tokenizer, TURNS, 4096, "t")
    first_response_end = max(i for i, label in enumerate(full.labels[:40]) if label != IGNORE_INDEX) + 1
    cut = encode_conversation(tokenizer, TURNS, first_response_end + 3, "t")
    assert cut.truncated and len(cut.input_ids) == first_response_end + 3
    assert cut.labels == full.labels[: first_response_end + 3]
    assert _labelled_runs(tokenizer, cut)[0] == "enots<|im_end|>"


def _dataset(tmp_path, rows):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, _ = normalise_records(load_raw(str(path)), ColumnMap(), str(path))
    return ds, str(path)


def test_samples_whose_response_is_cut_off_are_dropped_and_counted(tmp_path, make_tokenizer):
    long_prompt = {
        "id": "long",
        "messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "ok"}],
    }
    short = {
        "id": "short",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    ds, path = _dataset(tmp_path, [long_prompt, short])
    tokenised, report = tokenize_dataset(ds, make_tokenizer("chatml"), 64, path)
    assert tokenised["id"] == ["short"]
    assert report.counts["response_truncated"] == 1 and report.examples["response_truncated"] == ["long"]
    assert tokenised["length"] == [len(tokenised[0]["input_ids"])]
    assert tokenised["num_response_tokens"][0] == len("hello") + 1  # one token per byte, plus <|im_end|>
    only_long, path2 = _dataset(tmp_path, [long_prompt])
    with pytest.raises(DataError, match="no sample left after tokenisation with max_length=64"):
        tokenize_dataset(only_long, make_tokenizer("chatml"), 64, path2)


def test_tokenisation_is_cached_under_a_fingerprint_of_data_tokenizer_and_length(
    tmp_path, make_tokenizer, monkeypatch
):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    rows = [{"id": f"r{i}", "messages": TURNS} for i in range(5)]
    ds, path = _dataset(tmp_path, rows)
    a, _ = tokenize_dataset(ds, make_tokenizer("chatml"), 128, path)
    b, _ = tokenize_dataset(ds, make_tokenizer("chatml"), 128, path)
    c, _ = tokenize_dataset(ds, make_tokenizer("chatml"), 64, path)
    d, _ = tokenize_dataset(ds, make_tokenizer("zephyr"), 128, path)
    assert a._fingerprint == b._fingerprint
    assert len({a._fingerprint, c._fingerprint, d._fingerprint}) == 3
    assert a.cache_files and a.cache_files == b.cache_files  # read back from the same cache file
