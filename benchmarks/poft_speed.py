"""PoFT benchmarks, each measured side by side in one process; results to ``results/poft_speed.json``.

(a) PoFT training step over CE training step, same model and batches (aligned scores are
    precomputed, so the target is <= 1.05).
(b) Scoring-engine throughput in real (non-pad) tokens per second, against a plain forward over
    the same length-sorted batches (target >= 0.85) and against the official PoFT code's approach:
    one sample at a time, padded to ``max_length``, ``log(softmax)``.

    python benchmarks/poft_speed.py [--steps 60] [--samples 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from prefalign.config import bundled
from prefalign.data.batching import LengthGroupedBatchSampler, pad_collate
from prefalign.data.chat import tokenize_dataset
from prefalign.data.records import ColumnMap, load_raw, normalise_records
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.objectives import CrossEntropy, PoFT
from prefalign.scoring.engine import ScoringModule

RESULTS = Path(__file__).parent / "results" / "poft_speed.json"
# Larger than the test model, so that compute (not Python overhead) dominates, still CPU-sized.
SPEC = TinySpec(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8, num_kv_heads=4)


def _data(tokenizer, max_length, samples):
    path = bundled("tiny_chat_train.jsonl")
    ds, _ = normalise_records(load_raw(path), ColumnMap(), path)
    ds, _ = tokenize_dataset(ds.select(range(samples)), tokenizer, max_length, path)
    return ds


def step_time_ratio(model, tokenizer, ds, steps: int, batch_size: int) -> dict:
    """Median optimiser-step time of PoFT and CE, alternating on identical batches."""
    from prefalign.modules import SingleSequenceModule

    rows = ds.with_format(None)
    sampler = LengthGroupedBatchSampler(ds["length"], batch_size, shuffle=True, seed=0)
    distinct = [pad_collate([rows[i] for i in b], tokenizer.pad_token_id) for b in sampler]
    batches = [distinct[i % len(distinct)] for i in range(steps)]  # cycle: enough steps for a stable median
    for batch in batches:
        batch["aligned_score"] = torch.full((batch["input_ids"].shape[0],), -5.0)
    modules = {
        "ce": SingleSequenceModule(model, CrossEntropy("sample_mean"), optimizer=None),
        "poft": SingleSequenceModule(model, PoFT(), optimizer=None),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = {name: [] for name in modules}
    for batch in batches[:2]:  # warm-up
        for module in modules.values():
            module.objective_output(batch).loss().backward()
            optimizer.step()
            optimizer.zero_grad()
    for step, batch in enumerate(batches):
        order = list(modules.items()) if step % 2 == 0 else list(modules.items())[::-1]  # no first-mover bias
        for name, module in order:
            start = time.perf_counter()
            module.objective_output(batch).loss().backward()
            optimizer.step()
            optimizer.zero_grad()
            times[name].append(time.perf_counter() - start)
    ce, poft = statistics.median(times["ce"]), statistics.median(times["poft"])
    paired = [p / c for p, c in zip(times["poft"], times["ce"], strict=True)]
    quartiles = statistics.quantiles(paired, n=4)
    return {
        "steps": len(batches),
        "batch_size": batch_size,
        "ce_step_s": ce,
        "poft_step_s": poft,
        # per-batch PoFT/CE time on the same batch: the median and the interquartile range
        "ratio_poft_over_ce": statistics.median(paired),
        "ratio_poft_over_ce_iqr": [quartiles[0], quartiles[2]],
    }


def scoring_throughput(model, tokenizer, ds, batch_size: int, max_length: int, official_samples: int) -> dict:
    """Real tokens per second: the engine's predict loop, a plain forward, and one-at-a-time padded."""
    model.eval()
    tokens = int(sum(ds["length"]))
    positioned = ds.add_column("position", list(range(len(ds))))

    module = ScoringModule(model, positioned, list(range(1)), len(ds), batch_size, tokenizer.pad_token_id)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.predict(module, return_predictions=False)  # warm-up
    start = time.perf_counter()
    trainer.predict(module, return_predictions=False)
    engine_s = time.perf_counter() - start

    loader = module.predict_dataloader()
    batches = list(loader)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    plain_s = time.perf_counter() - start

    rows = ds.with_format(None)
    subset = list(range(official_samples))
    official_tokens = sum(rows[i]["length"] for i in subset)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in subset:
            sample = rows[i]
            ids = torch.full((1, max_length), tokenizer.pad_token_id)
            ids[0, : sample["length"]] = torch.tensor(sample["input_ids"])
            mask = (ids != tokenizer.pad_token_id).long()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logp = torch.log(torch.softmax(logits, -1))  # as the official code does
            labels = torch.tensor(sample["labels"][1:])
            keep = labels != -100
            logp[0, : sample["length"] - 1][keep].gather(-1, labels[keep][:, None]).sum()
    official_s = time.perf_counter() - start
    engine_tps, plain_tps, official_tps = tokens / engine_s, tokens / plain_s, official_tokens / official_s
    return {
        "samples": len(ds),
        "real_tokens": tokens,
        "engine_tokens_per_s": engine_tps,
        "plain_forward_tokens_per_s": plain_tps,
        "official_padded_tokens_per_s": official_tps,
        "official_measured_on_samples": official_samples,
        "official_padded_to": max_length,
        "ratio_engine_over_plain_forward": engine_tps / plain_tps,
        "ratio_engine_over_official": engine_tps / official_tps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--official-samples", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(SPEC)
    ds = _data(tokenizer, args.max_length, args.samples)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": f"Llama hidden {SPEC.hidden_size}, {SPEC.num_layers} layers, vocab {len(tokenizer)}",
        "step_time": step_time_ratio(model, tokenizer, ds, args.steps, args.batch_size),
        "scoring": scoring_throughput(
            model, tokenizer, ds, args.batch_size, args.max_length, args.official_samples
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
