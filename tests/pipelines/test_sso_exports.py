"""The SSO iterations' pairs are also written in TRL's conversational format (``preferences.hf/``,
``preferences.trl.jsonl``), with the fake sampler and training stub of ``test_sso_artefacts``."""

from __future__ import annotations

import datasets
from test_sso_artefacts import finished  # noqa: F401 - the fixture of a finished two-iteration run

from prefalign.core.jsonl import read_jsonl


def test_every_iterations_pairs_are_written_as_trl_conversational_datasets(finished):  # noqa: F811
    for i in (1, 2):
        folder = finished / f"iter_{i}"
        pairs = read_jsonl(folder / "preferences.jsonl")
        for ds in (
            datasets.load_from_disk(str(folder / "preferences.hf")),
            datasets.load_dataset("json", data_files=str(folder / "preferences.trl.jsonl"), split="train"),
        ):
            assert set(ds.column_names) == set(pairs[0])  # the same fields, in conversational form
            assert "hit_max_new_tokens" in ds.column_names  # cut-off answers can be filtered out
            assert ds["id"] == [p["id"] for p in pairs]
            for row, pair in zip(ds, pairs, strict=True):
                assert row["prompt"] == [{"role": "user", "content": pair["prompt"]}]
                for field in ("chosen", "rejected", "original"):
                    assert row[field] == [{"role": "assistant", "content": pair[field]}]
                assert (row["feature"], row["system_good"], row["system_bad"]) == (
                    pair["feature"],
                    pair["system_good"],
                    pair["system_bad"],
                )
