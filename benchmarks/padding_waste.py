"""Length-grouped batching against random batching: padding waste and training throughput.

Both samplers run side by side in one process over the same tokenised data and the same tiny
model; the result is written to ``benchmarks/results/padding_waste.json``.

    python benchmarks/padding_waste.py [--steps 30] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from prefalign.config import bundled
from prefalign.data.batching import LengthGroupedBatchSampler, pad_collate
from prefalign.data.chat import tokenize_dataset
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.objectives import CrossEntropy
from prefalign.scoring.logprobs import sequence_logprobs

RESULTS = Path(__file__).parent / "results" / "padding_waste.json"


def measure(ds, model, tokenizer, batch_size: int, steps: int, grouped: bool) -> dict:
    lengths = ds["length"] if grouped else [1] * len(ds)
    sampler = LengthGroupedBatchSampler(
        lengths, batch_size, shuffle=True, seed=0, mega_batch_mult=50 if grouped else 1
    )
    rows = ds.with_format(None)
    batches = [pad_collate([rows[i] for i in b], tokenizer.pad_token_id) for b in list(sampler)[:steps]]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = CrossEntropy()
    start = time.perf_counter()
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = objective(sequence_logprobs(logits, batch["labels"]), batch).loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return {
        "batches": len(batches),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": 1 - real / padded,
        "seconds": seconds,
        "real_tokens_per_second": real / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(TinySpec())
    path = bundled("tiny_chat_train.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    ds, _ = tokenize_dataset(ds, tokenizer, 512, path)
    # warm-up so neither side pays for first-call overheads
    measure(ds, model, tokenizer, args.batch_size, 3, grouped=True)
    grouped = measure(ds, model, tokenizer, args.batch_size, args.steps, grouped=True)
    random_batches = measure(ds, model, tokenizer, args.batch_size, args.steps, grouped=False)
    result = {
        "benchmark": "length-grouped vs random batching (tiny Llama, bundled chats, CE steps)",
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "batch_size": args.batch_size,
        "grouped": grouped,
        "random": random_batches,
        "padding_fraction_ratio_random_over_grouped": random_batches["padding_fraction"]
        / max(grouped["padding_fraction"], 1e-9),
        "throughput_ratio_grouped_over_random": grouped["real_tokens_per_second"]
        / random_batches["real_tokens_per_second"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
