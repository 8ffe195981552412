"""Validation of prefalign-plan's memory simulation, written to benchmarks/results/plan_validation.json.

    python benchmarks/plan_validation.py        # about 4 minutes on 2 CPU cores

(a) CPU: a small Llama (4 layers, hidden 256, CE, micro-batch 4 x 1024, fp32, AdamW, eager
    attention) stepped twice on one simulated GPU and, for real, on the CPU, under the same memory
    tracker: the steady-state peaks must agree within 5%.
(b) torchtitan's published Llama 3.1 8B figure (benchmarks/llama3_h100_202412_torchtitan.md, Table 1:
    8 x H100, FSDP, local batch 2, sequence 8192, selective activation checkpointing, 82.4 GiB; H100s
    of 96 GB there): the plan of the same shape with the project's step (fp32 master weights, bf16
    mixed precision, FSDP2, AdamW), with no and with full activation checkpointing, which bracket
    torchtitan's selective policy, against the published figure, and the gap explained.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prefalign.planning.shim import prepare_simulated_cuda

prepare_simulated_cuda()

import torch  # noqa: E402  (after the shim)
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from prefalign.config import config_dir, register_resolvers  # noqa: E402
from prefalign.planning.models import architecture_config, parameter_count  # noqa: E402
from prefalign.planning.simulate import CATEGORIES, GIB, resolve_setup, simulate_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "plan_validation.json"
TORCHTITAN_RESERVED_GIB = 82.4
TINY = [
    "model=tiny",
    "model.tiny.hidden_size=256",
    "model.tiny.intermediate_size=688",
    "model.tiny.num_layers=4",
    "model.tiny.num_heads=8",
    "model.tiny.num_kv_heads=4",
    "objective=ce",
    "trainer=cpu",
    "data.max_length=1024",
    "data.batch_size=4",
]
TITAN = [
    "model=hf",
    "model.name_or_path=meta-llama/Llama-3.1-8B",
    "model.dtype=float32",
    "objective=ce",
    "trainer=fsdp2",
    "trainer.devices=8",
    "trainer.precision=bf16-mixed",
    "data.max_length=8192",
    "data.batch_size=2",
]


def train_config(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="plan", overrides=overrides)
    with open_dict(cfg):
        del cfg["plan"]
    return cfg


def gib_table(memory) -> dict:
    return {
        **{c: round(memory.by_category[c] / GIB, 4) for c in CATEGORIES},
        "peak": round(memory.peak / GIB, 4),
    }


def cpu_check() -> dict:
    """Eager attention (the same kernel on both sides) is the check; with SDPA the CPU and the GPU
    pick different kernels (the CPU's own flash kernel, or math, against CUDA's flash), shown for
    information only."""
    result = {}
    for attention in ("eager", "sdpa"):
        cfg = train_config([*TINY, f"model.attn_implementation={attention}"])
        _, numbers = architecture_config(cfg.model)
        setup = resolve_setup(cfg)
        started = time.perf_counter()
        simulated = simulate_step(cfg, numbers, setup)
        simulated_s = time.perf_counter() - started
        torch.manual_seed(0)
        started = time.perf_counter()
        real = simulate_step(cfg, numbers, setup, real_cpu=True)
        real_s = time.perf_counter() - started
        error = (simulated.peak - real.peak) / real.peak
        result[attention] = {
            "simulated_gpu_gib": gib_table(simulated),
            "real_cpu_gib": gib_table(real),
            "peak_relative_error": round(error, 4),
            "seconds": {"simulated": round(simulated_s, 1), "real_cpu": round(real_s, 1)},
        }
    return {
        "config": TINY,
        "setup": setup.__dict__,
        "same_kernel": result["eager"],
        "within_5_percent": abs(result["eager"]["peak_relative_error"]) <= 0.05,
        "sdpa_information_only": {
            **result["sdpa"],
            "why_it_differs": "SDPA chooses its kernel per device: CUDA's flash kernel in the simulation, "
            "the CPU's own kernel for real; compare like with like above",
        },
    }


def torchtitan_selective_checkpointing(layer: torch.nn.Module) -> torch.nn.Module:
    """torchtitan's per-op selective activation checkpointing (``activation_checkpoint.py``, the
    policy of its December 2024 benchmark): the outputs of matmuls, attention kernels,
    reduce-scatters and ``max`` are saved, except every second matmul; everything else is recomputed."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    from prefalign.planning.torch_private import get

    checkpoint_wrapper = get("checkpoint_wrapper")

    aten = torch.ops.aten
    save = {
        aten.mm.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention.default,
        torch.ops._c10d_functional.reduce_scatter_tensor.default,
        aten.max.default,
    }

    def policy_context():
        meta = {"forward": 0, "recompute": 0}

        def policy(ctx, func, *args, **kwargs):
            mode = "recompute" if ctx.is_recompute else "forward"
            if func == aten.mm.default:
                meta[mode] += 1
            if func in save and not (func == aten.mm.default and meta[mode] % 2 == 0):
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return checkpoint_wrapper(layer, context_fn=policy_context, preserve_rng_state=False)


def torchtitan_check() -> dict:
    plans = {}
    variants = (
        ("no_activation_checkpointing", False, None),
        ("torchtitan_selective_checkpointing", False, torchtitan_selective_checkpointing),
        ("full_activation_checkpointing", True, None),
    )
    for name, checkpointing, wrap in variants:
        cfg = train_config([*TITAN, f"model.gradient_checkpointing={str(checkpointing).lower()}"])
        _, numbers = architecture_config(cfg.model)
        setup = resolve_setup(cfg)
        started = time.perf_counter()
        memory = simulate_step(cfg, numbers, setup, wrap_layer=wrap)
        plans[name] = {**gib_table(memory), "seconds": round(time.perf_counter() - started, 1)}
    _, numbers = architecture_config(train_config(TITAN).model)
    vocab, tokens = numbers["vocab_size"], 2 * 8192
    # torchtitan's loss: full logits in bf16, upcast to fp32 for cross-entropy (arithmetic, not measured)
    logits_gib = tokens * vocab * (2 + 4) / GIB
    low, high = plans["full_activation_checkpointing"]["peak"], plans["no_activation_checkpointing"]["peak"]
    selective = plans["torchtitan_selective_checkpointing"]["peak"]
    with_logits = selective + logits_gib
    return {
        "published": {
            "source": "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md, Table 1 (FSDP row)",
            "memory_gib": TORCHTITAN_RESERVED_GIB,
            "what": "reserved by the caching allocator (torch.cuda.max_memory_reserved), H100 96 GB HBM2e",
            "setup": "Llama 3.1 8B, 8 GPUs, FSDP, local batch 2, sequence 8192, selective per-op AC, bf16",
        },
        "parameters": parameter_count(numbers),
        "plan_gib": plans,
        "published_within_no_and_full_ac": low <= TORCHTITAN_RESERVED_GIB <= high,
        "gap": {
            "selective_plan_gib": selective,
            "torchtitan_full_logits_gib": round(logits_gib, 2),
            "selective_plan_plus_logits_gib": round(with_logits, 2),
            "published_over_that": round(TORCHTITAN_RESERVED_GIB / with_logits, 3),
            "explained": (
                f"With torchtitan's selective per-op checkpointing the plan of the project's step reads "
                f"{selective:.1f} GiB allocated. torchtitan's loss keeps the full logits of 2 x 8192 tokens "
                f"over a 128,256 vocabulary in bf16 plus their fp32 upcast (about {logits_gib:.1f} GiB by "
                "arithmetic, not simulated), which the project's lean log-prob path never holds (64 MiB "
                f"chunks): {with_logits:.1f} GiB. The rest of the published {TORCHTITAN_RESERVED_GIB} GiB "
                f"({TORCHTITAN_RESERVED_GIB - with_logits:.1f} GiB) is not separated here: the published figure "
                "is reserved memory (the caching allocator's rounding and fragmentation on top of allocated), "
                "and the cross-entropy backward materialises the logits' fp32 gradient."
            ),
        },
    }


def main() -> int:
    started = time.perf_counter()
    result = {
        "torch": torch.__version__,
        "cpu_simulated_vs_real": cpu_check(),
        "torchtitan_llama3_8b": torchtitan_check(),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0 if result["cpu_simulated_vs_real"]["within_5_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
