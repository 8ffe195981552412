from __future__ import annotations

import pytest

from prefalign.config import bundled
from prefalign.data.records import ColumnMap, load_raw, normalise_records

# Two aligned members with different tokenizers (bytes vs BPE) and chat templates.
MEMBERS = {
    "zephyr_bytes": {"tiny": {"template": "zephyr", "seed": 11}, "dtype": "float32"},
    "llama3_bpe": {"tiny": {"template": "llama3", "bpe_merges": 300, "seed": 12}, "dtype": "float32"},
}


@pytest.fixture
def members(session_cache):
    return {name: {**cfg, "cache_dir": f"{session_cache}/models"} for name, cfg in MEMBERS.items()}


@pytest.fixture(scope="session")
def conversations():
    path = bundled("tiny_chat_val.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    return ds.select(range(40))
