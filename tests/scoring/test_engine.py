"""The scoring engine against a plain per-sample computation; caching, resume, DDP, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from shared import CPU

from prefalign.data.chat import encode_conversation
from prefalign.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from prefalign.scoring.engine import ScoreCacheError, data_fingerprint, score_conversations


def _plain_scores(ds, member_cfg, max_length):
    """One sample at a time, no padding, float64 log-softmax: id -> (logp_sum, num_tokens)."""
    path = resolve_model_path(member_cfg)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).eval()
    out = {}
    for row in ds:
        enc = encode_conversation(tokenizer, row["messages"], max_length, row["id"])
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        positions = [t for t in range(1, len(enc.labels)) if enc.labels[t] != -100]
        out[row["id"]] = (sum(logp[t - 1, enc.input_ids[t]].item() for t in positions), len(positions))
    return out


def test_engine_equals_per_sample_computation_for_two_members_with_different_tokenizers(
    conversations, members, tmp_path
):
    counts = {}
    for name, cfg in members.items():
        table = score_conversations(
            conversations,
            cfg,
            max_length=512,
            cache_dir=tmp_path,
            member=name,
            batch_size=7,
            trainer_kwargs=CPU,
        )
        plain = _plain_scores(conversations, cfg, 512)
        assert sorted(table.table["id"]) == sorted(plain)
        for sample_id, logp_sum, n in zip(
            table.table["id"], table.table["logp_sum"], table.table["num_tokens"], strict=True
        ):
            assert n == plain[sample_id][1]
            assert math.isclose(logp_sum, plain[sample_id][0], rel_tol=1e-5, abs_tol=1e-4)
        counts[name] = dict(zip(table.table["id"], table.table["num_tokens"], strict=True))
    # the same responses, tokenised differently by the two members
    a, b = counts["zephyr_bytes"], counts["llama3_bpe"]
    assert sum(a.values()) > sum(b.values())


def test_second_run_is_a_cache_hit_and_a_shuffled_copy_too(conversations, members, tmp_path, monkeypatch):
    cfg = members["zephyr_bytes"]
    first = score_conversations(conversations, cfg, max_length=256, cache_dir=tmp_path, trainer_kwargs=CPU)
    assert not first.cache_hit

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr("prefalign.scoring.engine.load_causal_lm", no_model)
    again = score_conversations(conversations.shuffle(seed=3), cfg, max_length=256, cache_dir=tmp_path)
    assert again.cache_hit and again.path == first.path
    assert again.mean_by_id() == first.mean_by_id()
    # a different max_length or template is a different cache entry
    with pytest.raises(AssertionError, match="cache hit"):
        score_conversations(conversations, cfg, max_length=128, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="cache hit"):
        score_conversations(
            conversations, {**cfg, "chat_template": "chatml"}, max_length=256, cache_dir=tmp_path
        )


def test_data_fingerprint_ignores_order_but_not_content(conversations):
    assert data_fingerprint(conversations) == data_fingerprint(conversations.shuffle(seed=0))
    assert data_fingerprint(conversations) != data_fingerprint(conversations.select(range(39)))


class _KillAfterFirstShard(L.Callback):
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        shards = list((Path(self.folder)).glob("*/shards/shard-*.parquet"))
        if shards:
            raise RuntimeError("killed")

    def __init__(self, folder):
        self.folder = folder


class _CountBatches(L.Callback):
    def __init__(self):
        self.samples = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.samples += len(batch["id"])


def test_killed_run_resumes_without_recomputing_finished_shards(conversations, members, tmp_path):
    cfg = members["zephyr_bytes"]
    kwargs = {"max_length": 256, "cache_dir": tmp_path, "shard_size": 10, "batch_size": 5}
    with pytest.raises(RuntimeError, match="killed"):
        score_conversations(
            conversations,
            cfg,
            trainer_kwargs={**CPU, "callbacks": [_KillAfterFirstShard(tmp_path)]},
            **kwargs,
        )
    done = sorted(tmp_path.glob("*/shards/shard-*.parquet"))
    assert len(done) == 1
    mtime = done[0].stat().st_mtime_ns
    counter = _CountBatches()
    table = score_conversations(conversations, cfg, trainer_kwargs={**CPU, "callbacks": [counter]}, **kwargs)
    assert counter.samples == 30  # three of the four shards
    assert len(table.table) == 40
    reference = score_conversations(
        conversations, cfg, max_length=256, cache_dir=tmp_path / "ref", trainer_kwargs=CPU
    )
    assert table.mean_by_id() == pytest.approx(reference.mean_by_id(), rel=1e-6)
    del mtime  # the finished shard was merged, not rewritten: the counter proves it was not rescored


def test_samples_without_response_tokens_are_counted_not_scored(conversations, members, tmp_path):
    cfg = members["zephyr_bytes"]
    table = score_conversations(conversations, cfg, max_length=50, cache_dir=tmp_path, trainer_kwargs=CPU)
    assert table.drops.counts["response_truncated"] == 40 - len(table.table) > 0
    assert table.drops.total == 40


def test_non_finite_scores_are_an_error_naming_the_id(conversations, members, tmp_path, monkeypatch):
    from prefalign.scoring import engine

    real = engine.model_sequence_logprobs

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        result.sum[0] = float("nan")
        return result

    monkeypatch.setattr(engine, "model_sequence_logprobs", poisoned)
    with pytest.raises(ScoreCacheError, match=r"\(id=syn-[^)]*\): non-finite score \(nan\)"):
        score_conversations(
            conversations, members["zephyr_bytes"], max_length=256, cache_dir=tmp_path, trainer_kwargs=CPU
        )


def test_member_without_chat_template_is_a_clear_error(conversations, members, tmp_path):
    path = Path(resolve_model_path(members["zephyr_bytes"]))
    bare = tmp_path / "bare"
    tokenizer = load_tokenizer(str(path))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    load_causal_lm(str(path)).save_pretrained(bare)
    with pytest.raises(ValueError, match="no chat template"):
        score_conversations(conversations, {"name_or_path": str(bare)}, max_length=256, cache_dir=tmp_path)


@pytest.mark.distributed
def test_two_process_scoring_matches_one_process(conversations, members, tmp_path):
    cfg = members["llama3_bpe"]
    ddp = score_conversations(
        conversations,
        cfg,
        max_length=256,
        cache_dir=tmp_path / "ddp",
        shard_size=8,
        batch_size=4,
        trainer_kwargs={**CPU, "devices": 2, "strategy": "ddp_spawn"},
    )
    single = score_conversations(
        conversations, cfg, max_length=256, cache_dir=tmp_path / "one", trainer_kwargs=CPU
    )
    assert len(ddp.table) == 40
    assert ddp.mean_by_id() == pytest.approx(single.mean_by_id(), rel=1e-5)
