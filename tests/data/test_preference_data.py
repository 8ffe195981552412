"""Preference records: validation, sequences, tokenisation drops, reference join, collation."""

from __future__ import annotations

import datasets
import pytest
import torch

from prefalign.config import bundled
from prefalign.core.errors import DataError, DropReport
from prefalign.core.names import CHOSEN, REJECTED, parse_sequence, reference_columns, required_fields
from prefalign.data.preference import (
    PreferenceColumns,
    PreferenceDataModule,
    collate_sequences,
    normalise_preferences,
    sequence_messages,
    tokenize_preferences,
)

SSO_ROW = {
    "id": "q1",
    "prompt": "What is 2 plus 3?",
    "chosen": "2 plus 3 is 5.",
    "rejected": "2 plus 3 is 7.",
    "original": "5",
    "system_good": "Be accurate.",
    "system_bad": "Be inaccurate.",
}
SSO_SEQUENCES = ("x|y+", "x|y-", "x+|y+", "x+|y-", "x-|yo", "x-|y+")


def test_sequences_are_built_from_prompt_variants_and_responses():
    fields = required_fields(SSO_SEQUENCES)
    assert fields == ["prompt", "chosen", "rejected", "system_good", "system_bad", "original"]
    ds, _ = normalise_preferences(
        datasets.Dataset.from_list([SSO_ROW]), PreferenceColumns(), fields, "sso.jsonl"
    )
    row = ds[0]
    assert sequence_messages(row, "x|y+") == [
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
    ]
    assert sequence_messages(row, "x-|yo")[0] == {"role": "system", "content": "Be inaccurate."}
    assert sequence_messages(row, "x-|yo")[-1]["content"] == "5"
    with pytest.raises(ValueError, match="unknown sequence"):
        parse_sequence("x|y*")


def test_conversation_valued_fields_like_ultrafeedback():
    row = {
        "prompt_id": "u1",
        "prompt": "Hi",
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    }
    ds, _ = normalise_preferences(
        datasets.Dataset.from_list([row]),
        PreferenceColumns(id="prompt_id"),
        ["prompt", "chosen", "rejected"],
        "uf",
    )
    assert ds[0]["id"] == "u1" and ds[0]["chosen"] == "Hello!" and ds[0]["rejected"] == "Go away."


def test_empty_generations_are_errors_or_counted_drops():
    rows = [SSO_ROW, {**SSO_ROW, "id": "q2", "rejected": "  "}, {**SSO_ROW, "id": "q3", "original": ""}]
    fields = required_fields(SSO_SEQUENCES)
    with pytest.raises(DataError, match=r"gen.jsonl: row 1 \(id=q2\): the rejected text is empty"):
        normalise_preferences(datasets.Dataset.from_list(rows), PreferenceColumns(), fields, "gen.jsonl")
    ds, report = normalise_preferences(
        datasets.Dataset.from_list(rows), PreferenceColumns(), fields, "gen.jsonl", "drop"
    )
    assert ds["id"] == ["q1"] and dict(report.counts) == {"empty_rejected": 1, "empty_original": 1}


def test_missing_fields_name_the_columns():
    raw = datasets.Dataset.from_list([{k: v for k, v in SSO_ROW.items() if k != "system_bad"}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['system_bad'\]"):
        normalise_preferences(raw, PreferenceColumns(), required_fields(SSO_SEQUENCES), "gen.jsonl")


def test_empty_preference_set_is_an_error():
    raw = datasets.Dataset.from_list([{**SSO_ROW, "prompt": ""}])
    with pytest.raises(DataError, match="no valid preference record"):
        normalise_preferences(raw, PreferenceColumns(), ["prompt", "chosen", "rejected"], "p.jsonl", "drop")


def test_a_prompt_longer_than_the_model_allows_is_dropped_and_counted(make_tokenizer):
    rows = [SSO_ROW, {**SSO_ROW, "id": "long", "prompt": "x" * 400}]
    fields = required_fields(("x|y+", "x|y-"))
    ds, _ = normalise_preferences(datasets.Dataset.from_list(rows), PreferenceColumns(), fields, "p.jsonl")
    tokenised, report = tokenize_preferences(ds, make_tokenizer("chatml"), 128, ("x|y+", "x|y-"), "p.jsonl")
    assert tokenised["id"] == ["q1"] and report.examples == {"response_truncated": ["long"]}
    with pytest.raises(DataError, match="no preference record left"):
        tokenize_preferences(ds.select([1]), make_tokenizer("chatml"), 128, ("x|y+", "x|y-"), "p.jsonl")


def test_collation_stacks_sequences_sequence_major(make_tokenizer):
    rows = [SSO_ROW, {**SSO_ROW, "id": "q2", "chosen": "Five, since 2 + 3 = 5."}]
    fields = required_fields(("x|y+", "x|y-"))
    ds, _ = normalise_preferences(datasets.Dataset.from_list(rows), PreferenceColumns(), fields, "p.jsonl")
    tokenised, _ = tokenize_preferences(ds, make_tokenizer("chatml"), 256, ("x|y+", "x|y-"), "p.jsonl")
    samples = [dict(r, **{"ref.x|y+.sum": -1.0, "ref.x|y+.count": 3}) for r in tokenised]
    batch = collate_sequences(samples, ("x|y+", "x|y-"), pad_token_id=0)
    assert batch["input_ids"].shape[0] == 4 and batch["id"] == ["q1", "q2"]
    first = torch.tensor(samples[0]["x|y+.input_ids"])
    assert torch.equal(batch["input_ids"][0, : len(first)], first)  # row 0: sample 0, sequence x|y+
    second = torch.tensor(samples[0]["x|y-.input_ids"])
    assert torch.equal(batch["input_ids"][2, : len(second)], second)  # row 2: sample 0, sequence x|y-
    assert batch["ref.x|y+.sum"].dtype == torch.float64 and batch["ref.x|y+.count"].tolist() == [3, 3]


def _pairs_module(make_tokenizer, **kwargs):
    return PreferenceDataModule(
        make_tokenizer("chatml"),
        train={"path": bundled("tiny_pref_train.jsonl"), "limit": 6},
        max_length=256,
        batch_size=3,
        **kwargs,
    )


def test_added_columns_are_joined_by_id_and_collated(make_tokenizer):
    required = [*reference_columns(CHOSEN), *reference_columns(REJECTED)]
    dm = _pairs_module(make_tokenizer, required_columns=required)
    ids = list(reversed(dm.records("train")["id"]))  # any order: joined by id
    dm.add_columns(
        "train",
        {
            "id": ids,
            "ref.x|y+.sum": [-float(i) for i in range(6)],
            "ref.x|y+.count": list(range(1, 7)),
            "ref.x|y-.sum": [-10.0 - i for i in range(6)],
            "ref.x|y-.count": list(range(11, 17)),
        },
    )
    dm.setup()
    train = dm.datasets["train"]
    expected = {sample_id: -float(i) for i, sample_id in enumerate(ids)}
    assert train["ref.x|y+.sum"] == [expected[i] for i in train["id"]]
    batch = next(iter(dm.train_dataloader()))
    assert batch["ref.x|y+.sum"].dtype == torch.float64 and batch["ref.x|y-.count"].dtype == torch.long
    assert batch["ref.x|y-.sum"].tolist() == [-10.0 - ids.index(i) for i in batch["id"]]


def test_samples_missing_from_added_columns_are_counted_drops_or_an_error(make_tokenizer):
    dm = _pairs_module(make_tokenizer)
    ids = dm.records("train")["id"]
    dropped = DropReport(total=6)
    dropped.add("missing_score_z", ids[0])
    dm.add_columns("train", {"id": ids[1:], "score": [1.0] * 5}, dropped)
    dm.setup()
    assert dm.datasets["train"]["id"] == ids[1:]
    assert dm.drop_counts()["data/train_dropped_missing_score_z"] == 1
    uncounted = _pairs_module(make_tokenizer)
    uncounted.add_columns("train", {"id": ids[1:], "score": [1.0] * 5})
    with pytest.raises(
        DataError, match=rf"no value of column\(s\) \['score'\] for 1 sample\(s\) \(e.g. ids \['{ids[0]}'\]\)"
    ):
        uncounted.setup()


def test_required_reference_columns_without_them_name_the_frozen_step(make_tokenizer):
    dm = _pairs_module(make_tokenizer, required_columns=list(reference_columns(CHOSEN)))
    with pytest.raises(DataError, match="attach_frozen_columns"):
        dm.setup()
