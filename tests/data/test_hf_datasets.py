"""Data out: preference pairs and scored SFT data as Hugging Face datasets in TRL's conversational
format, read back with ``datasets.load_from_disk`` and ``load_dataset("json")``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prefalign.core.errors import DataError
from prefalign.core.jsonl import read_jsonl
from prefalign.data.hf_datasets import (
    export_preferences,
    preference_export_paths,
    save,
    to_scored_sft,
    to_trl_preference,
)

SSO_PAIR = {  # a pair as prefalign-sso's sample stage writes it
    "id": "q1",
    "prompt": "What is 2+2?",
    "feature": "concise",
    "chosen": "4.",
    "rejected": "Let me think at length... 5.",
    "original": "It is 4.",
    "system_good": "Be concise.",
    "system_bad": "Be verbose.",
    "chosen_tokens": 2,
    "rejected_tokens": 9,
    "original_tokens": 4,
    "hit_max_new_tokens": False,
}
CONVERSATION_PAIR = {  # a pair whose prompt is already a conversation (system + user turns)
    "id": "q2",
    "prompt": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye?"},
    ],
    "feature": "polite",
    "chosen": [{"role": "assistant", "content": "Goodbye!"}],
    "rejected": "no",
    "original": "bye",
    "system_good": "Be polite.",
    "system_bad": "Be rude.",
    "chosen_tokens": 3,
    "rejected_tokens": 1,
    "original_tokens": 1,
    "hit_max_new_tokens": True,
}


def _load_both(hf_folder, jsonl_file):
    import datasets

    from_disk = datasets.load_from_disk(str(hf_folder))
    from_json = datasets.load_dataset("json", data_files=str(jsonl_file), split="train")
    return from_disk, from_json


def test_sso_pairs_become_trl_conversational_preference_data_with_their_other_columns(tmp_path):
    source = tmp_path / "iter_1" / "preferences.jsonl"
    paths = export_preferences(source, [SSO_PAIR, CONVERSATION_PAIR])
    assert paths == preference_export_paths(source)
    assert paths["hf"] == tmp_path / "iter_1" / "preferences.hf"
    assert paths["jsonl"] == tmp_path / "iter_1" / "preferences.trl.jsonl"
    for ds in _load_both(paths["hf"], paths["jsonl"]):
        assert len(ds) == 2
        assert set(ds.column_names) == set(SSO_PAIR)  # every field kept, no new one
        first, second = ds[0], ds[1]
        assert first["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
        assert first["chosen"] == [{"role": "assistant", "content": "4."}]
        assert first["rejected"] == [{"role": "assistant", "content": "Let me think at length... 5."}]
        assert first["original"] == [{"role": "assistant", "content": "It is 4."}]
        assert (first["feature"], first["system_good"], first["rejected_tokens"]) == (
            "concise",
            "Be concise.",
            9,
        )
        assert [m["role"] for m in second["prompt"]] == ["system", "user", "assistant", "user"]
        assert second["prompt"][0]["content"] == "You are terse."
        assert second["chosen"] == [{"role": "assistant", "content": "Goodbye!"}]
        assert second["rejected"] == [{"role": "assistant", "content": "no"}]
        assert second["hit_max_new_tokens"] is True
    assert [p.name for p in tmp_path.joinpath("iter_1").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rejected": None}, r"row 1 \(id='q1'\): missing or empty \['rejected'\]"),
        ({"chosen": "  "}, r"row 1 \(id='q1'\): empty `chosen` response"),
        ({"prompt": ""}, r"row 1 \(id='q1'\): missing or empty \['prompt'\]"),
        (
            {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "end with a user",
        ),
        ({"prompt": [{"role": "robot", "content": "q"}]}, r"`prompt`\[0\] has role 'robot'"),
        ({"chosen": [{"role": "user", "content": "q"}]}, "`chosen` must hold assistant turns only"),
        ({"original": [{"role": "assistant"}]}, r"`original`\[0\] must be an object with a text `content`"),
    ],
)
def test_a_bad_pair_is_an_error_naming_the_file_row_and_id(tmp_path, change, message):
    source = tmp_path / "preferences.jsonl"
    bad = {**SSO_PAIR, **change}
    with pytest.raises(DataError, match=message) as err:
        export_preferences(source, [CONVERSATION_PAIR, bad])
    assert str(source) in str(err.value)
    assert not preference_export_paths(source)["hf"].exists()  # nothing half written


def test_rows_that_do_not_fit_one_schema_are_an_error_naming_the_source(tmp_path):
    rows = to_trl_preference([SSO_PAIR, {**CONVERSATION_PAIR, "feature": {"a": 1}}], "pairs.jsonl")
    with pytest.raises(DataError, match="pairs.jsonl: the rows do not fit one dataset schema"):
        save(rows, tmp_path / "pairs", "hf", source="pairs.jsonl")


CHATS = [
    {
        "id": "a",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "noise": False,
    },
    {
        "id": "b",
        "messages": [
            {"role": "system", "content": "terse"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "r"},
        ],
        "noise": True,
    },
    {
        "id": "c",
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        "noise": False,
    },
]
SCORES = {
    "id": ["b", "a"],
    "score_m1": [-1.5, -0.5],
    "score_m2": [-2.5, -1.0],
    "aligned_score": [-2.0, -0.75],
}


@pytest.mark.parametrize("fmt", ["hf", "jsonl", "both"])
def test_scored_sft_data_keeps_messages_and_its_score_columns(tmp_path, fmt):
    rows = to_scored_sft(CHATS, SCORES, "train (chats.jsonl)")
    assert [r["id"] for r in rows] == ["a", "b"]  # c has no score: left out (and logged)
    written = save(rows, tmp_path / "scored" / "train", fmt)
    assert sorted(written) == {"hf": ["hf"], "jsonl": ["jsonl"], "both": ["hf", "jsonl"]}[fmt]
    import datasets

    loaded = []
    if "hf" in written:
        loaded.append(datasets.load_from_disk(str(written["hf"])))
    if "jsonl" in written:
        assert written["jsonl"] == tmp_path / "scored" / "train.jsonl"
        loaded.append(datasets.load_dataset("json", data_files=str(written["jsonl"]), split="train"))
    for ds in loaded:
        assert set(ds.column_names) == {"id", "messages", "noise", "score_m1", "score_m2", "aligned_score"}
        assert ds["id"] == ["a", "b"]
        assert ds["score_m1"] == [-0.5, -1.5] and ds["aligned_score"] == [-0.75, -2.0]
        assert [m["role"] for m in ds[1]["messages"]] == ["system", "user", "assistant"]
        assert ds["noise"] == [False, True]


def test_a_bad_chat_record_is_an_error_naming_the_source_row_and_id():
    bad = {"id": "z", "messages": [{"role": "user", "content": 3}]}
    with pytest.raises(DataError, match=r"train \(chats.jsonl\): row 1 \(id='z'\): `messages`\[0\]"):
        to_scored_sft([CHATS[0], bad], SCORES, "train (chats.jsonl)")
    with pytest.raises(DataError, match=r"row 0 \(id=None\): missing `id`"):
        to_scored_sft([{"messages": CHATS[0]["messages"]}], SCORES, "train (chats.jsonl)")
    with pytest.raises(DataError, match="id 'a' has two score rows"):
        to_scored_sft(CHATS, {"id": ["a", "a"], "aligned_score": [0.0, 1.0]}, "train (chats.jsonl)")


def test_the_module_imports_no_datasets_or_torch_until_it_writes():
    code = (
        "import sys; import prefalign.data.hf_datasets; "
        "print(sorted(m for m in ('datasets', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_jsonl_copy_holds_the_same_rows_as_the_dataset(tmp_path):
    paths = export_preferences(tmp_path / "preferences.jsonl", [SSO_PAIR])
    assert read_jsonl(paths["jsonl"]) == to_trl_preference([SSO_PAIR], "x")
