"""The SSO pipeline's judge shared across ranks (ShardedJudge): the same verdicts and raw-answer
counts as one process."""

from __future__ import annotations

import socket
from collections import Counter

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from prefalign.generation.judges import LLMJudge, signal_accuracy
from prefalign.generation.sampling import Generation
from prefalign.pipelines.sso import ShardedJudge

TRIPLES = [(f"prompt {k}{' bad' if k % 3 == 0 else ''}", "a", "b") for k in range(7)]


class _PositionBiasedJudgeModel:
    """Answers "m" to every judge prompt, and off-format text for prompts marked "bad"."""

    def generate(self, conversations, config):
        texts = ["garbage" if "bad" in str(c) else "m" for c in conversations]
        return [Generation(text=t, num_tokens=1, hit_max_new_tokens=False) for t in texts]


def _expected():
    judge = LLMJudge(_PositionBiasedJudgeModel())
    return signal_accuracy(judge, TRIPLES), judge.answer_counts


def test_one_process_counts_as_the_wrapped_judge():
    stats, counts = _expected()
    sharded = ShardedJudge(LLMJudge(_PositionBiasedJudgeModel()))
    assert signal_accuracy(sharded, TRIPLES) == stats
    assert sharded.answer_counts == counts == Counter({"m": 8, "unparsed": 6})
    assert stats["judge_answers/unparsed"] == 6 / 14


def test_a_judge_without_raw_answers_adds_no_answer_shares():
    sharded = ShardedJudge(lambda prompt, a, b: "a")
    assert signal_accuracy(sharded, TRIPLES) == {
        "signal_accuracy": 1.0,
        "signal_inverted": 0.0,
        "signal_unsure": 0.0,
    }


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sharded = ShardedJudge(LLMJudge(_PositionBiasedJudgeModel()))
        results[rank] = (signal_accuracy(sharded, TRIPLES), dict(sharded.answer_counts))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_give_the_one_process_figures():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    stats, counts = _expected()
    assert results[0] == results[1] == (stats, dict(counts))
