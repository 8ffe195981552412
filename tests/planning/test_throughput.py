"""The planner's FLOPs: the LM head counted once per position it projects (the response targets)."""

from __future__ import annotations

from omegaconf import OmegaConf

from prefalign.planning.models import parameter_count
from prefalign.planning.plan import PlanSettings, throughput
from prefalign.planning.simulate import Setup

NUMBERS = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}


def test_head_flops_count_the_projected_positions_only():
    cfg = OmegaConf.create({"trainer": {"max_epochs": 1}, "data": {}})
    setup = Setup(
        world_size=2,
        strategy="ddp",
        reshard_after_forward=False,
        precision="bf16-mixed",
        strategy_checkpointing=False,
        model_checkpointing=False,
        micro_batch=4,
        seq_len=32,
        accumulate=3,
    )
    settings = PlanSettings(mfu=0.5)
    every = throughput(cfg, NUMBERS, setup, settings, sequences=2)
    some = throughput(cfg, NUMBERS, setup, settings, sequences=2, head_tokens=80)
    head = 6 * NUMBERS["vocab_size"] * NUMBERS["hidden_size"]
    micro_batches = setup.world_size * setup.accumulate
    tokens = micro_batches * 4 * 2 * 32
    assert every["tokens_per_step"] == some["tokens_per_step"] == tokens
    assert every["head_tokens_per_step"] == tokens and some["head_tokens_per_step"] == micro_batches * 80
    assert every["head_flops_per_step"] == head * tokens and some["head_flops_per_step"] == head * 6 * 80
    # the rest per token: 6 x the matmul parameters but the two vocabulary matrices, + attention
    body = parameter_count(NUMBERS)["total"] - 2 * NUMBERS["vocab_size"] * NUMBERS["hidden_size"]
    assert every["flops_per_token"] == some["flops_per_token"] == 6 * body + 12 * 2 * 64 * 32
    assert every["flops_per_step"] - some["flops_per_step"] == head * (tokens - 6 * 80)
