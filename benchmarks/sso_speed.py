"""SSO benchmarks, measured side by side in one process; results to ``results/sso_speed.json``.

(a) SSO training step (six sequences per sample) over DPO training step (two), same model and
    prompt batch, reference log-probs precomputed (target <= 3.3); both with shared-prompt rows
    (the default: each prompt computed once) and with one padded row per sequence.
(b) Generation throughput in new tokens per second: batched, left-padded, length-sorted sampling
    against one prompt at a time.

    python benchmarks/sso_speed.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from prefalign.config import bundled
from prefalign.data.preference import PreferenceDataModule
from prefalign.generation.principles import load_principles, principle_system_message
from prefalign.generation.sampling import HFGenerator, SamplingConfig
from prefalign.models.loading import TinySpec, build_tiny_model
from prefalign.modules import MultiSequenceModule
from prefalign.objectives import SSO, PairwisePreference

RESULTS = Path(__file__).parent / "results" / "sso_speed.json"
SPEC = TinySpec(
    hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8, num_kv_heads=4, bpe_merges=300
)


def sso_records(path: Path, n: int, full_principles: bool, response_chars: int = 0) -> Path:
    """SSO records from the bundled pairs, with the paper's Accuracy principles or one-line ones.

    ``response_chars`` > 0 repeats every response up to about that many characters, so that
    response lengths are closer to real chat data (UltraFeedback answers run to a few hundred tokens).
    """
    accuracy = load_principles()["Accuracy"]
    good = principle_system_message(accuracy, True) if full_principles else "Be accurate."
    bad = principle_system_message(accuracy, False) if full_principles else "Be inaccurate."

    def stretch(text: str) -> str:
        return " ".join([text] * max(1, response_chars // (len(text) + 1))) if response_chars else text

    rows = []
    for line in Path(bundled("tiny_pref_train.jsonl")).read_text().splitlines()[:n]:
        r = json.loads(line)
        rows.append(
            {
                **r,
                "chosen": stretch(r["chosen"]),
                "rejected": stretch(r["rejected"]),
                "original": stretch(r["chosen"].split(" is ")[-1]),
                "system_good": good,
                "system_bad": bad,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def batches(tokenizer, path: Path, sequences, batch_size: int, n: int, share_prompts: bool) -> list[dict]:
    dm = PreferenceDataModule(
        tokenizer,
        train={"path": str(path)},
        sequences=sequences,
        max_length=2048,
        batch_size=batch_size,
        share_prompts=share_prompts,
    )
    dm.setup()
    out = []
    for batch in dm.train_dataloader():
        for name in sequences:  # precomputed reference columns (their values do not change the cost)
            batch[f"ref.{name}.sum"] = torch.zeros(len(batch["id"]), dtype=torch.float64)
            batch[f"ref.{name}.count"] = torch.ones(len(batch["id"]), dtype=torch.long)
        out.append(batch)
        if len(out) == n:
            break
    return out


def step_ratio(model, tokenizer, data: Path, steps: int, batch_size: int, share_prompts: bool) -> dict:
    sso, dpo = SSO(), PairwisePreference("dpo", 0.1)
    # DPO uses only the (x, y+, y-) sequences of the same samples, so both see the same prompts
    sso_batches = batches(tokenizer, data, sso.sequences, batch_size, steps, share_prompts)
    dpo_batches = batches(tokenizer, data, dpo.sequences, batch_size, steps, share_prompts)
    modules = {
        "sso": (MultiSequenceModule(model, sso, optimizer=None), sso_batches),
        "dpo": (MultiSequenceModule(model, dpo, optimizer=None), dpo_batches),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = {name: [] for name in modules}
    for step in range(min(len(sso_batches), len(dpo_batches))):
        order = ["sso", "dpo"] if step % 2 == 0 else ["dpo", "sso"]
        for name in order:
            module, data_batches = modules[name]
            start = time.perf_counter()
            module.objective_output(data_batches[step]).loss().backward()
            optimizer.step()
            optimizer.zero_grad()
            if step > 0:  # the first step of each is a warm-up
                times[name].append(time.perf_counter() - start)
    paired = [s / d for s, d in zip(times["sso"], times["dpo"], strict=True)]
    tokens = {
        name: sum(int(b["input_ids"].numel()) for b in data_batches)
        for name, (_, data_batches) in modules.items()
    }
    return {
        "steps": len(paired),
        "batch_size": batch_size,
        "sso_step_s": statistics.median(times["sso"]),
        "dpo_step_s": statistics.median(times["dpo"]),
        "ratio_sso_over_dpo": statistics.median(paired),
        "input_token_ratio_sso_over_dpo": tokens["sso"] / tokens["dpo"],
    }


def generation_throughput(model, tokenizer, prompts: int, max_new_tokens: int, batch_size: int) -> dict:
    generator = HFGenerator(model, tokenizer)
    lines = Path(bundled("tiny_pref_val.jsonl")).read_text().splitlines()[:prompts]
    conversations = [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in lines]
    results = {}
    for name, size in (("batched", batch_size), ("unbatched", 1)):
        config = SamplingConfig(max_new_tokens=max_new_tokens, batch_size=size, seed=0)
        start = time.perf_counter()
        generations = generator.generate(conversations, config)
        seconds = time.perf_counter() - start
        results[name] = {
            "new_tokens": sum(g.num_tokens for g in generations),
            "seconds": seconds,
            "new_tokens_per_s": sum(g.num_tokens for g in generations) / seconds,
        }
    results["ratio_batched_over_unbatched"] = (
        results["batched"]["new_tokens_per_s"] / results["unbatched"]["new_tokens_per_s"]
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(SPEC)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": f"Llama hidden {SPEC.hidden_size}, {SPEC.num_layers} layers, BPE vocab {len(tokenizer)}",
    }
    # One-line principles: the six sequences are about as long as DPO's two, the comparison the
    # target assumes. The paper's principles: ~730-character system messages on x+ / x-, here on
    # very short synthetic answers, so SSO processes many more tokens than DPO.
    scenarios = (
        ("step_time_short_principles", False, 0),
        ("step_time_paper_principles", True, 0),
        ("step_time_paper_principles_long_responses", True, 1500),
    )
    for name, full, response_chars in scenarios:
        data = sso_records(
            RESULTS.parent / "sso_records.tmp.jsonl", args.steps * args.batch_size, full, response_chars
        )
        try:
            result[name] = {
                layout: step_ratio(model, tokenizer, data, args.steps, args.batch_size, share)
                for layout, share in (("shared_prompt_rows", True), ("padded_rows", False))
            }
        finally:
            data.unlink(missing_ok=True)
    result["generation"] = generation_throughput(model, tokenizer, args.prompts, args.max_new_tokens, 16)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
