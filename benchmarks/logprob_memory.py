"""Peak memory and step time of sequence log-probs as the vocabulary grows: full logits vs lean path.

For a fixed batch, one training step (forward, sequence log-probs of the response tokens, backward)
of a small Llama whose vocabulary grows from 32k to 128k tokens, with

- ``full``: today's path before the lean one, the model's full ``(B, T, V)`` logits then the fp32
  log-softmax (``model_sequence_logprobs(..., lean=False)``);
- ``lean``: the default path, the last hidden states with only the response positions projected,
  a bounded chunk at a time (``model_sequence_logprobs(...)``).

Each (path, vocabulary) runs in its own process, so peaks do not mix. Activation memory is the
step's peak minus the weights and the weights' gradients; on a GPU from ``torch.cuda`` memory
statistics, on the CPU from the process's peak resident set (``VmHWM``, reset before the step;
glibc's mmap threshold fixed at 128 KiB so freed tensors leave the resident set).
Target: activation memory grows < 10% from 32k to 128k on the lean path; its step time no worse
than the full path's. Results: ``benchmarks/results/logprob_memory.json``.

The default sizes are the issue's (8 x 1,024 tokens, hidden 1,024) on a GPU and a shrunk batch on
the CPU (``--cpu-sizes``: 2 x 256 tokens, hidden 128, as the machine has two shared cores), which the result file records.

    python benchmarks/logprob_memory.py            # sizes by device
    python benchmarks/logprob_memory.py --device cpu --output /tmp/lpm.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "logprob_memory.json"
GPU_SIZES = {"batch": 8, "length": 1024, "hidden": 1024, "layers": 2, "intermediate": 2816, "heads": 16}
CPU_SIZES = {"batch": 2, "length": 256, "hidden": 128, "layers": 2, "intermediate": 352, "heads": 4}
VOCABS = (32768, 65536, 131072)
PROMPT_FRACTION = 0.25  # the first quarter of each row is prompt (not scored)


def _rss_peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure(path: str, vocab: int, sizes: dict, device: str, steps: int, chunk_elements: int) -> dict:
    """One (path, vocabulary) measurement in this process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefalign.data.chat import IGNORE_INDEX
    from prefalign.scoring import logprobs
    from prefalign.scoring.logprobs import model_sequence_logprobs

    logprobs.LOGIT_CHUNK_ELEMENTS = chunk_elements

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=sizes["hidden"],
        intermediate_size=sizes["intermediate"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["heads"],
        tie_word_embeddings=False,  # Llama-3 style: a separate output matrix
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).train()
    batch, length = sizes["batch"], sizes["length"]
    input_ids = torch.randint(0, vocab, (batch, length), device=device)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : int(length * PROMPT_FRACTION)] = IGNORE_INDEX
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = model_sequence_logprobs(model, input_ids, attention_mask, labels, lean=path == "lean")
        scores.mean.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up (allocator, kernels)
    model.zero_grad(set_to_none=True)
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _rss_peak_reset()
        before = _status_kib("VmRSS") * 1024
    times = [step()]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_kib("VmHWM") * 1024
    times += [step() for _ in range(steps - 1)]
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {
        "path": path,
        "vocab": vocab,
        "weights_mib": weight_bytes / 2**20,
        "peak_above_weights_mib": (peak - before) / 2**20,
        "activation_mib": (peak - before - grad_bytes) / 2**20,
        "step_s": statistics.median(times),
        "response_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--vocabs", type=int, nargs="+", default=list(VOCABS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median)")
    parser.add_argument("--cpu-sizes", action="store_true", help="the CPU sizes on any device")
    parser.add_argument(
        "--chunk-elements",
        type=int,
        help="lean path's logits per chunk (default: the library's 2**24 at GPU sizes, 2**22 at the "
        "CPU sizes, whose batch has too few response tokens to fill a 2**24 chunk at 32k)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = CPU_SIZES if device == "cpu" or args.cpu_sizes else GPU_SIZES
    chunk_elements = args.chunk_elements or (2**22 if sizes is CPU_SIZES else 2**24)
    if args.worker:  # one measurement, printed as JSON
        path, vocab = args.worker.split(":")
        print(json.dumps(measure(path, int(vocab), sizes, device, args.steps, chunk_elements)))
        return
    rows = []
    for vocab in args.vocabs:
        for path in ("full", "lean"):  # side by side in one run, each in a fresh process
            cmd = [
                sys.executable,
                __file__,
                "--device",
                device,
                "--steps",
                str(args.steps),
                "--worker",
                f"{path}:{vocab}",
            ]
            if args.cpu_sizes:
                cmd.append("--cpu-sizes")
            # glibc: every allocation above 128 KiB mapped and unmapped on its own (no dynamic
            # threshold), so the CPU's resident set follows live tensors instead of freed heap
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if out.returncode != 0:
                raise SystemExit(f"measurement {path} at vocab {vocab} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    low, high = min(args.vocabs), max(args.vocabs)
    for path in ("full", "lean"):
        by_vocab = {r["vocab"]: r for r in rows if r["path"] == path}
        summary[path] = {
            "activation_growth": by_vocab[high]["activation_mib"] / by_vocab[low]["activation_mib"] - 1,
            "step_s_at_largest_vocab": by_vocab[high]["step_s"],
        }
    lean_not_slower = all(
        lean["step_s"] <= full["step_s"] * 1.05
        for lean, full in zip(
            [r for r in rows if r["path"] == "lean"], [r for r in rows if r["path"] == "full"], strict=True
        )
    )
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "sizes": sizes,
        "shrunk_for_cpu": sizes is CPU_SIZES,
        "logit_chunk_elements": chunk_elements,
        "vocabs": args.vocabs,
        "measurement": "one training step (forward, sequence log-probs, backward); activation = peak - weights - grads",
        "rows": rows,
        "summary": summary,
        "target_activation_growth_below_10pct": summary["lean"]["activation_growth"] < 0.10,
        "target_lean_step_time_no_worse_5pct": lean_not_slower,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "summary",
                    "target_activation_growth_below_10pct",
                    "target_lean_step_time_no_worse_5pct",
                )
            },
            indent=2,
        )
    )
    if not (result["target_activation_growth_below_10pct"] and lean_not_slower):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
