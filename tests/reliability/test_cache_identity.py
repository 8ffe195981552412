"""Score caches are keyed by the member's content (issue 23 point 3): weights replaced in place are
scored again, and a cache folder copied in from another member is refused naming both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prefalign.config import bundled
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.models.identity import folder_fingerprint, resolve_hub_revision, weights_identity
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.scoring.engine import ScoreCacheError, find_cached_scores, score_conversations

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


@pytest.fixture(scope="module")
def conversations():
    path = bundled("tiny_chat_val.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    return ds.select(range(8))


def _save_tiny(folder: Path, seed: int) -> None:
    model, tokenizer = build_tiny_model(TinySpec(template="zephyr", seed=seed))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _score(conversations, cfg, cache):
    return score_conversations(
        conversations, cfg, max_length=256, cache_dir=cache, batch_size=8, trainer_kwargs=CPU
    )


def test_weights_replaced_in_place_are_scored_again(conversations, tmp_path):
    member = tmp_path / "member"
    _save_tiny(member, seed=11)
    cfg = {"name_or_path": str(member), "dtype": "float32"}
    first = _score(conversations, cfg, tmp_path / "scores")
    assert not first.cache_hit and _score(conversations, cfg, tmp_path / "scores").cache_hit

    _save_tiny(member, seed=12)  # same folder, same file names and sizes, other weights
    second = _score(conversations, cfg, tmp_path / "scores")
    assert not second.cache_hit and second.path != first.path
    assert second.mean_by_id() != first.mean_by_id()


def test_a_cache_copied_in_from_another_member_is_refused_naming_both(conversations, tmp_path):
    cache = tmp_path / "scores"
    for seed in (11, 12):
        _save_tiny(tmp_path / f"member_{seed}", seed)
    first = {"name_or_path": str(tmp_path / "member_11"), "dtype": "float32"}
    other = {"name_or_path": str(tmp_path / "member_12"), "dtype": "float32"}
    scored = _score(conversations, first, cache)
    folder, finished = find_cached_scores(conversations, other, 256, cache)
    assert not finished
    shutil.copytree(scored.path, folder)  # the first member's finished cache under the other's key
    with pytest.raises(ScoreCacheError) as err:
        _score(conversations, other, cache)
    message = str(err.value)
    assert str(folder / "meta.json") in message
    assert f"local {tmp_path / 'member_11'} (fingerprint" in message
    assert f"the member is {{'name_or_path': '{tmp_path / 'member_12'}'" in message
    assert f"local {tmp_path / 'member_12'} (fingerprint" in message


def test_the_fingerprint_sees_bytes_changed_under_the_same_size_and_time(tmp_path):
    """Sizes and times kept, one sampled block changed: only the sampled bytes tell."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(3 << 20))
    (tmp_path / "config.json").write_text("{}")
    before, stat = folder_fingerprint(tmp_path), weights.stat()
    data = bytearray(weights.read_bytes())
    data[-10:] = bytes(10)  # the last sampled block
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(tmp_path) != before
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert len(folder_fingerprint(tmp_path)) == 16


def test_a_hub_model_is_identified_by_its_resolved_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_hub_revision("org/model", None) == commit
    assert weights_identity({"name_or_path": "org/model", "revision": None})["commit"] == commit
    assert resolve_hub_revision("org/absent", "v1") is None  # offline and not downloaded
