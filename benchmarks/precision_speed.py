"""Training-step time under bf16-mixed (bf16 autocast over fp32 master weights, the paper configs'
precision) against fp32, on this CPU, measured side by side in one process; results to
``results/precision_speed.json``.

CE steps on the bundled chats and DPO steps (precomputed reference, shared-prompt rows) on the
bundled preference pairs, for the tests' tiny model (hidden 64) and a larger one where compute,
not Python overhead, dominates (hidden 256, 4 layers). The two precisions alternate step by step on
the same batches and the same weights (no first-mover bias); the ratio is bf16-mixed / fp32 per
step pair, reported as the median with its interquartile range. The CPU's bf16 support
(AVX512-BF16 / AMX-BF16 in /proc/cpuinfo) and the load average are recorded: on CPUs without bf16
units, bf16 is emulated and about 30x slower.

    python benchmarks/precision_speed.py [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from prefalign.config import bundled
from prefalign.data.batching import LengthGroupedBatchSampler, pad_collate
from prefalign.data.chat import tokenize_dataset
from prefalign.data.preference import PreferenceDataModule
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.models.precision import cpu_has_bf16
from prefalign.modules import MultiSequenceModule, SingleSequenceModule
from prefalign.objectives import CrossEntropy, PairwisePreference

RESULTS = Path(__file__).parent / "results" / "precision_speed.json"
MODELS = {
    "tiny (tests)": TinySpec(),
    "hidden 256 x 4 layers": TinySpec(
        hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8, num_kv_heads=4
    ),
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ce_batches(tokenizer, batch_size: int, n: int) -> list[dict]:
    path = bundled("tiny_chat_train.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    ds, _ = tokenize_dataset(ds, tokenizer, 512, path)
    rows = ds.with_format(None)
    sampler = LengthGroupedBatchSampler(ds["length"], batch_size, shuffle=True, seed=0)
    distinct = [pad_collate([rows[i] for i in b], tokenizer.pad_token_id) for b in sampler]
    return [distinct[i % len(distinct)] for i in range(n)]


def dpo_batches(tokenizer, sequences, batch_size: int, n: int) -> list[dict]:
    dm = PreferenceDataModule(
        tokenizer,
        train={"path": bundled("tiny_pref_train.jsonl")},
        sequences=sequences,
        max_length=512,
        batch_size=batch_size,
    )
    dm.setup()
    distinct = []
    for batch in dm.train_dataloader():
        for name in sequences:  # precomputed reference columns (values do not change the cost)
            batch[f"ref.{name}.sum"] = torch.zeros(len(batch["id"]), dtype=torch.float64)
            batch[f"ref.{name}.count"] = torch.ones(len(batch["id"]), dtype=torch.long)
        distinct.append(batch)
    return [distinct[i % len(distinct)] for i in range(n)]


def step_ratio(module, batches: list[dict]) -> dict:
    """Median step time of fp32 and bf16-mixed on the same batches and weights, alternating."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)
    contexts = {
        "fp32": contextlib.nullcontext,
        "bf16_mixed": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }
    times = {name: [] for name in contexts}
    for step, batch in enumerate(batches):
        order = list(contexts) if step % 2 == 0 else list(contexts)[::-1]
        for name in order:
            start = time.perf_counter()
            with contexts[name]():
                loss = module.objective_output(batch).loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step > 1:  # two warm-up steps of each
                times[name].append(time.perf_counter() - start)
    paired = [b / f for b, f in zip(times["bf16_mixed"], times["fp32"], strict=True)]
    quartiles = statistics.quantiles(paired, n=4)
    return {
        "steps": len(paired),
        "fp32_step_s": round(statistics.median(times["fp32"]), 5),
        "bf16_mixed_step_s": round(statistics.median(times["bf16_mixed"]), 5),
        "ratio_bf16_mixed_over_fp32": round(statistics.median(paired), 3),
        "ratio_iqr": [round(quartiles[0], 3), round(quartiles[2], 3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "cpu": cpu_name(),
        "cpu_has_bf16_units": cpu_has_bf16(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "load_average_before": os.getloadavg(),
        "models": {},
    }
    dpo = PairwisePreference("dpo", 0.1)
    for label, spec in MODELS.items():
        model, tokenizer = build_tiny_model(spec)
        result["models"][label] = {
            "ce": step_ratio(
                SingleSequenceModule(model, CrossEntropy(), optimizer=None),
                ce_batches(tokenizer, args.batch_size, args.steps),
            ),
            "dpo": step_ratio(
                MultiSequenceModule(model, dpo, optimizer=None),
                dpo_batches(tokenizer, dpo.sequences, args.batch_size, args.steps),
            ),
        }
    result["load_average_after"] = os.getloadavg()
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
